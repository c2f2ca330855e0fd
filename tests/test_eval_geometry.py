"""Evaluation geometry: photos are centre-cropped as their weights were evaluated (crop_pct),
small images are enlarged and never cropped, and both input paths agree to the pixel."""

from __future__ import annotations

import torch
from PIL import Image

from tlearn.data import build_transform
from tlearn.data.decoded import DecodedImages
from tlearn.data.sources import FolderSource
from tlearn.preprocessing import Preprocessing, resize_before_crop


def test_resize_before_crop():
    assert resize_before_crop(28, 224, 0.875) == 224  # MNIST: enlarged, no further crop
    assert resize_before_crop(224, 224, 0.875) == 224
    assert resize_before_crop(400, 224, 0.875) == 256  # a photo: timm's 256 -> 224
    assert resize_before_crop(400, 224, 1.0) == 224


def test_both_paths_crop_a_photo_alike(tmp_path):
    """A 64x48 photo for a 32 px model: resized to 36 px, centre 32 px kept; PIL path and
    decode-once path give the same pixels."""
    folder = tmp_path / "data" / "a"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(48, 64, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(folder / "x.png")
    (tmp_path / "data" / "b").mkdir()
    Image.fromarray(pixels[::-1].copy()).save(tmp_path / "data" / "b" / "y.png")
    pre = Preprocessing(input_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, crop_pct=0.875)
    items = [(folder / "x.png", 0), (tmp_path / "data" / "b" / "y.png", 1)]
    source = FolderSource(items, ["a", "b"], "data")
    via_pil = build_transform(pre, train=False)(source.load(0))
    decoded = DecodedImages.decode(source, 32, interpolation=pre.interpolation, crop_pct=0.875)
    assert decoded.images.shape[-2:] == (32, 32)
    assert torch.allclose(via_pil, decoded.images[0].float() / 255, atol=1 / 255 + 1e-6)
    whole = build_transform(
        Preprocessing(input_size=32, mean=(0.0,) * 3, std=(1.0,) * 3, crop_pct=1.0), train=False
    )(source.load(0))
    assert not torch.allclose(via_pil, whole, atol=0.05)  # the crop shows less of the frame
