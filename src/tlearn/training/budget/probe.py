"""The throughput probe: a few timed steps of the real network at candidate sizes, then a plan.

`make_plan` (`tlearn.training.budget.plan`) turns what this measures into the run's choices.
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import torch

from tlearn.config import TrainConfig, parse_duration
from tlearn.data import has_held_out_part, load_eval_source
from tlearn.errors import TlearnError
from tlearn.models import create_backbone
from tlearn.models.prefix import frozen_prefix
from tlearn.training.budget.clock import Clock
from tlearn.training.budget.plan import (
    PROBED_SIZES,
    Plan,
    PlanInputs,
    Throughput,
    budget_batch_size,
    candidate_sizes,
    early_stages,
    extrapolated,
    make_plan,
)
from tlearn.training.build import build_classifier
from tlearn.training.prefix_cache import PrefixExtractor, may_store
from tlearn.training.runtime import (
    autocast_factory,
    inference_module,
    probe_training_precision,
    read_measurements,
    remember_measurement,
    tlearn_cache_dir,
)
from tlearn.training.step import optimizer_step, training_loss
from tlearn.training.strategies import freeze_batchnorm_of_frozen

Log = Callable[[str], None]
THROUGHPUT_MEMORY = "throughput.json"  # a probe's measurements, per network, size, machine


def measure_throughput(
    model: torch.nn.Module,
    sizes: list[int],
    device: torch.device,
    train_autocast: Callable,
    infer_autocast: Callable,
    batch: int = 32,
    frozen: frozenset[str] = frozenset(),
    store_prefix: bool = False,
    precision: str = "fp32",
    enough: Callable[[Throughput], bool] | None = None,
    remember_as: str | None = None,
) -> list[Throughput]:
    """Time two training steps and two inference batches of `model` at each size (a few seconds).

    The first step at a size is a warm-up (allocations, kernel choice) and is not counted.
    Parameters named in `frozen` do not train, as in the run the plan is for; with
    `store_prefix`, training on the frozen stages' stored outputs, and computing them in the
    run's inference `precision`, are timed too (where the network allows the split). Sizes go
    up until `enough` says a size is too slow to be worth a larger one. With `remember_as`, a
    size measured on this machine before is not timed again: planning then costs a budget
    almost nothing (the run's refit still corrects the plan to today's speed).
    """
    memory = tlearn_cache_dir() / THROUGHPUT_MEMORY
    known = read_measurements(memory) if remember_as else {}
    trial = copy.deepcopy(model).to(device).to(memory_format=torch.channels_last)
    for name, p in trial.named_parameters():
        p.requires_grad_(name not in frozen)
    params = [p for p in trial.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-6)
    results = []
    for size in sizes:
        key = f"{remember_as}@{size}|batch {batch}|frozen {len(frozen)}|stored {store_prefix}"
        if isinstance(known.get(key), dict):
            results.append(Throughput(**known[key]))
            if enough is not None and enough(results[-1]):
                break
            continue
        # the backbones resize their input to their own size: probe at `size`, not theirs
        for b in getattr(trial, "backbones", []):
            b.input_size = size
        x = torch.rand(batch, 3, size, size, device=device)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.zeros(batch, dtype=torch.long, device=device)
        try:
            train_ips = _training_ips(trial, x, y, optimizer, train_autocast)
            trial.eval()
            timings = []
            with torch.inference_mode():
                for _ in range(3):
                    start = time.perf_counter()
                    with infer_autocast():
                        trial(x)
                    _sync(device)
                    timings.append(time.perf_counter() - start)
            infer_ips = batch / min(timings[1:])
            stored = (
                _time_stored_prefix(trial, x, y, optimizer, frozen, train_autocast, precision)
                if store_prefix and frozen
                else None
            )
        except (RuntimeError, AssertionError):  # a network that cannot take this size
            continue
        results.append(Throughput(size, train_ips, infer_ips, *(stored or (None, None))))
        if remember_as:
            remember_measurement(memory, key, asdict(results[-1]))
        if enough is not None and enough(results[-1]):
            break
    return results


def _time_stored_prefix(
    trial: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    frozen: frozenset[str],
    train_autocast: Callable,
    precision: str,
) -> tuple[float, float] | None:
    """(images/s training on stored frozen-stage outputs, images/s computing them), or None."""
    backbones = list(getattr(trial, "backbones", []))
    if len(backbones) != 1:
        return None
    backbone = backbones[0]
    ids = {id(p) for n, p in trial.named_parameters() if n in frozen}
    prefix = frozen_prefix(backbone.body, ids, backbone.prepare(x[:2]))
    if prefix is None:
        return None
    extractor, dtype, autocast = inference_module(
        PrefixExtractor(backbone, prefix), x.device, precision, x.shape[-1]
    )  # as the run computes them: on a CPU in bf16, a bf16 copy
    timings = []
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            with autocast():
                stored = extractor(x.to(dtype))
            _sync(x.device)
            timings.append(time.perf_counter() - start)
    prefix_ips = len(x) / min(timings[1:])
    stored = stored.float().clone().contiguous(memory_format=torch.channels_last)
    backbone.after_prefix = prefix
    try:
        return _training_ips(trial, stored, y, optimizer, train_autocast), prefix_ips
    finally:
        backbone.after_prefix = None


def _training_ips(
    trial: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    train_autocast: Callable,
) -> float:
    """Images/s of training steps on `x` (the first, a warm-up, not counted)."""
    trial.train()
    freeze_batchnorm_of_frozen(trial)
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        loss = training_loss(trial, x, y, torch.nn.functional.cross_entropy, train_autocast)
        optimizer_step(loss, optimizer)
        _sync(x.device)
        timings.append(time.perf_counter() - start)
    return len(x) / min(timings[1:])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def native_size(source: Any) -> int | None:
    """The shorter side of the data's first image (decoding one image is cheap)."""
    try:
        width, height = source.load(0).size
    except Exception:  # noqa: BLE001 - any unreadable first image just means "unknown"
        return None
    return min(width, height)


def report_images(cfg: TrainConfig, splits: Any) -> int:
    """How many images the report after training scores: the data's own held-out part, or
    else the validation split (`tlearn.api.run_report`)."""
    if not has_held_out_part(str(cfg.data)):
        return len(splits.val) if splits.val is not None else 0
    try:
        held_out = load_eval_source(
            str(cfg.data), data_root=cfg.data_root, eval_limit=cfg.eval_limit, seed=cfg.seed
        )
    except TlearnError:
        return 0  # the report will say why it cannot score; training is not the place
    return len(held_out)


def plan_run(
    cfg: TrainConfig,
    splits: Any,
    device: torch.device,
    precision: str,
    started: float,
    log: Log,
    clock: Clock | None = None,
) -> Plan:
    """Probe the machine with the real network, plan, print and return the plan.

    `started` is when the budget began, on `clock` (the steps themselves are timed for real).
    """
    clock = clock or Clock()
    budget = parse_duration(cfg.budget or "0")
    name = cfg.backbone[0]
    default_size = create_backbone(name, "none").preprocessing.input_size
    native = native_size(splits.train)
    sizes = [cfg.image_size] if cfg.image_size else candidate_sizes(native, default_size)
    backbones = [create_backbone(n, "none", sizes[0]) for n in cfg.backbone]
    model = build_classifier(backbones, len(splits.classes), cfg).to(device)
    batch = cfg.batch_size or budget_batch_size(len(splits.train))  # the plan's, unless given
    stage_lists = [b.stages() for b in backbones]
    frozen_stages = min(early_stages([sum(p.numel() for p in s) for s in st]) for st in stage_lists)
    if len(splits.train) / max(1, len(splits.classes)) < 100:
        frozen_stages = 0  # little data: unfrozen gradually instead (see make_plan)
    frozen_ids = {id(p) for st in stage_lists for s in st[:frozen_stages] for p in s}
    frozen = frozenset(n for n, p in model.named_parameters() if id(p) in frozen_ids)
    train_precision = probe_training_precision(
        model, sizes[0], device, precision, remember_as=f"{'+'.join(cfg.backbone)}@{sizes[0]}"
    )
    with torch.random.fork_rng(devices=[]):  # measuring must not move the run's random stream
        throughputs = measure_throughput(
            model,
            sizes[:PROBED_SIZES],  # the larger ones are extrapolated below
            device,
            autocast_factory(device, train_precision),
            autocast_factory(device, precision),
            batch=batch,
            frozen=frozen,
            store_prefix=could_store_prefix(cfg),
            precision=precision,
            remember_as=probe_signature(cfg, model, device, train_precision, precision),
            # three epochs do not fit: a larger size could buy one at most, not worth its probe
            enough=lambda t: (
                3 * len(splits.train) / max(t.train_ips, t.stored_train_ips or 0)
                > budget - (clock.now() - started)
            ),
        )
    if len(throughputs) == PROBED_SIZES:  # the larger sizes, as long as 3 epochs could fit
        for t in extrapolated(throughputs, sizes[PROBED_SIZES:]):
            throughputs.append(t)
            if 3 * len(splits.train) / max(t.train_ips, t.stored_train_ips or 0) > budget - (
                clock.now() - started
            ):
                break
    if not throughputs:
        throughputs = [Throughput(sizes[0], 1.0, 1.0)]
    in_memory = bool(getattr(splits.train, "in_memory", False))
    cores = os.cpu_count() or 1
    inputs = PlanInputs(
        budget_s=budget,
        spent_s=clock.now() - started,
        n_train=len(splits.train),
        n_val=len(splits.val) if splits.val is not None else 0,
        n_classes=len(splits.classes),
        native_size=native,
        backbone_size=default_size,
        cpu_cores=cores,
        gpu=device.type == "cuda",
        batch_size=batch,
        throughputs=throughputs,
        decode_ips=20_000.0 if in_memory else 600.0 * cores,
        frozen_stages=frozen_stages,
        report_images=report_images(cfg, splits),
    )
    plan = make_plan(inputs)
    log_plan(cfg.budget, plan, inputs, (train_precision, precision), device, log)
    plan.candidates = [{**c, "train_precision": train_precision} for c in plan.candidates]
    return plan


def log_plan(
    budget: str | None,
    plan: Plan,
    inputs: PlanInputs,
    precisions: tuple[str, str],
    device: torch.device,
    log: Log,
) -> None:
    """The plan, what the probe measured (training, inference precision) and the reasons."""
    machine = f"{inputs.cpu_cores} CPU cores" + (", GPU" if device.type == "cuda" else ", no GPU")
    log(
        f"plan for --budget {budget}: {plan.strategy} at {plan.image_size}px, "
        f"{plan.epochs} epoch(s), lr {plan.lr:g}, augment {plan.augment} "
        f"(~{plan.estimated_s:.0f}s of {inputs.budget_s:.0f}s; {machine}, {inputs.n_train} "
        f"images, {inputs.n_classes} classes, native {inputs.native_size or '?'}px)"
    )
    for t in inputs.throughputs:
        log(
            f"  probe {t.image_size}px: {t.train_ips:,.0f} img/s training ({precisions[0]}), "
            f"{t.infer_ips:,.0f} img/s inference ({precisions[1]})"
            + ("" if t.measured else ", extrapolated from the smaller sizes")
        )
    for reason in plan.reasons:
        log(f"  because {reason}")


def probe_signature(
    cfg: TrainConfig, model: torch.nn.Module, device: torch.device, train: str, infer: str
) -> str:
    """What a probe's speed depends on: the network, the precisions, the machine, the torch."""
    weights = sum(p.numel() for p in model.parameters())
    machine = f"{device}|{platform.processor() or platform.machine()}|{os.cpu_count()}"
    return f"{'+'.join(cfg.backbone)}:{weights}|{train}/{infer}|{machine}|{torch.__version__}"


def could_store_prefix(cfg: TrainConfig) -> bool:
    """Whether a fine-tuning plan for `cfg` may store its frozen stages' outputs (flips only)."""
    return may_store(cfg) and cfg.features != "stages"  # taps hook skipped stages
