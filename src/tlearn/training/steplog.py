"""Per-step loss and learning rate (`steps.csv`), and the same to TensorBoard with --tensorboard.

`metrics.csv` (one row an epoch) stays the plain source of truth; this adds the finer curve that
reports draw and TensorBoard shows live. The step's loss is the one the loop reads back anyway
(`EpochProgress.flush`), so logging adds no device synchronisation of its own. `lr` is the first
parameter group's rate once the step is taken (the scheduler has moved on to the next step).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text
from tlearn.training.hooks import EpochEnd, Hook, Step
from tlearn.training.phase import PhaseRun

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


class StepLog(Hook):
    """Rows of (global step, epoch, loss, lr); written at each epoch end, atomically.

    The loop's hook for steps.csv and --tensorboard; steps.csv itself is what a resume reads.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, resume: bool = False) -> None:
        self.path = run_dir / "steps.csv"
        self.rows: list[dict] = []
        if resume and self.path.is_file():
            with open(self.path, newline="") as f:
                self.rows = list(csv.DictReader(f))
        self.writer = tensorboard_writer(run_dir / "tb") if tensorboard else None

    def after_step(self, loop: Any, run: PhaseRun, step: Step) -> None:
        """The steps whose loss the loop has read back (every step on a CPU)."""
        for loss, lr in step.progress.logged:
            self.add(loop.position.epoch, loss, lr)

    def on_epoch_end(self, loop: Any, run: PhaseRun, end: EpochEnd) -> None:
        if end.progress is not None:  # the epoch's last losses, read back after its last step
            for loss, lr in end.progress.take_logged():
                self.add(loop.position.epoch - 1, loss, lr)
        self.on_epoch(end.row)

    def on_train_end(self, loop: Any) -> None:
        self.close()

    def add(self, epoch: int, loss: float, lr: float) -> None:
        step = len(self.rows) + 1
        self.rows.append({"step": step, "epoch": epoch + 1, "loss": round(loss, 5), "lr": lr})
        if self.writer is not None:
            self.writer.add_scalar("train/step_loss", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def on_epoch(self, row: dict) -> None:
        """An epoch's metrics.csv row: to TensorBoard, and the steps so far to steps.csv."""
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
