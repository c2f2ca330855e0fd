"""How several backbones' pooled features become the one vector the head sees.

``concat`` keeps every feature (no parameters: the head learns the weighting); ``sum`` projects
each backbone to a common width and adds, so the head stays small however many backbones there
are; ``gated`` does the same but weights each projection per image by a learned softmax gate, so
the model can lean on whichever backbone is surer for that input.

Every fusion takes the backbones' features concatenated in backbone order ([B, sum of widths]):
that is what the feature cache stores, so cached training and whole-image training see the same
module.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tlearn.errors import TlearnError

FUSIONS = ("concat", "sum", "gated")


class ConcatFusion(nn.Module):
    """The identity on concatenated features: the article's plain joining."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.widths = [int(w) for w in widths]
        self.out_features = sum(self.widths)

    def forward(self, features: Tensor) -> Tensor:
        return features


class SumFusion(nn.Module):
    """A learned linear projection of each backbone to ``width``, then their sum."""

    def __init__(self, widths: Sequence[int], width: int) -> None:
        super().__init__()
        self.widths = [int(w) for w in widths]
        self.out_features = int(width)
        self.projections = nn.ModuleList(nn.Linear(w, self.out_features) for w in self.widths)

    def projected(self, features: Tensor) -> Tensor:
        """[B, n_backbones, width]."""
        parts = torch.split(features, self.widths, dim=1)
        return torch.stack([p(x) for p, x in zip(self.projections, parts, strict=True)], dim=1)

    def forward(self, features: Tensor) -> Tensor:
        return self.projected(features).sum(dim=1)


class GatedFusion(SumFusion):
    """Projections weighted by a softmax gate computed from all the features of the image."""

    def __init__(self, widths: Sequence[int], width: int) -> None:
        super().__init__(widths, width)
        self.gate = nn.Linear(sum(self.widths), len(self.widths))
        # Start as an even average: a random gate would pick a backbone before anything is learnt.
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def gate_weights(self, features: Tensor) -> Tensor:
        """[B, n_backbones], rows summing to 1."""
        return self.gate(features).float().softmax(dim=1).to(features.dtype)

    def forward(self, features: Tensor) -> Tensor:
        weights = self.gate_weights(features).unsqueeze(-1)
        return (self.projected(features) * weights).sum(dim=1)


def common_width(widths: Sequence[int]) -> int:
    """The projection width of ``sum``/``gated``: the narrowest backbone's, so no one is blown up.

    Derived from the widths alone, so a model file needs no extra field to be rebuilt.
    """
    return min(int(w) for w in widths)


def build_fusion(kind: str, widths: Sequence[int]) -> nn.Module:
    """A fusion module with ``out_features`` (the head's input width)."""
    if not widths:
        raise TlearnError("a fusion needs at least one backbone: pass --backbone NAME")
    if kind == "concat":
        return ConcatFusion(widths)
    if kind == "sum":
        return SumFusion(widths, common_width(widths))
    if kind == "gated":
        return GatedFusion(widths, common_width(widths))
    raise TlearnError(f"unknown fusion '{kind}': pass one of {', '.join(FUSIONS)}")
