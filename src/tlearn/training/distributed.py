"""Many processes through PyTorch's own engine: torchrun's environment, the process group, DDP.

`torchrun --nproc-per-node=N -m tlearn train ...` (or `tlearn train --nproc N`) starts N copies
of the same run. Each reads its place from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK),
joins one process group (NCCL on GPUs, gloo on CPUs) whose collectives time out after
`TLEARN_DIST_TIMEOUT` seconds (default 300), trains its share of every global batch in
DistributedDataParallel, and agrees with the others on what is decided by measuring (precision,
a suggested rate) or by rank 0 alone (the validation predictions). Only rank 0 prints and
writes the run folder.

Without torchrun's environment (one process) every helper here is the identity: no process
group, no wrapper, no collective, so a single-process run computes exactly as before.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from tlearn.errors import TlearnError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class World:
    """This process's place in the job, from torchrun's environment (one process: 0 of 1)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.size > 1


def world() -> World:
    """Where this process stands: torchrun's RANK / WORLD_SIZE / LOCAL_RANK, else 0 of 1."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise TlearnError(
            f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not whole numbers ({e}): start the job "
            "with torchrun or `tlearn train --nproc N`"
        ) from None
    if size < 1 or not 0 <= rank < size:
        raise TlearnError(f"RANK {rank} is outside WORLD_SIZE {size}: start the job with torchrun")
    return World(rank, size, local)


def is_main() -> bool:
    """Whether this process prints and writes files (rank 0, or the only process)."""
    return world().main


def timeout_s() -> float:
    """How long a collective waits for the other processes before the job is declared broken."""
    text = os.environ.get("TLEARN_DIST_TIMEOUT", "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise TlearnError(f"TLEARN_DIST_TIMEOUT={text!r} must be a number of seconds") from None
    return max(1.0, value)


def init(device: torch.device) -> World:
    """Join the job's process group (once); returns this process's place. One process: nothing.

    NCCL when the run trains on CUDA (each process on GPU LOCAL_RANK), gloo otherwise.
    """
    w = world()
    if not w.many or (dist.is_available() and dist.is_initialized()):
        return w
    if not dist.is_available():
        raise TlearnError("this PyTorch build has no torch.distributed: train with one process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(w.local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s()))
    return w


def local_device(device: torch.device) -> torch.device:
    """A process's own GPU when the job runs on CUDA (`cuda` -> `cuda:LOCAL_RANK`)."""
    w = world()
    if w.many and device.type == "cuda" and device.index is None:
        return torch.device("cuda", w.local_rank)
    return device


def describe(device: torch.device) -> str:
    """The device as the run log names it: the GPU's model, and the job's processes."""
    text = str(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        text += f" ({props.name}, {props.total_memory / 2**30:.0f} GiB)"
    if active():
        text += f", {dist.get_world_size()} processes ({dist.get_backend()})"
    return text


def active() -> bool:
    """Whether collectives run: a process group of more than one process exists."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def close() -> None:
    """Leave the process group (end of a run), so the next run in this process starts afresh."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# -- agreeing on values -----------------------------------------------------------------------


def from_main(value: T) -> T:
    """Rank 0's `value` on every rank (any picklable object); one process: `value` itself."""
    if not active():
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(compute: Callable[[], T]) -> T:
    """`compute()` run by rank 0 alone, its result given to every rank.

    A `TlearnError` on rank 0 is raised on every rank, so no process waits for an answer that
    will never come.
    """
    if not active():
        return compute()
    result: tuple[str, Any] = ("ok", None)
    if dist.get_rank() == 0:
        try:
            result = ("ok", compute())
        except TlearnError as e:
            result = ("error", str(e))
    kind, value = from_main(result)
    if kind == "error":
        raise TlearnError(value)
    return value


def sum_all(*values: float) -> list[float]:
    """Each value summed over the ranks (float64, so counts stay exact)."""
    if not active():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    dist.all_reduce(t)
    return t.tolist()


def max_all(value: float) -> float:
    return -min_all(-value)


def min_all(value: float) -> float:
    """The smallest `value` of any rank (a memory limit every rank can afford)."""
    if not active():
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


def gather_rows(*tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    """Each tensor's rows from every rank, joined in rank order, on every rank; None stays None.

    A rank's tensors share one row count, which may differ between ranks (the images each
    could decode): the rows travel padded to the largest count and come back trimmed.
    """
    if not active():
        return list(tensors)
    count = next(len(t) for t in tensors if t is not None)
    on = _collective_device()
    counts = [torch.zeros(1, dtype=torch.long, device=on) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([count], device=on))
    sizes = [int(c.item()) for c in counts]
    joined: list[torch.Tensor | None] = []
    for t in tensors:
        if t is None:
            joined.append(None)
            continue
        # gloo has no 16-bit types: they travel as float32, which holds them exactly
        sent = t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
        padded = sent.new_zeros((max(sizes), *sent.shape[1:]), device=on)
        padded[:count] = sent
        pieces = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(pieces, padded)
        rows = torch.cat([p[:n].cpu() for p, n in zip(pieces, sizes, strict=True)])
        joined.append(rows.to(t.dtype))
    return joined


def _collective_device() -> torch.device:
    """Where collectives' tensors live: the rank's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", world().local_rank)
    return torch.device("cpu")


def check_in_sync(module: nn.Module) -> None:
    """After training, every rank must hold the same weights: DDP guarantees it, this checks.

    Parameters only: batch-norm statistics are rank 0's at each step's start (DDP broadcasts
    them), then each rank's last forward moves its own; the files hold rank 0's.
    """
    if not active():
        return
    h = hashlib.blake2b(digest_size=8)
    for p in module.parameters():
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, h.hexdigest())
    if len(set(digests)) > 1:
        raise RuntimeError(f"the ranks' weights differ after training: {digests}")


# -- the trained module and its data ----------------------------------------------------------


def wrap(module: nn.Module, device: torch.device, sync_bn: bool = False) -> nn.Module:
    """`module` in DistributedDataParallel (gradients all-reduced after each backward); one
    process, or nothing to train: `module` itself. The caller keeps the bare module for
    saving, EMA and evaluation; only the training step goes through the wrapper.

    `sync_bn` (`--sync-bn`): batch norms become SyncBatchNorm in place (the same parameters and
    statistics tensors), normalising over the global batch; PyTorch runs it on GPUs only.
    """
    if not active() or not any(p.requires_grad for p in module.parameters()):
        return module
    if sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)


def shard(loader: Any) -> None:
    """Make a training loader (or its sampler) serve this rank's share of each global batch.

    Every loader that shuffles draws one order per epoch from (seed, epoch), the same on every
    rank; `tlearn.data.sampling.rank_order` then gives rank r the r-th slice of each global
    batch of `batch_size x world` images, so the images of global step k are those one process
    with the global batch would train on at step k.
    """
    w = world()
    if not w.many:
        return
    inner = getattr(loader, "loader", loader)  # inside a mixup/cutmix wrapper
    sampler = getattr(inner, "sampler", None)
    target = sampler if hasattr(sampler, "rank") else inner
    if not hasattr(target, "rank"):
        raise TypeError(f"{type(target).__name__} cannot be sharded across ranks")
    target.rank, target.world = w.rank, w.size


def per_process_batch(batch_size: int, processes_then: int) -> int:
    """The per-process batch that keeps a run's global batch (`batch_size x processes_then`)
    when it continues on another number of processes, so its order and schedule stay the same."""
    size = world().size
    if size == processes_then:
        return batch_size
    total = batch_size * processes_then
    if total % size:
        raise TlearnError(
            f"this run trained {processes_then} process(es) x --batch-size {batch_size}: resume it "
            f"on a number of processes that divides its global batch of {total}, not {size}"
        )
    return total // size


def lr_factor(kind: str, processes: int) -> float:
    """`--lr-scale`: the rate for a global batch `processes` times the per-process batch."""
    if kind == "linear":
        return float(processes)
    if kind == "sqrt":
        return math.sqrt(processes)
    return 1.0


def is_collective_failure(error: BaseException) -> bool:
    """A collective failed (a peer died, the network broke, or the timeout passed)."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return (
        isinstance(error, RuntimeError)
        and active()
        and any(
            k in text
            for k in ("gloo", "NCCL", "Connection reset", "Connection closed", "Timed out")
        )
    )


class JobBroken(TlearnError):
    """A collective failed under this rank: another process of the job stopped or hung."""


def reports(error: TlearnError) -> bool:
    """Whether this process prints `error`: rank 0 says what the user must fix (every rank hit
    it); a broken job is told by each rank under torchrun, by `tlearn train --nproc` alone."""
    if isinstance(error, JobBroken):
        return not os.environ.get("TLEARN_LAUNCHED")
    return world().main


def collective_failure(run_dir: Any) -> JobBroken:
    """The one sentence a rank says when the job broke under it."""
    w = world()
    return JobBroken(
        f"rank {w.rank} of {w.size} lost contact with the other processes of the job (one of "
        f"them stopped, or did not answer within {timeout_s():.0f}s): the job stops; the last "
        f"checkpoint in {run_dir} is intact: continue with --resume {run_dir} (the same "
        f"torchrun command, or `tlearn train --resume {run_dir} --nproc {w.size}`)"
    )
