"""One tiny trained run for the export and serve tests: timm's `test_efficientnet` (a few
thousand weights, random init) on generated solid-colour images at 32 px, trained in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

import tlearn
from conftest import _fill

CLASSES = ("cat", "dog", "fox")
RECIPE = dict(
    backbone="test_efficientnet", weights="none", image_size=32, batch_size=8, workers=0,
    strategy="linear-probe", epochs=4, lr=0.05, log=lambda s: None,
)  # fmt: skip


def tiny_data(root: Path, n: int = 8) -> Path:
    folder = Path(root) / "images"
    _fill(folder, CLASSES, n, (20, 16), "png", seed=0)
    return folder


def train_tiny(root: Path, name: str = "run", **options) -> Path:
    """Train on `root/images` (made if missing) into `root/name`; returns the run folder."""
    data = Path(root) / "images"
    if not data.is_dir():
        tiny_data(root)
    out = Path(root) / name
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TLEARN_CACHE_DIR", str(Path(root) / "cache"))
        tlearn.train(str(data), out=str(out), **{**RECIPE, **options})
    return out
