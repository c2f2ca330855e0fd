"""`--budget` arithmetic (no torch, no clock): what to train so the run fits and scores best.

Two halves. `make_plan` is a pure function of measured numbers (dataset size, machine, images/s
of the real model at candidate sizes), so its choices are testable without a clock. `plan_run`
measures those numbers with a probe of a few seconds and prints the plan with its reasons.

The accuracy model behind the choice is deliberately small and calibrated on this project's
reference measurements (Fashion-MNIST, EfficientNet-Lite0, 2-core CPU; the steps on the suite's
photo sets): the error falls like epochs^-0.35 for two epochs (and at least `SATURATING_STEPS`
optimizer steps: a small dataset's epoch is few steps), then barely (epochs^-0.05), and like
size^-0.22 up to the backbone's own size; a frozen backbone with a head trained on cached
features was about 1.2x the error of one fine-tuning epoch. So: fine-tune whenever one whole
epoch fits, buy about two epochs (and a hundred steps), then pixels, and fall back to the
frozen-feature probe when not even one epoch fits. Epochs need not be whole: the last share of
the budget trains on a shuffled share of the data each epoch (`--steps-per-epoch`), so no plan
ends most of an epoch early. Fine-tuning keeps the early, high-resolution stages frozen
(`early_stages`), and stores their outputs once where flips are the only augmentation
(`tlearn.training.prefix_cache`), so each epoch computes only the rest.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tlearn.config import TrainConfig
from tlearn.training.budget.error_model import (
    SATURATING_EPOCHS,
    SATURATING_STEPS,
    expected_error,
    max_epochs,
)
from tlearn.training.plan_file import update_plan, write_plan

SAFETY = 1.0  # plan to end at the budget; timing noise may overrun it by a few % (the issue: 10%)
FIXED_OVERHEAD_S = 4.0  # writing model files, building loaders, the end-of-run summary
REPORT_FIXED_S = 10.0  # report.html besides scoring its images: figures, the Grad-CAM gallery
EPOCH_OVERHEAD_S = 3.0  # per epoch: saving last/best and state.pt (optimizer state included)
# A real epoch's training steps over the probe's (two steps on random tensors, the faster
# counted): they also load, flip and collate batches and run the loop's hooks. Median 1.25
# (quartiles 1.05-1.42) over 22 budget runs on five datasets (benchmarks/results/
# probe_accuracy.md), rounded down: the keeper lengthens a short plan as well as it shortens a
# long one. Fashion-MNIST alone, where 1.0 was set, measures 1.05. Validation and saving are
# counted separately.
PROBE_TO_EPOCH = 1.2
PROBE_TO_PASS = 1.0  # the same for inference passes (validation, frozen features): unmeasured
# Plans up to this many epochs augment with flips only, longer ones crop too. On Fashion-MNIST
# (30m: 12 epochs) flips scored 94.65% test (94.25% val); flips + shifts 94.31% test (94.70%
# val): no clear gain; 13 epochs with random resized crops scored 94.11%.
AUGMENT_EPOCHS = 20
# AdamW peak with one-cycle at batch 128 (scaled by sqrt(batch / 128)). Lite0 with 4 stages
# frozen, 2 epochs on 20,000 Fashion-MNIST images at 64 px: 91.53 / 92.07 / 92.16% test at peak
# rates 1e-3 / 2e-3 / 4e-3.
FINETUNE_LR = 3e-3
# Early stages holding at most this share of a backbone's parameters stay frozen when a budget
# fine-tunes: they work at the highest resolution, so they cost most of a step's time (Lite0 at
# 64 px: freezing its first 4 of 8 stages, 1.6% of the weights, made a step 1.66x faster)
# while they hold generic edge and texture filters that fine-tuning barely changes.
EARLY_STAGE_SHARE = 0.02
# A budget run's batch: the largest power of two that still gives an epoch this many optimizer
# steps, between the two bounds. At 128 a 540-image set (60 photos a class) had 5 steps an
# epoch and about 20 in a 3-minute run; at 32 the same run took 120 steps, ran faster per image
# on a CPU at 224 px, and scored 85.1% test instead of 83.6% (benchmarks/results/suite.md).
MIN_STEPS_PER_EPOCH = 16
BATCH_BOUNDS = (16, 128)


@dataclass
class Throughput:
    """Measured images/s of the real model at one input size."""

    image_size: int
    train_ips: float  # whole network training (forward + backward + step)
    infer_ips: float  # inference: feature extraction and validation
    # With frozen first stages whose outputs a run stores (`tlearn.training.prefix_cache`):
    # training on the stored outputs, and computing them once.
    stored_train_ips: float | None = None
    prefix_ips: float | None = None
    measured: bool = True  # False: extrapolated from the smaller sizes (`extrapolated`)


@dataclass
class PlanInputs:
    budget_s: float
    spent_s: float  # already gone before training starts (loading, probing)
    n_train: int
    n_val: int
    n_classes: int
    native_size: int | None  # the data's own image size, when known
    backbone_size: int  # the backbone's own input size
    cpu_cores: int
    gpu: bool
    batch_size: int
    throughputs: list[Throughput]
    decode_ips: float  # images/s of decoding the data once
    frozen_stages: int = 0  # early stages kept frozen when fine-tuning (throughputs measured so)
    report_images: int = 0  # held-out images report.html scores after training (0: no report)

    @property
    def full_steps(self) -> int:
        """Optimizer steps of one whole epoch at the planned batch."""
        return math.ceil(self.n_train / max(1, self.batch_size))


def budget_batch_size(n_train: int) -> int:
    """The batch a budget plan trains at: enough steps an epoch, whatever the data's size."""
    low, high = BATCH_BOUNDS
    fitting = max(1, n_train // MIN_STEPS_PER_EPOCH)
    return int(min(high, max(low, 2 ** math.floor(math.log2(fitting)))))


def early_stages(stage_sizes: list[int], share: float = EARLY_STAGE_SHARE) -> int:
    """How many leading stages hold at most `share` of the parameters (never all of them)."""
    total = sum(stage_sizes)
    count, running = 0, 0
    for size in stage_sizes[:-1]:
        running += size
        if running > share * total:
            break
        count += 1
    return count


@dataclass
class Plan:
    strategy: str
    image_size: int
    epochs: int
    lr: float
    head: str
    augment: str
    schedule: str
    estimated_s: float
    budget_s: float
    reasons: list[str] = field(default_factory=list)
    candidates: list[dict] = field(default_factory=list)
    # seconds of an epoch besides its training steps (validation, saving): for `refit_schedule`
    epoch_other_s: float = 0.0
    # each epoch a shuffled share of the data, so the planned epochs end at the budget rather
    # than a whole epoch short of it (None: whole epochs)
    steps_per_epoch: int | None = None
    # the options the user gave, which the plan did not change (`apply_plan`)
    kept: list[str] = field(default_factory=list)
    batch_size: int | None = None  # what the throughputs were measured at (None: the default)
    # report.html after training, inside the budget: the keeper's refits leave it this much
    report_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROBED_SIZES = 2  # sizes timed for real; larger ones are extrapolated from them


def extrapolated(measured: list[Throughput], sizes: list[int]) -> list[Throughput]:
    """Throughput at larger `sizes` from the two smallest measured: seconds an image as
    a + b x pixels through both points (a convolutional network's work grows with its pixels;
    on this project's machine the fit through 96 and 128 px predicted 224 px's 26.4 images/s
    training within 1%). Timing every size cost up to 70 s of a 3-minute budget; the run's
    refit corrects what the line misses."""
    if len(measured) < 2:
        return []
    lo, hi = measured[0], measured[1]

    def rate(field: str, size: int) -> float | None:
        a_ips, b_ips = getattr(lo, field), getattr(hi, field)
        if not a_ips or not b_ips:
            return None
        p0, p1 = lo.image_size**2, hi.image_size**2
        slope = (1 / b_ips - 1 / a_ips) / (p1 - p0)
        seconds = 1 / b_ips + max(slope, 0.0) * (size**2 - p1)
        if slope <= 0:  # timing noise: scale the larger size's cost with the pixels
            seconds = (1 / b_ips) * size**2 / p1
        return 1 / seconds

    fields = ("train_ips", "infer_ips", "stored_train_ips", "prefix_ips")
    return [
        Throughput(size, *(rate(f, size) for f in fields), measured=False)  # type: ignore[arg-type]
        for size in sizes
    ]


def candidate_sizes(native: int | None, backbone_size: int) -> list[int]:
    """Sizes worth probing: small data upsampled to a few multiples of 32, large data downsized.

    Multiples of 32 keep every stride-2 stage's maps even: Lite0 on stored frozen stages trained
    at 479 / 319 / 278 images/s at 64 / 80 / 96 px here, so 80 px cost nearly what 96 px does.
    """
    if native is not None and native <= 64:
        sizes = [64, 96, 128]
    else:
        sizes = [96, 128, 160, 192, 224]
    return sorted({min(s, backbone_size) for s in sizes if s <= max(backbone_size, 64)}) or [64]


def epochs_at(
    t: Throughput, inputs: PlanInputs, available: float, stored: bool
) -> tuple[float, float, float, float]:
    """(epochs that fit, fractions included, seconds per epoch, one-off seconds, seconds of an
    epoch besides its training steps) at `t`'s size.

    `stored`: the frozen stages' outputs computed once (train images and their mirrors, and the
    validation images), then epochs on them.
    """
    once_s = 0.0
    train_ips = t.train_ips
    if stored and t.stored_train_ips and t.prefix_ips:
        once_s = (2 * inputs.n_train + inputs.n_val) / t.prefix_ips
        train_ips = t.stored_train_ips
    train_s = PROBE_TO_EPOCH * inputs.n_train / train_ips
    eval_s = PROBE_TO_PASS * inputs.n_val / t.infer_ips
    other_s = eval_s + EPOCH_OVERHEAD_S
    left = max(0.0, available - once_s)
    # whole epochs, then a share of one more whose validation and saving still fit
    whole = math.floor(left / (train_s + other_s))
    share = max(0.0, left - whole * (train_s + other_s) - other_s) / train_s
    fits = whole + min(1.0, share)
    return min(fits, max_epochs(inputs.n_train)), train_s + other_s, once_s, other_s


def split_epochs(epochs: float, full_steps: int) -> tuple[int, int | None]:
    """Fractional `epochs` as (whole epochs, steps each); None: every epoch the whole data.

    2.6 epochs of 100 steps become 3 epochs of 86 steps: each a fresh shuffled share of the
    data, so the one-cycle schedule ends at the budget instead of a whole epoch early.
    """
    whole = max(1, math.ceil(epochs - 1e-9))
    steps = max(1, math.floor(epochs * full_steps / whole))
    return whole, (None if steps >= full_steps else steps)


def make_plan(inputs: PlanInputs) -> Plan:
    """The most accurate configuration expected to finish within the budget."""
    n_all = inputs.n_train + inputs.n_val
    available = inputs.budget_s * SAFETY - inputs.spent_s - FIXED_OVERHEAD_S
    decode_s = n_all / max(inputs.decode_ips, 1e-9)
    reasons = [
        f"budget {inputs.budget_s:.0f}s: {inputs.spent_s:.0f}s spent loading and probing, "
        f"~{decode_s:.0f}s to decode {n_all} images once",
    ]
    available -= decode_s
    candidates, best = weigh_candidates(inputs, available)
    if best is None:  # nothing fits: the cheapest probe, and say so
        t = min(inputs.throughputs, key=lambda t: t.image_size)
        best = {
            "kind": "linear-probe", "size": t.image_size, "epochs": 0, "s": n_all / t.infer_ips,
            "report_s": report_seconds(inputs, t),
        }  # fmt: skip
        reasons.append(
            "even frozen features at the smallest size exceed the budget: the run will stop "
            "when the budget is spent"
        )
    if best["report_s"]:
        reasons.append(
            f"~{best['report_s']:.0f}s kept for report.html after training (scoring "
            f"{inputs.report_images} held-out images at {best['size']}px, and its figures)"
        )
    plan = (probe_plan if best["kind"] == "linear-probe" else finetune_plan)(
        inputs, best, decode_s, reasons, candidates
    )
    plan.report_s = round(best["report_s"], 1)
    plan.batch_size = inputs.batch_size
    if plan.strategy != "linear-probe":
        steps = inputs.full_steps
        plan.reasons.append(
            f"batch {inputs.batch_size}: {steps} optimizer steps a whole epoch (a budget run's "
            f"batch is the largest up to {BATCH_BOUNDS[1]} that gives at least "
            f"{MIN_STEPS_PER_EPOCH})"
        )
    plan.estimated_s = round(plan.estimated_s + plan.report_s, 1)
    return plan


def report_seconds(inputs: PlanInputs, t: Throughput) -> float:
    """report.html's time after training at `t`'s size: decoding and scoring the held-out
    images, then its figures. The budget counts it, so `--budget 10m` ends in 10 minutes."""
    if not inputs.report_images:
        return 0.0
    n = inputs.report_images
    return n / max(inputs.decode_ips, 1e-9) + n / max(t.infer_ips, 1e-9) + REPORT_FIXED_S


def weigh_candidates(inputs: PlanInputs, available: float) -> tuple[list[dict], dict | None]:
    """Each probed size's row for plan.json, and the option expected to score best."""
    n_all = inputs.n_train + inputs.n_val
    candidates = []
    best: tuple[float, dict] | None = None
    for t in sorted(inputs.throughputs, key=lambda t: t.image_size):
        report_s = report_seconds(inputs, t)
        left = available - report_s
        epochs, epoch_s, once_s, other_s = epochs_at(t, inputs, left, stored=False)
        if t.stored_train_ips and t.prefix_ips:
            # a run with flips only stores them (the trainer decides so): plan what it will do
            stored = epochs_at(t, inputs, left, stored=True)
            if stored[0] <= AUGMENT_EPOCHS:
                epochs, epoch_s, once_s, other_s = stored
        probe_s = PROBE_TO_PASS * n_all / t.infer_ips + 2 * EPOCH_OVERHEAD_S
        row = {
            "image_size": t.image_size,
            "train_ips": round(t.train_ips, 1),
            "infer_ips": round(t.infer_ips, 1),
            "stored_train_ips": round(t.stored_train_ips, 1) if t.stored_train_ips else None,
            "epoch_s": round(epoch_s, 1),
            "frozen_stages_once_s": round(once_s, 1),
            "epochs_that_fit": round(epochs, 2),
            "probe_s": round(probe_s, 1),
            "report_s": round(report_s, 1),
        }
        candidates.append(row)
        if epochs >= 1:
            steps = epochs * inputs.full_steps
            err = expected_error(t.image_size, epochs, inputs.backbone_size, False, steps)
            option = {
                "kind": "finetune", "size": t.image_size, "epochs": epochs, "s": epoch_s,
                "once_s": once_s, "other_s": other_s, "report_s": report_s,
            }  # fmt: skip
        elif probe_s <= left:
            err = expected_error(t.image_size, 0, inputs.backbone_size, probe=True)
            option = {
                "kind": "linear-probe", "size": t.image_size, "epochs": 0, "s": probe_s,
                "report_s": report_s,
            }  # fmt: skip
        else:
            continue
        if best is None or err < best[0]:
            best = (err, option)
    return candidates, None if best is None else best[1]


def probe_plan(
    inputs: PlanInputs, choice: dict, decode_s: float, reasons: list[str], candidates: list[dict]
) -> Plan:
    """Not one fine-tuning epoch fits: a head on frozen features."""
    size = choice["size"]
    reasons.append(
        f"not one fine-tuning epoch fits, so the backbone stays frozen: features computed "
        f"once at {size}px (~{choice['s']:.0f}s), then a linear head solved on them"
    )
    return Plan(
        strategy="linear-probe",
        image_size=size,
        epochs=1,
        lr=3e-3,
        head="linear",
        augment="none",
        schedule="cosine",
        estimated_s=round(inputs.spent_s + decode_s + choice["s"] + FIXED_OVERHEAD_S, 1),
        budget_s=inputs.budget_s,
        reasons=reasons,
        candidates=candidates,
    )


def finetune_strategy(inputs: PlanInputs, reasons: list[str]) -> tuple[str, float]:
    """What trains and at what peak rate: gradual for little data, early stages kept frozen."""
    small_data = inputs.n_train / max(1, inputs.n_classes) < 100
    strategy = "gradual" if small_data else "finetune"
    if strategy == "finetune" and inputs.frozen_stages:
        strategy = f"freeze:{inputs.frozen_stages}"
        reasons.append(
            f"the first {inputs.frozen_stages} backbone stages (under "
            f"{EARLY_STAGE_SHARE:.0%} of the weights, the most costly per image) stay frozen: "
            "generic filters, and each epoch runs faster without their gradients"
        )
    lr = FINETUNE_LR * math.sqrt(inputs.batch_size / 128)
    if strategy == "gradual":
        reasons.append(
            f"{inputs.n_train / max(1, inputs.n_classes):.0f} images per class is little "
            "data: the backbone is unfrozen gradually, top stages first"
        )
        lr = 1e-3
    return strategy, lr


def finetune_plan(
    inputs: PlanInputs, choice: dict, decode_s: float, reasons: list[str], candidates: list[dict]
) -> Plan:
    """The fine-tuning option chosen: its epochs split into equal shares, and why."""
    size, fits = choice["size"], choice["epochs"]
    full_steps = inputs.full_steps
    epochs, steps_per_epoch = split_epochs(fits, full_steps)
    strategy, lr = finetune_strategy(inputs, reasons)
    share = (
        f" of {steps_per_epoch} of the {full_steps} batches each (a fresh shuffled share of the "
        "data every epoch, so the schedule ends at the budget)"
        if steps_per_epoch
        else ""
    )
    reasons.append(
        f"{fits:.2f} epochs of {strategy} at {size}px fit (~{choice['s']:.0f}s a whole one): "
        f"{epochs} epoch(s){share}; the most accurate trade of pixels for epochs that fits "
        f"(epochs gain little after {SATURATING_EPOCHS} and {SATURATING_STEPS} optimizer steps; "
        f"{max_epochs(inputs.n_train)} is where this dataset stops gaining)"
    )
    augment = "flip" if epochs <= AUGMENT_EPOCHS else "light"
    reasons.append(
        f"one-cycle schedule sized to the {epochs} planned epoch(s), peak lr {lr:.2g}, "
        + (
            "random resized crops and flips"
            if augment == "light"
            else f"flips only (up to {AUGMENT_EPOCHS} epochs gain nothing from random crops: "
            "on Fashion-MNIST 13 epochs with them scored no better than 4 with flips)"
        )
    )
    if choice["once_s"]:
        reasons.append(
            f"the frozen stages' outputs are computed once (~{choice['once_s']:.0f}s, mirrors "
            "included), not every epoch"
        )
    train_s = choice["s"] - choice["other_s"]
    estimated = (
        inputs.spent_s + decode_s + choice["once_s"] + fits * train_s
        + epochs * choice["other_s"] + FIXED_OVERHEAD_S
    )  # fmt: skip
    return Plan(
        strategy=strategy,
        image_size=size,
        epochs=epochs,
        lr=round(lr, 6),
        head="linear",
        augment=augment,
        schedule="onecycle",
        estimated_s=round(estimated, 1),
        budget_s=inputs.budget_s,
        reasons=reasons,
        candidates=candidates,
        epoch_other_s=round(choice["other_s"], 1),
        steps_per_epoch=steps_per_epoch,
    )


# What a plan chooses, in TrainConfig's names; the user's explicit value of any of them wins.
PLANNED_OPTIONS = (
    "epochs", "steps_per_epoch", "image_size", "lr", "augment", "schedule", "head", "batch_size",
)  # fmt: skip


def apply_plan(cfg: TrainConfig, plan: Plan) -> list[str]:
    """The planner's choices become the run's options (and so its resolved config.yaml).

    What the user set explicitly (epochs, a rate, an augmentation, a schedule, a head, an image
    size) is kept: an unset option is None in `cfg`, so an explicit `--augment none` or
    `--schedule cosine` is told apart from the default. Returns the options kept, which
    plan.json lists; a head is only ever the plan's for a linear-probe plan.
    """
    cfg.strategy = plan.strategy
    chosen = {
        "epochs": plan.epochs,
        "steps_per_epoch": plan.steps_per_epoch,
        "image_size": plan.image_size,
        "lr": plan.lr,
        "augment": plan.augment,
        "schedule": plan.schedule,
        "head": plan.head if plan.strategy == "linear-probe" else None,
        "batch_size": plan.batch_size if plan.strategy != "linear-probe" else None,
    }
    kept = [name for name in PLANNED_OPTIONS if getattr(cfg, name) is not None]
    for name, value in chosen.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    plan.kept = kept
    if kept:
        plan.reasons.append(f"kept as given: {', '.join('--' + k.replace('_', '-') for k in kept)}")
    return kept


def save_plan(run_dir: Path, plan: Plan, cfg: TrainConfig) -> None:
    record = {**plan.to_dict(), "applied": {
        k: getattr(cfg, k)
        for k in (
            "strategy", "image_size", "epochs", "steps_per_epoch", "last_epoch_steps", "lr",
            "head", "augment", "schedule",
        )
    }}  # fmt: skip
    write_plan(run_dir, record)


def append_event(run_dir: Path, event: dict[str, Any]) -> None:
    """A change of plan while the run trains (a refit), appended to plan.json's `events`.

    plan.json and config.yaml are written once, before training; what changes later is an
    event here and the budget keeper's resume state, so neither file is rewritten mid-run.
    """
    update_plan(run_dir, lambda record: record.setdefault("events", []).append(event))
