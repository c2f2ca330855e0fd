"""`--ema DECAY`: an exponential moving average of the weights, the model that is kept.

Averaging the last few thousand steps' weights lands nearer the middle of the minimum the
optimizer is circling, which usually scores a little better and never needs tuning per run.
Every floating tensor of the module's state (parameters and batch-norm statistics) is averaged;
integer buffers (batch counters) are copied. The decay warms up as min(decay, (1+n)/(10+n)) so
a short run is not dominated by its untrained starting point (TensorFlow's num_updates rule).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from tlearn.training.hooks import Hook, Step
from tlearn.training.phase import PhaseRun


class WeightAverage:
    def __init__(self, module: nn.Module, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        d = self.current_decay()
        avg, new = [], []
        for k, v in module.state_dict().items():
            if v.is_floating_point():
                avg.append(self.shadow[k])
                new.append(v.detach())
            else:
                self.shadow[k].copy_(v)
        if avg:
            torch._foreach_lerp_(avg, new, 1.0 - d)
        self.updates += 1

    @contextmanager
    def swapped_in(self, module: nn.Module) -> Iterator[None]:
        """The averaged weights in `module` for the block (evaluate, save), then the raw ones."""
        raw = {k: v.detach().clone() for k, v in module.state_dict().items()}
        module.load_state_dict(self.shadow)
        try:
            yield
        finally:
            module.load_state_dict(raw)

    def copy_to(self, module: nn.Module) -> None:
        module.load_state_dict(self.shadow)

    def state_dict(self) -> dict:
        return {
            "updates": self.updates,
            "shadow": {k: v.detach().to("cpu", copy=True) for k, v in self.shadow.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


class AveragedWeights(Hook):
    """The loop's hook for --ema: averaged after every step, swapped in to evaluate and save,
    and the model the run returns."""

    key = "ema"
    rewinds = True  # a NaN retry restarts the epoch from the average it began with

    def __init__(self, decay: float | None) -> None:
        self.decay = decay
        self.average: WeightAverage | None = None
        self.module: nn.Module | None = None  # the module averaged (the head on features)
        self.pending: dict | None = None  # a resumed run's average, until its module exists

    def on_restored(self, loop: Any, module: nn.Module) -> None:
        if self.pending is None:
            return
        if self.average is None:  # a finished run resumed: no epoch rebuilt the average
            self.average, self.module = WeightAverage(module, self.decay or 0.999), module
        self.average.load_state_dict(self.pending)
        self.pending = None

    def on_phase_start(self, loop: Any, run: PhaseRun) -> None:
        if self.decay and self.module is not run.module:
            self.average, self.module = WeightAverage(run.module, self.decay), run.module

    def after_step(self, loop: Any, run: PhaseRun, step: Step) -> None:
        if self.average is not None and step.batch is not None:
            self.average.update(run.module)

    def evaluating(self, loop: Any, run: PhaseRun) -> AbstractContextManager:
        if self.average is None or self.module is not run.module:
            return contextlib.nullcontext()
        return self.average.swapped_in(run.module)

    def on_train_end(self, loop: Any) -> None:
        """The averaged weights become the model the run returns (the files already hold them)."""
        if self.average is not None and self.module is not None:
            self.average.copy_to(self.module)

    def state_dict(self) -> dict | None:
        return None if self.average is None else self.average.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.pending = state

    def rewind(self, state: dict) -> None:
        if self.average is not None:
            self.average.load_state_dict(state)
