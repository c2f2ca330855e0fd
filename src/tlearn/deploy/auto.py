"""`tlearn serve --engine auto`: onnxruntime when it can serve the model, else PyTorch.

onnxruntime ran tf_efficientnet_lite0 at 224 px faster than tlearn's own PyTorch inference at
batch 1 and 32 and served more requests/s at every concurrency (benchmarks/results/serve*.md),
so a run or model file is exported once, verified against the fp32 PyTorch model on real images
exactly as `tlearn export` does, into tlearn's cache, keyed by the model's bytes and the
versions that made the file. Whatever stops that (the extra not installed, no images to verify
on, an export that fails or disagrees) comes back as one sentence, and PyTorch serves instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tlearn.deploy.engines import OnnxEngine
from tlearn.deploy.export import export_model
from tlearn.deploy.extras import require
from tlearn.deploy.onnx_runtime import OnnxModel
from tlearn.errors import TlearnError
from tlearn.version import __version__


def cached_onnx_engine(
    model_file: Path | None,
    load: Callable[[], Any],
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> tuple[OnnxEngine | None, str]:
    """(an onnxruntime engine, "") or (None, why not). `model_file` keys the cache when the model
    came from a file; `load()` gives the `tlearn.Model`, called only when it must be exported."""
    try:
        ort = require("onnxruntime")
        require("onnx")
    except TlearnError as e:
        return None, str(e)
    key = model_key(model_file, load, ort.__version__)
    path = cache_dir / "onnx" / f"{key}.onnx"
    if not path.is_file():
        log(f"exporting the model for onnxruntime, verified against PyTorch (once: {path})")
        try:
            log(export_model(load(), path, "onnx", log=log).summary())
        except TlearnError as e:
            return None, str(e)
        except Exception as e:  # noqa: BLE001 - an exporter's own failure: PyTorch still serves
            return None, f"the ONNX export failed ({type(e).__name__}: {str(e)[:300]})"
    try:
        return OnnxEngine(OnnxModel(path, serving=True)), ""
    except TlearnError as e:
        return None, str(e)


def model_key(model_file: Path | None, load: Callable[[], Any], runtime_version: str) -> str:
    """What the cached export depends on: the model (its file's bytes, or its tensors and spec)
    and the tlearn, torch and onnxruntime versions that exported and verified it."""
    digest = hashlib.sha256(f"{__version__} {torch.__version__} {runtime_version}".encode())
    if model_file is not None:
        with open(model_file, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    else:
        model = load()
        spec = model.spec
        described = [spec.classes, spec.backbones, spec.head, spec.fusion, spec.calibration]
        digest.update(json.dumps(described, sort_keys=True, default=str).encode())
        for name, tensor in sorted(model.classifier.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().flatten().view(torch.uint8).numpy())
    return digest.hexdigest()[:24]
