"""Shared fixtures: tiny generated images, so tests need no downloads and run in milliseconds."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# a distinct colour per class, so a model can learn tiny generated datasets
_PALETTE = [
    (220, 40, 40), (40, 200, 60), (40, 70, 220), (230, 210, 40),
    (200, 60, 210), (40, 200, 210), (240, 140, 30), (120, 120, 120),
]  # fmt: skip


def write_image(path: Path, color: Sequence[int], size=(20, 16), seed: int = 0) -> Path:
    """Write a noisy solid-colour RGB image (PNG/JPEG/... chosen by the suffix)."""
    rng = np.random.default_rng(seed)
    w, h = size
    a = np.clip(np.array(color)[None, None, :] + rng.integers(-20, 21, (h, w, 3)), 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a.astype(np.uint8), "RGB").save(path)
    return path


def _fill(folder: Path, classes: Sequence[str], n: int, size, ext: str, seed: int) -> None:
    for k, name in enumerate(classes):
        for j in range(n):
            write_image(folder / name / f"{name}_{j:03d}.{ext}", _PALETTE[k % len(_PALETTE)], size,
                        seed=seed + 1000 * k + j)  # fmt: skip


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: `make_image_folder(root=tmp_path, classes=("cat", "dog"), n=6, size=(20, 16),
    layout="flat")` -> the dataset folder it wrote (`root/images`).

    layout "flat": `images/<class>/*.png`; "split": `images/train/<class>` (n each) and
    `images/val/<class>` (max(1, n // 2) each); "split-test": the same with `test/` for `val/`.
    """

    def make(
        root: Path | None = None,
        classes: Sequence[str] = ("cat", "dog"),
        n: int = 6,
        size: tuple[int, int] = (20, 16),
        layout: str = "flat",
        ext: str = "png",
    ) -> Path:
        folder = Path(root if root is not None else tmp_path) / "images"
        if layout == "flat":
            _fill(folder, classes, n, size, ext, seed=0)
        elif layout in ("split", "split-test"):
            _fill(folder / "train", classes, n, size, ext, seed=0)
            held_out = "val" if layout == "split" else "test"
            _fill(folder / held_out, classes, max(1, n // 2), size, ext, seed=500)
        else:
            raise ValueError(f"unknown layout {layout!r}")
        return folder

    return make


@pytest.fixture(autouse=True)
def _private_tlearn_cache(tmp_path_factory, monkeypatch):
    """Feature caches of tests go to a temporary folder, never the user's ~/.cache."""
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path_factory.mktemp("tlearn-cache")))


@pytest.fixture
def no_network(tmp_path, monkeypatch):
    """Empty weight caches, and every download path fails at once: what an offline machine sees."""
    import huggingface_hub.constants as hfc
    import torch

    from tlearn.models import weights as W

    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "torch_hub"))
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hfc, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(W, "can_download", lambda url: False)

    def no_download(*a, **k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    yield
    torch.hub.set_dir(old)


@pytest.fixture
def unbalanced(make_image_folder, tmp_path) -> Path:
    """Three classes, 9/9/3 images: a minority class for --balance to care about."""
    folder = make_image_folder(classes=("a", "b", "c"), n=9)
    for extra in sorted((folder / "c").iterdir())[3:]:
        extra.unlink()
    return folder


@pytest.fixture
def fake_clock(monkeypatch):
    """Runs read their --budget from a clock that moves only when the test says (no sleeping)."""
    from tlearn.training.budget import clock

    fake = clock.FakeClock()
    monkeypatch.setattr(clock, "CLOCK", fake)
    return fake
