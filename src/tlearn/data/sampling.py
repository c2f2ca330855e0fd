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


def rank_order(order: torch.Tensor, batch_size: int, rank: int, world: int) -> torch.Tensor:
    """Rank `rank`'s share of an epoch's `order`: the rank-th `batch_size` slice of every global
    batch of `batch_size x world` positions, so that its consecutive batches are its shards.

    The order is first padded by wrapping around to whole global batches (as PyTorch's
    DistributedSampler pads), so every rank trains on `batch_size` images at every step: a rank
    with a short or empty last batch would leave the others waiting in the gradient all-reduce.
    One process (`world` 1) gets `order` unchanged.
    """
    if world <= 1:
        return order
    per_step = batch_size * world
    steps = -(-len(order) // per_step)
    short = steps * per_step - len(order)
    if short:
        repeats = -(-short // max(1, len(order)))
        order = torch.cat([order, order.repeat(repeats)[:short]])
    return order.view(steps, world, batch_size)[:, rank].reshape(-1)


def rank_batches(n: int, batch_size: int, world: int) -> int:
    """Steps of an epoch of `n` positions with `world` ranks of `batch_size` each."""
    return -(-n // (batch_size * max(1, world)))
