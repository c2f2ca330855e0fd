"""Device, precision and threads: chosen once per run from the machine, and printed."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import json
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np
import torch

from tlearn.config import check_batch_size
from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text
from tlearn.models.fold import example_images, fold_checked
from tlearn.models.prepack import prepack_convolutions


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TlearnError(
            f"--device {name} asked for a GPU but none is usable here: use --device cpu"
        )
    return torch.device(name)


def pick_precision(device: torch.device, precision: str = "auto") -> str:
    """bf16 where the hardware does it natively (AVX512-BF16/AMX CPUs, Ampere+ GPUs), else fp32.

    On this project's reference CPU, bf16 autocast runs EfficientNet-Lite0 about 3x faster than
    fp32 for inference; where the CPU lacks native bf16 it is slower, so we never assume it.
    """
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise TlearnError("--precision fp16 needs a GPU: use bf16 or fp32 on a CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            if torch.ops.mkldnn._is_mkldnn_bf16_supported():
                return "bf16"
        except (AttributeError, RuntimeError):
            pass
    return "fp32"


def autocast_factory(device: torch.device, precision: str) -> Callable[[], AbstractContextManager]:
    """A zero-argument context factory, so loops write `with autocast():` whatever was chosen."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def inference_batch_size(device: torch.device, image_size: int, asked: int | None = None) -> int:
    """Images per inference batch: `asked`, else what keeps a CPU's caches warm.

    On a CPU, throughput peaks when one batch's activations fit in cache: measured on Lite0 at
    64 px here, batch 64 ran 1,850 images/s and batch 256 only 1,150. About 2**18 input pixels
    per batch (64 images of 64 px, 8 of 224 px) sits at that peak. GPUs want large batches.
    """
    if asked is not None:
        return check_batch_size(asked)
    if device.type != "cpu":
        return 256
    fitting = max(1, (2**18) // max(1, int(image_size) ** 2))
    return max(8, min(256, 2 ** round(math.log2(fitting))))


_ALLOCATOR_TUNED = False


def tune_allocator() -> bool:
    """Keep freed tensor memory in the process instead of handing it back to the OS each step.

    glibc serves blocks over its mmap threshold (128 KiB at start) with fresh pages that the
    kernel must zero on first touch, and returns them on free; every batch's activations paid
    that again. Raising the threshold and the trim/pad sizes (what jemalloc or tcmalloc, the
    allocators PyTorch's CPU tuning guide recommends, do by design) made Lite0 inference at 64 px
    1.5x faster here (1,380 -> 2,100 images/s) and training 5-15% faster, for at most 128 MiB
    of free memory kept for reuse. Linux/glibc only; elsewhere nothing changes. Returns whether set.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mib = 2**20
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # from <malloc.h>
        # blocks up to 64 MiB (Lite0's largest activation at 64 px, batch 128, is 50 MiB) come
        # from the heap; at most 128 MiB of free heap is kept; the heap grows 64 MiB at a time
        ok = libc.mallopt(m_mmap_threshold, 64 * mib) == 1
        ok = libc.mallopt(m_trim_threshold, 128 * mib) == 1 and ok
        ok = libc.mallopt(m_top_pad, 64 * mib) == 1 and ok
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Deterministic kernels for the run (`--deterministic`), restored afterwards.

    Same seed, same machine, same result, resumed or not: torch's deterministic algorithms,
    cuDNN autotuning off, and the cuBLAS workspace setting CUDA's determinism needs. An operation
    with no deterministic kernel (a few CUDA backward passes) warns instead of ending the run.
    """
    if not enabled:
        yield
        return
    previous = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark


def probe_training_precision(
    model: torch.nn.Module,
    input_size: int,
    device: torch.device,
    precision: str,
    batch: int = 16,
    remember_as: str | None = None,
) -> str:
    """Measure a few training steps in fp32 and bf16 and keep the faster: never assume.

    bf16 autocast halves memory traffic, but on CPUs some kernels (depthwise convolutions'
    backward, for one) run slower in bf16 than in fp32, so the answer depends on the network.
    Only asked when `precision` is bf16 on a CPU; GPUs keep what `pick_precision` chose.
    """
    if precision != "bf16" or device.type != "cpu":
        return precision
    # The first measurement on a machine is remembered, so two runs with the same seed compute
    # the same way even when the machine is busier during one of them.
    memory = tlearn_cache_dir() / "precision-probe.json"
    key = f"{remember_as}|{platform.processor() or platform.machine()}|{torch.__version__}"
    known = read_measurements(memory)
    if remember_as and known.get(key) in ("fp32", "bf16"):
        return known[key]
    # The probe runs only the first time: it must not move the run's random stream (dropout and
    # the input draw from it), or the first run on a machine would differ from the next ones.
    rng = torch.get_rng_state()
    trial = copy.deepcopy(model).to(device).train().to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, input_size, input_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    params = [p for p in trial.parameters() if p.requires_grad]
    timings = {}
    for candidate in ("fp32", "bf16", "fp32", "bf16"):
        autocast = autocast_factory(device, candidate)
        start = time.perf_counter()
        for _ in range(2):
            with autocast():
                loss = trial(x).float().square().mean()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            del grads
        elapsed = time.perf_counter() - start
        timings[candidate] = min(elapsed, timings.get(candidate, float("inf")))
    torch.set_rng_state(rng)
    chosen = "bf16" if timings["bf16"] < 0.9 * timings["fp32"] else "fp32"
    if remember_as:
        remember_measurement(memory, key, chosen)
    return chosen


def read_measurements(memory: Path) -> dict:
    """What tlearn measured on this machine before and kept in `memory` ({} when nothing)."""
    try:
        known = json.loads(memory.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def remember_measurement(memory: Path, key: str, value: object) -> None:
    """Add one measured choice to `memory`, atomically: processes training side by side may
    write it at once. Remembering is an optimisation, so a failed write is let go."""
    try:
        atomic_write_text(memory, json.dumps({**read_measurements(memory), key: value}, indent=1))
    except OSError:
        pass


def tlearn_cache_dir() -> Path:
    """Where tlearn keeps what it measured or computed (`TLEARN_CACHE_DIR` overrides)."""
    env = os.environ.get("TLEARN_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tlearn"


@contextlib.contextmanager
def flush_denormals() -> Iterator[None]:
    """Treat denormal floats as zero during a run (restored afterwards).

    On x86 CPUs an operation on a denormal costs ~100x a normal one; nearly constant inputs (small
    or synthetic images, a saturated batch-norm) fill gradients with them and made a tiny
    fine-tune 4x slower here. The values lost are below 1e-38.
    """
    enabled = torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if enabled:
            torch.set_flush_denormal(False)


def inference_module(
    module: torch.nn.Module,
    device: torch.device,
    precision: str,
    input_size: int | None = None,
) -> tuple[torch.nn.Module, torch.dtype, Callable[[], AbstractContextManager]]:
    """`module` in its fastest inference form for `precision`: (module, input dtype, autocast).

    With the `input_size` of the images `module` takes, batch norms are folded into the
    convolutions before them where two such images show the folded copy computes the same
    (`tlearn.models.fold`). On a CPU, bf16 autocast re-casts every weight at every call, which
    for small images costs more than the convolutions; a bf16 copy casts them once (3x on Lite0
    at 64 px here). On a CPU the copy's convolution weights are then reordered once into
    oneDNN's layout (`tlearn.models.prepack`; 1.14x on ResNet-18 at 64 px, the same outputs).
    The copies serve inference only: model files keep the exact fp32 weights. GPUs use autocast.
    """
    module = module.to(device).eval()
    folded = module
    if input_size is not None:
        folded = fold_checked(module, example_images(input_size, device))
    if precision == "bf16" and device.type == "cpu":
        # a folded module is already a copy of its own: cast it rather than copy it again
        twin = copy.deepcopy(module) if folded is module else folded
        twin = twin.to(device=device, dtype=torch.bfloat16)
        twin = twin.eval().to(memory_format=torch.channels_last)
        if input_size is not None:
            example = example_images(input_size, device).to(torch.bfloat16)
            prepack_convolutions(twin, example.contiguous(memory_format=torch.channels_last))
        return twin, torch.bfloat16, contextlib.nullcontext
    if folded is not module and device.type == "cpu" and precision == "fp32":
        example = example_images(input_size, device)  # the folded copy is ours to prepack
        prepack_convolutions(folded, example.contiguous(memory_format=torch.channels_last))
    return folded, torch.float32, autocast_factory(device, precision)


def compile_module(module: torch.nn.Module) -> torch.nn.Module:
    """`--compile`: torch.compile the module in place (its state-dict keys stay the same).

    Worth it for long runs only: on this project's 2-core CPU compiling Lite0's training step
    took 77 s. A network the compiler cannot handle (or a machine without a C++ compiler) runs
    eagerly instead of failing: the flag is a speed hint, never a reason to lose a run.
    """
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    module.compile(dynamic=False)
    return module
