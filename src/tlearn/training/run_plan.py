"""What a run will do, decided before its first step, and why: plan.json's `run`.

`fit` resolves every choice (strategy, how the head is fitted, features, size, length, rate,
precision, the input path and the phases) before it builds the loop; `RunPlan` freezes them in
one record, so one place says what a run will do and why. A `--budget` plan's probe and the
solved probe's candidates sit beside it in plan.json; what changes while the run trains (a
budget refit) is an event appended there (`training/budget/keeper.py`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tlearn.config import TrainConfig
from tlearn.training.plan_file import set_plan_entry
from tlearn.training.strategies import Phase

INPUT_PATHS = {
    "solved": "a linear head solved once on the frozen backbone's features (L-BFGS)",
    "features": "the frozen backbone's features computed once; the head trains on them",
    "stored-stages": "the frozen first stages' outputs stored once; the rest trains on them",
    "images": "the images decoded and augmented every epoch; the network trains on them",
}


@dataclass(frozen=True)
class RunPlan:
    strategy: str
    input_path: str  # a key of INPUT_PATHS
    head: str
    head_fit: str
    features: str
    image_size: int | None
    epochs: int
    steps_per_epoch: int | None
    batch_size: int
    lr: float
    schedule: str
    augment: str
    precision: str  # training
    inference_precision: str  # features, evaluation
    phases: tuple[tuple[int, int], ...]  # (epochs, backbone stages training) of each phase
    why: tuple[tuple[str, str], ...]  # (choice, the reason it was made)

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["phases"] = [{"epochs": e, "trainable_stages": s} for e, s in self.phases]
        record["why"] = dict(self.why)
        return record


@dataclass(frozen=True)
class Resolved:
    """What `fit` found out while resolving, beside the finished config."""

    strategy: str
    input_path: str
    phases: list[Phase]
    precision: str
    inference_precision: str
    budget_planned: bool
    solved_on: str | None = None  # the solved probe's feature choice: "validation" or "cv"


def run_plan(asked: TrainConfig, cfg: TrainConfig, found: Resolved) -> RunPlan:
    """The frozen record of a run: `asked` as the user gave it, `cfg` as resolved."""
    return RunPlan(
        strategy=found.strategy,
        input_path=found.input_path,
        head=str(cfg.head),
        head_fit=str(cfg.head_fit),
        features=str(cfg.features),
        image_size=cfg.image_size,
        epochs=int(cfg.epochs or 0),
        steps_per_epoch=cfg.steps_per_epoch,
        batch_size=int(cfg.batch_size or 0),
        lr=float(cfg.resolved_lr()),
        schedule=str(cfg.schedule),
        augment=str(cfg.augment),
        precision=found.precision,
        inference_precision=found.inference_precision,
        phases=tuple((p.epochs, p.trainable_stages) for p in found.phases),
        why=tuple(reasons(asked, cfg, found).items()),
    )


def reasons(asked: TrainConfig, cfg: TrainConfig, found: Resolved) -> dict[str, str]:
    """Why each choice is what it is: given, planned, measured, chosen on validation, or a
    default."""
    default = TrainConfig()
    planned = "the --budget plan (plan.json's probe and reasons)"

    def source(name: str, otherwise: str) -> str:
        value = getattr(asked, name)
        if value is not None and value != getattr(default, name):
            return f"given (--{name.replace('_', '-')})"
        return planned if found.budget_planned and name in PLANNED else otherwise

    solved = found.input_path == "solved"
    why = {
        "strategy": source("strategy", strategy_reason(found.strategy)),
        "input_path": INPUT_PATHS[found.input_path],
        "head": source("head", "default: a linear head"),
        "head_fit": source("head_fit", head_fit_reason(cfg)),
        "features": source("features", features_reason(cfg, found)),
        "image_size": source("image_size", "the backbone's own input size"),
        "epochs": source(
            "epochs", "one solve, recorded as one epoch" if solved else "the strategy's default"
        ),
        "lr": source("lr", "the default for the strategy and optimizer"),
        "augment": source("augment", "default"),
        "schedule": source("schedule", "default"),
        "precision": precision_reason(asked, found),
    }
    if asked.lr == "auto":
        why["lr"] = "the LR finder's suggestion (--lr auto)"
    return why


PLANNED = frozenset({"strategy", "epochs", "image_size", "lr", "augment", "schedule", "head"})


def strategy_reason(strategy: str) -> str:
    if strategy == "linear-probe":
        return (
            "auto: a linear probe on a CPU or under 2,000 images (give --budget to let "
            "fine-tuning compete on validation)"
        )
    return f"auto: {strategy} (a GPU and 2,000 images or more)"


def head_fit_reason(cfg: TrainConfig) -> str:
    if cfg.head_fit == "lbfgs":
        return "auto: a linear head on frozen features is solved to convergence"
    return "auto: SGD epochs, since --epochs, --lr, an MLP head, a fusion or mixing asked for them"


def features_reason(cfg: TrainConfig, found: Resolved) -> str:
    if found.solved_on:
        return f"auto: the candidate with the lowest {found.solved_on} loss (plan.json head_fit)"
    if cfg.features == "stages":
        return "auto: every stage pooled and joined (a head trained by SGD on frozen features)"
    return "auto: the backbone's last features"


def precision_reason(asked: TrainConfig, found: Resolved) -> str:
    if asked.deterministic:
        return "fp32 (--deterministic)"
    if asked.precision != "auto":
        return "given (--precision)"
    if found.precision != found.inference_precision:
        return f"measured faster for training here than {found.inference_precision}"
    return "the device's default"


def write_run_plan(run_dir: Path, plan: RunPlan) -> None:
    """`run` in plan.json, beside what a budget plan or the solved probe wrote there."""
    set_plan_entry(run_dir, "run", plan.to_dict())
