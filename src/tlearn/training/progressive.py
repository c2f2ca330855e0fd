"""Progressive resizing: early epochs on smaller images, the last at the full size.

A fine-tuning epoch of Lite0 at 32 px runs 2.3x faster than at 64 px on a CPU (measured here:
666 vs 287 images/s), and the network learns most of what it will learn about shapes at low
resolution; the final full-size epoch adapts it (batch-norm statistics included) to the size it
is evaluated and served at. So a time budget buys more epochs (fastai's and EfficientNetV2's
progressive resizing; FixRes for why the final size must be trained, not just evaluated).

The size is a pure function of the epoch, so a resumed run resumes at the same size, and
validation, the model file and inference always use the full size.

It is an option, not something `--budget` picks: measured on Fashion-MNIST (Lite0, 64 px, light
augmentation), four epochs growing 32 -> 64 px scored 91.45% on the test set for the time of
about three full-size epochs, below two full-size epochs (92.7%). Small inputs upsampled from
28 px lose what the pretrained filters need; larger photos may well gain.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

SIZE_STEP = 8  # sizes are multiples of 8: every stride of the common backbones divides them


def epoch_size(epoch: int, epochs: int, start: int | None, full: int) -> int:
    """Image size of `epoch` (0-based) of `epochs`: `start` rising linearly to `full` (last)."""
    if not start or start >= full or epochs <= 1 or epoch >= epochs - 1:
        return full
    size = start + (full - start) * epoch / (epochs - 1)
    stepped = int(round(size / SIZE_STEP) * SIZE_STEP)
    return max(start, min(full, stepped))


def schedule(epochs: int, start: int | None, full: int) -> list[int]:
    return [epoch_size(e, epochs, start, full) for e in range(epochs)]


def relative_cost(size: int, full: int) -> float:
    """A smaller epoch's time over a full-size one's, conservatively (pixels^0.75).

    Measured on Lite0 (CPU, batch 128), full 64 px: 32 px 0.43, 48 px 0.69, 56 px 0.86; a pure
    pixel count (0.25, 0.56, 0.77) overstates the saving, since per-layer costs do not shrink.
    """
    return min(1.0, (size / full) ** 1.5)


@contextmanager
def training_size(model: nn.Module, loader: Any, size: int, full: int) -> Iterator[None]:
    """Train `model` on `size`-pixel images (the loader makes them), then restore full size.

    Each backbone keeps its own input size relative to the run's (fused backbones may differ).
    A loader that cannot change size (the streaming PIL path) keeps giving full-size images,
    which the backbones then shrink themselves: slower, same result.
    """
    if not size or size == full:
        yield
        return
    backbones = list(getattr(model, "backbones", []))
    saved = [b.input_size for b in backbones]
    inner = getattr(loader, "loader", loader)  # inside a mixup wrapper
    loader_size = getattr(inner, "size", None)
    try:
        for b, own in zip(backbones, saved, strict=True):
            b.input_size = max(SIZE_STEP, int(round(own * size / full)))
        if loader_size is not None:
            inner.size = size
        yield
    finally:
        for b, own in zip(backbones, saved, strict=True):
            b.input_size = own
        if loader_size is not None:
            inner.size = loader_size
