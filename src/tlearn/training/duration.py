"""How long a run without `--budget` will take: said early in the first epoch, then after
each epoch, so nobody waits for a fine-tune of unknown length (a 694 s one said nothing).

The estimate times the first epoch's steps after the warm-up ones as the budget keeper does
(`training/first_steps.py`) and multiplies by the steps left in every phase; later phases that
train more stages are slower, so it is a floor for gradual unfreezing, and the line says
"about". With `--budget` the budget keeper speaks instead.
"""

from __future__ import annotations

from typing import Any

from tlearn.training.first_steps import FirstSteps
from tlearn.training.hooks import Hook, Step
from tlearn.training.phase import PhaseRun


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
        self.first_steps = FirstSteps()
        self.said = False

    def after_step(self, loop: Any, run: PhaseRun, step: Step) -> None:
        if self.said or loop.budget.budget_s is not None:
            return
        done = step.progress.step
        per_epoch = loop.epoch_steps(step.batches.loader)
        step_s = self.first_steps.step_s(done, per_epoch, loop.clock.now())
        if step_s is None:
            return
        self.said = True
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
