"""What a server runs: uint8 images in, probabilities out, from PyTorch or from an ONNX file.

Both engines take the same input as an exported file (`tlearn.deploy.inputs`), so the server's
decoding, batching and answers do not depend on which one runs.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol

import numpy as np
import torch

from tlearn.checkpoint import library_versions
from tlearn.deploy.inputs import input_spec
from tlearn.deploy.onnx_runtime import OnnxModel
from tlearn.preprocessing import Preprocessing


class Engine(Protocol):
    name: str
    max_wait_ms: float  # the batcher's default wait for a batch to fill
    workers: int  # the batcher's threads that call the engine at once
    classes: list[str]
    input_preprocessing: Preprocessing

    def __call__(self, images: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...


class TorchEngine:
    """tlearn's own inference path: the module `inference_module` gives (folded, maybe bf16).

    A batch of 32 ran 2.7 times the images/s of batch 1 here, so a request waits up to 5 ms for
    others to join it (benchmarks/results/serve*.md).
    """

    max_wait_ms = 5.0
    workers = 1  # its thread team already spans the cores

    def __init__(
        self,
        model,
        runner: torch.nn.Module,
        dtype: torch.dtype,
        autocast: Callable[[], AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self.model, self.runner, self.dtype, self.autocast = model, runner.eval(), dtype, autocast
        self.classes = model.classes
        self.input_preprocessing = model.input_preprocessing
        self.name = f"pytorch ({str(dtype).removeprefix('torch.')})"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32) / 255.0
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self.autocast():
            return self.runner(x).float().softmax(dim=1).numpy()

    def describe(self) -> dict[str, Any]:
        spec = self.model.spec
        return {
            "classes": spec.classes,
            "backbones": spec.backbones,
            "head": spec.head,
            "fusion": spec.fusion,
            "metrics": spec.metrics,
            "versions": {"trained with": spec.versions, "serving with": library_versions()},
            "preprocessing": {"model_input": self.input_preprocessing.to_dict()},
            "input": input_spec(self.input_preprocessing),
        }


class OnnxEngine:
    """An exported file in onnxruntime (`tlearn.deploy.onnx_runtime`).

    Its CPU time per image does not fall with the batch: for Lite0 at 224 px it was 11.2 ms at
    1 to 4 images a run and 12.6 at 8 to 32 (medians of 4 rounds on the shared 2-core machine;
    a large batch's activations outgrow the caches). So no request waits for others (a batch
    is what queued while the previous one ran), and a batch runs `chunk` images at a time.

    A session whose thread team spans the cores spends about 2 ms an image more CPU than a
    one-thread session (13.0 against 11.0 ms in a loaded server, where the team's threads wait
    for each other), which a busy server cannot afford, while a lone request finishes sooner
    on all the cores. So the batcher runs one worker a core, and each chunk of images goes to
    the one-thread session while another worker is running a batch, and to the team when this
    worker is the only one (benchmarks/results/serve3-*.md).
    """

    max_wait_ms = 0.0
    chunk = 4

    def __init__(self, onnx_model: OnnxModel, workers: int | None = None) -> None:
        self.onnx = onnx_model
        self.classes = onnx_model.classes
        self.input_preprocessing = onnx_model.input_preprocessing
        self.name = "onnxruntime"
        self.workers = max(1, workers if workers is not None else usable_cores())
        one_thread = self.workers > 1
        self.narrow = OnnxModel(onnx_model.path, threads=1, serving=True) if one_thread else None
        self._running = 0
        self._lock = threading.Lock()

    def __call__(self, images: np.ndarray) -> np.ndarray:
        with self._lock:
            self._running += 1
        try:
            parts = [
                self._session()(images[i : i + self.chunk])
                for i in range(0, max(1, len(images)), self.chunk)
            ]
        finally:
            with self._lock:
                self._running -= 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _session(self) -> OnnxModel:
        """The one-thread session while other batches run, else the one that spans the cores."""
        return self.narrow if self.narrow is not None and self._running > 1 else self.onnx

    def describe(self) -> dict[str, Any]:
        return self.onnx.describe()


def usable_cores() -> int:
    """The cores this process may run on (its affinity), which a container can set below
    the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
