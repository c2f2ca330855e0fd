"""One training run from a resolved config to a run folder: the recipe, top to bottom.

spec -> splits -> backbones + head -> strategy phases -> (cached features | images) -> epochs
-> metrics.csv, last/best.safetensors. Read it like torchvision's reference train.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from tlearn.checkpoint import ModelSpec
from tlearn.config import TrainConfig
from tlearn.data import Splits, find_unreadable
from tlearn.data.images import max_image_pixels
from tlearn.errors import TlearnError
from tlearn.models import Classifier, create_backbone
from tlearn.models.assemble import backbone_records
from tlearn.preprocessing import model_input
from tlearn.training import conv_tuning, distributed
from tlearn.training.budget import (
    Plan,
    apply_plan,
    plan_run,
    run_clock,
    save_plan,
    time_before_fit,
)
from tlearn.training.budget.keeper import resumed_length
from tlearn.training.build import build_classifier, feature_taps
from tlearn.training.calibrate import calibrate_run
from tlearn.training.distributed_run import job_folder, join_job, leave_job, log_job
from tlearn.training.epochs import Epochs
from tlearn.training.feeds import train_on
from tlearn.training.interrupt import StopRequests
from tlearn.training.ledger import printable
from tlearn.training.linear_probe import (
    SOLVED_ON,
    SolvedProbe,
    resolve_head_fit,
    solve_probe,
    solves_head,
)
from tlearn.training.lr_find import find_for_run
from tlearn.training.prefix_cache import plan_prefix
from tlearn.training.resolve import load_run_splits, prepare_run_dir, resolve_strategy
from tlearn.training.run_plan import Resolved, run_plan, write_run_plan
from tlearn.training.runtime import (
    autocast_factory,
    compile_module,
    deterministic_algorithms,
    flush_denormals,
    pick_device,
    pick_precision,
    probe_training_precision,
    seed_everything,
    tlearn_cache_dir,
    tune_allocator,
)
from tlearn.training.state import (
    RESUME_MAY_CHANGE,
    STATE_NAME,
    Position,
    load_state,
    remove_stale_temporaries,
)
from tlearn.training.step import grad_scaler
from tlearn.training.strategies import (
    plan_backbone_phases,
)

Log = Callable[[str], None]


@dataclass
class RunResult:
    model: Classifier
    spec: ModelSpec
    run_dir: Path


def plan_strategy(
    cfg: TrainConfig,
    splits: Splits,
    device: torch.device,
    precision: str,
    run_dir: Path,
    started: float,
    log: Log,
) -> tuple[str, Plan | None]:
    """`auto` with `--budget`: the planner's choice (it also sets size, epochs, rate and
    schedule in `cfg`, recorded in plan.json); otherwise `resolve_strategy`.
    """
    if cfg.strategy != "auto" or cfg.budget is None:
        return resolve_strategy(cfg, len(splits.train), log, device.type), None
    # several processes: rank 0 probes the machine and plans; every rank trains that plan
    planned = cfg.with_defaults()
    plan = distributed.on_main(
        lambda: plan_run(planned, splits, device, precision, started, log, run_clock())
    )
    apply_plan(cfg, plan)
    save_plan(run_dir, plan, cfg)
    seed_everything(cfg.seed)  # the probe drew random numbers: start as a planned rerun would
    return cfg.strategy, plan


def fit(cfg: TrainConfig, log: Log = print, *, resume: bool = False) -> RunResult:
    """Train as `cfg` says; with `resume`, continue the run in `cfg.out` from its `state.pt`.

    SIGINT/SIGTERM finish the current step, save, and raise `Interrupted` (the CLI exits 130/143
    saying how to resume). The pixel limit and deterministic kernels hold for the run only.
    """
    cfg.validate()
    tune_allocator()
    with (
        max_image_pixels(cfg.max_image_pixels),
        deterministic_algorithms(cfg.deterministic),
        flush_denormals(),
        StopRequests() as stop,
    ):
        if not distributed.world().many:
            return _fit(cfg, log, resume, stop)
        try:  # torchrun: this process is one rank of a job (`tlearn.training.distributed_run`)
            return _fit(cfg, join_job(cfg, log), resume, stop)
        except RuntimeError as e:
            if distributed.is_collective_failure(e):
                raise distributed.collective_failure(cfg.out) from e
            raise
        finally:
            leave_job(cfg)


def _fit(cfg: TrainConfig, log: Log, resume: bool, stop: StopRequests) -> RunResult:
    clock = run_clock()
    started = clock.now() - time_before_fit()  # where `--budget` counts from
    asked = TrainConfig.from_dict(cfg.to_dict())  # as given, before anything is resolved
    seed_everything(cfg.seed)
    device = distributed.local_device(pick_device(cfg.device))
    precision = choose_precision(cfg, device)
    inference_precision = precision  # training may measure faster in another (below)
    autocast = autocast_factory(device, precision)

    splits = load_run_splits(cfg)
    log(f"validation: {splits.validation}")
    if cfg.strict:
        refuse_unreadable(splits, log)
    run_dir = job_folder(cfg, lambda: prepare_run_dir(cfg.out, cfg.data))
    state = distributed.on_main(lambda: starting_state(run_dir, resume, log))
    cfg.head_fit = resolve_head_fit(cfg)  # before a plan fills in epochs the user did not give
    strategy, plan = plan_strategy(cfg, splits, device, precision, run_dir, started, log)
    cfg.fill_defaults()  # what neither the user nor a plan chose
    if solves_head(cfg, strategy):
        cfg.epochs = 1  # one solve, recorded as one epoch
    planned_epochs = resumed_length(cfg, state)  # where a --budget refit left the length
    refuse_weights_file_for_several(cfg)
    cfg.resolve_step_defaults(strategy)
    if cfg.lr == "auto":  # the LR finder's suggestion becomes the run's rate (and its config's)
        cfg.lr = suggested_lr(cfg, splits, strategy, device, precision, run_dir, log)
    backbones, taps, model = build_network(cfg, len(splits.classes), strategy, device)
    stages = [b.stages() for b in backbones]
    phases = plan_backbone_phases(strategy, planned_epochs, [len(s) for s in stages], cfg.epochs)
    data_pre = model_input([b.preprocessing for b in backbones])

    # A frozen backbone's features never change: compute them once (flips included) and train
    # only the head on them. Any other augmentation changes the pixels, so it needs the images.
    use_features = all(p.trainable_stages == 0 for p in phases) and cfg.features_cacheable
    probe = None
    if use_features and solves_head(cfg, strategy):
        model, taps, probe = solve_probe(
            cfg, backbones, model, taps, splits, data_pre, device, precision, log
        )
    cfg.features = "stages" if any(taps) else "last"
    if not use_features:
        precision = training_precision(cfg, model, data_pre.input_size, device, precision, log)
        precision = distributed.from_main(precision)  # measured: rank 0's choice holds for all
        autocast = autocast_factory(device, precision)
    resolved = settle_config(cfg, strategy, precision, state, len(splits.train), run_dir)
    records = backbone_records(model, backbones)
    machine = f"device {distributed.describe(device)}, precision {precision}"
    log_run(cfg, splits, backbones, records, strategy, machine, log)
    log(f"run folder {run_dir}")
    spec = model_spec(cfg, splits, records, any(taps), resolved)
    prefix = None
    if not use_features:
        n_images = len(splits.train) + (len(splits.val) if splits.val is not None else 0)
        prefix = plan_prefix(
            cfg, model.backbones, stages, phases, n_images, inference_precision, log
        )
        speed_up(cfg, model, device, precision, log)
    path = "solved" if probe else "features" if use_features else "images"
    path = "stored-stages" if prefix is not None else path
    if state is None:  # what the run will do and why, once, before its first step
        found = Resolved(strategy, path, phases, precision, inference_precision, bool(plan),
                         chosen_on(probe))  # fmt: skip
        write_run_plan(run_dir, run_plan(asked, cfg, found))
    trainer = Epochs(cfg, model, spec, splits, run_dir, device, autocast, log, stop, state, clock)
    trainer.setup_s = clock.now() - started
    trainer.scaler = grad_scaler(device, precision)
    cfg.batch_size = distributed.per_process_batch(cfg.batch_size, trainer.processes)
    log_job(cfg, trainer.processes, log)
    refits = plan is not None and "epochs" not in plan.kept  # the user's epochs: only shortened
    if refits and plan.strategy != "linear-probe":
        trainer.budget.plan = plan  # refitted to the first steps' real speed, then at each epoch
    if plan is not None and path in ("stored-stages", "images") and splits.val is not None:
        trainer.keep_probe_floor()
    train_on(trainer, path, phases, stages, data_pre, inference_precision, probe, prefix)
    finish_run(cfg, trainer, model, log)
    distributed.check_in_sync(model)
    return RunResult(model.cpu(), spec, Path(cfg.out))  # rank 0's folder on every rank


def refuse_weights_file_for_several(cfg: TrainConfig) -> None:
    if len(cfg.backbone) > 1 and cfg.weights not in ("auto", "none"):
        raise TlearnError(
            "--weights FILE fits one backbone: give one --backbone, or --weights auto"
        )


def chosen_on(probe: SolvedProbe | None) -> str | None:
    """What the solved probe's candidates were compared on (None: no probe was solved)."""
    if probe is None:
        return None
    return SOLVED_ON[probe.chosen_on]


def suggested_lr(
    cfg: TrainConfig,
    splits: Splits,
    strategy: str,
    device: torch.device,
    precision: str,
    run_dir: Path,
    log: Log,
) -> float:
    """`--lr auto`: the LR finder's suggestion, rank 0's on every rank of a job."""
    lr = find_for_run(cfg, splits, strategy, device, precision, run_dir, log).suggestion
    lr = distributed.from_main(lr)
    seed_everything(cfg.seed)  # train exactly as a run given this rate would
    return lr


def build_network(
    cfg: TrainConfig, n_classes: int, strategy: str, device: torch.device
) -> tuple[list, list[list[str]], Classifier]:
    """The backbones, their feature taps and the classifier on `device`, channels-last."""
    backbones = [create_backbone(n, cfg.weights, cfg.image_size) for n in cfg.backbone]
    taps = feature_taps(cfg, backbones, strategy)
    model = build_classifier(backbones, n_classes, cfg, taps).to(device)
    return backbones, taps, model.to(memory_format=torch.channels_last)


def settle_config(
    cfg: TrainConfig,
    strategy: str,
    precision: str,
    state: dict | None,
    n_train: int,
    run_dir: Path,
) -> TrainConfig:
    """What was decided stays decided: a resume or a rerun of config.yaml computes the same way."""
    resolved = TrainConfig.from_dict(
        {**cfg.to_dict(), "strategy": strategy, "lr": cfg.resolved_lr(), "precision": precision}
    )
    if state is not None:  # a resume: config.yaml is the run's own, written when it started
        check_state_matches(state, resolved, n_train, run_dir)
    else:
        resolved.save_yaml(run_dir / "config.yaml")
    return resolved


def finish_run(cfg: TrainConfig, trainer: Epochs, model: Classifier, log: Log) -> None:
    """The end of training: what needs the finished model and its validation predictions."""
    trainer.finish()  # the averaged weights kept, skipped.txt, the step log closed
    if cfg.calibration:  # one temperature per saved model, from its epoch's validation logits
        trainer.spec.calibration = calibrate_run(
            trainer.run_dir, trainer.val_predictions, log, trainer.calibration_rows
        )
        model.temperature = trainer.spec.temperature
    log_conv_tuning(conv_tuning.remove(model), log)


def training_precision(
    cfg: TrainConfig, model: Classifier, size: int, device: torch.device, precision: str, log: Log
) -> str:
    """Training on images in `--precision auto` measures bf16 against fp32 on a CPU."""
    if cfg.precision != "auto" or cfg.deterministic:
        return precision
    chosen = probe_training_precision(
        model, size, device, precision, remember_as=f"{'+'.join(cfg.backbone)}@{size}"
    )
    if chosen != precision:
        log(f"training precision {chosen}: measured faster than {precision} for this network")
    return chosen


def speed_up(
    cfg: TrainConfig, model: Classifier, device: torch.device, precision: str, log: Log
) -> None:
    """`--compile`, or on a CPU in bf16 the convolution kernels measured fastest here."""
    if cfg.compile:
        log("compiling the network (torch.compile): the first steps wait for it")
        compile_module(model)
    elif device.type == "cpu" and precision == "bf16":
        conv_tuning.install(model, tlearn_cache_dir() / "conv-tuning.json")


def choose_precision(cfg: TrainConfig, device: torch.device) -> str:
    """The run's compute precision; `--deterministic` computes in fp32."""
    if cfg.deterministic and cfg.precision not in ("auto", "fp32"):
        raise TlearnError(f"--deterministic computes in fp32: drop --precision {cfg.precision}")
    return "fp32" if cfg.deterministic else pick_precision(device, cfg.precision)


def log_run(
    cfg: TrainConfig,
    splits: Splits,
    backbones: list,
    records: list[dict],
    strategy: str,
    machine: str,
    log: Log,
) -> None:
    """What the run trains on and with, as the first lines of its log."""
    log(
        f"data {cfg.data}: {len(splits.train)} train, {len(splits.val) if splits.val else 0} val, "
        f"{len(splits.classes)} classes"
    )
    for b in backbones:
        log(
            f"backbone {b.name} ({b.library}, {b.num_features} features, "
            f"{b.preprocessing.input_size}px, weights {b.weights_source})"
        )
    if any(r["taps"] for r in records):
        widths = ", ".join(str(r["num_features"]) for r in records)
        log(f"features: every stage pooled and joined to the last ({widths} wide)")
    fused = f", fusion {cfg.fusion}" if len(backbones) > 1 else ""
    log(f"strategy {strategy}, head {cfg.head}{fused}, {machine}")


def model_spec(
    cfg: TrainConfig, splits: Splits, records: list[dict], tapped: bool, resolved: TrainConfig
) -> ModelSpec:
    """What the run's model files say about the classifier, apart from its tensors."""
    return ModelSpec(
        classes=list(splits.classes),
        backbones=records,
        head={
            "kind": cfg.head,
            "hidden": list(cfg.hidden_sizes),
            "dropout": cfg.dropout,
            "input_norm": tapped,
        },
        fusion=cfg.fusion,
        config=resolved.to_dict(),
    )


def log_conv_tuning(used: dict[str, int], log: Log) -> None:
    """Say which convolutions trained with kernels other than oneDNN's channels-last default."""
    other = {k: n for k, n in used.items() if k != "+".join(conv_tuning.DEFAULT)}
    if other:
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(other.items()))
        log(
            f"convolutions: {sum(other.values())} of {sum(used.values())} trained with kernels "
            f"measured faster here ({kinds})"
        )


# -- resume and hostile data, before any training -------------------------------------------------


def starting_state(run_dir: Path, resume: bool, log: Log) -> dict | None:
    """The state a resumed run continues from; a fresh run refuses to bury an unfinished one."""
    path = run_dir / STATE_NAME
    if not resume:
        if path.is_file() and not Position.from_dict(load_state(path)["position"]).finished:
            raise TlearnError(
                f"{run_dir} holds an unfinished run: continue it with "
                f"`tlearn train --resume {run_dir}`, or choose another --out"
            )
        return None
    remove_stale_temporaries(run_dir)
    if not path.is_file():
        log(f"{run_dir} has no checkpoint yet: the run starts from its beginning")
        return None
    state = load_state(path)
    pos = Position.from_dict(state["position"])
    where = "finished" if pos.finished else f"at epoch {pos.epoch + 1}, step {pos.step}"
    log(f"resuming {run_dir} {where}")
    return state


def check_state_matches(state: dict, resolved: TrainConfig, n_train: int, run_dir: Path) -> None:
    """A state only continues the computation it came from: same options, same data."""
    ignore = RESUME_MAY_CHANGE | {"out", "memory_limit"}  # a job agrees on one (distributed_run)
    then = {k: v for k, v in state.get("config", {}).items() if k not in ignore}
    now = {k: v for k, v in resolved.to_dict().items() if k not in ignore}
    changed = sorted(k for k in then.keys() | now.keys() if then.get(k) != now.get(k))
    if changed:
        raise TlearnError(
            f"{run_dir}/{STATE_NAME} was saved with other options than its config.yaml "
            f"(--{changed[0].replace('_', '-')}): restore config.yaml or start a new run"
        )
    if state.get("n_train") != n_train:
        raise TlearnError(
            f"the training data changed since {run_dir} started ({state.get('n_train')} images "
            f"then, {n_train} now): resume with the same data, or start a new run"
        )


def refuse_unreadable(splits: Splits, log: Log) -> None:
    """`--strict`: decode every file first and stop, listing each one that fails."""
    bad = []
    for source in (splits.train, splits.val):
        if source is not None:
            bad += [printable(source.describe(i)) for i in find_unreadable(source)]
    if bad:
        for name in bad:
            log(f"unreadable: {name}")
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise TlearnError(
            f"{len(bad)} image(s) cannot be decoded ({shown}): fix or remove them, or drop "
            "--strict to skip them"
        )
