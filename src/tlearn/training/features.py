"""Loaders over image sources, and frozen-backbone features computed once per run.

A frozen backbone gives the same features every epoch, so recomputing them (the article's loop)
wastes nearly all the time of a linear probe: here they are computed once, in inference mode and
the run's precision, and the head trains on the stored tensors.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import DataLoader

from tlearn.config import TrainConfig
from tlearn.data import SafeTransformDataset, build_transform, collate_skip_none
from tlearn.preprocessing import Preprocessing
from tlearn.training import loop
from tlearn.training.runtime import default_workers


def image_loader(
    source,
    pre: Preprocessing,
    cfg: TrainConfig,
    *,
    train: bool,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
) -> DataLoader:
    transform = build_transform(pre, train=train, augment=cfg.augment if train else "none")
    workers = default_workers() if cfg.workers is None else cfg.workers
    return DataLoader(
        SafeTransformDataset(source, transform),
        batch_size=batch_size or cfg.batch_size,
        shuffle=train,
        generator=generator,
        num_workers=workers,
        persistent_workers=workers > 0 and train,
        collate_fn=collate_skip_none,
        pin_memory=torch.cuda.is_available(),
    )


def extract_features(
    model,
    source,
    pre: Preprocessing,
    cfg: TrainConfig,
    device: torch.device,
    autocast: Callable,
    description: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled (fused) backbone features of every decodable image, float32 on the CPU, in order."""
    loader = image_loader(source, pre, cfg, train=False, batch_size=max(cfg.batch_size, 256))

    class _Features(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.forward_features(x)

    pred = loop.predict_all(_Features(), loader, device, autocast, description)
    order = torch.argsort(pred.indices)
    return pred.logits[order].contiguous(), pred.labels[order].contiguous()
