"""Plain functions for one training epoch and one evaluation pass (torchvision-reference style).

Both take any loader yielding `(inputs, labels, ...)` or None (a batch whose every image failed to
decode), so the same code trains a whole network on images and a head on cached features.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm


@dataclass
class EpochStats:
    loss: float
    images: int
    seconds: float
    skipped: int = 0

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    model: nn.Module,
    loader: Iterable,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    set_train_mode: Callable[[], None],
    description: str = "train",
) -> EpochStats:
    set_train_mode()
    start = time.perf_counter()
    total_loss, seen = 0.0, 0
    bar = tqdm(loader, desc=description, leave=False, disable=None, unit="batch")
    for batch in bar:
        if batch is None:
            continue
        inputs, labels = batch[0].to(device, non_blocking=True), batch[1].to(device)
        if inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast():
            loss = loss_fn(model(inputs).float(), labels)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / max(1, seen):.4f}")
    # Images that failed to decode were dropped by the collate function: the shortfall counts them.
    dataset = getattr(loader, "dataset", None)
    skipped = (
        max(0, len(dataset) - seen) if dataset is not None and hasattr(dataset, "__len__") else 0
    )
    return EpochStats(total_loss / max(1, seen), seen, time.perf_counter() - start, skipped)


@dataclass
class Predictions:
    logits: torch.Tensor  # [N, C] float32, on the CPU
    labels: torch.Tensor  # [N] int64
    indices: torch.Tensor  # [N] position of each row in the dataset
    seconds: float


@torch.inference_mode()
def predict_all(
    model: nn.Module,
    loader: Iterable,
    device: torch.device,
    autocast: Callable[[], AbstractContextManager],
    description: str = "eval",
) -> Predictions:
    model.eval()
    start = time.perf_counter()
    logits, labels, indices = [], [], []
    offset = 0
    for batch in tqdm(loader, desc=description, leave=False, disable=None, unit="batch"):
        if batch is None:
            continue
        inputs = batch[0].to(device, non_blocking=True)
        if inputs.ndim == 4:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast():
            out = model(inputs)
        logits.append(out.float().cpu())
        labels.append(batch[1].cpu())
        if len(batch) > 2:
            indices.append(torch.as_tensor(batch[2]))
        else:
            indices.append(torch.arange(offset, offset + len(out)))
        offset += len(out)
    if not logits:
        empty = torch.empty(0)
        return Predictions(empty, empty.long(), empty.long(), time.perf_counter() - start)
    return Predictions(
        torch.cat(logits),
        torch.cat(labels).long(),
        torch.cat(indices).long(),
        time.perf_counter() - start,
    )


def loss_and_accuracy(pred: Predictions) -> tuple[float, float]:
    if len(pred.labels) == 0:
        return float("nan"), float("nan")
    loss = nn.functional.cross_entropy(pred.logits, pred.labels).item()
    accuracy = (pred.logits.argmax(1) == pred.labels).float().mean().item()
    return loss, accuracy
