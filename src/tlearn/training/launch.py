"""`tlearn train ... --nproc N`: the launch torchrun does, on this machine, through its own API.

PyTorch's elastic launcher (`torch.distributed.launcher.api.elastic_launch`, what `torchrun`
calls) starts N copies of `python -m tlearn train --config OPTIONS.yaml` with torchrun's
environment, rendezvous on 127.0.0.1, watches them, and stops all when one fails. A failure
becomes one sentence naming the rank that failed first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from tlearn.config import TrainConfig
from tlearn.errors import TlearnError
from tlearn.training import distributed
from tlearn.training.resolve import default_run_dir

LAUNCHED = "TLEARN_LAUNCHED"  # set in the ranks: the launcher reports failures, not them


def should_launch(cfg: TrainConfig) -> bool:
    """`--nproc` above 1 in a process that is not already one rank of a job."""
    return (cfg.nproc or 1) > 1 and not distributed.world().many


def launch(cfg: TrainConfig, resume: bool = False) -> Path:
    """Train `cfg` in `cfg.nproc` processes on this machine; returns the run folder."""
    cfg.validate()
    cfg.out = str(Path(cfg.out) if cfg.out else default_run_dir(cfg.data))
    n = int(cfg.nproc or 1)
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=n,
        run_id=str(uuid.uuid4()),
        rdzv_backend="c10d",
        rdzv_endpoint="127.0.0.1:0",  # a free port, as torchrun --standalone picks
        max_restarts=0,
        monitor_interval=0.1,
    )
    with options_file(cfg) as path, quiet_launcher(), child_environment(n):
        args = ["-m", "tlearn", "train", "--config", str(path)]
        if resume:
            args += ["--resume", cfg.out]
        try:
            elastic_launch(config, sys.executable)(*args)
        except ChildFailedError as e:
            raise job_failure(e, cfg.out, n) from None
    return Path(cfg.out)


def job_failure(error: ChildFailedError, run_dir: str, n: int) -> Exception:
    """One sentence for a failed job: the rank that died, or the one that reported an error."""
    failures = error.failures
    # a rank killed by a signal; SIGTERM last: the launcher sends it to the survivors of the
    # rank that died first, and either may be reported first
    killed = [(f.exitcode == -signal.SIGTERM, r) for r, f in failures.items() if f.exitcode < 0]
    rank = min(killed)[1] if killed else None
    if rank is None:
        rank = error.get_first_failure()[0]
    failure = failures[rank]
    if failure.exitcode == 2 or failure.exitcode >= 128:
        return SystemExit(failure.exitcode)  # a TlearnError or a signal: the rank said why
    how = (
        f"was killed by {failure.signal_name()}"
        if failure.exitcode < 0
        else f"failed with exit code {failure.exitcode} (its traceback is above)"
    )
    return TlearnError(
        f"rank {rank} of {n} {how}, so the job stopped; the last checkpoint in {run_dir} is "
        f"intact: continue with `tlearn train --resume {run_dir} --nproc {n}`"
    )


@contextlib.contextmanager
def options_file(cfg: TrainConfig) -> Iterator[Path]:
    """The run's options as a YAML file the ranks read (`--config`), removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="tlearn-launch-", suffix=".yaml")
    os.close(fd)
    path = Path(name)
    try:
        cfg.save_yaml(path)
        yield path
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def quiet_launcher() -> Iterator[None]:
    """The launcher's own log lines (its failure tables, its SIGTERMs) stay out of the output:
    the ranks print their run and `job_failure` says what went wrong."""
    logger = logging.getLogger("torch.distributed.elastic")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def child_environment(n: int) -> Iterator[None]:
    """Threads per rank: the cores shared out (torchrun sets 1), unless the user chose."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", LAUNCHED)}
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    os.environ[LAUNCHED] = "1"
    previous = signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
