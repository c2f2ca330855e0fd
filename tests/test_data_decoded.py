"""The decode-once path: same batches as the PIL path, augmented on whole tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tlearn.data import (
    ArraySource,
    DecodedImages,
    DecodedLoader,
    FolderSource,
    SafeTransformDataset,
    SubsetSource,
    build_transform,
    collate_skip_none,
    decoded_bytes,
    fast_image_loader,
    fits_in_memory,
    stored_size,
)
from tlearn.data.decoded import random_resized_boxes
from tlearn.preprocessing import Preprocessing

BIG = 2**40  # a memory limit everything fits in


def pre_of(size: int, interpolation: str = "bilinear") -> Preprocessing:
    return Preprocessing(size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), interpolation)


def array_source(n=40, shape=(28, 28), classes=4, seed=0) -> ArraySource:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    targets = rng.integers(0, classes, n)
    return ArraySource(images, targets, [f"c{k}" for k in range(classes)], "random")


def pil_batch(source, pre, n) -> torch.Tensor:
    t = build_transform(pre, train=False)
    return torch.stack([t(source.load(i)) for i in range(n)])


def all_batches(loader):
    images, labels, indices = zip(*loader, strict=True)
    return torch.cat(images), torch.cat(labels), torch.cat(indices)


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- decoding -----------------------------------------------------------------------------------


def test_memory_estimate_and_limit():
    assert decoded_bytes(10, 8) == 10 * 3 * 64
    gray, rgb = array_source(n=10), array_source(n=10, shape=(8, 8, 3))
    assert fits_in_memory(gray, 8, 10 * 64) and not fits_in_memory(gray, 8, 10 * 64 - 1)
    assert not fits_in_memory(rgb, 8, 10 * 64) and fits_in_memory(rgb, 8, 10 * 3 * 64)
    assert fits_in_memory(rgb, 64, 10 * 3 * 64, native=True)  # kept at their own 8 x 8
    assert stored_size(64, "none") == stored_size(64, "flip") == 64
    assert stored_size(64, "light") == math.ceil(64 * 1.15)


def test_grayscale_arrays_are_stored_once_and_batched_as_rgb():
    src = array_source(n=10)
    decoded = DecodedImages.decode(src, 16)
    assert decoded.images.shape == (10, 1, 16, 16) and decoded.images.dtype == torch.uint8
    x, y, i = next(iter(DecodedLoader(decoded, size=16, batch_size=4)))
    assert x.shape == (4, 3, 16, 16) and x.dtype == torch.float32 and x.is_contiguous()
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])
    assert y.dtype == torch.int64 and i.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
@pytest.mark.parametrize(
    ("shape", "size"), [((28, 28), 64), ((30, 20, 3), 24), ((28, 28), 12), ((20, 30), 16)]
)
def test_eval_images_agree_with_the_pil_path(shape, size, interpolation):
    src = array_source(n=6, shape=shape)
    pre = pre_of(size, interpolation)
    if interpolation == "nearest":
        # Larger images are resized to size / crop_pct first (28 -> 13 for 12 px), where PIL's
        # nearest and torch's nearest-exact pick different source pixels of this random noise;
        # no pretrained weights use nearest. The crop's geometry is checked with the others.
        pre = Preprocessing(size, (0.0,) * 3, (1.0,) * 3, interpolation, crop_pct=1.0)
    loader = fast_image_loader(src, pre, train=False, batch_size=6, memory_limit_bytes=BIG)
    x, _, _ = next(iter(loader))
    assert (x - pil_batch(src, pre, 6)).abs().mean() < 2 / 255


def test_folder_images_agree_with_the_pil_path(make_image_folder):
    src = FolderSource.from_class_folders(make_image_folder(n=3, size=(20, 16)))
    for size in (12, 24):
        loader = fast_image_loader(
            src, pre_of(size), train=False, batch_size=4, memory_limit_bytes=BIG
        )
        x, y, i = all_batches(loader)
        assert x.shape == (6, 3, size, size)
        assert torch.equal(i, torch.arange(6)) and torch.equal(y, torch.as_tensor(src.targets))
        assert (x - pil_batch(src, pre_of(size), 6)).abs().max() < 1.5 / 255


def test_subset_of_an_array_decodes_the_selected_images():
    src = array_source(n=30)
    sub = SubsetSource(src, [7, 3, 21, 0])
    loader = fast_image_loader(sub, pre_of(28), train=False, batch_size=8, memory_limit_bytes=BIG)
    x, y, i = all_batches(loader)
    assert torch.equal(i, torch.arange(4)) and torch.equal(y, torch.as_tensor(sub.targets))
    expected = torch.from_numpy(src.images[[7, 3, 21, 0]]).float() / 255
    assert torch.allclose(x[:, 0], expected)


def test_undecodable_files_are_skipped_and_counted(make_image_folder):
    root = make_image_folder(n=3)
    bad = root / "cat" / "cat_001b.png"
    bad.write_bytes(b"not an image")
    src = FolderSource.from_class_folders(root)
    position = src.paths.index(bad)
    loader = fast_image_loader(
        src, pre_of(16), train=True, batch_size=2, generator=gen(), memory_limit_bytes=BIG
    )
    assert loader.skipped == [(position, str(bad))]
    _, y, i = all_batches(loader)
    assert len(i) == 6 and position not in i.tolist()
    assert len(loader.dataset) - len(y) == 1  # the training loop's skipped arithmetic
    assert len(loader) == 3
    assert torch.equal(y, torch.as_tensor(src.targets)[i])


def test_factory_gives_none_when_over_the_limit_or_a_memory_map_with_a_cache_dir(tmp_path):
    src = array_source(n=20)
    size = 16
    need = decoded_bytes(20, size, channels=1)
    assert fast_image_loader(src, pre_of(size), train=False, memory_limit_bytes=need - 1) is None
    assert fast_image_loader(src, pre_of(size), train=False, memory_limit_bytes=need) is not None
    mapped = fast_image_loader(
        src,
        pre_of(size),
        train=False,
        batch_size=8,
        memory_limit_bytes=need - 1,
        cache_dir=tmp_path,
    )
    assert mapped is not None
    in_memory = fast_image_loader(
        src, pre_of(size), train=False, batch_size=8, memory_limit_bytes=BIG
    )
    assert torch.equal(all_batches(mapped)[0], all_batches(in_memory)[0])


# --- batches ------------------------------------------------------------------------------------


def test_eval_keeps_order_and_indices_map_to_targets():
    src = array_source(n=23)
    loader = fast_image_loader(src, pre_of(28), train=False, batch_size=5, memory_limit_bytes=BIG)
    assert len(loader) == 5 and len(loader.dataset) == 23
    x, y, i = all_batches(loader)
    assert torch.equal(i, torch.arange(23)) and torch.equal(y, torch.as_tensor(src.targets))
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(src.images))


def test_training_shuffles_and_images_follow_their_indices():
    src = array_source(n=23)
    loader = fast_image_loader(
        src, pre_of(28), train=True, batch_size=5, generator=gen(), memory_limit_bytes=BIG
    )
    x, y, i = all_batches(loader)
    assert sorted(i.tolist()) == list(range(23)) and not torch.equal(i, torch.arange(23))
    assert torch.equal(y, torch.as_tensor(src.targets)[i])
    assert torch.equal((x[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(src.images)[i])


def test_shuffles_are_reproducible_and_new_each_epoch():
    src = array_source(n=50)

    def epochs(seed):
        loader = fast_image_loader(
            src,
            pre_of(28),
            train=True,
            augment="light",
            batch_size=16,
            generator=gen(seed),
            memory_limit_bytes=BIG,
        )
        return [all_batches(loader) for _ in range(2)]

    a, b, c = epochs(1), epochs(1), epochs(2)
    for (xa, _, ia), (xb, _, ib) in zip(a, b, strict=True):
        assert torch.equal(ia, ib) and torch.equal(xa, xb)
    assert not torch.equal(a[0][2], a[1][2])
    assert not torch.equal(a[0][2], c[0][2])


def test_flip_mirrors_about_half_the_images():
    n, size = 200, 8
    images = np.zeros((n, size, size), dtype=np.uint8)
    images[:, :, : size // 2] = 255  # bright left half
    src = ArraySource(images, np.zeros(n, dtype=np.int64), ["a", "b"], "halves")
    loader = fast_image_loader(
        src,
        pre_of(size),
        train=True,
        augment="flip",
        batch_size=64,
        generator=gen(),
        memory_limit_bytes=BIG,
    )
    x, _, _ = all_batches(loader)
    left = x[:, 0, :, : size // 2].mean(dim=(1, 2))
    right = x[:, 0, :, size // 2 :].mean(dim=(1, 2))
    assert torch.all((left == 1) & (right == 0) | (left == 0) & (right == 1))  # exact mirror
    assert 0.35 < (left == 0).float().mean() < 0.65


def test_light_crops_are_input_size_and_vary():
    src = array_source(n=32, shape=(28, 28, 3))
    loader = fast_image_loader(
        src,
        pre_of(20),
        train=True,
        augment="light",
        batch_size=16,
        generator=gen(),
        memory_limit_bytes=BIG,
    )
    assert loader.decoded.image_size == (math.ceil(20 * 1.15),) * 2  # larger arrays: resized
    x, y, i = all_batches(loader)
    assert x.shape == (32, 3, 20, 20) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(y, torch.as_tensor(src.targets)[i])
    again, _, _ = all_batches(loader)
    assert not torch.equal(x, again)


def test_random_resized_boxes_stay_inside_and_follow_scale_and_ratio():
    boxes = random_resized_boxes(2000, 74, 60, gen())
    x1, y1, x2, y2 = boxes.unbind(1)
    w, h = x2 - x1, y2 - y1
    assert torch.all((x1 >= 0) & (y1 >= 0) & (x2 <= 60) & (y2 <= 74) & (w > 0) & (h > 0))
    area = w * h / (74 * 60)
    assert area.min() > 0.3 and area.max() <= 1.0
    assert (w / h).min() > 0.7 and (w / h).max() < 1.4
    assert torch.equal(boxes, random_resized_boxes(2000, 74, 60, gen()))


def test_whole_box_crop_is_the_identity():
    decoded = DecodedImages.decode(array_source(n=4, shape=(16, 16, 3)), 16)
    x = decoded.images.float() / 255
    from tlearn.data.decoded import crop_resize

    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]] * 4)
    assert torch.allclose(crop_resize(x, boxes, 16), x, atol=1e-6)


def test_agrees_with_the_pil_dataloader_batches():
    src = array_source(n=10, shape=(20, 20, 3))
    pre = pre_of(32)
    pil = DataLoader(
        SafeTransformDataset(src, build_transform(pre, train=False)),
        batch_size=4,
        collate_fn=collate_skip_none,
    )
    fast = fast_image_loader(src, pre, train=False, batch_size=4, memory_limit_bytes=BIG)
    assert len(fast) == len(pil)
    for (xa, ya, ia), (xb, yb, ib) in zip(pil, fast, strict=True):
        assert xa.shape == xb.shape and torch.equal(ya, yb) and torch.equal(ia, ib)
        assert (xa - xb).abs().mean() < 2 / 255


def test_stored_larger_than_input_is_resized_not_cropped_for_eval():
    ramp = np.linspace(0, 255, 32)
    images = np.stack([np.add.outer(ramp, ramp * k) / (1 + k) for k in range(4)]).astype(np.uint8)
    src = ArraySource(images, [0, 1, 0, 1], ["a", "b"], "ramps")  # smooth: survives resizing
    decoded = DecodedImages.decode(src, 37)
    x, _, _ = next(iter(DecodedLoader(decoded, size=32, batch_size=4)))
    assert (x - pil_batch(src, pre_of(32), 4)).abs().mean() < 2 / 255  # a crop would be off ~0.1


def test_folder_decoding_with_worker_processes_and_batches_on_a_device(make_image_folder):
    root = make_image_folder(n=4)
    (root / "dog" / "dog_000b.png").write_bytes(b"")
    src = FolderSource.from_class_folders(root)
    one = DecodedImages.decode(src, 12)
    two = DecodedImages.decode(src, 12, workers=1)
    assert torch.equal(one.images, two.images) and one.skipped == two.skipped
    assert len(one) == 8 and one.source_len == 9
    plain = DecodedLoader(one, size=12, batch_size=3, shuffle=True, augment="flip", generator=gen())
    moved = DecodedLoader(
        one, size=12, batch_size=3, shuffle=True, augment="flip", generator=gen(), device="cpu"
    )
    for a, b in zip(all_batches(plain), all_batches(moved), strict=True):
        assert torch.equal(a, b)


def test_small_arrays_are_kept_at_their_size_when_the_resized_copy_does_not_fit():
    src = array_source(n=12, shape=(10, 14, 3))
    pre = pre_of(24)
    native_bytes = 12 * 3 * 10 * 14
    loader = fast_image_loader(src, pre, train=False, batch_size=5, memory_limit_bytes=native_bytes)
    assert loader is not None and loader.decoded.image_size == (10, 14)
    x, y, i = all_batches(loader)
    assert x.shape == (12, 3, 24, 24) and torch.equal(i, torch.arange(12))
    assert (x - pil_batch(src, pre, 12)).abs().max() < 1.5 / 255
    roomy = fast_image_loader(src, pre, train=False, batch_size=5, memory_limit_bytes=BIG)
    assert roomy.decoded.image_size == (24, 24)
    assert fast_image_loader(src, pre, train=False, memory_limit_bytes=native_bytes - 1) is None


def test_light_crops_small_arrays_from_the_whole_original_image():
    src = array_source(n=16, shape=(12, 12))
    loader = fast_image_loader(
        src,
        pre_of(32),
        train=True,
        augment="light",
        batch_size=8,
        generator=gen(),
        memory_limit_bytes=BIG,
    )
    assert loader.decoded.image_size == (12, 12)
    x, y, i = all_batches(loader)
    assert x.shape == (16, 3, 32, 32) and 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(y, torch.as_tensor(src.targets)[i])


def test_enlarging_crops_by_matmul_match_roi_align():
    from torchvision.ops import roi_align

    from tlearn.data.decoded import crop_resize

    x = torch.rand(6, 3, 10, 13, generator=gen())
    boxes = random_resized_boxes(6, 10, 13, gen())
    rois = torch.cat([torch.arange(6.0)[:, None], boxes], dim=1)
    expected = roi_align(x, rois, output_size=(16, 16), sampling_ratio=1, aligned=True)
    assert torch.allclose(crop_resize(x, boxes, 16), expected, atol=1e-5)
