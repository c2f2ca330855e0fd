"""Per-step loss and learning rate (`steps.csv`), and the same to TensorBoard with --tensorboard.

`metrics.csv` (one row an epoch) stays the plain source of truth; this adds the finer curve that
reports draw and TensorBoard shows live. The step's loss comes from the running sum the loop
already keeps, so logging adds no device synchronisation of its own. `lr` is the first
parameter group's rate once the step is taken (the scheduler has moved on to the next step).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text

FIELDS = ("step", "epoch", "loss", "lr")


def tensorboard_writer(log_dir: Path) -> Any:
    """A SummaryWriter, or one sentence saying which extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TlearnError(
            "--tensorboard needs the tensorboard package: pip install 'tlearn[tensorboard]' "
            "(or drop --tensorboard; metrics.csv has the same numbers)"
        ) from e
    return SummaryWriter(log_dir=str(log_dir))


class StepLog:
    """Rows of (global step, epoch, loss, lr); written at each epoch end, atomically."""

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume: bool = False) -> None:
        self.path = run_dir / "steps.csv"
        self.rows: list[dict] = []
        if resume and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.writer = tensorboard_writer(run_dir / "tb") if tensorboard else None
        self.last: tuple[float, int] | None = None  # (loss_sum, seen) after the previous step

    def on_step(self, epoch: int, progress: Any, lr: float) -> None:
        """After one optimizer step: the loss of that step from the loop's running sums."""
        loss_sum, seen = progress.loss_sum, progress.seen
        before = self.last if self.last is not None and self.last[1] <= seen else (0.0, 0)
        self.last = (loss_sum, seen)
        if seen <= before[1]:
            return  # an undecodable batch: nothing trained
        loss = (loss_sum - before[0]) / (seen - before[1])
        step = len(self.rows) + 1
        self.rows.append({"step": step, "epoch": epoch + 1, "loss": round(loss, 5), "lr": lr})
        if self.writer is not None:
            self.writer.add_scalar("train/step_loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def on_epoch(self, row: dict) -> None:
        """An epoch's metrics.csv row: to TensorBoard, and the steps so far to steps.csv."""
        self.last = None  # the next epoch's running sums start again
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"epoch/{key}", value, int(row["epoch"]))
            self.writer.flush()
        if self.rows:
            buffer = io.StringIO()
            writer = csv.DictWriter(buffer, fieldnames=list(FIELDS))
            writer.writeheader()
            writer.writerows(self.rows)
            atomic_write_text(self.path, buffer.getvalue())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
