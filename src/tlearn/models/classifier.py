"""Backbones, fusion and head as one module: what is trained, saved and exported."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tlearn.errors import TlearnError

FUSIONS = ("concat",)


class Classifier(nn.Module):
    """Image(s) -> logits. With several backbones each gets its own preprocessing of the image.

    Parameter names are ``backbones.<i>.<library name>`` and ``head.<...>``, so a saved classifier
    maps back onto the libraries' own models.
    """

    def __init__(self, backbones: Sequence[nn.Module], head: nn.Module, fusion: str = "concat"):
        super().__init__()
        if fusion not in FUSIONS:
            raise TlearnError(f"unknown fusion '{fusion}': pass one of {', '.join(FUSIONS)}")
        if not backbones:
            raise TlearnError("a classifier needs at least one backbone: pass --backbone NAME")
        self.backbones = nn.ModuleList(backbones)
        self.head = head
        self.fusion = fusion

    def forward_features(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """Pooled features [B, sum of widths]: one input tensor per backbone, or one for all.

        One tensor for several backbones is accepted for when their preprocessing is the same.
        """
        if isinstance(x, Tensor):
            inputs: Sequence[Tensor] = [x] * len(self.backbones)
        else:
            inputs = list(x)
            if len(inputs) != len(self.backbones):
                raise ValueError(f"{len(inputs)} input tensors for {len(self.backbones)} backbones")
        feats = [torch.flatten(b(t), 1) for b, t in zip(self.backbones, inputs, strict=True)]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        return self.head(self.forward_features(x))
