"""Progress bars: one per phase on a terminal, none in a log file, none with `--quiet`."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

QUIET_ENV = "TLEARN_QUIET"  # set by `--quiet`; child processes (data workers) inherit it


def quiet() -> bool:
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def bar(iterable: Iterable[Any], description: str, batch_size: int | None = None) -> tqdm:
    """A bar in images (and images/s) when the batch size is known, else in batches, with
    tqdm's ETA; off when the output is not a terminal (`disable=None`) or under `--quiet`."""
    scale = {"unit": "img", "unit_scale": batch_size} if batch_size else {"unit": "batch"}
    return tqdm(iterable, desc=description, leave=False, disable=True if quiet() else None, **scale)
