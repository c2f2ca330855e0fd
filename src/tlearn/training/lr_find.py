"""The learning-rate range test (Smith 2015, fastai's `lr_find`): pick `--lr` from the data.

The model the run would train (same backbones, head, strategy, augmentation, loss) trains for up
to `steps` batches while the rate grows exponentially from `start` to `end`; the loss, smoothed
(an exponential moving average with bias correction, beta 0.98), is recorded and the sweep stops
once it exceeds 4x its minimum. The sweep trains what the run's widest phase trains (everything
for finetune and gradual, the top stages for freeze:N, the head for linear-probe) at the run's
discriminative rates, so the rate found is the `--lr` that run uses. A linear probe without
augmentation sweeps on frozen features, which the run then reuses from the feature cache.

The suggestion is fastai's "valley" (its default since 2.5): the longest stretch over which the
smoothed loss keeps falling, and a point 1/2 of the way down it (index start + len/3 + len/6).
The older "steepest descent" (the most negative slope of the loss against log lr) is a
derivative of a noisy curve at one point: it often lands at the first bump of the curve, a rate
10-100x too low or right before divergence. The valley uses the whole descent, so it moves less
from run to run; the steepest point is still recorded in the CSV and on the plot. As fastai does,
the first 10% and the last 5 points of the sweep are left out of both.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tlearn.config import TrainConfig
from tlearn.data import Splits, SubsetSource, image_loader, stratified_indices
from tlearn.files import atomic_write, atomic_write_text
from tlearn.models import create_backbone
from tlearn.preprocessing import model_input
from tlearn.training.build import build_classifier, feature_taps
from tlearn.training.features import FeatureLoader, extract_features
from tlearn.training.resolve import load_run_splits, prepare_run_dir, resolve_strategy
from tlearn.training.runtime import (
    autocast_factory,
    pick_device,
    pick_precision,
    seed_everything,
)
from tlearn.training.step import grad_scaler, optimizer_step, training_loss
from tlearn.training.strategies import (
    GRADUAL_DEFAULT_DECAY,
    Phase,
    apply_phase,
    build_optimizer,
    freeze_batchnorm_of_frozen,
    plan_backbone_phases,
)

Log = Callable[[str], None]

START_LR, END_LR, STEPS = 1e-7, 10.0, 100
DIVERGE = 4.0  # stop once the smoothed loss exceeds this multiple of its minimum
BETA = 0.98  # smoothing of the recorded loss


@dataclass
class LRFindResult:
    """The sweep and its suggestion; `save(dir)` writes lr_find.csv and lr_find.png there."""

    lrs: list[float]
    losses: list[float]  # raw loss of each step
    smoothed: list[float]
    suggestion: float
    method: str  # "valley", or why the default was kept
    steepest: float | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def minimum(self) -> float | None:
        """The rate at the lowest smoothed loss (fastai v1's rule of thumb: a tenth of it)."""
        return self.lrs[int(np.argmin(self.smoothed))] if self.lrs else None

    def save(self, out_dir: str | Path) -> list[Path]:
        out = Path(out_dir)
        csv_path, png_path = out / "lr_find.csv", out / "lr_find.png"
        atomic_write_text(csv_path, self.to_csv())
        atomic_write(png_path, lambda tmp: _plot(self, tmp))
        self.files = [csv_path, png_path]
        return self.files

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["step", "lr", "loss", "smoothed_loss", "mark"])
        for i, (lr, loss, smooth) in enumerate(
            zip(self.lrs, self.losses, self.smoothed, strict=True)
        ):
            marks = []
            if lr == self.suggestion:
                marks.append(self.method)
            if lr == self.steepest:
                marks.append("steepest")
            writer.writerow([i, f"{lr:.6g}", f"{loss:.6g}", f"{smooth:.6g}", "+".join(marks)])
        return buffer.getvalue()


# --- the sweep and its reading, independent of models ------------------------------------------


def exponential_lrs(start: float, end: float, steps: int) -> list[float]:
    return [start * (end / start) ** (i / max(1, steps - 1)) for i in range(steps)]


def range_test(
    step: Callable[[float], float],
    *,
    start: float = START_LR,
    end: float = END_LR,
    steps: int = STEPS,
    diverge: float = DIVERGE,
    beta: float = BETA,
) -> tuple[list[float], list[float], list[float]]:
    """`(lrs, losses, smoothed)`: `step(lr)` trains one batch at `lr` and returns its loss.

    Stops early when the loss is not finite or the smoothed loss passes `diverge` x its minimum.
    """
    lrs, losses, smoothed = [], [], []
    average, best = 0.0, math.inf
    for i, lr in enumerate(exponential_lrs(start, end, steps)):
        loss = step(lr)
        if not math.isfinite(loss):
            break
        average = beta * average + (1 - beta) * loss
        smooth = average / (1 - beta ** (i + 1))
        lrs.append(lr)
        losses.append(loss)
        smoothed.append(smooth)
        best = min(best, smooth)
        if smooth > diverge * best:
            break
    return lrs, losses, smoothed


def _trimmed(n: int, steps: int) -> slice:
    """fastai's window: without the first 10% (still at ~no learning) and the last 5 points."""
    return slice(steps // 10, max(steps // 10, n - 5))


def valley_index(losses: list[float]) -> int | None:
    """fastai's valley: the longest decreasing run (not necessarily contiguous), 1/2 way in."""
    n = len(losses)
    if n < 3:
        return None
    longest = [1] * n
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    if end == start:
        return None
    sections = (end - start) / 3
    return start + int(sections) + int(sections / 2)


def steepest_index(lrs: list[float], losses: list[float]) -> int | None:
    if len(losses) < 2:
        return None
    slopes = np.diff(np.asarray(losses)) / np.diff(np.log(np.asarray(lrs)))
    return int(np.argmin(slopes))


def suggest(
    lrs: list[float], smoothed: list[float], steps: int, default: float
) -> tuple[float, str, float | None]:
    """`(rate, method, steepest rate)`; the default rate when the curve says too little."""
    window = _trimmed(len(lrs), steps)
    w_lrs, w_loss = lrs[window], smoothed[window]
    steep = steepest_index(w_lrs, w_loss)
    steepest = w_lrs[steep] if steep is not None else None
    valley = valley_index(w_loss)
    if valley is None or len(w_loss) < 10:
        why = f"default {default:g} (the loss curve was too short or never fell)"
        return default, why, steepest
    return w_lrs[valley], "valley", steepest


def suggest_lr(
    step: Callable[[float], float],
    *,
    default: float,
    start: float = START_LR,
    end: float = END_LR,
    steps: int = STEPS,
) -> LRFindResult:
    """Run the range test with `step` and read its suggestion."""
    if not 0 < start < end:
        raise ValueError(f"the sweep needs 0 < start < end, not {start} and {end}")
    lrs, losses, smoothed = range_test(step, start=start, end=end, steps=steps)
    rate, method, steepest = suggest(lrs, smoothed, steps, default)
    return LRFindResult(lrs, losses, smoothed, rate, method, steepest)


# --- on a run's model and data ------------------------------------------------------------------


def lr_find(
    cfg: TrainConfig,
    log: Log = print,
    *,
    start: float = START_LR,
    end: float = END_LR,
    steps: int = STEPS,
) -> LRFindResult:
    """`tlearn lr-find`: the sweep for the run `cfg` describes, saved in `cfg.out`."""
    cfg.validate()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    precision = pick_precision(device, cfg.precision)
    splits = load_run_splits(cfg)
    out = prepare_run_dir(cfg.out, cfg.data)
    strategy = resolve_strategy(cfg, len(splits.train), log)
    cfg.fill_defaults()
    cfg.resolve_step_defaults(strategy)
    return find_for_run(
        cfg, splits, strategy, device, precision, out, log, start=start, end=end, steps=steps
    )


def find_for_run(
    cfg: TrainConfig,
    splits: Splits,
    strategy: str,
    device: torch.device,
    precision: str,
    out_dir: Path,
    log: Log = print,
    *,
    start: float = START_LR,
    end: float = END_LR,
    steps: int = STEPS,
) -> LRFindResult:
    """The sweep on the model `fit` would build for `cfg`, saved in `out_dir` and logged.

    Seeds like `fit` before building the model; the caller reseeds before training, so a run
    with `--lr auto` trains exactly as one given the suggested rate.
    """
    seed_everything(cfg.seed)
    autocast = autocast_factory(device, precision)
    # built as fit builds it
    backbones = [create_backbone(n, cfg.weights, cfg.image_size) for n in cfg.backbone]
    taps = feature_taps(cfg, backbones, strategy)
    model = build_classifier(backbones, len(splits.classes), cfg, taps).to(device)
    model = model.to(memory_format=torch.channels_last)
    stages = [b.stages() for b in backbones]
    phase = plan_backbone_phases(strategy, cfg.epochs, [len(s) for s in stages])[-1]
    pre = model_input([b.preprocessing for b in backbones])
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    generator = torch.Generator().manual_seed(cfg.seed)
    on_features = phase.trainable_stages == 0 and cfg.features_cacheable
    if on_features:
        module: nn.Module = model.top()
        batches = _feature_batches(model, splits, pre, cfg, device, precision, steps, generator)
        groups = apply_phase(module, [], Phase(1, 0), 1.0, 1.0, cfg.weight_decay)
        for p in model.backbones.parameters():
            p.requires_grad_(False)

        def set_mode() -> None:
            module.train()

    else:
        module = model
        source = _sweep_subset(splits, cfg, steps)
        batches = image_loader(source, pre, train=True, generator=generator, **cfg.loader_options())
        decay = cfg.lr_decay
        if cfg.strategy_kind in ("gradual", "auto") and decay >= 1.0:  # as the trainer does
            decay = GRADUAL_DEFAULT_DECAY
        groups = apply_phase(model.top(), stages, phase, 1.0, decay, cfg.weight_decay)

        def set_mode() -> None:
            model.train()
            freeze_batchnorm_of_frozen(model)

    optimizer = build_optimizer(groups, cfg.optimizer, cfg.momentum)
    scaler = grad_scaler(device, precision)
    factors = [g["lr"] for g in optimizer.param_groups]  # each group's share of the peak rate
    what = "frozen features" if on_features else f"images, top {phase.trainable_stages} stage(s)"
    log(f"lr-find: up to {steps} steps from {start:g} to {end:g} on {what} ({strategy})")
    set_mode()
    stream = _forever(batches)

    def step(lr: float) -> float:
        for g, factor in zip(optimizer.param_groups, factors, strict=True):
            g["lr"] = lr * factor
        batch = next(stream)
        inputs = batch[0].to(device, non_blocking=True)
        loss = training_loss(module, inputs, batch[1].to(device), loss_fn, autocast)
        if not torch.isfinite(loss):
            return float("nan")
        optimizer_step(loss, optimizer, scaler)
        return float(loss.item())

    result = suggest_lr(step, default=cfg.resolved_lr(), start=start, end=end, steps=steps)
    result.save(out_dir)
    log_suggestion(result, out_dir, log)
    return result


def log_suggestion(result: LRFindResult, out_dir: Path, log: Log) -> None:
    steep = f", steepest descent at {result.steepest:.2g}" if result.steepest else ""
    if result.minimum is not None:
        steep += f", loss lowest at {result.minimum:.2g}"
    log(
        f"lr-find: suggested lr {result.suggestion:.2g} ({result.method}{steep}); "
        f"plot {out_dir / 'lr_find.png'}"
    )


def _sweep_subset(splits: Splits, cfg: TrainConfig, steps: int) -> Any:
    """The images a sweep can use: at most `steps` batches' worth, stratified, decoded once."""
    n = steps * cfg.batch_size
    if n >= len(splits.train):
        return splits.train
    return SubsetSource(splits.train, stratified_indices(splits.train.targets, n, cfg.seed))


def _feature_batches(model, splits, pre, cfg, device, precision, steps, generator) -> Iterable:
    """Frozen features to sweep on. With the feature cache on, those of the whole training set
    exactly as the run computes them (the run then reads them from the cache); without it, those
    of a subset only."""
    flip = cfg.augment == "flip" and cfg.hflip
    source = splits.train if cfg.cache else _sweep_subset(splits, cfg, steps)
    features = extract_features(model, source, pre, cfg, device, precision, "features/train",
                                flip=flip)  # fmt: skip
    return FeatureLoader(features, cfg.batch_size, shuffle=True, generator=generator)


def _forever(loader: Iterable) -> Iterator[Any]:
    """Batches without end (a small dataset is gone round again); undecodable ones skipped."""
    while True:
        empty = True
        for batch in loader:
            if batch is not None:
                empty = False
                yield batch
        if empty:
            raise RuntimeError("the sweep's loader yielded no batch")


def _plot(result: LRFindResult, path: Path) -> None:
    """Loss against rate on a log axis, the suggestion marked (matplotlib, no display needed)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(result.lrs, result.losses, color="0.8", linewidth=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
    if result.lrs:
        at = result.lrs.index(result.suggestion) if result.suggestion in result.lrs else None
        if at is not None:
            ax.plot(
                result.suggestion,
                result.smoothed[at],
                "o",
                color="C3",
                label=f"{result.method} {result.suggestion:.2g}",
            )
        if result.steepest is not None:
            k = result.lrs.index(result.steepest)
            ax.plot(result.steepest, result.smoothed[k], "x", color="C2", label="steepest")
        top = min(max(result.smoothed), 2.5 * min(result.smoothed) + 0.5)
        ax.set_ylim(min(result.smoothed) * 0.95, max(top, min(result.smoothed) * 1.1))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr-find: suggested {result.suggestion:.2g} ({result.method})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, format="png")
