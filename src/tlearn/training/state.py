"""`state.pt`: everything a run needs to continue exactly where it stopped, and nothing executable.

A model file (`last.safetensors`) holds what a user keeps; `state.pt` holds what only the trainer
needs to go on: the trained tensors at the checkpoint, optimizer and scheduler states, every RNG
(torch, CUDA, numpy, Python), the position (phase, finished epochs, batches done in the current
epoch and its running loss), the metrics rows, the best score and the files skipped so far.
It is one file written atomically (temporary name, fsync, rename), written *after* last/best at
an epoch end, so whatever a kill interrupts, the newest `state.pt` describes files that exist.
It is read with `torch.load(weights_only=True)`: a file that needs any other object to unpickle
is refused, never run.

The shuffling order is not stored: it is a function of (seed, epoch) (`training/order.py`), so the
position is enough to rebuild it.
"""

from __future__ import annotations

import copy
import pickle
import random
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tlearn.config import TrainConfig, read_config_file
from tlearn.errors import TlearnError
from tlearn.files import atomic_write

STATE_NAME = "state.pt"
STATE_FORMAT = "tlearn.state"
STATE_VERSION = 2  # 2: each hook's state under its key (1 kept the NaN guard's at the top)
# Options `--resume` may change: where and with how many loader processes, not what is computed.
RESUME_MAY_CHANGE = frozenset({"workers", "device", "nproc"})


@dataclass
class Position:
    """Where a run is: the phase whose optimizer is saved, finished epochs, and the open epoch."""

    phase: int = 0
    epoch: int = 0  # epochs finished
    step: int = 0  # batches done in epoch `epoch` (0: at its start)
    loss_sum: float = 0.0  # running loss sum and image count of that unfinished epoch
    seen: int = 0
    unused: int = 0  # lone images left out of that epoch's steps (batch-norm needs two)
    finished: bool = False
    correct: int = 0  # top-1 hits of that unfinished epoch's steps

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Position:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# -- random number generators ----------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """Every generator a step can draw from, as tensors and plain values (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": version, "internal": list(internal), "gauss": gauss_next},
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- capture and restore ---------------------------------------------------------------------------


def capture(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    position: Position,
    scaler: torch.amp.GradScaler | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A self-contained copy of the training state (safe to keep while training goes on)."""
    return {
        "format": STATE_FORMAT,
        "version": STATE_VERSION,
        "position": asdict(position),
        "model": {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "scheduler": copy.deepcopy(scheduler.state_dict()),
        "scaler": None if scaler is None else copy.deepcopy(scaler.state_dict()),  # fp16 on GPUs
        "rng": rng_state(),
        **copy.deepcopy(extra),
    }


def restore(
    state: dict[str, Any],
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Put tensors, optimizer/scheduler/loss scaler (when given) and RNGs back as captured."""
    module.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
    if scheduler is not None:
        scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(copy.deepcopy(state["scaler"]))
    set_rng_state(state["rng"])


# -- the file --------------------------------------------------------------------------------------


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


_REQUIRED = ("position", "model", "optimizer", "scheduler", "rng")


def load_state(path: Path) -> dict[str, Any]:
    """Read and check a state file; a pickle needing code, or a damaged file, is a TlearnError."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise TlearnError(
            f"{path} holds objects other than tensors and plain values, which tlearn never "
            "unpickles: it was not written by tlearn, delete it and train again"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise TlearnError(
            f"{path} is damaged or truncated ({e.__class__.__name__}): delete it to restart the "
            "run from its beginning"
        ) from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TlearnError(f"{path} is not a tlearn training state: delete it or use another --out")
    if int(state.get("version", 0)) > STATE_VERSION:
        raise TlearnError(f"{path} was written by a newer tlearn: upgrade tlearn to resume it")
    missing = [k for k in _REQUIRED if k not in state]
    if missing:
        raise TlearnError(f"{path} lacks {missing[0]!r}: delete it to restart the run")
    return upgraded(state)


def upgraded(state: dict[str, Any]) -> dict[str, Any]:
    """A state of an older format in today's layout, so an older run still resumes."""
    if int(state.get("version", 1)) < 2 and "nan_guard" not in state:
        state["nan_guard"] = {
            "lr_scale": float(state.pop("lr_scale", 1.0)),
            "retries": int(state.pop("nan_retries", 0)),
        }
    return state


def remove_stale_temporaries(run_dir: Path) -> None:
    """Temporary files left by a process killed mid-save (`.name.XXXX.tmp`) are garbage."""
    for tmp in Path(run_dir).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


# -- `--resume RUN` --------------------------------------------------------------------------------


def resume_config(run: str | Path, overrides: dict[str, Any]) -> TrainConfig:
    """The run's own config; other options given with `--resume` must repeat it.

    A resumed run continues the same computation, so an option that changes it (epochs, lr,
    batch size...) is refused rather than silently mixed into half a run. Only where it runs may
    change: `workers` and `device`.
    """
    run_dir = Path(run)
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise TlearnError(
            f"{run_dir} is not a run folder (it has no config.yaml): give --resume the --out "
            "folder of an earlier `tlearn train`"
        )
    saved = TrainConfig.from_dict(read_config_file(config_file))
    overrides = {k.replace("-", "_"): v for k, v in overrides.items() if v is not None}
    given = TrainConfig.from_dict({**saved.to_dict(), **overrides})
    for key in sorted(overrides):
        old, new = getattr(saved, key), getattr(given, key)
        if key in RESUME_MAY_CHANGE or old == new or _same_place(key, old, new):
            continue
        raise TlearnError(
            f"--{key.replace('_', '-')} {_show(new)} differs from the run's own {_show(old)}: "
            f"`tlearn train --resume {run_dir}` continues the run as it was configured, so drop "
            "the option (or start a new run with another --out)"
        )
    for key in RESUME_MAY_CHANGE & set(overrides):
        setattr(saved, key, getattr(given, key))
    saved.out = str(run_dir)
    return saved


def _same_place(key: str, old: Any, new: Any) -> bool:
    if key not in ("data", "out", "data_root") or old is None or new is None:
        return False
    return Path(str(old)).resolve() == Path(str(new)).resolve()


def _show(value: Any) -> str:
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)
