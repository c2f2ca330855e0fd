"""Learning-rate schedules as one per-step factor: warm-up, then cosine, one-cycle or constant."""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if schedule == "onecycle" and warmup == 0:
        warmup = max(1, int(0.25 * total))  # one-cycle is defined by its rising first part
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, schedule: str
) -> LambdaLR:
    return LambdaLR(optimizer, lambda s: lr_factor(s, total_steps, warmup_steps, schedule))
