"""How a backbone wants its input: models define it, data applies it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Preprocessing:
    """Input size and normalisation a pretrained backbone was trained with.

    Taken from the library's own config (timm's pretrained_cfg, torchvision's weights transforms),
    never guessed: a wrong mean/std silently costs accuracy.
    """

    input_size: int = 224
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bilinear"  # "bilinear" | "bicubic" | "nearest"
    crop_pct: float = 0.875

    def with_size(self, size: int | None) -> Preprocessing:
        """The same normalisation at another resolution (`--image-size`)."""
        return self if not size else replace(self, input_size=int(size))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        return cls(
            input_size=int(d["input_size"]),
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            interpolation=str(d.get("interpolation", "bilinear")),
            crop_pct=float(d.get("crop_pct", 0.875)),
        )


def model_input(preprocessings: list[Preprocessing]) -> Preprocessing:
    """What the data pipeline feeds a tlearn model: [0, 1] RGB at the largest backbone size.

    Mean/std are identity here because each backbone normalises inside the model
    (`NormalizedBackbone`); resizing for a smaller backbone also happens there.
    """
    largest = max(preprocessings, key=lambda p: p.input_size)
    return Preprocessing(
        input_size=largest.input_size,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        interpolation=largest.interpolation,
        crop_pct=largest.crop_pct,
    )


def resize_before_crop(short_side: int, size: int, crop_pct: float) -> int:
    """The shorter side an image is resized to before its centre `size` crop.

    A photo larger than the input is shown as its weights were evaluated: timm resizes to
    size / crop_pct and crops the centre (87.5% for most ImageNet weights), which trims the
    background a subject sits in (on clothing10 a linear probe on Lite0's last features scored
    89.5% test that way and 86.8% on the whole shorter side). A smaller image (CIFAR, MNIST) is
    enlarged to the input size and never cropped further: its border is part of the object.
    """
    if short_side <= size or crop_pct >= 1.0:
        return size
    return max(size, math.floor(size / crop_pct))
