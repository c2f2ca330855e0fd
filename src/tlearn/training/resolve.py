"""Before a run trains: its folder, its data splits and its strategy, decided in one place.

`fit` and `tlearn lr-find` both start here, so a sweep always sees the images the run trains on.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from tlearn.config import TrainConfig
from tlearn.data import Splits, load_train_splits
from tlearn.errors import TlearnError

Log = Callable[[str], None]


def default_run_dir(data: str) -> Path:
    stem = Path(data).name or "data"
    return Path("runs") / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare_run_dir(out: str | None, data: str) -> Path:
    run_dir = Path(out) if out else default_run_dir(data)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TlearnError(
            f"cannot write to the run folder {run_dir} ({e.strerror}): choose another --out"
        ) from e
    return run_dir


def default_eval_limit(cfg: TrainConfig) -> int | None:
    """A quick run (`--train-limit`) also validates on a proportionate subset."""
    if cfg.eval_limit is not None or cfg.train_limit is None or cfg.val_split <= 0:
        return cfg.eval_limit
    return max(2, round(cfg.train_limit * cfg.val_split / (1 - cfg.val_split)))


def load_run_splits(cfg: TrainConfig) -> Splits:
    """The train/val splits a run (or its LR sweep) uses: one place decides them."""
    return load_train_splits(
        cfg.data,
        data_root=cfg.data_root,
        val_split=cfg.val_split,
        seed=cfg.seed,
        train_limit=cfg.train_limit,
        eval_limit=default_eval_limit(cfg),
        exclude=cfg.exclude,
    )


def resolve_strategy(cfg: TrainConfig, n_train: int, log: Log, device: str = "cpu") -> str:
    """`auto` without a budget: the frozen backbone's solved probe, which on a CPU matches a
    plain logistic-regression script in its time; fine-tuning costs minutes to hours there, so
    it waits for a `--budget`, where it is chosen only if it pays. On a GPU, as before, larger
    data fine-tunes with gradual unfreezing."""
    if cfg.strategy != "auto":
        return cfg.strategy
    if device == "cpu" or n_train < 2000:
        log(
            f"strategy auto -> linear-probe ({n_train} training images, {device}): give "
            "--budget (e.g. 5m) to let fine-tuning compete on validation"
        )
        return "linear-probe"
    log(f"strategy auto -> gradual ({n_train} training images, {device})")
    return "gradual"
