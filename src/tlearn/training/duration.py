"""How long a run without `--budget` will take: said early in the first epoch, then after
each epoch, so nobody waits for a fine-tune of unknown length (a 694 s one said nothing).

The estimate times the first epoch's steps after the warm-up ones (the first batches fill
caches and pick kernels) and multiplies by the steps left in every phase; later phases that
train more stages are slower, so it is a floor for gradual unfreezing, and the line says
"about". With `--budget` the budget keeper speaks instead.
"""

from __future__ import annotations

from typing import Any

from tlearn.training.hooks import Hook, Step
from tlearn.training.phase import PhaseRun

FROM_STEP = 5  # timing starts here: the steps before it warm caches and choose kernels


def short(seconds: float) -> str:
    """`95s`, `12 min`, `2.5 h`: a duration as a person reads it."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class RunDuration(Hook):
    """The loop's hook that says how long the rest of the run will take."""

    def __init__(self) -> None:
        self.mark: tuple[int, float] | None = None
        self.said = False

    def after_step(self, loop: Any, run: PhaseRun, step: Step) -> None:
        if self.said or loop.budget.budget_s is not None:
            return
        done = step.progress.step
        per_epoch = loop.epoch_steps(step.batches.loader)
        at = max(FROM_STEP + 10, per_epoch // 10)
        if done == FROM_STEP:
            self.mark = (done, loop.clock.now())
        if done != at or self.mark is None or at >= per_epoch:
            return
        self.said = True
        step_s = (loop.clock.now() - self.mark[1]) / (done - self.mark[0])
        left = loop.phase_steps(step.batches.loader, 0, loop.cfg.epochs) - self.steps_done(
            loop, per_epoch, done
        )
        loop.log(
            f"expected: about {short(left * step_s)} more of training ({left} steps at "
            f"{step_s * 1000:.0f} ms; the evaluations besides)"
        )

    def after_epoch(self, loop: Any, run: PhaseRun) -> None:
        epochs_left = loop.cfg.epochs - loop.position.epoch
        if loop.budget.budget_s is not None or epochs_left <= 0 or loop.position.finished:
            return
        epoch_s = loop.clock.now() - loop.epoch_started
        loop.log(f"  about {short(epoch_s * epochs_left)} left ({epochs_left} epoch(s))")

    @staticmethod
    def steps_done(loop: Any, per_epoch: int, done_in_epoch: int) -> int:
        return loop.position.epoch * per_epoch + done_in_epoch
