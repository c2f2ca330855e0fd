"""Where the model looked: Grad-CAM heat maps on a backbone's last convolutional stage.

Grad-CAM (Selvaraju et al. 2017) in a few lines of autograd: the class score's gradient,
averaged over the map, weighs the channels of the last spatial feature map; the map's positive
part, resized to the input and scaled to [0, 1], is the heat map. It gives the maps the
`grad-cam` package gave (the same recipe), without that package's import, which loads
scikit-learn and OpenCV into every run that writes a report (README: the report).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tlearn.errors import TlearnError
from tlearn.models.classifier import Classifier

_POOLING = ("Pool", "Flatten", "Identity", "Dropout")
_BATCH = 16  # images a backward pass, so a large gallery keeps its memory small


def target_layer(classifier: nn.Module, input_size: int) -> nn.Module:
    """The last module, in the order they finish, that outputs a [B, C, H, W] map (no pooling).

    A map of more than 1x1 is preferred: at small inputs a network's last stage can shrink to one
    pixel, which says nothing about where; then the latest larger map is used.
    """
    inner = next((m for m in classifier.modules() if isinstance(m, Classifier)), None)
    if inner is None:
        raise TlearnError("no tlearn classifier inside this model to draw a heat map for")
    backbone = inner.backbones[0]  # an ensemble's first member's, a fusion's first backbone
    body = getattr(backbone, "body", backbone)
    finished: list[tuple[nn.Module, tuple[int, ...]]] = []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.dim() == 4:
            if not any(p in type(module).__name__ for p in _POOLING):
                finished.append((module, tuple(output.shape[2:])))

    handles = [m.register_forward_hook(record) for m in body.modules() if m is not body]
    try:
        with torch.no_grad():
            classifier(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    if not finished:
        raise TlearnError(
            "this backbone has no convolutional stage to draw a heat map on (a transformer?)"
        )
    spatial = [m for m, (h, w) in finished if h * w > 1]
    return spatial[-1] if spatial else finished[-1][0]


def grad_cam(
    classifier: nn.Module, images: Tensor, classes: list[int], input_size: int | None = None
) -> np.ndarray:
    """[N, H, W] maps in [0, 1] for `classes[i]` of `images[i]` ([N, 3, H, W] in [0, 1])."""
    classifier = classifier.float().eval()
    size = input_size or int(images.shape[-1])
    layer = target_layer(classifier, size)
    maps = [
        _class_maps(classifier, layer, images[i : i + _BATCH].float().contiguous(),
                    classes[i : i + _BATCH])
        for i in range(0, len(images), _BATCH)
    ]  # fmt: skip
    return np.concatenate(maps).astype(np.float32)


def _class_maps(
    classifier: nn.Module, layer: nn.Module, batch: Tensor, classes: list[int]
) -> np.ndarray:
    """One batch's maps: gradients taken at `layer`'s output alone, not kept on the weights."""
    captured: list[Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _a, out: captured.append(out))
    try:
        with torch.enable_grad():
            scores = classifier(batch)
            chosen = scores[torch.arange(len(batch)), torch.as_tensor(classes)].sum()
            (grads,) = torch.autograd.grad(chosen, captured[-1])
    finally:
        handle.remove()
    activations = captured[-1].detach()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * activations).sum(1, keepdim=True))
    cams = F.interpolate(_scaled(cams), size=batch.shape[-2:], mode="bilinear",
                         align_corners=False)  # fmt: skip
    return _scaled(cams)[:, 0].numpy()


def _scaled(maps: Tensor) -> Tensor:
    """Each map shifted and scaled to [0, 1] (an all-zero map stays zero)."""
    low = maps.amin(dim=(2, 3), keepdim=True)
    maps = maps - low
    return maps / (maps.amax(dim=(2, 3), keepdim=True) + 1e-7)


def overlay(image: Tensor | np.ndarray, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """An [H, W, 3] uint8 picture: the image under the jet-coloured map."""
    import matplotlib

    picture = image.permute(1, 2, 0).numpy() if isinstance(image, Tensor) else image
    picture = np.clip(picture.astype(np.float32), 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3]
    return (255 * (weight * picture + (1 - weight) * colours)).round().astype(np.uint8)
