"""Time for `--budget`: one clock object the planner and the budget keeper read, so tests can
pass a fake one and run a budget in milliseconds instead of sleeping through it.
"""

from __future__ import annotations

import os
import time


class Clock:
    """Seconds since some fixed point (`time.perf_counter`): what a budget is measured in."""

    def now(self) -> float:
        return time.perf_counter()


class FakeClock(Clock):
    """A clock that moves only when told (`advance`): budget tests without real waiting."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


CLOCK: Clock = Clock()  # what runs read their budget from; tests put a FakeClock here


def run_clock() -> Clock:
    """The clock a run starting now measures its budget with."""
    return CLOCK


_COUNT_PROCESS_START = False


def count_process_start() -> None:
    """The CLI's `--budget` is the command's whole wall time, interpreter start included."""
    global _COUNT_PROCESS_START
    _COUNT_PROCESS_START = True


def time_before_fit() -> float:
    """Seconds the budget already lost before `fit` began (imports, in a CLI process).

    Asked once per `count_process_start()`: a later `tlearn.train` in the same process (a
    notebook, a test session) counts from its own start.
    """
    global _COUNT_PROCESS_START
    counted, _COUNT_PROCESS_START = _COUNT_PROCESS_START, False
    return process_age() if counted else 0.0


def process_age() -> float:
    """Seconds since this process started (Linux /proc; 0 where unknown)."""
    try:
        with open("/proc/self/stat") as f:
            after_name = f.read().rsplit(")", 1)[1].split()
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - int(after_name[19]) / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0
