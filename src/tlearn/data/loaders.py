"""Loaders over image sources, with every choice an explicit argument (no run config).

Training, evaluation, ensembles and the feature cache all load images here, so they agree on
what a batch is: `(images in [0, 1], labels, indices)`, or None when no image of it decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import torch
from torch.utils.data import DataLoader, Sampler

from tlearn.config import DEFAULT_BATCH_SIZE
from tlearn.data.augment import BatchMixer, MixedLoader, preset
from tlearn.data.decoded import fast_image_loader
from tlearn.data.transforms import SafeTransformDataset, build_transform, collate_skip_none
from tlearn.preprocessing import Preprocessing


def default_workers() -> int:
    """One loader process per spare core: on a 2-core laptop, one decodes while one computes."""
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def image_loader(
    source,
    pre: Preprocessing,
    *,
    train: bool,
    batch_size: int | None = None,
    workers: int | None = None,
    augment: str | None = "none",
    hflip: bool = True,
    mixup: float | None = None,
    cutmix: float | None = None,
    memory_limit_bytes: int | None = None,
    generator: torch.Generator | None = None,
    sampler: Sampler[int] | None = None,
) -> Iterable:
    """Batches of `(images in [0, 1], labels, indices)`.

    Data that fits in memory is decoded once to uint8 at the training size and augmented in
    batches (tens of thousands of images/s); larger data streams through PIL in worker processes.
    Both yield the same batches, so nothing downstream knows which one ran. `sampler` orders
    the PIL path (the trainer's resumable `EpochSampler`); the decode-once path draws its order
    from `generator`. Training batches are mixed (mixup/cutmix: probability targets) when the
    augmentation asks for it.
    """
    workers = default_workers() if workers is None else workers
    batch_size = batch_size or DEFAULT_BATCH_SIZE
    augment = augment or "none"
    used = augment if train else "none"
    loader = fast_image_loader(
        source,
        pre,
        train=train,
        augment=used,
        batch_size=batch_size,
        generator=generator,
        memory_limit_bytes=memory_limit_bytes,
        workers=workers,
        hflip=hflip,
    )
    if loader is None:
        transform = build_transform(pre, train=train, augment=used, hflip=hflip)
        loader = DataLoader(
            SafeTransformDataset(source, transform),
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            generator=generator,
            num_workers=workers,
            persistent_workers=workers > 0 and train,
            collate_fn=collate_skip_none,
            pin_memory=torch.cuda.is_available(),
        )
    recipe = preset(augment, hflip=hflip, mixup=mixup, cutmix=cutmix)
    if not (train and recipe.mixes):
        return loader
    mixer = BatchMixer(len(source.classes), recipe.mixup, recipe.cutmix, generator)
    return MixedLoader(loader, mixer)
