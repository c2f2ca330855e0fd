"""Image -> tensor transforms built from a backbone's Preprocessing, and a loader that skips
files which cannot be decoded.

A corrupt file among thousands should cost one sample, not the run: `SafeTransformDataset` turns
the decode error into `None` and `collate_skip_none` drops it from the batch. The training loop
counts what was dropped (`len(batch indices) - len(returned indices)`, or `batch_size - len(kept)`)
and names the files through `source.describe(i)` for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import InterpolationMode, v2

from tlearn.data.augment import (
    RandomErase,
    ScaledRandomResizedCrop,
    policy_transform,
    preset,
    shift_pixels,
)
from tlearn.data.sources import ImageSource
from tlearn.errors import TlearnError
from tlearn.preprocessing import Preprocessing, resize_before_crop

_INTERPOLATION = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}


def build_transform(
    pre: Preprocessing, *, train: bool, augment: str = "none", hflip: bool = True
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL RGB image -> normalised float32 CHW tensor of `pre.input_size` square.

    Evaluation resizes and centre-crops as the weights were evaluated (`resize_before_crop`:
    small images such as CIFAR and MNIST are enlarged and not cropped further); augmentation
    (a preset of `tlearn.data.augment`; `hflip=False` never mirrors) applies to training only.
    Policies run on the uint8 tensor, random erasing on the float one; mixup/cutmix act later,
    on whole batches.
    """
    recipe = preset(augment, hflip=hflip)
    try:
        interpolation = _INTERPOLATION[pre.interpolation]
    except KeyError:
        raise ValueError(f"unsupported interpolation {pre.interpolation!r}") from None
    size = pre.input_size
    if not train:
        recipe = preset("none")
    if recipe.crops:
        steps: list[Any] = [ScaledRandomResizedCrop(size, interpolation)]
    else:
        steps = [ResizeCrop(size, pre.crop_pct, interpolation)]
        if recipe.shift:  # the tensor path's random_shift, image by image
            steps.append(v2.RandomCrop(size, padding=shift_pixels(size, recipe.shift)))
    if recipe.hflip:
        steps.append(v2.RandomHorizontalFlip())
    steps.append(v2.ToImage())
    if recipe.policy:
        steps.append(policy_transform(recipe.policy))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if recipe.erasing:
        steps.append(RandomErase(recipe.erasing))
    steps.append(v2.Normalize(mean=list(pre.mean), std=list(pre.std)))
    return v2.Compose(steps)


class ResizeCrop:
    """Shorter side to `resize_before_crop`'s length, then the centre `size` square."""

    def __init__(self, size: int, crop_pct: float, interpolation: InterpolationMode) -> None:
        self.size, self.crop_pct, self.interpolation = size, crop_pct, interpolation

    def __call__(self, image: Any) -> Any:
        w, h = image.size if isinstance(image, Image.Image) else image.shape[-1:-3:-1]
        target = resize_before_crop(min(w, h), self.size, self.crop_pct)
        image = v2.functional.resize(image, [target], self.interpolation, antialias=True)
        return v2.functional.center_crop(image, [self.size, self.size])


class MultiTransform:
    """Several transforms of one image (fusion: each backbone gets its own preprocessing)."""

    def __init__(self, transforms: Sequence[Callable[[Image.Image], torch.Tensor]]):
        self.transforms = list(transforms)

    def __call__(self, image: Image.Image) -> tuple[torch.Tensor, ...]:
        return tuple(t(image) for t in self.transforms)


class SafeTransformDataset(torch.utils.data.Dataset):
    """`(tensor, label, index)` per item, or `None` when the item's file cannot be decoded."""

    def __init__(self, source: ImageSource, transform: Callable[[Image.Image], Any]):
        self.source = source
        self.transform = transform

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[Any, int, int] | None:
        try:
            image = self.source.load(i)
        except TlearnError:
            return None
        return self.transform(image), int(self.source.targets[i]), int(i)

    def describe(self, i: int) -> str:
        return self.source.describe(i)


def collate_skip_none(batch: list[Any]) -> tuple[Any, torch.Tensor, torch.Tensor] | None:
    """Stack `(images, labels, indices)` of the decodable items; None if none was decodable.

    Images may be a tuple of tensors per item (MultiTransform); they are stacked per transform.
    """
    kept = [item for item in batch if item is not None]
    if not kept:
        return None
    images, labels, indices = default_collate(kept)
    return images, labels, indices


def find_unreadable(source: ImageSource, *, stop_at_first: bool = False) -> list[int]:
    """Indices of items that cannot be decoded, by decoding each one (for `--strict`).

    In-memory sources are skipped: they were decoded when loaded.
    """
    if source.in_memory:
        return []
    bad: list[int] = []
    for i in range(len(source)):
        try:
            source.load(i)
        except TlearnError:
            bad.append(i)
            if stop_at_first:
                break
    return bad
