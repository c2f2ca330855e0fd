"""Augmentation presets on both data paths, mixup/cutmix targets, and training with them."""

from __future__ import annotations

import contextlib
import csv

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision.transforms import v2

import tlearn
from tlearn.config import AUGMENTS, TrainConfig
from tlearn.data import AUGMENTATIONS, ArraySource, build_transform, fast_image_loader
from tlearn.data.augment import (
    BatchMixer,
    MixedLoader,
    crop_scale,
    preset,
    random_erase,
)
from tlearn.errors import TlearnError
from tlearn.preprocessing import Preprocessing
from tlearn.training import loop

UNIT = Preprocessing(input_size=24, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
BIG = 2**30


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def halves(n: int = 64, size: int = 24, channels: int = 3) -> ArraySource:
    """Images bright on the left half, dark on the right: a mirror is easy to see."""
    shape = (n, size, size, 3) if channels == 3 else (n, size, size)
    images = np.zeros(shape, dtype=np.uint8)
    images[:, :, : size // 2] = 230
    images[:, :, size // 2 :] = 20
    return ArraySource(images, np.arange(n) % 2, ["a", "b"], "halves")


def batches(loader) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    parts = list(loader)
    return tuple(torch.cat([p[k] for p in parts]) for k in range(3))  # type: ignore[return-value]


def test_config_and_data_share_one_list_of_presets():
    assert AUGMENTS is AUGMENTATIONS
    assert AUGMENTATIONS == ("none", "flip", "shift", "light", "medium", "strong")
    with pytest.raises(TlearnError, match="augment"):
        TrainConfig(data="x", augment="heavy").validate()
    with pytest.raises(TlearnError, match="mixup"):
        TrainConfig(data="x", mixup=-1.0).validate()


def test_presets_add_up_from_mild_to_strong():
    none, flip, light = preset("none"), preset("flip"), preset("light")
    medium, strong = preset("medium"), preset("strong")
    assert not (none.crops or none.hflip or none.policy or none.erasing or none.mixes)
    assert flip.hflip and not flip.crops and flip.shift == 0
    shift = preset("shift")
    assert shift.hflip and shift.shift == 0.125 and not shift.crops and not shift.policy
    assert light.shift == 0  # crops move the image already
    assert light.crops and light.hflip and light.policy is None and light.erasing == 0
    assert medium.policy == "trivialaugment" and medium.erasing > 0 and not medium.mixes
    assert strong.policy == "randaugment" and strong.mixup == 0.2 and strong.cutmix == 1.0
    assert not preset("strong", hflip=False).hflip
    assert preset("light", mixup=0.4).mixup == 0.4 and not preset("strong", mixup=0, cutmix=0).mixes


def test_crop_scale_keeps_more_of_small_images():
    assert crop_scale(28) == crop_scale(64) == (0.6, 1.0)
    assert crop_scale(96) == (0.475, 1.0)
    assert crop_scale(128) == crop_scale(512) == (0.35, 1.0)


@pytest.mark.parametrize("augment", AUGMENTATIONS)
def test_every_preset_gives_unit_range_squares_on_both_paths(augment):
    src = halves(n=20, size=30)
    fast = fast_image_loader(src, UNIT, train=True, augment=augment, batch_size=8,
                             generator=gen(), memory_limit_bytes=BIG)  # fmt: skip
    x, y, i = batches(fast)
    assert x.shape == (20, 3, 24, 24) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(y, torch.as_tensor(src.targets)[i])
    torch.manual_seed(0)
    t = build_transform(UNIT, train=True, augment=augment)
    one = t(Image.fromarray(src.images[0]))
    assert one.shape == (3, 24, 24) and 0.0 <= one.min() and one.max() <= 1.0


@pytest.mark.parametrize("augment", ["medium", "strong"])
def test_tensor_path_is_seeded_and_varies(augment):
    src = halves(n=32, size=28, channels=1)  # grayscale arrays stay one channel until the end

    def run(seed):
        loader = fast_image_loader(src, UNIT, train=True, augment=augment, batch_size=16,
                                   generator=gen(seed), memory_limit_bytes=BIG)  # fmt: skip
        return batches(loader)[0], batches(loader)[0]

    (a1, a2), (b1, _), (c1, _) = run(1), run(1), run(2)
    assert torch.equal(a1, b1)  # same seed, same augmented pixels
    assert not torch.equal(a1, a2)  # a new epoch draws anew
    assert not torch.equal(a1, c1)
    state = torch.get_rng_state()
    run(3)
    assert torch.equal(state, torch.get_rng_state())  # policies leave the global RNG alone


def test_pil_path_is_reproducible_under_a_seed():
    t = build_transform(UNIT, train=True, augment="medium")
    image = Image.fromarray(halves(n=1, size=40).images[0])
    torch.manual_seed(5)
    a = [t(image) for _ in range(4)]
    torch.manual_seed(5)
    b = [t(image) for _ in range(4)]
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not all(torch.equal(a[0], u) for u in a[1:])


def _left_brighter(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x[..., :half].mean(dim=(-3, -2, -1)) > x[..., half:].mean(dim=(-3, -2, -1))


@pytest.mark.parametrize("augment", ["flip", "light"])
def test_no_hflip_never_mirrors(augment):
    # every light crop spans over half the width (area >= 0.6, aspect >= 3/4), so the bright half
    # stays on the left unless the image was mirrored
    src = halves(n=96, size=24)
    for hflip in (False, True):
        loader = fast_image_loader(
            src, UNIT, train=True, augment=augment, batch_size=32, generator=gen(),
            memory_limit_bytes=BIG, hflip=hflip,
        )  # fmt: skip
        left = _left_brighter(batches(loader)[0])
        if hflip:
            assert 0.3 < left.float().mean() < 0.7
        else:
            assert left.all()
    t = build_transform(UNIT, train=True, augment=augment, hflip=False)
    image = Image.fromarray(src.images[0])
    torch.manual_seed(0)
    assert all(_left_brighter(t(image)) for _ in range(30))


def test_random_shift_moves_each_image_whole_and_fills_black():
    from tlearn.data.augment import random_shift, shift_pixels

    assert shift_pixels(64, 0.125) == 8 and shift_pixels(32, 0.125) == 4
    assert shift_pixels(64, 0.0) == 0 and shift_pixels(4, 0.125) == 1
    images = torch.randint(1, 256, (64, 1, 12, 12), dtype=torch.uint8)  # no zero pixel
    moved = random_shift(images, 3, gen())
    assert moved.shape == images.shape and moved.dtype == torch.uint8
    assert torch.equal(moved, random_shift(images, 3, gen()))  # the generator decides
    seen = set()
    for image, out in zip(images, moved, strict=True):
        # the offset is where the image's top-left pixel went; everything else follows it
        padded = torch.nn.functional.pad(image, (3, 3, 3, 3))
        matches = [
            (dy, dx)
            for dy in range(7)
            for dx in range(7)
            if torch.equal(padded[:, dy : dy + 12, dx : dx + 12], out)
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) > 20  # offsets drawn per image, over the whole range
    assert torch.equal(random_shift(images, 0, gen()), images)


def test_shift_preset_on_both_data_paths_keeps_size_and_black_borders():
    src = halves(n=32, size=24)
    loader = fast_image_loader(
        src, UNIT, train=True, augment="shift", batch_size=32, generator=gen(),
        memory_limit_bytes=BIG,
    )  # fmt: skip
    x = batches(loader)[0]
    assert x.shape == (32, 3, 24, 24)
    plain = batches(fast_image_loader(src, UNIT, train=False, batch_size=32,
                                      memory_limit_bytes=BIG))[0]  # fmt: skip
    assert not torch.equal(x, plain)
    # the halves images have no black pixel: a shifted one has a black border row or column
    black_rows = (x == 0).all(dim=(1, 3)).any(dim=1)
    black_cols = (x == 0).all(dim=(1, 2)).any(dim=1)
    assert (black_rows | black_cols).float().mean() > 0.8
    t = build_transform(UNIT, train=True, augment="shift")
    assert any(isinstance(step, v2.RandomCrop) for step in t.transforms)
    assert t(Image.fromarray(src.images[0])).shape == (3, 24, 24)


def test_random_erasing_changes_one_box_per_image():
    x = torch.full((16, 3, 20, 20), 0.5)
    assert torch.equal(random_erase(x, 0.0, gen()), x)
    out = random_erase(x, 1.0, gen())
    changed = (out != x).any(dim=1)  # [B, H, W]
    assert changed.any(dim=(1, 2)).float().mean() > 0.8  # a box fits nearly always
    for mask in changed:  # the changed pixels form one rectangle inside the image
        rows, cols = mask.any(1).nonzero().squeeze(1), mask.any(0).nonzero().squeeze(1)
        if len(rows):
            box = mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.float().mean() > 0.9
    assert torch.equal(x, torch.full((16, 3, 20, 20), 0.5))  # the input is not modified


def test_mixup_targets_sum_to_one_and_match_the_pixels():
    images = torch.arange(6.0)[:, None, None, None].expand(6, 3, 8, 8) / 10  # image k is all k/10
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, targets = BatchMixer(4, mixup=0.4, cutmix=0.0, generator=gen())(images, labels)
    assert targets.shape == (6, 4) and torch.allclose(targets.sum(1), torch.ones(6))
    lam = targets[0, 0].item()  # image 0 (class 0) mixed with image 5 (class 1)
    assert torch.allclose(mixed[0], lam * images[0] + (1 - lam) * images[5])


def test_cutmix_targets_are_the_pasted_area_share():
    images = torch.stack([torch.full((3, 16, 16), float(k)) for k in range(4)])
    labels = torch.tensor([0, 1, 2, 3])
    mixer = BatchMixer(4, mixup=0.0, cutmix=1.0, generator=gen(3))
    for _ in range(10):
        mixed, targets = mixer(images, labels)
        assert torch.allclose(targets.sum(1), torch.ones(4))
        for k in range(4):
            own = (mixed[k] == k).float().mean().item()
            assert abs(targets[k, k].item() - own) < 1e-6  # the rest came from image k - 1


def test_mixed_loader_keeps_the_loader_shape_and_is_seeded():
    data = [(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), torch.arange(4)), None]

    class Plain:
        dataset = list(range(8))
        generator = gen(7)

        def __len__(self):
            return 2

        def __iter__(self):
            return iter(data)

    def epoch():
        inner = Plain()
        inner.generator.manual_seed(7)
        return list(MixedLoader(inner, BatchMixer(3, 0.2, 1.0, gen())))

    loader = MixedLoader(Plain(), BatchMixer(3, 0.2, 1.0, gen()))
    assert len(loader) == 2 and loader.dataset == list(range(8))
    first, second = epoch(), epoch()
    assert second[1] is None and first[0][1].shape == (4, 3)
    assert torch.equal(first[0][0], second[0][0]) and torch.equal(first[0][2], torch.arange(4))


def test_training_loop_takes_probability_targets():
    model = torch.nn.Linear(5, 3)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    loader = MixedLoader([(x, y, torch.arange(16))], BatchMixer(3, 1.0, 0.0, gen()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    before = model.weight.detach().clone()
    cpu, no_autocast = torch.device("cpu"), contextlib.nullcontext
    stats = loop.train_one_epoch(
        model, loader, optimizer, scheduler, loss_fn, cpu, no_autocast, model.train
    )
    assert stats.images == 16 and np.isfinite(stats.loss)
    assert not torch.equal(before, model.weight)


def test_training_with_strong_augmentation_end_to_end(tmp_path, make_image_folder):
    data = make_image_folder(classes=("cat", "dog", "owl"), n=6)
    run = tmp_path / "run"
    lines: list[str] = []
    tlearn.train(str(data), backbone="resnet18", weights="none", image_size=32, batch_size=6,
                 workers=0, strategy="linear-probe", augment="strong", epochs=1, out=str(run),
                 cache_dir=str(tmp_path / "cache"), log=lines.append)  # fmt: skip
    # mixed images are new images: never the feature cache
    assert not any("frozen features" in line for line in lines)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    saved = TrainConfig.from_dict(yaml.safe_load(open(run / "config.yaml")))
    assert saved.augment == "strong" and saved.hflip is True
