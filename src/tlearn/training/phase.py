"""One optimizer's stretch of epochs, and how a rate change reaches its schedule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class PhaseRun:
    """One optimizer's stretch of epochs: `first` to `first + epochs` on `module`."""

    index: int
    first: int
    epochs: int
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    set_mode: Callable[[], Any]
    # The training image size of an epoch (progressive resizing); None: always the full size.
    size_of: Callable[[int], int] | None = None
    full_size: int = 0

    @property
    def end(self) -> int:
        return self.first + self.epochs


def scale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, factor: float) -> None:
    """Scale the rates now and for the rest of the schedule (LambdaLR multiplies base_lrs)."""
    for g in optimizer.param_groups:
        g["lr"] *= factor
        if "initial_lr" in g:
            g["initial_lr"] *= factor
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
