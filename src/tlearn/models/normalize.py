"""Normalisation inside the model, so that a model file carries its own preprocessing.

Every backbone receives the same [0, 1] image and applies its own mean/std (and size, when fused
backbones want different ones). Export, serve and predict then only resize and scale to [0, 1]:
the classic bug of normalising with the wrong statistics cannot happen downstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tlearn.preprocessing import Preprocessing


class NormalizedBackbone(nn.Module):
    """A headless backbone preceded by its own input normalisation."""

    def __init__(self, body: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.body = body
        self.input_size = preprocessing.input_size
        mean = torch.tensor(preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(preprocessing.std).view(1, 3, 1, 1)
        # Not persistent: they come from the model file's metadata, not its tensors.
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] != self.input_size or images.shape[-2] != self.input_size:
            images = F.interpolate(
                images, size=(self.input_size, self.input_size), mode="bilinear", antialias=True
            )
        return self.body((images - self.mean.to(images.dtype)) / self.std.to(images.dtype))
