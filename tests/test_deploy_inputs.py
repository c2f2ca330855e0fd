"""`tlearn.deploy.inputs`: the uint8 images an exported or served model takes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tlearn.data import build_transform
from tlearn.deploy.inputs import uint8_transform
from tlearn.preprocessing import Preprocessing


@pytest.mark.parametrize("size,interpolation", [(32, "bicubic"), (57, "bilinear")])
def test_uint8_transform_is_the_evaluation_transform_without_its_float_steps(size, interpolation):
    """The server decodes without the float round trip; every value must stay what tlearn's
    evaluation transform (x / 255, mean 0, std 1) gives after scaling back and rounding."""
    pre = Preprocessing(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), interpolation, 0.875)
    full, uint8 = build_transform(pre, train=False), uint8_transform(pre)
    rng = np.random.default_rng(0)
    for shape in ((40, 90), (200, 61), (size, size), (9, 13)):
        image = Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        got = uint8(image)
        assert type(got) is torch.Tensor and got.dtype == torch.uint8
        assert got.shape == (3, size, size)
        assert torch.equal(got, (full(image) * 255.0).round_().to(torch.uint8))


def test_uint8_transform_needs_identity_statistics():
    with pytest.raises(ValueError, match="mean 0, std 1"):
        uint8_transform(Preprocessing(32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear", 0.875))
