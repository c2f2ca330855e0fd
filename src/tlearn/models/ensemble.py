"""The ensemble classifier: its members' class probabilities averaged, as one module.

Its output is the log of the averaged probabilities: argmax, cross-entropy and softmax
downstream (evaluate, predict, export) then mean exactly what they mean for a single model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tlearn.errors import TlearnError

# Probabilities below this are clamped before the log so a confident wrong member gives a large
# but finite loss, never inf.
MIN_PROBABILITY = 1e-12


class EnsembleClassifier(nn.Module):
    """Image -> log of the weighted mean of the members' class probabilities."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        if len(members) != len(weights):
            raise ValueError(f"{len(weights)} weights for {len(members)} members")
        self.members = nn.ModuleList(members)
        # From the metadata, not the tensors: a weight change must not need new tensors.
        self.register_buffer("weights", torch.tensor([float(w) for w in weights]), persistent=False)

    def member_probabilities(self, x: Tensor) -> Tensor:
        """[B, members, classes], each member's softmax in float32."""
        return torch.stack([m(x).float().softmax(dim=1) for m in self.members], dim=1)

    def forward(self, x: Tensor) -> Tensor:
        probabilities = (self.member_probabilities(x) * self.weights.view(1, -1, 1)).sum(dim=1)
        return probabilities.clamp_min(MIN_PROBABILITY).log()


def parse_weights(weights: str | Sequence[float] | None, count: int) -> list[float]:
    """Validate member weights and scale them to sum to 1; None means equal weights."""
    if weights is None:
        return [1.0 / count] * count
    if isinstance(weights, str):
        try:
            values = [float(v) for v in weights.split(",") if v.strip()]
        except ValueError:
            raise TlearnError(
                f"--weights {weights!r} must be numbers separated by commas, like 0.6,0.4"
            ) from None
    else:
        values = [float(v) for v in weights]
    if len(values) != count:
        raise TlearnError(
            f"{len(values)} weights for {count} models: give one weight per model, like "
            + ",".join(["0.5"] * count)
        )
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise TlearnError(
            f"weights {values} must be zero or positive with a positive sum, like 0.6,0.4"
        )
    total = sum(values)
    return [v / total for v in values]
