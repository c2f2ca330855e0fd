"""`--budget` while the run trains: refit the schedule to the real speed, and record it.

The plan (`tlearn.training.budget.plan`) was made from a probe of a few seconds; the first steps
and each finished epoch measure the real speed, and what is left of the run is refitted to it.
"""

from __future__ import annotations

from typing import Any

from tlearn.config import TrainConfig
from tlearn.training import distributed, progressive
from tlearn.training import loop as epoch_loop
from tlearn.training.budget import (
    FIXED_OVERHEAD_S,
    SAFETY,
    Plan,
    append_event,
    max_epochs,
)
from tlearn.training.budget.refit import fit_remaining, refit_schedule
from tlearn.training.first_steps import FirstSteps
from tlearn.training.hooks import EpochEnd, Hook, Step
from tlearn.training.order import EpochBatches, batches_per_epoch
from tlearn.training.phase import PhaseRun

# `--budget` stops before an epoch that would end past this share of the budget: 5% over is
# better spent finishing a planned schedule (its last, low-rate steps) than cutting it short.
BUDGET_OVERRUN = 1.05
LENGTH = ("epochs", "steps_per_epoch", "last_epoch_steps")  # what a refit changes


def resumed_length(cfg: TrainConfig, state: dict | None) -> int:
    """A resumed run trains to the length its refits left (config.yaml has the planned one).

    Returns the planned epochs: the strategy's phases are planned from them, and only the last
    phase takes the refitted length (`plan_backbone_phases`'s `ending_at`).
    """
    planned = int(cfg.epochs or 0)
    lengths = ((state or {}).get("budget") or {}).get("lengths")
    for key, value in (lengths or {}).items():
        setattr(cfg, key, value)
    return planned


class BudgetKeeper(Hook):
    """The loop's hook for `--budget`: refits while the run trains, and the stop before an
    epoch that would overrun. `plan` is the planner's while its epochs may still change.

    A refit is an event in plan.json and a change of the keeper's `lengths`, its resume state;
    config.yaml keeps the length planned before training.
    """

    key = "budget"

    def __init__(self, budget_s: float | None, plan: Plan | None = None) -> None:
        self.budget_s = budget_s
        self.plan = plan
        self.refitted = False  # to the first epoch's steps (`refit_to_speed`), once
        self.first_steps = FirstSteps()  # timed for the refit to the real speed
        self.lengths: dict[str, int | None] | None = None  # after the latest refit

    @property
    def report_s(self) -> float:
        """What the planned report.html after training needs of the budget."""
        return self.plan.report_s if self.plan is not None else 0.0

    def state_dict(self) -> dict | None:
        if self.budget_s is None:
            return None
        return {"refitted": self.refitted, "lengths": self.lengths}

    def load_state_dict(self, state: dict) -> None:
        self.refitted, self.lengths = bool(state["refitted"]), state["lengths"]

    def after_step(self, loop: Any, run: PhaseRun, step: Step) -> None:
        # several phases: the first (the head alone) runs far faster than the rest will
        one_phase = run.first == 0 and run.epochs == loop.cfg.epochs
        if self.plan is not None and not self.refitted and loop.position.epoch == 0 and one_phase:
            self.refit_to_speed(loop, run, step.batches, step.progress.step)

    def on_epoch_end(self, loop: Any, run: PhaseRun, end: EpochEnd) -> str | None:
        if self.budget_s is None or loop.position.finished:
            return None
        if self.fit_to_budget(loop, run, end.stats, end.loader):
            return None
        return distributed.from_main(self.overrun(loop, run, end.row))  # rank 0's clock

    def overrun(self, loop: Any, run: PhaseRun, row: dict) -> str | None:
        """A budget the next epoch would overrun, by the last epoch's length."""
        used = loop.setup_s + loop.elapsed()
        last = loop.clock.now() - loop.epoch_started
        if run.size_of and row["epoch"] < loop.cfg.epochs:
            # progressive resizing: the next epoch has larger images than this one
            now, then = run.size_of(row["epoch"] - 1), run.size_of(row["epoch"])
            full = run.full_size
            last *= progressive.relative_cost(then, full) / progressive.relative_cost(now, full)
        next_end = used + last + self.report_s
        if next_end > BUDGET_OVERRUN * self.budget_s:
            return (
                f"another epoch would end near {next_end:.0f}s, past the "
                f"{self.budget_s:.0f}s budget (--budget {loop.cfg.budget})"
            )
        return None

    def refit_to_speed(self, loop: Any, run: PhaseRun, batches: EpochBatches, step: int) -> None:
        """--budget: time steps 5 to ~10% of the first epoch, then refit the schedule to them.

        The epochs and their length in steps change while the schedule is still warming up;
        plan.json records the change and state.pt the new length, so a resume trains the same.
        """
        plan, cfg = self.plan, loop.cfg
        per_epoch = loop.epoch_steps(batches.loader)
        step_s = self.first_steps.step_s(step, per_epoch, loop.clock.now())
        if step_s is None or plan is None:
            return
        self.refitted = True
        used = loop.setup_s + loop.elapsed()
        cap = max_epochs(len(loop.splits.train))
        full = batches_per_epoch(batches.loader)
        # several processes: rank 0's clock decides, so every rank trains the same steps
        epochs, limit = distributed.from_main(refit_schedule(plan, step_s, full, step, used, cap))
        if (epochs, limit) == (cfg.epochs, cfg.steps_per_epoch):
            return
        speed = cfg.batch_size / step_s
        length = f" of {limit} batches" if limit else ""
        loop.log(
            f"refitted to the budget: training runs at {speed:,.0f} img/s, not the probe's "
            f"estimate, so {epochs} epoch(s){length} instead of {cfg.epochs}"
            + (f" of {cfg.steps_per_epoch}" if cfg.steps_per_epoch else "")
        )
        cfg.epochs = run.epochs = epochs
        cfg.steps_per_epoch = limit
        batches.limit = loop.epoch_limit(0)
        loop.reschedule(run, batches.loader)
        plan.epochs, plan.steps_per_epoch = epochs, limit
        why = f"refitted after {step} steps of the first epoch: {speed:,.0f} img/s training"
        self.record_length(loop, why)

    def record_length(self, loop: Any, why: str) -> None:
        """The run's changed length: in the model files' config, state.pt and plan.json."""
        self.lengths = {key: getattr(loop.cfg, key) for key in LENGTH}
        loop.spec.config.update(self.lengths)
        pos = loop.position
        event = {"epoch": pos.epoch + 1, "step": pos.step, **self.lengths, "why": why}
        loop.try_save("plan.json", lambda: append_event(loop.run_dir, event))

    def fit_to_budget(
        self, loop: Any, run: PhaseRun, stats: epoch_loop.EpochStats, loader: Any
    ) -> bool:
        """--budget: refit what is left of the run to the speed of the epoch just finished.

        Stopping at an epoch's end would cut the schedule before it anneals, the costliest way
        to keep a budget (a 10m run stopped after 2 of 3 epochs scored 93.4%, against 94.6% for
        the same two epochs annealed): a slower machine ends the last epoch early instead, and
        the schedule shrinks to end with it. A faster one (a planned run, not the user's
        epochs) gets more steps: a 30m run whose first steps were slow ended at 87% of its
        budget. True when what is left now fits.
        """
        cfg = loop.cfg
        if run.size_of or run.first + run.epochs != cfg.epochs:
            return False  # progressive sizes, or a phase before the last: the stop rule alone
        done = loop.position.epoch
        step_s = stats.seconds / max(1, loop.epoch_steps(loader, done - 1))
        other_s = max(0.0, loop.clock.now() - loop.epoch_started - stats.seconds) + 1.0
        used = loop.setup_s + loop.elapsed()
        left = self.budget_s * SAFETY - FIXED_OVERHEAD_S - self.report_s - used
        planned_left = cfg.epochs - done
        last_planned = loop.epoch_steps(loader, cfg.epochs - 1)
        full = loop.epoch_steps(loader)
        most = max_epochs(len(loop.splits.train)) - done if self.plan else planned_left
        fit = fit_remaining(left, step_s, other_s, planned_left, full, last_planned, most)
        fit = distributed.from_main(fit)  # several processes: rank 0's clock decides for all
        if fit is None or fit[0] == 0:
            return fit is None  # it still fits; or not even a share of an epoch does: stop
        epochs_left, last = fit
        longer = (epochs_left - 1) * full + last > (planned_left - 1) * full + last_planned
        if longer and self.plan is None:
            return True  # the user's epochs are a plan of their own: only ever shortened
        cfg.epochs = done + epochs_left
        run.epochs = cfg.epochs - run.first  # the last phase takes the change
        cfg.last_epoch_steps = last if last < full else None
        loop.reschedule(run, loader)
        note = (
            f"the budget is {'leaving time' if longer else 'running short'} ({left:.0f}s left "
            f"at {cfg.batch_size / step_s:,.0f} img/s): {epochs_left} more epoch(s), the last "
            f"of {last} batches, and the schedule ends with them"
        )
        loop.log(note)
        if self.plan is not None:
            self.plan.epochs = cfg.epochs
        self.record_length(loop, f"after epoch {done}: {note}")
        return True
