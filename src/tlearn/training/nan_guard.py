"""A loss or weights that stop being finite: back to the epoch's start at a tenth of the rate,
once; a second time, or in a job of several processes, the run stops with the last good
checkpoint kept."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tlearn.errors import TlearnError
from tlearn.training import distributed
from tlearn.training.hooks import Hook
from tlearn.training.loop import NonFiniteLoss
from tlearn.training.phase import PhaseRun, scale_learning_rate
from tlearn.training.state import Position, restore


def check_finite(module: nn.Module, step: int) -> None:
    """Weights that overflowed must never reach a checkpoint: treat them as a NaN loss."""
    if not all(torch.isfinite(p).all() for p in module.parameters() if p.requires_grad):
        raise NonFiniteLoss(float("nan"), max(0, step - 1))


class NanGuard(Hook):
    """The loop's hook that keeps each epoch's starting state for one retry; the lowered rate
    and the retries spent are its resume state (later phases' optimizers start lowered too)."""

    key = "nan_guard"

    def __init__(self) -> None:
        self.lr_scale = 1.0
        self.retries = 0
        self.good: dict | None = None  # the state the open epoch began from

    def on_epoch_start(self, loop: Any, run: PhaseRun) -> None:
        self.good = loop.capture(run)

    def recover(self, loop: Any, run: PhaseRun, error: NonFiniteLoss) -> None:
        """Back to the epoch's start with the rate x0.1, or a TlearnError saying what to do."""
        where = f"epoch {loop.position.epoch + 1}, step {error.step + 1}"
        if distributed.active():  # one rank alone cannot go back: the others would wait for it
            raise TlearnError(
                f"the loss became {error.value} ({where}) in a job of several processes, which "
                f"does not retry: the last good checkpoint is kept in {loop.cfg.out}; start "
                "again with a lower --lr, or check the data"
            )
        if self.retries >= 1:
            raise TlearnError(
                f"the loss became {error.value} again ({where}) after the learning rate was "
                f"lowered: the last good checkpoint is kept in {loop.run_dir}; lower --lr or "
                "check the data"
            )
        good = self.good
        assert good is not None, "on_epoch_start keeps the state an epoch began from"
        self.retries += 1
        restore(good, run.module, run.optimizer, run.scheduler)
        for hook in loop.hooks:
            if hook.rewinds and good.get(hook.key) is not None:
                hook.rewind(good[hook.key])
        loop.position = Position.from_dict(good["position"])
        self.lr_scale *= 0.1
        scale_learning_rate(run.optimizer, run.scheduler, 0.1)
        loop.log(
            f"warning: the loss became {error.value} ({where}): back to the last good state, "
            "learning rate x0.1, retrying the epoch"
        )

    def state_dict(self) -> dict[str, float | int]:
        return {"lr_scale": self.lr_scale, "retries": self.retries}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.lr_scale, self.retries = float(state["lr_scale"]), int(state["retries"])
