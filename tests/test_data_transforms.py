"""Transforms follow the backbone's preprocessing; corrupt files are dropped from batches."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tlearn.data import (
    AUGMENTATIONS,
    FolderSource,
    MultiTransform,
    SafeTransformDataset,
    build_transform,
    collate_skip_none,
    find_unreadable,
)
from tlearn.errors import TlearnError
from tlearn.preprocessing import Preprocessing

GRAY = Preprocessing(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


# the geometric presets keep a flat grey image grey; medium/strong change colours (test_augment.py)
@pytest.mark.parametrize("augment", [a for a in AUGMENTATIONS if a in ("none", "flip", "light")])
@pytest.mark.parametrize("train", [False, True])
def test_output_is_normalised_square_tensor(train, augment):
    t = build_transform(GRAY, train=train, augment=augment)
    x = t(Image.new("RGB", (50, 40), (128, 128, 128)))
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.abs().max() < 0.01  # 128/255 ≈ 0.5 -> (0.5 - 0.5) / 0.5 ≈ 0


def test_small_image_is_upscaled_and_centre_cropped():
    t = build_transform(Preprocessing(input_size=64, mean=(0, 0, 0), std=(1, 1, 1)), train=False)
    im = Image.new("RGB", (28, 14), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 5, 14))  # white strip on the left, cropped away
    x = t(im)
    assert x.shape == (3, 64, 64)
    assert x.max() < 0.02  # shorter side -> 64: 128 x 64, of which the centre 64 columns stay


def test_imagenet_normalisation_uses_mean_and_std():
    pre = Preprocessing(input_size=8)
    x = build_transform(pre, train=False)(Image.new("RGB", (8, 8), (255, 0, 0)))
    expected = torch.tensor([(1 - 0.485) / 0.229, -0.456 / 0.224, -0.406 / 0.225])
    assert torch.allclose(x[:, 0, 0], expected, atol=1e-4)


def test_flip_augmentation_flips_sometimes():
    torch.manual_seed(0)
    t = build_transform(GRAY, train=True, augment="flip")
    im = Image.new("RGB", (32, 32), (0, 0, 0))
    im.paste((255, 255, 255), (0, 0, 16, 32))
    left_bright = [bool(t(im)[0, 0, 0] > 0) for _ in range(40)]
    assert any(left_bright) and not all(left_bright)
    evaluate = build_transform(GRAY, train=False, augment="flip")
    assert all(evaluate(im)[0, 0, 0] > 0 for _ in range(10))


def test_unknown_augmentation_is_a_tlearn_error():
    with pytest.raises(TlearnError, match="augment"):
        build_transform(GRAY, train=True, augment="heavy")


def test_multi_transform_gives_one_tensor_per_backbone():
    t = MultiTransform(
        [build_transform(GRAY, train=False), build_transform(GRAY.with_size(16), train=False)]
    )
    a, b = t(Image.new("RGB", (20, 20)))
    assert a.shape == (3, 32, 32) and b.shape == (3, 16, 16)


def test_loader_skips_corrupt_file_and_reports_indices(make_image_folder):
    root = make_image_folder(n=3)
    (root / "cat" / "cat_001.png").write_bytes(b"\x89PNG broken")
    source = FolderSource.from_class_folders(root)
    ds = SafeTransformDataset(source, build_transform(GRAY, train=False))
    assert ds[1] is None
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_skip_none)
    seen = []
    for images, labels, indices in loader:
        assert images.shape[1:] == (3, 32, 32) and labels.dtype == torch.int64
        seen += indices.tolist()
    assert seen == [0, 2, 3, 4, 5]  # the loop counts len(ds) - len(seen) == 1 skipped
    assert ds.describe(1).endswith("cat_001.png")
    assert find_unreadable(source) == [1]


def test_collate_all_dropped_is_none_and_multi_images_stack():
    assert collate_skip_none([None, None]) is None
    item = ((torch.zeros(3, 4, 4), torch.zeros(3, 2, 2)), 1, 7)
    images, labels, indices = collate_skip_none([item, None, item])
    assert images[0].shape == (2, 3, 4, 4) and images[1].shape == (2, 3, 2, 2)
    assert labels.tolist() == [1, 1] and indices.tolist() == [7, 7]
