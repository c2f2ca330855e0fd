"""`--budget`: plan a run to fit its time, then keep it inside while it trains.

- `plan`: the pure arithmetic (no torch, no clock): measured numbers in, a `Plan` out;
- `refit`: the same arithmetic for the refits of a running plan (`refit_schedule`, `fit_remaining`);
- `probe`: the few seconds of timed steps of the real network that feed the plan;
- `clock`: the clock a budget is read from (a `FakeClock` in tests);
- `keeper`: the training hook that refits the schedule to the real speed and stops in time.
"""

from tlearn.training.budget.clock import (
    Clock,
    FakeClock,
    count_process_start,
    run_clock,
    time_before_fit,
)
from tlearn.training.budget.plan import (
    FIXED_OVERHEAD_S,
    PLANNED_OPTIONS,
    SAFETY,
    Plan,
    PlanInputs,
    Throughput,
    append_event,
    apply_plan,
    budget_batch_size,
    candidate_sizes,
    early_stages,
    expected_error,
    make_plan,
    max_epochs,
    save_plan,
    split_epochs,
)
from tlearn.training.budget.probe import measure_throughput, plan_run
from tlearn.training.budget.refit import fit_remaining, refit_schedule

__all__ = [
    "FIXED_OVERHEAD_S",
    "PLANNED_OPTIONS",
    "SAFETY",
    "Clock",
    "FakeClock",
    "Plan",
    "PlanInputs",
    "Throughput",
    "append_event",
    "apply_plan",
    "budget_batch_size",
    "candidate_sizes",
    "early_stages",
    "expected_error",
    "count_process_start",
    "fit_remaining",
    "make_plan",
    "max_epochs",
    "measure_throughput",
    "plan_run",
    "refit_schedule",
    "run_clock",
    "save_plan",
    "split_epochs",
    "time_before_fit",
]
