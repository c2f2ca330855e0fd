"""How a backbone wants its input: models define it, data applies it."""

from __future__ import annotations

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
