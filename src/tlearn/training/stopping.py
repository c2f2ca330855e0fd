"""`--patience N`: stop when the watched metric has not improved for N epochs.

Its counters are part of the resumable state, so a resumed run stops at the same epoch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    patience: int | None
    monitor: str = "val_loss"  # or val_accuracy; train_loss when there is no validation set
    best: float = math.inf  # stored as "lower is better" (accuracy negated)
    bad_epochs: int = 0

    def update(self, row: dict) -> bool:
        """Record an epoch's metrics row; True when the run should stop now."""
        if self.patience is None:
            return False
        value = row.get(self.monitor)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            value = row.get("train_loss")  # no validation: watch the training loss
            sign = 1.0
        else:
            sign = -1.0 if self.monitor == "val_accuracy" else 1.0
        score = sign * float(value)
        if score < self.best:
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = float(state["best"]), int(state["bad_epochs"])
