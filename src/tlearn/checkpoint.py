"""One `.safetensors` file per model: tensors plus JSON metadata; no pickle, no network.

The metadata says everything needed to rebuild the classifier (class names, backbone names and
their preprocessing, head, fusion) and where it came from (weight sources, training config,
metrics, versions), so a model file travels alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch
import torchvision
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tlearn.errors import TlearnError
from tlearn.files import atomic_write
from tlearn.preprocessing import Preprocessing
from tlearn.version import __version__

FORMAT = "tlearn.model"
FORMAT_VERSION = 1


@dataclass
class ModelSpec:
    """What a model file says about its classifier, apart from the tensors."""

    classes: list[str]
    backbones: list[dict[str, Any]]  # name, library, weights_source, num_features, preprocessing
    head: dict[str, Any]  # kind, hidden, dropout
    fusion: str = "concat"
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    # An ensemble file: {"weights": [...], "members": [member spec dicts]}; empty otherwise.
    ensemble: dict[str, Any] = field(default_factory=dict)
    # Temperature scaling fitted after training: {"temperature": T, "ece_before": ...}; files
    # written before it existed, and runs without validation images, have none (T = 1).
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def temperature(self) -> float:
        return float(self.calibration.get("temperature", 1.0))

    @property
    def preprocessing(self) -> list[Preprocessing]:
        return [Preprocessing.from_dict(b["preprocessing"]) for b in self.backbones]


def library_versions() -> dict[str, str]:
    """The versions that shaped the tensors (torch's own string keeps its CUDA/CPU build tag)."""
    return {
        "tlearn": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
    }


def save_model(path: str | Path, model: torch.nn.Module, spec: ModelSpec) -> Path:
    """Write the classifier atomically; a kill mid-save leaves the previous file intact."""
    path = Path(path)
    spec.versions = spec.versions or library_versions()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "classes": json.dumps(spec.classes),
        "backbones": json.dumps(spec.backbones),
        "head": json.dumps(spec.head),
        "fusion": spec.fusion,
        "config": json.dumps(spec.config, default=str),
        "metrics": json.dumps(spec.metrics, default=float),
        "versions": json.dumps(spec.versions),
    }
    if spec.ensemble:
        meta["ensemble"] = json.dumps(spec.ensemble, default=str)
    if spec.calibration:
        meta["calibration"] = json.dumps(spec.calibration, default=float)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path


def read_model_file(path: str | Path) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """Read and validate a model file; every way it can be wrong ends in one TlearnError."""
    path = resolve_model_path(path)
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise TlearnError(
                    f"{path} is not a tlearn model file: pass a run folder or a .safetensors file "
                    "written by `tlearn train`"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise TlearnError(
            f"{path} is damaged or not a safetensors file ({e}): use another copy of the model"
        ) from e
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise TlearnError(f"{path} was written by a newer tlearn: upgrade tlearn to load it")
    try:
        spec = ModelSpec(
            classes=json.loads(meta["classes"]),
            backbones=json.loads(meta["backbones"]),
            head=json.loads(meta["head"]),
            fusion=meta.get("fusion", "concat"),
            config=json.loads(meta.get("config", "{}")),
            metrics=json.loads(meta.get("metrics", "{}")),
            versions=json.loads(meta.get("versions", "{}")),
            ensemble=json.loads(meta.get("ensemble", "{}")),
            calibration=json.loads(meta.get("calibration", "{}")),
        )
    except (KeyError, json.JSONDecodeError, TypeError) as e:
        raise TlearnError(f"{path} has broken tlearn metadata ({e}): use another copy") from e
    if len(spec.classes) < 2 or not spec.backbones:
        raise TlearnError(f"{path} has no classes or no backbone in its metadata: use another copy")
    return spec, tensors


def resolve_model_path(path: str | Path) -> Path:
    """A run folder means its best model; a file means itself."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.safetensors", "last.safetensors"):
            if (p / name).is_file():
                return p / name
        raise TlearnError(f"{p} holds no best.safetensors or last.safetensors: is it a run folder?")
    if not p.is_file():
        raise TlearnError(f"no model at {p}: pass a run folder or a .safetensors model file")
    return p


def write_calibration(path: str | Path, calibration: dict[str, Any]) -> Path:
    """Rewrite a model file's calibration metadata, its tensors untouched (atomically)."""
    path = Path(path)
    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta["calibration"] = json.dumps(calibration, default=float)
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return path
