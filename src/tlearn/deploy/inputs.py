"""What an exported or served model takes: uint8 RGB images at its size, decoded the tlearn way.

The graph starts from the bytes of the image after resizing, so everything that can differ
between tools (scaling to [0, 1], each backbone's mean and std, a second size for a fused
backbone) lives inside the model; only decoding and resizing stay outside, and they are
tlearn's own (`tlearn.data`): `tlearn predict --onnx` and the server use these very functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms import v2

from tlearn.data import build_transform, open_image
from tlearn.data.images import decode_image_bytes
from tlearn.errors import TlearnError
from tlearn.preprocessing import Preprocessing


@functools.lru_cache(maxsize=8)
def uint8_transform(pre: Preprocessing) -> Callable[[Image.Image], torch.Tensor]:
    """RGB image -> uint8 CHW tensor at the model's size: tlearn's evaluation resize and crop.

    These are `build_transform`'s own evaluation steps, so it resizes exactly as `evaluate` and
    `predict` do, cut where the image becomes a uint8 tensor: with the model input's mean 0 and
    std 1 the steps after it (scale to [0, 1], normalise) hold no information, and skipping
    them keeps torch's thread team out of every decoding thread of the server.
    """
    if any(m != 0.0 for m in pre.mean) or any(s != 1.0 for s in pre.std):
        raise ValueError("uint8 inputs need the model's input preprocessing (mean 0, std 1)")
    steps = build_transform(pre, train=False).transforms
    cut = next(i for i, step in enumerate(steps) if isinstance(step, v2.ToImage)) + 1
    if not all(isinstance(step, (v2.ToDtype, v2.Normalize)) for step in steps[cut:]):
        raise ValueError(f"evaluation steps after ToImage are not only scaling: {steps[cut:]}")
    to_uint8 = v2.Compose(steps[:cut])

    def apply(image: Image.Image) -> torch.Tensor:
        return to_uint8(image).as_subclass(torch.Tensor)

    return apply


def input_spec(pre: Preprocessing) -> dict:
    """How to feed the exported graph, for its metadata and the server's /model."""
    size = pre.input_size
    return {
        "name": "images",
        "dtype": "uint8",
        "layout": "NCHW",
        "channels": "RGB",
        "shape": ["batch", 3, size, size],
        "range": [0, 255],
        "resize": (
            f"shorter side to {size} px ({pre.interpolation}, antialiased), or to "
            f"{size}/{pre.crop_pct} px when it is longer than {size} px, then the centre "
            f"{size}x{size} crop; grayscale, palette, CMYK and transparent images made RGB "
            "(transparency on white), EXIF orientation applied"
        ),
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", "classes"]},
    }


def load_files(paths: Sequence[Path], pre: Preprocessing) -> tuple[torch.Tensor, list[Path]]:
    """Decode files into one uint8 batch; a file that cannot be decoded is skipped (returned
    list says which were kept)."""
    transform = uint8_transform(pre)
    tensors, kept = [], []
    for path in paths:
        try:
            tensors.append(transform(open_image(path)))
            kept.append(Path(path))
        except TlearnError:
            continue
    if not tensors:
        return torch.empty(0, 3, pre.input_size, pre.input_size, dtype=torch.uint8), kept
    return torch.stack(tensors), kept


def decode_upload(
    data: bytes, name: str, pre: Preprocessing, max_pixels: int | None
) -> torch.Tensor:
    """An uploaded image's bytes -> uint8 CHW tensor; TlearnError (a 400) when it is no image."""
    return uint8_transform(pre)(decode_image_bytes(data, name, max_pixels))
