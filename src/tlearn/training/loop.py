"""Plain functions for one training epoch and one evaluation pass (torchvision-reference style).

Both take any loader yielding `(inputs, labels, ...)` or None (a batch whose every image failed to
decode), so the same code trains a whole network on images and a head on cached features.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tlearn.progress import bar as progress_bar
from tlearn.training.step import correct_count, loss_and_logits, optimizer_step


@dataclass
class EpochStats:
    loss: float
    images: int
    seconds: float
    skipped: int = 0
    accuracy: float | None = None  # top-1 on the training batches, as they were trained on

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


class NonFiniteLoss(FloatingPointError):
    """The loss (or the weights) stopped being finite: the caller decides whether to retry."""

    def __init__(self, value: float, step: int):
        super().__init__(f"loss became {value} at step {step + 1}")
        self.value, self.step = value, step


# Steps between reading the loss back to the host on an accelerator: each read waits for the
# device to finish its queue, so the loss is read (and checked) every few steps, as nanoGPT logs.
# A CPU has no queue to wait for: every step is read and checked before the next.
READBACK_STEPS = 16


def readback_interval(device: torch.device) -> int:
    return 1 if device.type == "cpu" else READBACK_STEPS


@dataclass
class EpochProgress:
    """What an epoch has done so far: carried across a resume, so its metrics come out the same.

    `step` counts batch positions (undecodable batches too), which makes it the index of the next
    batch in the epoch's order. Losses still on the device wait in `pending` until `flush`.
    """

    step: int = 0
    loss_sum: float = 0.0
    seen: int = 0
    unused: int = 0  # lone images batch-norm cannot train on (see `train_one_epoch`)
    correct: int = 0  # top-1 hits of the steps read back
    # (loss tensor, correct tensor, images, step, lr) not read yet
    pending: list = field(default_factory=list)
    logged: list = field(default_factory=list)  # (loss, lr) of steps read, for the step log

    def flush(self) -> None:
        """Read the waiting losses back (one device sync) into the running sums.

        A non-finite one raises `NonFiniteLoss` naming its step: the steps after it were taken,
        so the caller goes back to a state saved before it (the NaN guard does).
        """
        if not self.pending:
            return
        n = len(self.pending)
        read = torch.stack([p[0] for p in self.pending] + [p[1].float() for p in self.pending])
        values = read.tolist()  # one sync for the losses and the hits together
        pending, self.pending = self.pending, []
        for value, hits, (_, _, images, step, lr) in zip(
            values[:n], values[n:], pending, strict=True
        ):
            if not math.isfinite(value):
                raise NonFiniteLoss(value, step)
            self.loss_sum += value * images
            self.seen += images
            self.correct += int(hits)
            self.logged.append((value, lr))

    def take_logged(self) -> list[tuple[float, float]]:
        logged, self.logged = self.logged, []
        return logged


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
    *,
    progress: EpochProgress | None = None,
    after_step: Callable[[Any, EpochProgress], None] | None = None,
    scaler: torch.amp.GradScaler | None = None,
    now: Callable[[], float] = time.perf_counter,
    readback_every: int = 1,
) -> EpochStats:
    """Train over `loader`; `progress` continues an epoch begun earlier (and is updated in place).

    `after_step(batch, progress)` runs after every batch position, None batches included: the
    trainer checkpoints, counts skipped files and honours stop requests there. A non-finite loss
    raises `NonFiniteLoss` when it is read back (`readback_every` steps; 1: before the next).
    """
    progress = progress if progress is not None else EpochProgress()
    set_train_mode()
    batchnorm_trains = any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()
    )
    start = now()
    seen_here = 0
    bar = progress_bar(loader, description, getattr(loader, "batch_size", None))
    for batch in bar:
        if batch is not None and batchnorm_trains and len(batch[1]) < 2:
            # Batch-norm cannot normalise one image (a last batch of one, or the one decodable
            # image of a batch): leave it out of this step rather than crash the run.
            progress.unused += len(batch[1])
        elif batch is not None:
            inputs, labels = batch[0].to(device, non_blocking=True), batch[1].to(device)
            loss, logits = loss_and_logits(model, inputs, labels, loss_fn, autocast)
            hits = correct_count(logits, labels)
            optimizer_step(loss, optimizer, scaler)
            scheduler.step()
            lr = optimizer.param_groups[0]["lr"]
            progress.pending.append((loss.detach(), hits, len(labels), progress.step, lr))
            seen_here += len(labels)
            if len(progress.pending) >= readback_every:
                progress.flush()
                bar.set_postfix(loss=f"{progress.loss_sum / max(1, progress.seen):.4f}")
        progress.step += 1
        if after_step is not None:
            after_step(batch, progress)
    progress.flush()
    # Images that failed to decode were dropped by the collate function: the shortfall counts them.
    dataset = getattr(loader, "dataset", None)
    skipped = (
        max(0, len(dataset) - progress.seen - progress.unused)
        if dataset is not None
        and hasattr(dataset, "__len__")
        and not getattr(loader, "partial", False)  # --steps-per-epoch: a share of the data
        else 0
    )
    return EpochStats(
        progress.loss_sum / max(1, progress.seen),
        seen_here,
        now() - start,
        skipped,
        progress.correct / progress.seen if progress.seen else None,
    )


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
    dtype: torch.dtype = torch.float32,
) -> Predictions:
    model.eval()
    start = time.perf_counter()
    logits, labels, indices = [], [], []
    offset = 0
    for batch in progress_bar(loader, description, getattr(loader, "batch_size", None)):
        if batch is None:
            continue
        inputs = batch[0].to(device, non_blocking=True)
        if inputs.ndim == 4:
            inputs = inputs.to(dtype).contiguous(memory_format=torch.channels_last)
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
