"""Random-resized crops and flips of whole batches: the decode-once path's augmentation ops."""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

from tlearn.data.augment import random_boxes

# Default random-resized-crop parameters; the presets choose the scale by resolution instead
# (`tlearn.data.augment.crop_scale`), the same on both paths.
LIGHT_SCALE = (0.35, 1.0)
LIGHT_RATIO = (3 / 4, 4 / 3)


def random_resized_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = LIGHT_SCALE,
    ratio: tuple[float, float] = LIGHT_RATIO,
    attempts: int = 10,
) -> torch.Tensor:
    """`n` crop boxes `(x1, y1, x2, y2)` drawn as torchvision's RandomResizedCrop draws them.

    Each image gets `attempts` tries at once; the first that fits is kept, and images where none
    fits fall back to the largest centred crop of an allowed aspect ratio.
    """
    boxes, found = random_boxes(n, height, width, scale, ratio, generator, attempts)
    # fallback: the whole image, narrowed to the ratio range (torchvision's rule), centred
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fw, fh = round(height * ratio[1]), height
    else:
        fw, fh = width, height
    left = torch.tensor((width - fw) / 2).round()
    top = torch.tensor((height - fh) / 2).round()
    fallback = torch.stack([left, top, left + fw, top + fh]).to(boxes.dtype)
    return torch.where(found[:, None], boxes, fallback)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Float `[B, C, H, W]` and one box per image -> `[B, C, size, size]` in one call.

    `roi_align` samples each output pixel bilinearly at its centre, averaging a grid of samples
    only when the images are much larger than the output (over 1.5x): the "light" crops come from
    images stored 1.15x the output (or smaller), where extra samples cost 3x the time and change
    nothing visible. Images smaller than the output (kept at their own size) are enlarged with
    two batched matmuls instead, the same bilinear result 3-8x faster.
    """
    if max(images.shape[-2:]) < size:  # enlarging small images: two matmuls are 3-8x faster
        return _crop_resize_matmul(images, boxes.to(images.device, images.dtype), size)
    sampling = max(1, round(max(images.shape[-2:]) / size))
    batch_index = torch.arange(len(boxes), dtype=images.dtype, device=images.device)[:, None]
    rois = torch.cat([batch_index, boxes.to(images.device, images.dtype)], dim=1)
    return roi_align(images, rois, output_size=(size, size), sampling_ratio=sampling, aligned=True)


def _bilinear_weights(lo: torch.Tensor, hi: torch.Tensor, length: int, size: int) -> torch.Tensor:
    """`[B, size, length]` bilinear weights sampling `[lo, hi)` of each row at `size` centres."""
    step = (hi - lo) / size
    centres = torch.arange(size, dtype=lo.dtype, device=lo.device) + 0.5
    where = lo[:, None] + centres[None] * step[:, None] - 0.5  # in pixel-centre coordinates
    where = where.clamp(0, length - 1)  # as roi_align: edge pixels extend outwards
    pixels = torch.arange(length, dtype=lo.dtype, device=lo.device)
    return (1 - (where[:, :, None] - pixels[None, None]).abs()).clamp_(min=0)


def _crop_resize_matmul(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """`crop_resize` as `Wy @ image @ Wx^T`: bilinear, for crops no larger than the output."""
    x1, y1, x2, y2 = boxes.unbind(1)
    wy = _bilinear_weights(y1, y2, images.shape[-2], size)[:, None]  # [B, 1, S, H]
    wx = _bilinear_weights(x1, x2, images.shape[-1], size)[:, None]  # [B, 1, S, W]
    return torch.matmul(torch.matmul(wy, images), wx.transpose(-1, -2))


def random_flip(
    images: torch.Tensor, generator: torch.Generator | None = None, *, inplace: bool = False
) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (in place: only the flipped are copied)."""
    mask = (torch.rand(len(images), generator=generator) < 0.5).to(images.device)
    if inplace:
        images[mask] = images[mask].flip(-1)
        return images
    return torch.where(mask[:, None, None, None], images.flip(-1), images)
