"""One training step, shared by the epoch loop, the LR finder and the budget planner's probe.

Forward under the run's autocast with the loss in fp32, then gradients and the optimizer step.
fp16 (CUDA GPUs without bf16) scales the loss so small gradients do not underflow; bf16 and fp32
need no scaler (timm's train.py makes the same distinction).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import torch
from torch import nn


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A loss scaler where fp16 trains on a GPU; None elsewhere (bf16 and fp32 do not need one)."""
    if precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def training_loss(
    module: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    autocast: Callable[[], AbstractContextManager],
) -> torch.Tensor:
    """The loss of one batch (images go channels-last, as the network's weights are)."""
    return loss_and_logits(module, inputs, labels, loss_fn, autocast)[0]


def loss_and_logits(
    module: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    autocast: Callable[[], AbstractContextManager],
) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss of one batch and its logits (the epoch counts its correct predictions)."""
    if inputs.ndim == 4:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    with autocast():
        logits = module(inputs).float()
        return loss_fn(logits, labels), logits


def correct_count(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Top-1 hits of a batch, on the device; mixed (mixup, cutmix) targets count their largest
    share as the label."""
    hard = labels if labels.ndim == 1 else labels.argmax(1)
    return (logits.detach().argmax(1) == hard).sum()


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
) -> None:
    """Gradients of `loss`, then one step; a scaler skips steps whose gradients overflowed."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        optimizer.step()
        return
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
