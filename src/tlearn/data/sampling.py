"""An epoch's drawing order: shared by every loader that shuffles (decoded, cached features)."""

from __future__ import annotations

import torch


def draw_order(
    n: int, generator: torch.Generator | None, weights: torch.Tensor | None
) -> torch.Tensor:
    """An epoch's order: a permutation, or `n` weighted draws with replacement."""
    if weights is None:
        return torch.randperm(n, generator=generator)
    return torch.multinomial(weights.double(), n, replacement=True, generator=generator)
