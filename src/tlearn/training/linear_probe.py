"""A frozen backbone's linear head, chosen on validation: which features, which L2 strength.

Stage features won 2.6 points on Fashion-MNIST and lost several on photos; no constant holds on
both. So with `--features auto` both are tried on the run's own validation set: the stage
features hold the last features as their final columns, so one extraction (from the feature
cache) serves both candidates. The winner's fit becomes the run's head, and the network is
rebuilt without stage taps when the last features won, so a model file holds what it uses.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from tlearn.config import TrainConfig
from tlearn.data import Splits
from tlearn.models import Backbone, Classifier
from tlearn.models.assemble import feature_width
from tlearn.preprocessing import Preprocessing
from tlearn.training.balance import class_weights
from tlearn.training.build import build_classifier
from tlearn.training.features import FeatureSet, split_features
from tlearn.training.plan_file import set_plan_entry
from tlearn.training.solve import (
    CHOICE_FOLDS,
    CV_FOLDS,
    L2_GRID,
    ProbeFit,
    best_strength,
    cross_validate,
    fit_probe,
    out_of_fold_logits,
)

Log = Callable[[str], None]

# Below this many validation images one image moves accuracy by half a point or more, and the
# candidates' losses differ by less than their noise: the choice is then made by k-fold over
# train + val together, which scores every labelled image (benchmarks/results/probe_choice.md).
SMALL_VALIDATION = 200
CV_MAX = 5000  # images: above this the folds' solves cost more than the choice is worth
CHOSEN_ON = {
    "validation": "validation",
    "cv": f"{CV_FOLDS}-fold cross-validation on the training images",
    "cv-train-val": f"{CHOICE_FOLDS}-fold cross-validation on the training and validation images",
}
SOLVED_ON = {
    "validation": "validation",
    "cv": "cross-validation",
    "cv-train-val": "train + val cross-validation",
}  # run_plan.json's words


@dataclass
class SolvedProbe:
    """The chosen head and the features it was solved on (the run records them as epoch 1)."""

    features: str  # "last" or "stages"
    fit: ProbeFit
    train: FeatureSet
    val: FeatureSet | None
    seconds: float  # solving, all candidates together
    candidates: list[dict]  # per feature set: its best strength and validation scores
    chosen_on: str = "validation"  # a key of CHOSEN_ON
    # each training row's out-of-fold logits, for the temperature (None: --no-calibration)
    held_out: torch.Tensor | None = None


def resolve_head_fit(cfg: TrainConfig) -> str:
    """`auto`: solved, unless options that only mean something to SGD epochs were given."""
    if cfg.head_fit != "auto":
        return cfg.head_fit
    sgd_only = cfg.epochs is not None or cfg.lr is not None or cfg.head == "mlp"
    return "sgd" if sgd_only or cfg.fusion != "concat" or cfg.mixup or cfg.cutmix else "lbfgs"


def solves_head(cfg: TrainConfig, strategy: str) -> bool:
    linear = cfg.head in (None, "linear")
    return cfg.head_fit == "lbfgs" and linear and cfg.trains_head_on_features(strategy)


def solve_probe(
    cfg: TrainConfig,
    backbones: Sequence[Backbone],
    model: Classifier,
    taps: list[list[str]],
    splits: Splits,
    pre: Preprocessing,
    device: torch.device,
    precision: str,
    log: Log,
) -> tuple[Classifier, list[list[str]], SolvedProbe]:
    """Extract the features once, solve each candidate, and return the network to save."""
    log(f"computing frozen features once ({precision}); the head is then solved on them")
    train, val = split_features(model, splits, pre, cfg, device, precision, log)
    tapped = any(taps)
    candidates: dict[str, torch.Tensor | None] = {}  # name: its columns (None: all)
    if cfg.features != "stages":
        candidates["last"] = last_columns(backbones, model, taps)
    if cfg.features == "stages" or (cfg.features == "auto" and tapped):
        candidates["stages"] = None
    weight = None
    if cfg.balance != "none":  # full batch: a sampler's draws come to the same weights
        weight = class_weights(splits.train.targets, len(splits.classes))
    started = time.perf_counter()
    chosen, fit, rows, on = solve_candidates(
        train, val, candidates, len(splits.classes), weight, cfg.seed
    )
    seconds = time.perf_counter() - started
    log_choice(rows, chosen, on, seconds, log)
    if chosen == "last" and tapped:
        taps = [[] for _ in backbones]
        model = build_classifier(backbones, len(splits.classes), cfg, taps).to(device)
        model = model.to(memory_format=torch.channels_last)
        columns = candidates["last"]
        train = select(train, columns)
        val = select(val, columns) if val is not None else None
    record_choice(Path(cfg.out or "."), chosen, rows, on)
    probe = SolvedProbe(chosen, fit, train, val, seconds, rows, on)
    if cfg.calibration:
        probe.held_out = held_out_logits(probe, len(splits.classes), weight, cfg.seed, log)
    return model, taps, probe


def held_out_logits(
    probe: SolvedProbe, n_classes: int, weight: torch.Tensor | None, seed: int, log: Log
) -> torch.Tensor:
    started = time.perf_counter()
    x, y = probe.train
    logits = out_of_fold_logits(
        probe.fit, x, y, probe.train.flipped, n_classes, class_weight=weight, seed=seed
    )
    log(
        f"out-of-fold logits of the {len(y)} training images in "
        f"{time.perf_counter() - started:.1f}s, for the temperature"
    )
    return logits


def record_choice(run_dir: Path, chosen: str, rows: list[dict], on: str) -> None:
    """The candidates and the choice, in plan.json beside a budget plan's (or alone)."""
    choice = {"method": "lbfgs", "chosen": chosen, "chosen_on": on, "candidates": rows}
    set_plan_entry(run_dir, "head_fit", choice)


def last_columns(
    backbones: Sequence[Backbone], model: Classifier, taps: list[list[str]]
) -> torch.Tensor | None:
    """Columns of the joined features that are each backbone's own pooled output (None: all)."""
    if not any(taps):
        return None
    columns, start = [], 0
    for b, wrapped in zip(backbones, model.backbones, strict=True):
        width = feature_width(b, wrapped)
        columns.append(torch.arange(start + width - b.num_features, start + width))
        start += width
    return torch.cat(columns)


def select(features: FeatureSet, columns: torch.Tensor | None) -> FeatureSet:
    if columns is None:
        return features
    flipped = features.flipped[:, columns] if features.flipped is not None else None
    return FeatureSet(features.features[:, columns], features.labels, flipped, features.indices)


def solve_candidates(
    train: FeatureSet,
    val: FeatureSet | None,
    candidates: dict[str, torch.Tensor | None],
    num_classes: int,
    weight: torch.Tensor | None,
    seed: int,
) -> tuple[str, ProbeFit, list[dict], str]:
    """The chosen candidate, its fit on the training images, every candidate's row, and what
    they were compared on (a key of `CHOSEN_ON`)."""
    if not too_small(val, train):
        fits = {
            name: fit_on(train, val, c, num_classes, weight, seed) for name, c in candidates.items()
        }
        chosen = choose({name: f.val_loss or 0.0 for name, f in fits.items()})
        rows = [candidate_row(name, f) for name, f in fits.items()]
        return chosen, fits[chosen], rows, "validation" if val is not None else "cv"
    tried = {
        name: pooled_cross_validation(train, val, c, num_classes, weight, seed)
        for name, c in candidates.items()
    }
    best = {name: best_strength(t) for name, t in tried.items()}
    chosen = choose({name: b["val_loss"] for name, b in best.items()})
    l2 = best[chosen]["l2"]
    fit = fit_on(train, val, candidates[chosen], num_classes, weight, seed, grid=(l2,))
    rows = [row(name, width(train, candidates[name]), best[name], tried[name]) for name in tried]
    return chosen, fit, rows, "cv-train-val"


def too_small(val: FeatureSet | None, train: FeatureSet) -> bool:
    """A validation split too small to choose on, beside a set small enough to fold cheaply."""
    if val is None:
        return False
    return len(val.labels) < SMALL_VALIDATION and len(val.labels) + len(train.labels) <= CV_MAX


def pooled_cross_validation(
    train: FeatureSet,
    val: FeatureSet,
    columns: torch.Tensor | None,
    num_classes: int,
    weight: torch.Tensor | None,
    seed: int,
) -> list[dict]:
    """One candidate's strengths scored by k-fold over the training and validation images."""
    t, v = select(train, columns), select(val, columns)
    x, y = torch.cat([t.features, v.features]), torch.cat([t.labels, v.labels])
    mirrors = (t.flipped, torch.arange(len(t.labels))) if t.flipped is not None else None
    return cross_validate(x, y, num_classes, mirrors=mirrors, class_weight=weight, seed=seed)


def width(features: FeatureSet, columns: torch.Tensor | None) -> int:
    return int(features.features.shape[1] if columns is None else len(columns))


def fit_on(
    train: FeatureSet,
    val: FeatureSet | None,
    columns: torch.Tensor | None,
    num_classes: int,
    weight: torch.Tensor | None,
    seed: int,
    grid: Sequence[float] = L2_GRID,
) -> ProbeFit:
    """One candidate's fit; mirrored training images (`--augment flip`) are extra rows."""
    chosen = select(train, columns)
    x, y = chosen
    if chosen.flipped is not None:
        x = torch.cat([x, chosen.flipped])
        y = torch.cat([y, y])
    vx, vy = select(val, columns) if val is not None else (None, None)
    return fit_probe(x, y, vx, vy, num_classes, grid=grid, class_weight=weight, seed=seed)


def choose(losses: dict[str, float]) -> str:
    """The lower validation loss (as for the strength); last features on a tie."""
    return min(losses, key=lambda k: (losses[k], k != "last"))


def candidate_row(name: str, fit: ProbeFit) -> dict:
    best = {"l2": fit.l2, "val_accuracy": fit.val_accuracy or 0.0, "val_loss": fit.val_loss or 0.0}
    return row(name, int(fit.weight.shape[1]), best, fit.tried)


def row(name: str, width: int, best: dict, tried: list[dict]) -> dict:
    """A candidate's plan.json entry: its best strength's scores and every strength tried."""
    return {
        "features": name,
        "width": width,
        "l2": best["l2"],
        "val_accuracy": round(best["val_accuracy"], 5),
        "val_loss": round(best["val_loss"], 5),
        "strengths": [{k: round(v, 6) for k, v in t.items()} for t in tried],
    }


def log_choice(rows: list[dict], chosen: str, on: str, seconds: float, log: Log) -> None:
    where = CHOSEN_ON[on]
    for r in rows:
        log(
            f"  linear head on {r['features']} features ({r['width']} wide): best L2 {r['l2']:g}, "
            f"{where} accuracy {r['val_accuracy']:.4f}, loss {r['val_loss']:.4f}"
        )
    log(f"head solved (L-BFGS) in {seconds:.1f}s: {chosen} features chosen on {where}")


def load_solved_head(top: torch.nn.Module, fit: ProbeFit) -> None:
    """Write `fit` into a fusion + linear head (`Classifier.top()`), exactly its map.

    A head after stage features standardises them itself (`FeatureNorm`): it takes the fit's
    statistics, so the linear layer sees the standardised features it was solved on, as bf16
    inference prefers. A plain linear layer takes the standardisation folded into its weights.
    """
    layers = list(top.head) if isinstance(top.head, torch.nn.Sequential) else [top.head]
    linear = layers[-1]
    with torch.no_grad():
        if len(layers) == 2:  # FeatureNorm, Linear
            norm = layers[0]
            norm.running_mean.copy_(fit.mean)
            norm.running_var.copy_(fit.scale.pow(2) - norm.eps)
            linear.weight.copy_(fit.weight)
            linear.bias.copy_(fit.bias)
        else:
            weight, bias = fit.folded()
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
