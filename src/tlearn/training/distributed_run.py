"""A run as one rank of a torchrun job: what differs from a one-process run before training.

Every rank runs the whole recipe (`trainer.fit`) on the same options and data; these pieces make
them agree where a process on its own would decide by itself, and keep the run folder rank 0's:
- `--budget` is planned and kept by rank 0 (its probe, its clock), and every rank follows;
- the memory limit is the smallest any rank can afford, so every rank takes the same data path;
- rank 0 makes the run folder and names it to the others; they write their copies of the
  bookkeeping into a scratch folder of their own, deleted at the end, so exactly one run folder
  exists however many processes trained;
- only rank 0 prints (`TLEARN_LOG_RANKS=all` prints every rank's lines, prefixed, to stderr).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tlearn.config import TrainConfig
from tlearn.data.decoded import default_memory_limit
from tlearn.errors import TlearnError
from tlearn.training import distributed
from tlearn.training.runtime import pick_device

Log = Callable[[str], None]
_SCRATCH: dict[int, Path] = {}  # id(cfg) -> a rank's scratch folder


def join_job(cfg: TrainConfig, log: Log) -> Log:
    """Join the job's process group; returns the log this rank writes to."""
    device = pick_device(cfg.device)
    if cfg.sync_bn and device.type != "cuda":
        raise TlearnError("--sync-bn needs GPUs (PyTorch's SyncBatchNorm): drop it on CPUs")
    w = distributed.init(device)
    if cfg.memory_limit is None:  # half of the free memory of the tightest machine
        cfg.memory_limit = str(int(distributed.min_all(default_memory_limit())))
    if w.main:
        return log
    if os.environ.get("TLEARN_LOG_RANKS") == "all":
        return lambda line: print(f"rank {w.rank}: {line}", file=sys.stderr, flush=True)
    return lambda line: None


def job_folder(cfg: TrainConfig, prepare: Callable[[], Path]) -> Path:
    """The folder this process writes in: the run folder (rank 0 makes it, and every rank's
    `cfg.out` names it), or on other ranks a scratch folder of their own."""
    run_dir = distributed.on_main(lambda: str(prepare()))
    cfg.out = run_dir
    if distributed.is_main():
        return Path(run_dir)
    # named after the run, so a rank killed before it could clean up leaves one folder, which
    # the run's --resume empties and removes
    key = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    scratch = Path(tempfile.gettempdir()) / f"tlearn-rank{distributed.world().rank}-{key}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True, exist_ok=True)
    _SCRATCH[id(cfg)] = scratch
    return scratch


def leave_job(cfg: TrainConfig) -> None:
    """The end of a rank's run, finished or failed: its scratch folder goes, the group closes."""
    scratch = _SCRATCH.pop(id(cfg), None)
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
    distributed.close()


def log_job(cfg: TrainConfig, processes: int, log: Log) -> None:
    """Several processes: the global batch and the rate it trains at (`--lr-scale`)."""
    w = distributed.world()
    if not w.many:
        return
    factor = distributed.lr_factor(cfg.lr_scale, processes)
    log(
        f"{w.size} processes x batch {cfg.batch_size} = global batch {w.size * cfg.batch_size}; "
        f"learning rate {cfg.resolved_lr():g} x {factor:g} (--lr-scale {cfg.lr_scale})"
    )
