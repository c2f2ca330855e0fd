"""A budget run's floor: the pretrained network's linear probe, solved before fine-tuning starts.

A few minutes of fine-tuning can end below a frozen backbone's solved linear probe (on the
clothing photos, `--budget 3m` tied the logistic-regression baseline that `tlearn train DIR`
beats), and with few images a class a gradual fine-tune can overfit them. Where the run stores
its frozen stages' outputs, the probe costs one inference pass of the top stages over them;
where it trains on images (gradual, for little data), one pass of the network over the images.
Then L-BFGS on what the pass gives: at most `SHARE` of the budget together (the pass over the
training images is cut short where it would overrun). After the last epoch the
run keeps the probe when it beats the best fine-tuned epoch on validation, so a budget run's model
is never worse there than the probe. Under `SMALL_VALIDATION` images they are compared on
validation loss, not accuracy: on 20 images one image is 5 points, and the best of twenty noisy
epochs beat the probe by three images on clothing20 while losing 4 points on its 713 test
images; the loss, a proper score, ranked all three small sets measured the way their test sets
did (benchmarks/results/probe_floor.md).

The head does not start from the probe's solution (LP-FT, Kumar et al. 2022): with the top
stages' batch-norms training, the features move in the first steps and the probe's sharp head
lost more than a fresh one (benchmarks/results/probe_floor.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlearn.checkpoint import save_model
from tlearn.data.sources import SubsetSource
from tlearn.preprocessing import Preprocessing
from tlearn.training import distributed, loop
from tlearn.training.balance import class_weights
from tlearn.training.features import FeatureSet, compute_features
from tlearn.training.hooks import Hook
from tlearn.training.linear_probe import SMALL_VALIDATION, load_solved_head
from tlearn.training.plan_file import set_plan_entry
from tlearn.training.solve import ProbeFit, fit_probe

SHARE = 0.05  # of the budget, at most, for the whole floor
# the pooled-features pass may take two thirds of it: solving grows with the rows about as fast
# (benchmarks/results/probe_floor.md)
PASS_SHARE = SHARE * 2 / 3


class PooledFeatures(nn.Module):
    """A classifier's pooled backbone features (the top stages run on stored stage outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class ProbeFloor(Hook):
    """Solves the probe on the stored stages (`start`), and keeps it at the end if it wins."""

    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.fit: ProbeFit | None = None
        self.pretrained: dict[str, torch.Tensor] | None = None  # the network before fine-tuning
        self.val: loop.Predictions | None = None
        self.seconds = 0.0
        self.rows = 0

    def start(self, run: Any, train: FeatureSet, val: FeatureSet | None, batch: int) -> None:
        """Solve the probe on the top stages' pooled output of both splits."""
        if val is None:  # no validation: nothing to compare the fine-tuned epochs with
            return
        started = time.perf_counter()
        pooled = PooledFeatures(run.model)
        vx = pooled_rows(pooled, val, batch, run)
        # the training rows in a shuffled order, until the budget's share is spent
        order = shuffled(len(train), run.cfg.seed)
        left = PASS_SHARE * self.budget_s - (time.perf_counter() - started)
        x = pooled_rows(pooled, train, batch, run, order, max(0.0, left))
        self.solve(run, x, vx, started, len(train))

    def start_on_images(self, run: Any, pre: Preprocessing, precision: str) -> None:
        """Solve the probe on the pooled features of the images (a run that trains on images).

        The validation pass times the network, so the training images taken (shuffled) are
        as many as the rest of the pass's share allows.
        """
        splits = run.splits
        if splits.val is None:
            return
        started = time.perf_counter()
        pooled = PooledFeatures(run.model)
        vx = image_rows(run, pooled, splits.val, pre, precision, "probe floor/val")
        per_image = (time.perf_counter() - started) / max(1, len(splits.val))
        left = PASS_SHARE * self.budget_s - (time.perf_counter() - started)
        n = len(splits.train) if per_image <= 0 else int(max(0.0, left) / per_image)
        n = min(len(splits.train), max(n, 2 * len(splits.classes)))  # a few a class at least
        order = shuffled(len(splits.train), run.cfg.seed)[:n].sort().values
        taken = splits.train if n == len(splits.train) else SubsetSource(splits.train, order)
        x = image_rows(run, pooled, taken, pre, precision, "probe floor/train")
        self.solve(run, x, vx, started, len(splits.train))

    def solve(self, run: Any, x: FeatureSet, vx: FeatureSet, started: float, n_train: int) -> None:
        """L-BFGS on the pooled rows; the network as pretrained is kept beside the solution."""
        n_classes = len(run.splits.classes)
        weight = None
        if run.cfg.balance != "none":
            weight = class_weights(run.splits.train.targets, n_classes)
        self.fit = fit_probe(
            x.features, x.labels, vx.features, vx.labels, n_classes,
            class_weight=weight, seed=run.cfg.seed,
        )  # fmt: skip
        self.val = loop.Predictions(self.fit.logits(vx.features), vx.labels, vx.indices, 0.0)
        self.pretrained = {k: v.detach().cpu().clone() for k, v in run.model.state_dict().items()}
        self.seconds, self.rows = time.perf_counter() - started, len(x)
        of = "" if len(x) == n_train else f" (the first {len(x)} of {n_train} shuffled)"
        run.log(
            f"linear probe on the pretrained features of {len(x)} training images{of} solved "
            f"in {self.seconds:.1f}s: validation accuracy {self.fit.val_accuracy:.4f}, loss "
            f"{self.fit.val_loss:.4f}; the run keeps it unless the best fine-tuned epoch beats "
            f"it on validation {metric_for(len(vx))}"
        )

    def on_train_end(self, loop_: Any) -> None:
        """The probe becomes best.safetensors (and the model returned) if it won on validation."""
        if self.fit is None or self.pretrained is None:
            return
        probe_acc = float(self.fit.val_accuracy or 0.0)
        verdict = compare(self.fit, loop_.val_predictions.get("best.safetensors"), loop_.best_score)
        kept = distributed.from_main(verdict.probe_wins)
        record(loop_.run_dir, self, verdict, kept)
        if not kept:
            return
        loop_.log(
            f"the linear probe (validation {verdict.metric} {verdict.probe:.4f}) beat the best "
            f"fine-tuned epoch ({verdict.fine_tuned:.4f}{verdict.why}): best.safetensors holds "
            "the probe"
        )
        loop_.model.load_state_dict(self.pretrained)
        load_solved_head(loop_.model.top(), self.fit)
        loop_.spec.metrics = {
            **(loop_.spec.metrics or {}), "epoch": 0, "val_accuracy": probe_acc,
            "val_loss": self.fit.val_loss, "train_loss": self.fit.train_loss,
        }  # fmt: skip
        loop_.best_score = probe_acc
        if distributed.is_main():
            path = loop_.run_dir / "best.safetensors"
            loop_.try_save("best.safetensors", lambda: save_model(path, loop_.model, loop_.spec))
        loop_.val_predictions["best.safetensors"] = self.val


@dataclass
class Verdict:
    """The probe against the best fine-tuned epoch, on one validation metric."""

    metric: str  # "accuracy" or "loss"
    probe: float
    fine_tuned: float
    why: str = ""

    @property
    def probe_wins(self) -> bool:
        if self.metric == "loss":
            return self.probe < self.fine_tuned
        return self.probe > self.fine_tuned


def compare(fit: ProbeFit, best: loop.Predictions | None, best_score: float) -> Verdict:
    """Accuracy, or on a small validation split the loss of the same predictions."""
    if best is not None and metric_for(len(best.labels)) == "loss":
        fine_tuned_loss, _ = loop.loss_and_accuracy(best)
        why = f"; loss, as {len(best.labels)} validation images are too few to rank by accuracy"
        return Verdict("loss", float(fit.val_loss or 0.0), fine_tuned_loss, why)
    return Verdict("accuracy", float(fit.val_accuracy or 0.0), float(best_score))


def metric_for(val_images: int) -> str:
    return "loss" if 0 < val_images < SMALL_VALIDATION else "accuracy"


def shuffled(n: int, seed: int) -> torch.Tensor:
    """The training rows in the order the floor takes them (the same order on every rank)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def image_rows(
    run: Any, pooled: nn.Module, source: Any, pre: Preprocessing, precision: str, name: str
) -> FeatureSet:
    """Pooled features of `source`'s images, as validation sees them (no augmentation)."""
    pooled.eval()
    return compute_features(pooled, source, pre, run.cfg, run.device, precision, name)


@torch.no_grad()
def pooled_rows(
    pooled: nn.Module,
    stored: FeatureSet,
    batch: int,
    run: Any,
    order: torch.Tensor | None = None,
    seconds: float | None = None,
) -> FeatureSet:
    """Pooled features of stored stage outputs (mirrors left out: half the cost), in `order`,
    stopping after the batch that passes `seconds`."""
    order = torch.arange(len(stored)) if order is None else order
    pooled.eval()
    started = time.perf_counter()
    features, taken = [], []
    for first in range(0, len(order), batch):
        rows = order[first : first + batch]
        x = stored.features[rows].to(run.device, torch.float32)
        with run.autocast():
            features.append(pooled(x.contiguous(memory_format=torch.channels_last)).float().cpu())
        taken.append(rows)
        if seconds is not None and time.perf_counter() - started > seconds:
            break
    rows = torch.cat(taken)
    indices = stored.indices[rows] if stored.indices is not None else rows
    return FeatureSet(torch.cat(features), stored.labels[rows], None, indices)


def record(run_dir: Path, floor: ProbeFloor, verdict: Verdict, kept: bool) -> None:
    """The floor and the decision, in plan.json beside the budget plan."""
    if not distributed.is_main() or floor.fit is None:
        return
    fit = floor.fit
    set_plan_entry(
        run_dir,
        "probe_floor",
        {
            "val_accuracy": round(float(fit.val_accuracy or 0.0), 5),
            "val_loss": round(float(fit.val_loss or 0.0), 5),
            "l2": fit.l2,
            "training_images": floor.rows,
            "seconds": round(floor.seconds, 1),
            "compared_on": f"val_{verdict.metric}",
            f"best_fine_tuned_val_{verdict.metric}": round(verdict.fine_tuned, 5),
            "kept": "probe" if kept else "fine-tuned",
        },
    )
