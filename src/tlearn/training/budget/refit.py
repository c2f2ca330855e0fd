"""The refits of a running `--budget` plan: pure arithmetic, as the plan itself is.

The plan is made from a probe of a few seconds; `refit_schedule` fits it to the first epoch's
real speed, and `fit_remaining` fits what is left after each epoch (`keeper.BudgetKeeper`
calls both).
"""

from __future__ import annotations

import math

from tlearn.training.budget.plan import FIXED_OVERHEAD_S, SAFETY, Plan


def refit_schedule(
    plan: Plan, step_s: float, full_steps: int, steps_done: int, used_s: float, cap: int
) -> tuple[int, int | None]:
    """(epochs, steps per epoch or None for whole ones) that end at the budget at the first
    epoch's real speed (`step_s` a step, `steps_done` of it done after `used_s` seconds).

    The probe times a few steps seconds before training; the machine may run faster or slower
    than it did then (other load, a CPU's clock, the data path): its error, 25% either way on
    this project's reference machine, is a whole epoch of a 10-minute budget. Fractions of an
    epoch absorb it, where whole epochs would overrun or drop one.
    """
    left = plan.budget_s * SAFETY - FIXED_OVERHEAD_S - plan.report_s - used_s
    for epochs in range(1, cap + 1):
        total = steps_done + (left - epochs * plan.epoch_other_s) / step_s
        if total <= epochs * full_steps:
            steps = max(steps_done + 1, math.floor(total / epochs))
            return epochs, (None if steps >= full_steps else steps)
    return cap, None


def fit_remaining(
    left_s: float,
    step_s: float,
    other_s: float,
    epochs_left: int,
    steps_per_epoch: int,
    last_steps: int,
    most_epochs: int,
) -> tuple[int, int] | None:
    """After an epoch: (epochs still to run, steps of the last) that use `left_s` at the speed
    just measured, or None to keep the planned rest.

    A whole epoch's speed is a better measure than the first epoch's few dozen steps the refit
    used (off by 12-14% both ways on this project's reference machine), so the rest is refitted
    both ways: shortened when it would overrun, lengthened (up to `most_epochs`) when at least
    5% more steps fit. `other_s` is an epoch's time besides its steps (validation, saving).
    (0, 0): not even a twentieth of an epoch fits.
    """
    least = max(1, steps_per_epoch // 20)
    planned = (epochs_left - 1) * steps_per_epoch + last_steps
    best: tuple[int, int] = (0, 0)
    for epochs in range(1, max(epochs_left, most_epochs) + 1):
        room = math.floor((left_s - epochs * other_s) / step_s - (epochs - 1) * steps_per_epoch)
        if room < least:
            break
        best = (epochs, min(steps_per_epoch, room))
        if room <= steps_per_epoch:
            break
    # within a twentieth of an epoch either way the plan stands: each change moves the rate
    fits = (planned - least) * step_s + epochs_left * other_s <= left_s
    total = (best[0] - 1) * steps_per_epoch + best[1]
    if fits and total < 1.05 * planned + least:
        return None
    return best
