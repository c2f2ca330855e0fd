"""plan.json: one record per run of what was chosen and why, written by several parts of a run.

The budget plan writes it first (whole); the solved probe's candidates, the run plan, the probe
floor and the budget keeper's refits each add their entry later. Every such change goes through
`update_plan`, one atomic read-modify-write, so no part can drop another's entry.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlearn.files import atomic_write_text

PLAN_FILE = "plan.json"


def read_plan(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / PLAN_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_plan(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(Path(run_dir) / PLAN_FILE, json.dumps(record, indent=1) + "\n")


def update_plan(run_dir: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Apply `change` to the record on disk (an empty one if there is none) and write it back."""
    record = read_plan(run_dir)
    change(record)
    write_plan(run_dir, record)


def set_plan_entry(run_dir: Path, key: str, value: Any) -> None:
    """One top-level entry (`head_fit`, `run`, `probe_floor`), beside whatever is there."""
    update_plan(run_dir, lambda record: record.__setitem__(key, value))
