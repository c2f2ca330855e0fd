"""What a server runs: uint8 images in, probabilities out, from PyTorch or from an ONNX file.

Both engines take the same input as an exported file (`tlearn.deploy.inputs`), so the server's
decoding, batching and answers do not depend on which one runs.
"""

from __future__ import annotations

import contextlib
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
    """

    max_wait_ms = 0.0
    chunk = 4

    def __init__(self, onnx_model: OnnxModel) -> None:
        self.onnx = onnx_model
        self.classes = onnx_model.classes
        self.input_preprocessing = onnx_model.input_preprocessing
        self.name = "onnxruntime"

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if len(images) <= self.chunk:
            return self.onnx(images)
        parts = [self.onnx(images[i : i + self.chunk]) for i in range(0, len(images), self.chunk)]
        return np.concatenate(parts)

    def describe(self) -> dict[str, Any]:
        return self.onnx.describe()
