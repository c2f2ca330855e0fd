"""Normalisation inside the model, so that a model file carries its own preprocessing.

Every backbone receives the same [0, 1] image and applies its own mean/std (and size, when fused
backbones want different ones). Export, serve and predict then only resize and scale to [0, 1]:
the classic bug of normalising with the wrong statistics cannot happen downstream.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tlearn.models.prefix import Prefix
from tlearn.preprocessing import Preprocessing


class NormalizedBackbone(nn.Module):
    """A headless backbone preceded by its own input normalisation.

    With `taps` (module names inside `body`, see `tlearn.models.stages`), the output is the
    average-pooled output of each tapped module followed by the body's own features, joined.
    Forward hooks collect them, so the library's model runs unchanged and parameter names stay
    the library's; the collected outputs are kept per thread, so a served model can answer
    several requests at once.
    """

    def __init__(
        self, body: nn.Module, preprocessing: Preprocessing, taps: Sequence[str] = ()
    ) -> None:
        super().__init__()
        self.body = body
        self.input_size = preprocessing.input_size
        self.taps = tuple(taps)
        self._pooled: dict[int, list[torch.Tensor]] = {}
        self._width: int | None = None
        # While set (training on stored activations, see `tlearn.models.prefix`), forward takes
        # the output of these first modules instead of images.
        self.after_prefix: Prefix | None = None
        for name in self.taps:
            body.get_submodule(name).register_forward_hook(self._keep_pooled)
        mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
        # Not persistent: they come from the model file's metadata, not its tensors.
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images at any size -> the body's input: its own size and statistics."""
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            # in fp32: torch has no antialiased bilinear resize for bf16 on the CPU
            images = F.interpolate(
                images.float(), (self.input_size, self.input_size), mode="bilinear", antialias=True
            ).to(images.dtype)
        mean, std = self.mean.to(images.dtype), self.std.to(images.dtype)
        if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
            # In channels-last memory the per-channel statistics repeat every `c` values, and
            # broadcasting them that way runs element by element: 2.4 ms for 64 bf16 images at
            # 64 px here. Broadcast a whole pixel row of them instead (0.2 ms, the same numbers).
            n, c, h, w = images.shape
            rows = images.permute(0, 2, 3, 1).reshape(n * h, w * c)
            rows = (rows - mean.flatten().repeat(w)) / std.flatten().repeat(w)
            return rows.view(n, h, w, c).permute(0, 3, 1, 2)
        return (images - mean) / std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.after_prefix is not None:
            with self.after_prefix.skipped():
                return self.body(images)
        x = self.prepare(images)
        if not self.taps:
            return self.body(x)
        key = threading.get_ident()
        pooled = self._pooled[key] = []
        try:
            final = self.body(x)
        finally:
            self._pooled.pop(key, None)
        return torch.cat([*pooled, torch.flatten(final, 1)], dim=1)

    def _keep_pooled(self, module: nn.Module, args, output: torch.Tensor) -> None:
        pooled = self._pooled.get(threading.get_ident())
        if pooled is None:  # the body run on its own, outside this module's forward
            return
        if output.dim() == 4:  # [B, C, H, W]
            pooled.append(output.mean(dim=(2, 3)))
        else:  # a transformer's tokens [B, N, C]
            pooled.append(output.mean(dim=1))

    def feature_width(self) -> int:
        """Width of the output, measured once with one image (the taps' widths vary)."""
        if self._width is not None:
            return self._width
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                size = self.input_size
                probe = next(self.parameters(), torch.empty(0))
                x = torch.zeros(1, 3, size, size, device=probe.device, dtype=probe.dtype)
                self._width = int(torch.flatten(self(x), 1).shape[1])
                return self._width
        finally:
            self.train(was_training)
