"""`--exclude FILE`: leave the files a list names out of a run, without touching the data.

FILE is `issues.csv` from `tlearn doctor` (its `file` column, rows whose `action` is `exclude`;
a user deletes the rows they disagree with) or a plain list of paths, one a line. Paths match
after resolving (relative ones against the current folder, else against FILE's folder), so
`data/x.jpg` and `/home/me/data/x.jpg` are the same file; in-memory images match by the name
the doctor gives them (`fashion-mnist/train #3`).
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np

from tlearn.data.sources import ImageSource, SubsetSource
from tlearn.errors import TlearnError


def read_exclude(path: str | Path) -> set[str]:
    """The normalised names of the files FILE lists (see the module's docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise TlearnError(
            f"cannot read the --exclude file {path} ({exc}); give issues.csv or a list of paths."
        ) from exc
    lines = text.splitlines()
    header = next(csv.reader(lines[:1]), [])
    if "file" in header:
        rows = csv.DictReader(lines)
        names = [
            r["file"] for r in rows if r.get("file") and r.get("action", "exclude") != "review"
        ]
    else:
        names = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return {_normal(n, path.parent) for n in names}


def _normal(name: str, base: Path) -> str:
    p = Path(name).expanduser()
    if not p.is_absolute() and not p.exists() and (base / p).exists():
        p = base / p
    return os.path.realpath(p) if p.exists() else name


def without(source: ImageSource, excluded: set[str]) -> tuple[ImageSource, int]:
    """`source` less the listed items, and how many were left out."""
    if not excluded:
        return source, 0
    keep = [i for i in range(len(source)) if _normal(source.describe(i), Path()) not in excluded]
    dropped = len(source) - len(keep)
    if not dropped:
        return source, 0
    if not keep:
        raise TlearnError(f"--exclude leaves no image of {source.name}; check the list.")
    return SubsetSource(source, np.asarray(keep, dtype=np.int64)), dropped


def apply_exclude(
    train: ImageSource, val: ImageSource | None, exclude: str | Path | None
) -> tuple[ImageSource, ImageSource | None]:
    """Train and validation sources less the files `exclude` lists; warns when none matched."""
    if not exclude:
        return train, val
    excluded = read_exclude(exclude)
    train, n_train = without(train, excluded)
    n_val = 0
    if val is not None:
        val, n_val = without(val, excluded)
    if excluded and not n_train + n_val:
        warnings.warn(
            f"--exclude {exclude}: none of its {len(excluded)} files is in the data", stacklevel=3
        )
    return train, val
