"""The speed of a run's first steps, as the budget keeper and the duration line both time it.

The steps before step 5 warm caches and choose kernels, so timing starts there and ends at about
a tenth of the first epoch (at least 10 steps later): early enough to act on, long enough to
average out a step's noise.
"""

from __future__ import annotations

TIMED_FROM = 5


class FirstSteps:
    """Seconds a step over the window, handed out once its last step is reached."""

    def __init__(self) -> None:
        self.mark: tuple[int, float] | None = None

    def step_s(self, step: int, per_epoch: int, now: float) -> float | None:
        """Record that `step` steps are done at time `now`; the seconds a step once the window
        ends there (None before it, and for an epoch too short to hold one)."""
        if step == TIMED_FROM:
            self.mark = (step, now)
        end = max(TIMED_FROM + 10, per_epoch // 10)
        if step != end or self.mark is None or end >= per_epoch:
            return None
        first, since = self.mark
        return (now - since) / (step - first)
