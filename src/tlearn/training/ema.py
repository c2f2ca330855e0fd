"""`--ema DECAY`: an exponential moving average of the weights, the model that is kept.

Averaging the last few thousand steps' weights lands nearer the middle of the minimum the
optimizer is circling, which usually scores a little better and never needs tuning per run.
Every floating tensor of the module's state (parameters and batch-norm statistics) is averaged;
integer buffers (batch counters) are copied. The decay warms up as min(decay, (1+n)/(10+n)) so
a short run is not dominated by its untrained starting point (TensorFlow's num_updates rule).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


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
