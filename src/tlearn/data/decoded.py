"""Decode once, augment on batches: the fast data path for datasets that fit in memory.

The PIL path (`SafeTransformDataset` + `build_transform`) decodes, resizes and augments every image
every epoch, one image at a time; for small images (CIFAR, Fashion-MNIST) that costs more than the
model. Here every image of a source is decoded once to uint8 at the training resolution (a little
larger when random crops will run, so crops keep detail), kept in memory or in a memory-mapped
file, and each batch is sliced, turned to float and augmented as one tensor.

In-memory arrays smaller than the training resolution (CIFAR at 224 px) may instead be kept at
their own size and resized per batch: 50x less memory (CIFAR-10 at 224: 150 MB, not 7.5 GB) for a
batched uint8 resize per step, and "light" crops then come from the original image as in the PIL
path.

Batches are the PIL path's: `(images float32 [B, 3, S, S] in [0, 1], labels int64 [B], indices
int64 [B])`, indices being positions in the source. With augment "none" the images agree with the
PIL path to within rounding (same resize-shorter-side + centre-crop geometry, antialiased).

Two deliberate differences from the PIL path:
- "light" crops of images stored at the training resolution are taken from the stored square (the
  centre square of a non-square image, decoded 1.15x larger), not from the whole original image;
- files that cannot be decoded are found once, at decode time (`DecodedImages.skipped`), and never
  reach a batch, so no batch is ever None.

Every preset of `tlearn.data.augment` runs here on whole batches: the policy (medium, strong) on
the stored uint8 images before the crop (so it costs the stored size, not more), then the random
resized crop, the flip, and random erasing on the float batch. "light", "medium" and "strong" all
crop, so "light" above stands for all three.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from tlearn.data.augment import (
    AUGMENTATIONS,
    apply_policy,
    crop_scale,
    policy_transform,
    preset,
    random_erase,
    random_shift,
    shift_pixels,
)
from tlearn.data.crops import (
    crop_resize,
    random_flip,
    random_resized_boxes,
)
from tlearn.data.sampling import draw_order, rank_batches, rank_order
from tlearn.data.sources import ArraySource, ImageSource, SubsetSource
from tlearn.data.transforms import ResizeCrop
from tlearn.errors import TlearnError
from tlearn.preprocessing import Preprocessing, resize_before_crop

# Stored images are this much larger than the input size when random-resized crops will run.
CROP_MARGIN = 1.15

_PIL_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
# On tensors, PIL's nearest neighbour is torch's "nearest-exact" (pixel centres), not "nearest".
_TENSOR_INTERPOLATION = {**_PIL_INTERPOLATION, "nearest": InterpolationMode.NEAREST_EXACT}


# --- sizes and memory ---------------------------------------------------------------------------


def stored_size(input_size: int, augment: str = "none") -> int:
    """Side of the stored square: the input size, or `ceil(1.15 x)` when random crops will run."""
    crops = augment in AUGMENTATIONS and preset(augment).crops
    return math.ceil(input_size * CROP_MARGIN) if crops else int(input_size)


def source_channels(source: ImageSource) -> int:
    """1 for grayscale in-memory arrays (stored once, repeated to RGB per batch), else 3."""
    base = _base_array(source)
    return 1 if base is not None and base[0].ndim == 3 else 3


def decoded_bytes(n: int, size: int, channels: int = 3) -> int:
    """Bytes of `n` decoded uint8 images of `size` x `size` with `channels` channels."""
    return int(n) * int(channels) * int(size) * int(size)


def native_size(source: ImageSource) -> tuple[int, int] | None:
    """`(height, width)` of an in-memory array source's images, or None for files."""
    base = _base_array(source)
    return None if base is None else tuple(base[0].shape[1:3])


def fits_in_memory(
    source: ImageSource, size: int, limit_bytes: int, *, native: bool = False
) -> bool:
    """Whether the decoded source takes at most `limit_bytes`: at `size` x `size` (the stored
    size), or with `native` (array sources only) at the arrays' own size."""
    hw = native_size(source) if native else None
    area = hw[0] * hw[1] if hw is not None else size * size
    return len(source) * source_channels(source) * area <= limit_bytes


def default_memory_limit() -> int:
    """Half of the memory available now (at least 256 MiB): room for the model and the rest."""
    available = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 4 * 2**30
    return max(256 * 2**20, available // 2)


# --- decoding -----------------------------------------------------------------------------------


@dataclass
class DecodedImages:
    """Every decodable image of a source, uint8 `[N, C, H, W]` (C is 1 or 3).

    H = W = the size asked for, except with `native` storage (arrays kept at their own size).
    `indices[k]` is the position in the source of stored image k and `targets[k]` its label;
    `skipped` holds `(position, source.describe(position))` of each image that could not be
    decoded and was left out. `source_len` = `len(images) + len(skipped)`.
    """

    images: torch.Tensor
    targets: torch.Tensor
    indices: torch.Tensor
    source_len: int
    skipped: list[tuple[int, str]] = field(default_factory=list)
    _backing: object = field(default=None, repr=False)  # keeps a memory-mapped file alive

    def __len__(self) -> int:
        return len(self.images)

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    @property
    def image_size(self) -> tuple[int, int]:
        """`(height, width)` of the stored images."""
        return tuple(self.images.shape[-2:])

    @classmethod
    def decode(
        cls,
        source: ImageSource,
        size: int,
        *,
        interpolation: str = "bilinear",
        workers: int = 0,
        cache_dir: str | Path | None = None,
        native: bool = False,
        chunk: int = 2048,
        crop_pct: float = 1.0,
    ) -> DecodedImages:
        """Decode `source` once: resize the shorter side to `size` (antialiased), centre-crop.

        In-memory arrays (the built-in datasets, and subsets of them) are resized in batches with
        torch (uint8 in, uint8 out, rounding as PIL does); with `native` they are copied at their
        own size instead (ignored for files). Files are opened with `open_image` and resized with
        PIL exactly as the PIL path does, `workers` processes decoding in parallel. With
        `cache_dir`, the pixels live in a memory-mapped file there (deleted when no longer used)
        instead of in memory.
        """
        if interpolation not in _PIL_INTERPOLATION:
            raise ValueError(f"unsupported interpolation {interpolation!r}")
        base = _base_array(source)
        if base is not None:
            size = None if native else size
            return _decode_array(source, base, size, interpolation, cache_dir, chunk, crop_pct)
        return _decode_files(source, size, interpolation, workers, cache_dir, crop_pct)


def _base_array(source: ImageSource) -> tuple[np.ndarray, np.ndarray | None] | None:
    """`(array, indices or None)` when the source's pixels are an in-memory array."""
    if isinstance(source, ArraySource):
        return source.images, None
    if isinstance(source, SubsetSource) and isinstance(source.source, ArraySource):
        return source.source.images, source.indices
    return None


def _allocate(shape: tuple[int, ...], cache_dir: str | Path | None) -> tuple[torch.Tensor, object]:
    if cache_dir is None:
        return torch.empty(shape, dtype=torch.uint8), None
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    f = tempfile.NamedTemporaryFile(dir=cache_dir, prefix="tlearn-decoded-", suffix=".u8")
    f.truncate(max(1, math.prod(shape)))
    mm = np.memmap(f, dtype=np.uint8, mode="r+", shape=shape)
    return torch.from_numpy(mm), (f, mm)


def _resize_batch(
    x: torch.Tensor, size: int, interpolation: str, crop_pct: float = 1.0
) -> torch.Tensor:
    """uint8 or float `[B, C, H, W]` -> `[B, C, size, size]`: shorter side to size, centre crop.

    uint8 stays uint8: on the CPU torch resizes it directly (matching PIL's rounding, 3-4x faster
    than via float); elsewhere it goes through float and is rounded back.
    """
    if x.shape[-2:] == (size, size):
        return x
    as_uint8 = x.dtype == torch.uint8 and x.device.type != "cpu"
    if as_uint8:
        x = x.float()
    mode = _TENSOR_INTERPOLATION[interpolation]
    target = resize_before_crop(min(x.shape[-2:]), size, crop_pct)
    x = TF.resize(x, [target], interpolation=mode, antialias=interpolation != "nearest")
    x = TF.center_crop(x, [size, size])
    return x.round_().clamp_(0, 255).to(torch.uint8) if as_uint8 else x


def _decode_array(source, base, size, interpolation, cache_dir, chunk, crop_pct) -> DecodedImages:
    array, subset = base
    n = len(source)
    channels = 1 if array.ndim == 3 else 3
    hw = tuple(array.shape[1:3]) if size is None else (size, size)
    images, backing = _allocate((n, channels, *hw), cache_dir)
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        part = array[a:b] if subset is None else array[subset[a:b]]
        x = torch.from_numpy(np.array(part, copy=True) if subset is None else part)
        x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2)  # NHWC: channels-last
        images[a:b] = x if size is None else _resize_batch(x, size, interpolation, crop_pct)
    return DecodedImages(
        images=images,
        targets=torch.from_numpy(np.asarray(source.targets, dtype=np.int64)).clone(),
        indices=torch.arange(n, dtype=torch.int64),
        source_len=n,
        _backing=backing,
    )


class _DecodeFiles(torch.utils.data.Dataset):
    """One file -> uint8 `[3, size, size]` (or None when it cannot be decoded)."""

    def __init__(self, source: ImageSource, size: int, interpolation: str, crop_pct: float):
        self.source, self.size = source, size
        self.resize_crop = ResizeCrop(size, crop_pct, _PIL_INTERPOLATION[interpolation])

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> torch.Tensor | None:
        try:
            image = self.source.load(i)
        except TlearnError:
            return None
        image = self.resize_crop(image)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


def _decode_files(source, size, interpolation, workers, cache_dir, crop_pct) -> DecodedImages:
    n = len(source)
    images, backing = _allocate((n, 3, size, size), cache_dir)
    loader = torch.utils.data.DataLoader(
        _DecodeFiles(source, size, interpolation, crop_pct),
        batch_size=32,
        num_workers=max(0, int(workers)),
        collate_fn=list,
    )
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    position = 0
    for batch in loader:
        for image in batch:
            if image is None:
                skipped.append((position, source.describe(position)))
            else:
                images[len(kept)] = image
                kept.append(position)
            position += 1
    keep = torch.as_tensor(kept, dtype=torch.int64)
    targets = torch.from_numpy(np.asarray(source.targets, dtype=np.int64))[keep]
    return DecodedImages(
        images=images[: len(kept)],
        targets=targets,
        indices=keep,
        source_len=n,
        skipped=skipped,
        _backing=backing,
    )


# --- the loader ---------------------------------------------------------------------------------


class DecodedLoader:
    """Batches `(images, labels, indices)` from decoded images, augmented on whole batches.

    `shuffle` draws a new order each epoch from `generator` (seeded: the same seed gives the same
    epochs; without one, a generator is seeded from torch's global RNG, as DataLoader does);
    augmentation draws from the same generator. `len(loader)` is the number of batches.
    `loader.dataset` is the source (its length counts the skipped images, so `len(dataset) - seen`
    is the skipped count as with the PIL path); `loader.skipped` lists them.

    Stored images of another size than `size` are resized per batch (shorter side, centre crop,
    as the PIL path), or cropped from whole for "light". With `device` (e.g. a GPU), the uint8
    images are moved there once and batches are made there.
    """

    def __init__(
        self,
        decoded: DecodedImages,
        *,
        size: int,
        batch_size: int,
        shuffle: bool = False,
        augment: str = "none",
        generator: torch.Generator | None = None,
        interpolation: str = "bilinear",
        drop_last: bool = False,
        hflip: bool = True,
        pin_memory: bool = False,
        device: torch.device | str | None = None,
        dataset: object | None = None,
    ):
        if augment not in AUGMENTATIONS:
            raise TlearnError(
                f"unknown --augment {augment!r}; use one of {', '.join(AUGMENTATIONS)}."
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        self.decoded = decoded
        self.size = int(size)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.recipe = preset(augment, hflip=hflip)
        self.policy = policy_transform(self.recipe.policy) if self.recipe.policy else None
        self.interpolation = interpolation
        self.drop_last = drop_last
        self.device = torch.device(device) if device is not None else None
        self.pin_memory = pin_memory and self.device is None and torch.cuda.is_available()
        if generator is None and (shuffle or augment != "none"):
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator().manual_seed(seed)
        self.generator = generator
        self.dataset = dataset if dataset is not None else _Counted(decoded.source_len)
        self._images = decoded.images if self.device is None else decoded.images.to(self.device)
        self.sample_weights: torch.Tensor | None = None  # `--balance sampler`: weighted draws
        self.rank, self.world = 0, 1  # several processes: this one's share of each global batch

    @property
    def skipped(self) -> list[tuple[int, str]]:
        return self.decoded.skipped

    def __len__(self) -> int:
        n = len(self.decoded)
        if self.shuffle and self.world > 1:
            return rank_batches(n, self.batch_size, self.world)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        n = len(self.decoded)
        order = None
        if self.shuffle:
            order = draw_order(n, self.generator, self.sample_weights)
            if self.world > 1:  # the same order on every rank; then each augments its own way
                order = rank_order(order, self.batch_size, self.rank, self.world)
                n = len(order)
                seed = int(torch.randint(2**62, (1,), generator=self.generator))
                self.generator.manual_seed(seed + self.rank)
        for k in range(len(self)):
            a, b = k * self.batch_size, min(n, (k + 1) * self.batch_size)
            if order is None:
                raw = self._images[a:b]
                labels, indices = self.decoded.targets[a:b], self.decoded.indices[a:b]
            else:
                pick = order[a:b]
                raw = self._images[pick.to(self._images.device)]
                labels, indices = self.decoded.targets[pick], self.decoded.indices[pick]
            images = self.transform(raw)
            if self.pin_memory:
                images = images.pin_memory()
            yield images, labels.clone(), indices.clone()

    def transform(self, raw: torch.Tensor) -> torch.Tensor:
        """uint8 `[B, C, H, W]` -> float32 `[B, 3, S, S]` in [0, 1], augmented."""
        recipe = self.recipe
        if self.policy is not None:
            raw = apply_policy(raw, self.policy, self.generator)
        if recipe.crops:
            x = raw.float().div_(255.0)
            h, w = x.shape[-2:]
            scale = crop_scale(min(h, w, self.size))
            boxes = random_resized_boxes(len(x), h, w, self.generator, scale=scale)
            x = crop_resize(x, boxes, self.size).clamp_(0.0, 1.0)  # bilinear rounding: 1 + 1e-7
            if recipe.hflip:
                x = random_flip(x, self.generator, inplace=True)
        else:
            raw = _resize_batch(raw, self.size, self.interpolation)
            if recipe.shift:
                raw = random_shift(raw, shift_pixels(self.size, recipe.shift), self.generator)
            if recipe.hflip:  # on uint8: a quarter of the memory traffic of float
                raw = random_flip(raw, self.generator)
            x = raw.float().div_(255.0)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if recipe.erasing:
            x = random_erase(x, recipe.erasing, self.generator)
        return x.contiguous()


class _Counted:
    """Stands for the source where none is given: only its length is known."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


def fast_image_loader(
    source: ImageSource,
    pre: Preprocessing,
    *,
    train: bool,
    augment: str = "none",
    batch_size: int = 64,
    generator: torch.Generator | None = None,
    memory_limit_bytes: int | None = None,
    workers: int = 0,
    cache_dir: str | Path | None = None,
    device: torch.device | str | None = None,
    pin_memory: bool | None = None,
    hflip: bool = True,
) -> DecodedLoader | None:
    """A decode-once loader for `source`, or None when it does not fit (use the PIL path then).

    Decodes now (under a second for 60,000 small images; a folder costs one decode of each file,
    with `workers` processes). Images are stored at the training resolution (1.15x for "light")
    when that takes at most `memory_limit_bytes` (default: half the available memory). Arrays
    smaller than that are kept at their own size instead for "light" (crops then come from the
    whole image, as in the PIL path) or when the larger copy would not fit. With `cache_dir`,
    data over the limit is decoded into a memory-mapped file there instead of falling back.
    Training shuffles and augments; evaluation keeps the source's order, without augmentation.
    """
    augment = augment if train else "none"
    if augment not in AUGMENTATIONS:
        raise TlearnError(f"unknown --augment {augment!r}; use one of {', '.join(AUGMENTATIONS)}.")
    size = pre.input_size
    stored = stored_size(size, augment)
    limit = default_memory_limit() if memory_limit_bytes is None else int(memory_limit_bytes)
    hw = native_size(source)
    native = hw is not None and min(hw) <= stored  # resizing would only enlarge them
    crops = preset(augment).crops
    native = native and (crops or not fits_in_memory(source, stored, limit))
    in_memory = fits_in_memory(source, stored, limit, native=native)
    if not in_memory and cache_dir is None:
        return None
    decoded = DecodedImages.decode(
        source,
        stored,
        interpolation=pre.interpolation,
        workers=workers,
        cache_dir=None if in_memory else cache_dir,
        native=native,
        crop_pct=1.0 if crops else pre.crop_pct,  # random crops come from the whole image
    )
    return DecodedLoader(
        decoded,
        size=size,
        batch_size=batch_size,
        shuffle=train,
        augment=augment,
        hflip=hflip,
        generator=generator,
        interpolation=pre.interpolation,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        device=device,
        dataset=source,
    )
