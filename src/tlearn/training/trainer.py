"""One training run from a resolved config to a run folder: the recipe, top to bottom.

spec -> splits -> backbones + head -> strategy phases -> (cached features | images) -> epochs
-> metrics.csv, last/best.safetensors. Read it like torchvision's reference train.py.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlearn.checkpoint import ModelSpec, save_model
from tlearn.config import TrainConfig, parse_duration
from tlearn.data import Splits, find_unreadable, load_train_splits
from tlearn.data.images import max_image_pixels
from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text
from tlearn.models import Backbone, Classifier, build_fusion, build_head, create_backbone
from tlearn.models.normalize import NormalizedBackbone
from tlearn.models.prefix import Prefix
from tlearn.models.stages import stage_taps
from tlearn.preprocessing import Preprocessing, model_input
from tlearn.training import conv_tuning, loop, progressive
from tlearn.training.balance import class_weights, per_class_recall, sample_weights
from tlearn.training.calibrate import calibrate_run
from tlearn.training.ema import WeightAverage
from tlearn.training.features import (
    FeatureLoader,
    FeatureSet,
    compute_features,
    extract_features,
    image_loader,
)
from tlearn.training.interrupt import Interrupted, StopRequests
from tlearn.training.order import EpochBatches, EpochSampler, batches_per_epoch
from tlearn.training.planner import Plan, time_before_fit
from tlearn.training.prefix_cache import PrefixExtractor, flips, plan_prefix, storage_dtype
from tlearn.training.runtime import (
    autocast_factory,
    compile_module,
    deterministic_algorithms,
    flush_denormals,
    inference_batch_size,
    pick_device,
    pick_precision,
    probe_training_precision,
    seed_everything,
    tlearn_cache_dir,
    tune_allocator,
)
from tlearn.training.schedule import build_scheduler, lr_factor
from tlearn.training.state import (
    RESUME_MAY_CHANGE,
    STATE_NAME,
    Position,
    capture,
    load_state,
    remove_stale_temporaries,
    restore,
    save_state,
)
from tlearn.training.steplog import StepLog
from tlearn.training.stopping import EarlyStopping, not_clearly_worse
from tlearn.training.strategies import (
    GRADUAL_DEFAULT_DECAY,
    Phase,
    apply_phase,
    build_optimizer,
    freeze_batchnorm_of_frozen,
    plan_backbone_phases,
    trainable_parameter_count,
)

Log = Callable[[str], None]
# `--budget` stops before an epoch that would end past this share of the budget: 5% over is
# better spent finishing a planned schedule (its last, low-rate steps) than cutting it short.
BUDGET_OVERRUN = 1.05
REFIT_FROM_STEP = 5  # --budget times the first epoch's steps from here (the first warm caches)


@dataclass
class RunResult:
    model: Classifier
    spec: ModelSpec
    run_dir: Path


def feature_taps(cfg: TrainConfig, backbones: list[Backbone], strategy: str) -> list[list[str]]:
    """For each backbone, the stages whose pooled outputs join its features (`--features`).

    `auto` pools the stages when the backbone stays frozen (its last features are ImageNet's,
    its middle stages transfer further) and uses the last features when it trains.
    """
    wanted = cfg.features == "stages" or (cfg.features == "auto" and strategy == "linear-probe")
    taps = [stage_taps(b.module) if wanted else [] for b in backbones]
    missing = [b.name for b, t in zip(backbones, taps, strict=True) if not t]
    if cfg.features == "stages" and missing:
        raise TlearnError(
            f"--features stages: tlearn does not know the stages of {missing[0]}: "
            "pass --features last"
        )
    return taps


def build_classifier(
    backbones: list[Backbone],
    num_classes: int,
    cfg: TrainConfig,
    taps: list[list[str]] | None = None,
) -> Classifier:
    taps = taps or [[] for _ in backbones]
    wrapped = [
        NormalizedBackbone(b.module, b.preprocessing, t)
        for b, t in zip(backbones, taps, strict=True)
    ]
    widths = [feature_width(b, w) for b, w in zip(backbones, wrapped, strict=True)]
    fusion = build_fusion(cfg.fusion, widths)
    head = build_head(
        cfg.head,
        fusion.out_features,
        num_classes,
        hidden=cfg.hidden_sizes,
        dropout=cfg.dropout,
        input_norm=any(taps),
    )
    return Classifier(wrapped, head, fusion)


def feature_width(backbone: Backbone, wrapped: NormalizedBackbone) -> int:
    return wrapped.feature_width() if wrapped.taps else backbone.num_features


def backbone_records(classifier: Classifier, backbones: list[Backbone]) -> list[dict]:
    return [
        {
            "name": b.name,
            "library": b.library,
            "weights_source": b.weights_source,
            "num_features": feature_width(b, w),
            "taps": list(w.taps),
            "preprocessing": b.preprocessing.to_dict(),
        }
        for b, w in zip(backbones, classifier.backbones, strict=True)
    ]


def default_run_dir(data: str) -> Path:
    stem = Path(data).name or "data"
    return Path("runs") / f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare_run_dir(out: str | None, data: str) -> Path:
    run_dir = Path(out) if out else default_run_dir(data)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TlearnError(
            f"cannot write to the run folder {run_dir} ({e.strerror}): choose another --out"
        ) from e
    return run_dir


def default_eval_limit(cfg: TrainConfig) -> int | None:
    """A quick run (`--train-limit`) also validates on a proportionate subset."""
    if cfg.eval_limit is not None or cfg.train_limit is None or cfg.val_split <= 0:
        return cfg.eval_limit
    return max(2, round(cfg.train_limit * cfg.val_split / (1 - cfg.val_split)))


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
        return resolve_strategy(cfg, len(splits.train), log), None
    from tlearn.training.planner import apply_plan, plan_run, save_plan

    plan = plan_run(cfg, splits, device, precision, started, log)
    apply_plan(cfg, plan)
    save_plan(run_dir, plan, cfg)
    seed_everything(cfg.seed)  # the probe drew random numbers: start as a planned rerun would
    return cfg.strategy, plan


def load_run_splits(cfg: TrainConfig) -> Splits:
    """The train/val splits a run (or its LR sweep) uses: one place decides them."""
    return load_train_splits(
        cfg.data,
        data_root=cfg.data_root,
        val_split=cfg.val_split,
        seed=cfg.seed,
        train_limit=cfg.train_limit,
        eval_limit=default_eval_limit(cfg),
        exclude=cfg.exclude,
    )


def resolve_strategy(cfg: TrainConfig, n_train: int, log: Log) -> str:
    """`auto` without a budget: frozen backbone for small data, else gradual unfreezing."""
    if cfg.strategy != "auto":
        return cfg.strategy
    choice = "linear-probe" if n_train < 2000 else "gradual"
    log(f"strategy auto -> {choice} ({n_train} training images)")
    return choice


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
        return _fit(cfg, log, resume, stop)


def _fit(cfg: TrainConfig, log: Log, resume: bool, stop: StopRequests) -> RunResult:
    started = time.perf_counter() - time_before_fit()  # where `--budget` counts from
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    if cfg.deterministic and cfg.precision not in ("auto", "fp32"):
        raise TlearnError(f"--deterministic computes in fp32: drop --precision {cfg.precision}")
    precision = "fp32" if cfg.deterministic else pick_precision(device, cfg.precision)
    inference_precision = precision  # training may measure faster in another (below)
    autocast = autocast_factory(device, precision)

    splits = load_run_splits(cfg)
    log(f"validation: {splits.validation}")
    if cfg.strict:
        refuse_unreadable(splits, log)
    run_dir = prepare_run_dir(cfg.out, cfg.data)
    cfg.out = str(run_dir)
    state = starting_state(run_dir, resume, log)
    strategy, plan = plan_strategy(cfg, splits, device, precision, run_dir, started, log)
    if len(cfg.backbone) > 1 and cfg.weights not in ("auto", "none"):
        raise TlearnError(
            "--weights FILE fits one backbone: give one --backbone, or --weights auto"
        )
    cfg.resolve_step_defaults(strategy)
    if cfg.lr == "auto":  # the LR finder's suggestion becomes the run's rate (and its config's)
        from tlearn.training.lr_find import find_for_run

        cfg.lr = find_for_run(cfg, splits, strategy, device, precision, run_dir, log).suggestion
        seed_everything(cfg.seed)  # train exactly as a run given this rate would
    backbones = [create_backbone(n, cfg.weights, cfg.image_size) for n in cfg.backbone]
    taps = feature_taps(cfg, backbones, strategy)
    cfg.features = "stages" if any(taps) else "last"
    model = build_classifier(backbones, len(splits.classes), cfg, taps).to(device)
    model = model.to(memory_format=torch.channels_last)
    stages = [b.stages() for b in backbones]
    phases = plan_backbone_phases(strategy, cfg.epochs, [len(s) for s in stages])
    data_pre = model_input([b.preprocessing for b in backbones])

    # A frozen backbone's features never change: compute them once (flips included) and train
    # only the head on them. Any other augmentation changes the pixels, so it needs the images.
    use_features = all(p.trainable_stages == 0 for p in phases) and cfg.features_cacheable
    if not use_features and cfg.precision == "auto" and not cfg.deterministic:
        probe_key = f"{'+'.join(cfg.backbone)}@{data_pre.input_size}"
        chosen = probe_training_precision(
            model, data_pre.input_size, device, precision, remember_as=probe_key
        )
        if chosen != precision:
            log(f"training precision {chosen}: measured faster than {precision} for this network")
            precision, autocast = chosen, autocast_factory(device, chosen)
    # what was decided stays decided: a resume or a rerun of config.yaml computes the same way
    resolved = TrainConfig.from_dict(
        {
            **cfg.to_dict(),
            "strategy": strategy,
            "out": str(run_dir),
            "lr": cfg.resolved_lr(),
            "precision": precision,
        }
    )
    if state is not None:
        check_state_matches(state, resolved, len(splits.train), run_dir)
    resolved.save_yaml(run_dir / "config.yaml")
    log(
        f"data {cfg.data}: {len(splits.train)} train, {len(splits.val) if splits.val else 0} val, "
        f"{len(splits.classes)} classes"
    )
    for b in backbones:
        log(
            f"backbone {b.name} ({b.library}, {b.num_features} features, "
            f"{b.preprocessing.input_size}px, weights {b.weights_source})"
        )
    records = backbone_records(model, backbones)
    if any(taps):
        widths = ", ".join(str(r["num_features"]) for r in records)
        log(f"features: every stage pooled and joined to the last ({widths} wide)")
    fused = f", fusion {cfg.fusion}" if len(backbones) > 1 else ""
    log(f"strategy {strategy}, head {cfg.head}{fused}, device {device}, precision {precision}")
    log(f"run folder {run_dir}")

    spec = ModelSpec(
        classes=list(splits.classes),
        backbones=records,
        head={
            "kind": cfg.head,
            "hidden": list(cfg.hidden_sizes),
            "dropout": cfg.dropout,
            "input_norm": any(taps),
        },
        fusion=cfg.fusion,
        config=resolved.to_dict(),
    )
    prefix = None
    if not use_features:
        n_images = len(splits.train) + (len(splits.val) if splits.val is not None else 0)
        prefix = plan_prefix(
            cfg, model.backbones, stages, phases, n_images, inference_precision, log
        )
    if cfg.compile and not use_features:
        log("compiling the network (torch.compile): the first steps wait for it")
        compile_module(model)
    elif not use_features and device.type == "cpu" and precision == "bf16":
        conv_tuning.install(model, tlearn_cache_dir() / "conv-tuning.json")
    trainer = _Epochs(cfg, model, spec, splits, run_dir, device, autocast, log, stop, state)
    trainer.setup_s = time.perf_counter() - started
    if plan is not None and plan.strategy != "linear-probe" and len(phases) == 1:
        trainer.plan = plan  # refitted to the first steps' real speed, then at each epoch
    if use_features:
        trainer.run_on_features(data_pre, precision)
    elif prefix is not None:
        trainer.run_on_prefix(prefix, phases, stages, data_pre, inference_precision)
    else:
        trainer.run_on_images(phases, stages, data_pre)
    trainer.keep_average()
    trainer.finish()
    trainer.steps.close()
    if cfg.calibration:  # one temperature per saved model, from its epoch's validation logits
        spec.calibration = calibrate_run(run_dir, trainer.val_predictions, log)
        model.temperature = spec.temperature
    log_conv_tuning(conv_tuning.remove(model), log)
    return RunResult(model.cpu(), spec, run_dir)


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
    ignore = RESUME_MAY_CHANGE | {"out"}
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


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate escapes) shown with backslashes, not crash."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class _Epochs:
    """The epoch loop shared by the cached-feature and whole-image paths, and its bookkeeping.

    Where the run is lives in `self.position` (phase, finished epochs, step in the open epoch);
    every checkpoint writes it with the tensors, optimizer, scheduler and RNGs to `state.pt`.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: Classifier,
        spec: ModelSpec,
        splits: Splits,
        run_dir: Path,
        device: torch.device,
        autocast: Callable,
        log: Log,
        stop: StopRequests,
        state: dict | None,
    ) -> None:
        self.cfg, self.model, self.spec, self.splits = cfg, model, spec, splits
        self.run_dir, self.device, self.autocast, self.log = run_dir, device, autocast, log
        self.stop = stop
        weight = None
        if cfg.balance == "weighted-loss":
            weight = class_weights(splits.train.targets, len(splits.classes))
            self.log("class weights (inverse frequency): " + ", ".join(
                f"{c} {w:.2f}" for c, w in zip(splits.classes, weight.tolist(), strict=True)
            ))  # fmt: skip
        self.loss_fn = nn.CrossEntropyLoss(
            weight=None if weight is None else weight.to(device),
            label_smoothing=cfg.label_smoothing,
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.started = time.perf_counter()
        self.pending = state  # a resumed run's state, applied when its phase is rebuilt
        state = state or {}
        self.position = Position.from_dict(state.get("position", {}))
        self.rows: list[dict] = list(state.get("rows", []))
        self.best_score: float = state.get("best_score", -math.inf)
        self.best_correct: torch.Tensor | None = state.get("best_correct")
        self.lr_scale: float = state.get("lr_scale", 1.0)
        self.nan_retries: int = state.get("nan_retries", 0)
        self.elapsed_before: float = state.get("elapsed", 0.0)
        self.skipped: dict[str, dict[int, str]] = state.get("skipped", {"train": {}, "val": {}})
        self.shortfall = {"train": 0, "val": 0}  # undecodable images that could not be named
        self.failed_saves: set[str] = set()
        self.setup_s = 0.0  # time before the epochs began (loading, planning), for --budget
        self.budget_s = parse_duration(cfg.budget) if cfg.budget else None
        self.epoch_started = time.perf_counter()
        self.size_note = ""  # " (32px)" while progressive resizing trains below the full size
        self.plan: Plan | None = None  # --budget: the planner's, while its epochs may change
        self.refitted = False  # to the first epoch's steps (`refit_to_speed`), once
        self.speed_mark: tuple[int, float] | None = None
        self.ema: WeightAverage | None = None
        self.ema_module: nn.Module | None = None
        self.early = EarlyStopping(cfg.patience, cfg.monitor)
        if state.get("early"):
            self.early.load_state_dict(state["early"])
        if state.get("metrics"):
            spec.metrics = dict(state["metrics"])
        self.val_predictions: dict[str, loop.Predictions | None] = {}  # of best and last
        self.steps = StepLog(run_dir, cfg.tensorboard, resume=bool(state))

    # -- the two paths ---------------------------------------------------------------------

    def run_on_features(self, pre: Preprocessing, precision: str) -> None:
        """Frozen backbone: compute features once, then train only the head on them."""
        cfg = self.cfg
        self.log(f"computing frozen features once ({precision}); the head then trains on them")
        train = extract_features(
            self.model, self.splits.train, pre, cfg, self.device, precision, "features/train",
            flip=flips(cfg), log=self.log,
        )  # fmt: skip
        val = None
        if self.splits.val is not None:
            val = extract_features(
                self.model, self.splits.val, pre, cfg, self.device, precision, "features/val",
                log=self.log,
            )  # fmt: skip
        skipped = len(self.splits.train) - len(train)
        if skipped:
            self.log(f"skipped {skipped} training images that could not be decoded")
        self.log(f"features ready in {time.perf_counter() - self.started:.1f}s")
        head = self.model.top()  # fusion + head: what trains on top of frozen features
        self.note_features_shortfall("train", self.splits.train, train)
        self.note_features_shortfall("val", self.splits.val, val)
        loader = FeatureLoader(train, cfg.batch_size, shuffle=True, generator=self.generator)
        if cfg.balance == "sampler":
            loader.sample_weights = sample_weights(train.labels, len(self.splits.classes))
        val_loader = FeatureLoader(val, 1024, shuffle=False) if val is not None else None
        groups = apply_phase(
            head, [], Phase(cfg.epochs, 0), cfg.resolved_lr(), 1.0, cfg.weight_decay
        )
        for p in self.model.backbones.parameters():
            p.requires_grad_(False)
        optimizer = self.optimizer(groups)
        per_epoch = self.epoch_steps(loader)
        steps = self.phase_steps(loader, 0, cfg.epochs)
        scheduler = build_scheduler(optimizer, steps, int(cfg.warmup * per_epoch), cfg.schedule)

        def evaluate() -> loop.Predictions | None:
            if val_loader is None:
                return None
            return loop.predict_all(head, val_loader, self.device, self.autocast)

        phase = _PhaseRun(0, 0, cfg.epochs, head, optimizer, scheduler, head.train)
        self.train_phase(phase, loader, evaluate)
        self.apply_pending(head)

    def run_on_images(
        self, phases: list[Phase], stages: list[list[list[nn.Parameter]]], pre: Preprocessing
    ) -> None:
        cfg = self.cfg
        sampler = EpochSampler(len(self.splits.train), cfg.seed, cfg.batch_size)
        train_loader = image_loader(
            self.splits.train, pre, cfg, train=True, generator=self.generator, sampler=sampler
        )
        if cfg.balance == "sampler":
            inner = getattr(train_loader, "loader", train_loader)  # inside a mixup wrapper
            decoded = getattr(inner, "decoded", None)
            targets = decoded.targets if decoded is not None else self.splits.train.targets
            weights = sample_weights(targets, len(self.splits.classes))
            (sampler if decoded is None else inner).sample_weights = weights
        for i, _ in getattr(train_loader, "skipped", []):  # the decode-once path found them
            self.note_skipped("train", i)
        val_loader = (
            image_loader(
                self.splits.val,
                pre,
                cfg,
                train=False,
                batch_size=inference_batch_size(self.device, pre.input_size),
            )  # fmt: skip
            if self.splits.val is not None
            else None
        )

        def evaluate() -> loop.Predictions | None:
            if val_loader is None:
                return None
            pred = loop.predict_all(self.model, val_loader, self.device, self.autocast)
            for i in sorted(set(range(len(self.splits.val))) - set(pred.indices.tolist())):
                self.note_skipped("val", i)
            return pred

        full = pre.input_size
        sizes = progressive.schedule(cfg.epochs, cfg.progressive, full)
        size_of = None
        if sizes[0] < full:
            size_of = sizes.__getitem__
            self.log(f"progressive resizing: epochs at {', '.join(f'{s}px' for s in sizes)}")
        self.train_phases(phases, stages, train_loader, evaluate, size_of, full)

    def run_on_prefix(
        self,
        prefix: Prefix,
        phases: list[Phase],
        stages: list[list[list[nn.Parameter]]],
        pre: Preprocessing,
        precision: str,
    ) -> None:
        """Frozen first stages: their outputs computed once (mirrors too), the rest trains on
        them (see `tlearn.training.prefix_cache`)."""
        cfg = self.cfg
        backbone = self.model.backbones[0]
        extractor = PrefixExtractor(backbone, prefix)
        keep = storage_dtype(precision)
        started = time.perf_counter()

        def outputs(source: Any, name: str, flip: bool) -> FeatureSet:
            return compute_features(
                extractor, source, pre, cfg, self.device, precision, name,
                flip=flip, flatten=False, keep=keep,
            )  # fmt: skip

        train = outputs(self.splits.train, "frozen stages/train", flips(cfg))
        val = outputs(self.splits.val, "frozen stages/val", False) if self.splits.val else None
        shape = "x".join(str(d) for d in train.features.shape[1:])
        self.log(
            f"frozen stages computed once in {time.perf_counter() - started:.1f}s ({shape} per "
            f"image{', mirrors too' if flips(cfg) else ''}); the rest of the network trains on them"
        )
        self.note_features_shortfall("train", self.splits.train, train)
        self.note_features_shortfall("val", self.splits.val, val)
        loader = FeatureLoader(
            train, cfg.batch_size, shuffle=True, generator=self.generator, dtype=torch.float32
        )
        if cfg.balance == "sampler":
            loader.sample_weights = sample_weights(train.labels, len(self.splits.classes))
        val_loader = None
        if val is not None:
            batch = inference_batch_size(self.device, pre.input_size)
            val_loader = FeatureLoader(val, batch, shuffle=False, dtype=torch.float32)

        def evaluate() -> loop.Predictions | None:
            if val_loader is None:
                return None
            return loop.predict_all(self.model, val_loader, self.device, self.autocast)

        backbone.after_prefix = prefix
        try:
            self.train_phases(phases, stages, loader, evaluate, None, pre.input_size)
        finally:
            backbone.after_prefix = None

    def train_phases(
        self,
        phases: list[Phase],
        stages: list[list[list[nn.Parameter]]],
        train_loader: Any,
        evaluate: Callable,
        size_of: Callable[[int], int] | None,
        full: int,
    ) -> None:
        """Each phase of the strategy, with its own optimizer and schedule, from the position."""
        cfg = self.cfg
        decay = cfg.lr_decay
        if cfg.strategy_kind in ("gradual", "auto") and decay >= 1.0:
            decay = GRADUAL_DEFAULT_DECAY
        per_epoch = self.epoch_steps(train_loader)

        def set_mode() -> None:
            self.model.train()
            freeze_batchnorm_of_frozen(self.model)

        first = 0
        for index, phase in enumerate(phases):
            if self.position.epoch < first + phase.epochs and not self.position.finished:
                groups = apply_phase(
                    self.model.top(), stages, phase, cfg.resolved_lr(), decay, cfg.weight_decay
                )
                optimizer = self.optimizer(groups)
                steps = self.phase_steps(train_loader, first, phase.epochs)
                warmup = int(min(cfg.warmup, phase.epochs) * per_epoch)
                scheduler = build_scheduler(optimizer, steps, warmup, cfg.schedule)
                self.log(
                    f"phase: {phase.epochs} epoch(s), top {phase.trainable_stages} backbone "
                    f"stage(s) training, {trainable_parameter_count(self.model):,} trainable "
                    "parameters"
                )
                run = _PhaseRun(
                    index, first, phase.epochs, self.model, optimizer, scheduler, set_mode,
                    size_of=size_of, full_size=full,
                )  # fmt: skip
                self.train_phase(run, train_loader, evaluate)
            first += phase.epochs
        self.apply_pending(self.model)

    # -- the epoch loop --------------------------------------------------------------------

    def epoch_limit(self, epoch: int | None = None) -> int | None:
        """Batches epoch `epoch` (0-based) stops after: `--steps-per-epoch`, or
        `--last-epoch-steps` for the last one; None: the whole loader."""
        cfg = self.cfg
        limit = cfg.steps_per_epoch
        if epoch is not None and epoch == cfg.epochs - 1 and cfg.last_epoch_steps:
            limit = min(limit or cfg.last_epoch_steps, cfg.last_epoch_steps)
        return limit

    def epoch_steps(self, loader: Any, epoch: int | None = None) -> int:
        """Batches epoch `epoch` trains on (any but the last when None)."""
        full = batches_per_epoch(loader)
        limit = self.epoch_limit(epoch)
        return full if limit is None else max(1, min(full, limit))

    def phase_steps(self, loader: Any, first: int, epochs: int) -> int:
        """Steps of epochs `first` to `first + epochs`: what a phase's schedule spans."""
        return sum(self.epoch_steps(loader, e) for e in range(first, first + epochs))

    def reschedule(self, run: _PhaseRun, loader: Any) -> None:
        """Stretch or shrink the phase's schedule to its changed length; the step count goes on."""
        cfg = self.cfg
        per_epoch = self.epoch_steps(loader)
        steps = self.phase_steps(loader, run.first, run.epochs)
        warmup = int(min(cfg.warmup, run.epochs) * per_epoch)
        run.scheduler.lr_lambdas = [
            lambda s: lr_factor(s, steps, warmup, cfg.schedule) for _ in run.optimizer.param_groups
        ]

    def train_phase(self, run: _PhaseRun, loader: Any, evaluate: Callable) -> None:
        """The phase's epochs from where the run stands; a NaN/Inf loss retries an epoch once."""
        cfg = self.cfg
        self.apply_pending(run.module, run if self.pending_phase() == run.index else None)
        self.ensure_average(run.module)
        while self.position.epoch < run.end and not self.position.finished:
            self.epoch_started = time.perf_counter()
            if self.stop.requested:  # a signal during feature extraction or evaluation
                self.save_state(run)
                self.interrupted()
            epoch = self.position.epoch
            good = self.capture(run)  # the last good state, for a retry
            pos = self.position
            progress = loop.EpochProgress(pos.step, pos.loss_sum, pos.seen, pos.unused)
            limit = self.epoch_limit(epoch)
            batches = EpochBatches(loader, cfg.seed, epoch, progress.step, limit)

            def after_step(
                batch: Any, progress: loop.EpochProgress, batches: EpochBatches = batches
            ) -> None:
                self.after_step(run, batches, batch, progress)

            size = run.size_of(epoch) if run.size_of else None  # progressive resizing
            self.size_note = f" ({size}px)" if size and size != run.full_size else ""
            try:
                with progressive.training_size(run.module, loader, size or 0, run.full_size):
                    stats = loop.train_one_epoch(
                        run.module,
                        batches,
                        run.optimizer,
                        run.scheduler,
                        self.loss_fn,
                        self.device,
                        self.autocast,
                        run.set_mode,
                        f"epoch {epoch + 1}/{cfg.epochs}{self.size_note}",
                        progress=progress,
                        after_step=after_step,
                    )
                self.check_finite(run.module, progress.step)
                self.end_epoch(run, stats, evaluate, loader)
            except loop.NonFiniteLoss as e:
                self.retry_with_lower_lr(run, good, e)
        if self.stop.requested:
            self.interrupted()

    def after_step(
        self, run: _PhaseRun, batches: EpochBatches, batch: Any, progress: loop.EpochProgress
    ) -> None:
        if self.ema is not None and batch is not None:
            self.ema.update(run.module)
        self.steps.on_step(self.position.epoch, progress, run.optimizer.param_groups[0]["lr"])
        if self.plan is not None and not self.refitted and self.position.epoch == 0:
            self.refit_to_speed(run, batches, progress.step)
        k = progress.step - 1
        expected = batches.expected(k)
        if expected is not None:  # the PIL path: name the files its workers could not decode
            got = set(batch[2].tolist()) if batch is not None and len(batch) > 2 else set()
            for i in expected.tolist():
                if i not in got:
                    self.note_skipped("train", i)
        self.position.step, self.position.loss_sum = progress.step, progress.loss_sum
        self.position.seen, self.position.unused = progress.seen, progress.unused
        every = self.cfg.checkpoint_every
        if self.stop.requested:
            self.save_state(run)
            self.interrupted()
        if every and progress.step % every == 0 and progress.step < batches.start + len(batches):
            self.save_state(run)

    def refit_to_speed(self, run: _PhaseRun, batches: EpochBatches, step: int) -> None:
        """--budget: time steps 5 to ~10% of the first epoch, then refit the schedule to them.

        The epochs and their length in steps change while the schedule is still warming up;
        config.yaml and plan.json record them, so a resume or a rerun trains the same.
        """
        from tlearn.training.planner import max_epochs, refit_schedule

        plan, cfg = self.plan, self.cfg
        per_epoch = self.epoch_steps(batches.loader)
        at = max(REFIT_FROM_STEP + 10, per_epoch // 10)
        if step == REFIT_FROM_STEP:
            self.speed_mark = (step, time.perf_counter())
        if step != at or self.speed_mark is None or plan is None or at >= per_epoch:
            return
        self.refitted = True
        first, since = self.speed_mark
        step_s = (time.perf_counter() - since) / (step - first)
        used = self.setup_s + self.elapsed()
        cap = max_epochs(len(self.splits.train))
        full = batches_per_epoch(batches.loader)
        epochs, limit = refit_schedule(plan, step_s, full, step, used, cap)
        if (epochs, limit) == (cfg.epochs, cfg.steps_per_epoch):
            return
        speed = cfg.batch_size / step_s
        length = f" of {limit} batches" if limit else ""
        self.log(
            f"refitted to the budget: training runs at {speed:,.0f} img/s, not the probe's "
            f"estimate, so {epochs} epoch(s){length} instead of {cfg.epochs}"
            + (f" of {cfg.steps_per_epoch}" if cfg.steps_per_epoch else "")
        )
        cfg.epochs = run.epochs = epochs
        cfg.steps_per_epoch = limit
        batches.limit = self.epoch_limit(0)
        self.reschedule(run, batches.loader)
        plan.epochs, plan.steps_per_epoch = epochs, limit
        plan.reasons.append(
            f"refitted after {step} steps of the first epoch: {speed:,.0f} img/s training"
        )
        self.record_length(plan)

    def record_length(self, plan: Any = None) -> None:
        """config.yaml (and plan.json) hold the run's changed length: a resume trains the same."""
        from tlearn.training.planner import save_plan

        for key in ("epochs", "steps_per_epoch", "last_epoch_steps"):
            self.spec.config[key] = getattr(self.cfg, key)
        TrainConfig.from_dict(self.spec.config).save_yaml(self.run_dir / "config.yaml")
        if plan is not None:
            save_plan(self.run_dir, plan, self.cfg)

    def retry_with_lower_lr(self, run: _PhaseRun, good: dict, error: loop.NonFiniteLoss) -> None:
        where = f"epoch {self.position.epoch + 1}, step {error.step + 1}"
        if self.nan_retries >= 1:
            raise TlearnError(
                f"the loss became {error.value} again ({where}) after the learning rate was "
                f"lowered: the last good checkpoint is kept in {self.run_dir}; lower --lr or "
                "check the data"
            )
        self.nan_retries += 1
        restore(good, run.module, run.optimizer, run.scheduler)
        if self.ema is not None and good.get("ema") is not None:
            self.ema.load_state_dict(good["ema"])
        self.position = Position.from_dict(good["position"])
        self.lr_scale *= 0.1
        scale_learning_rate(run.optimizer, run.scheduler, 0.1)
        self.log(
            f"warning: the loss became {error.value} ({where}): back to the last good state, "
            "learning rate x0.1, retrying the epoch"
        )

    # -- bookkeeping -----------------------------------------------------------------------

    def end_epoch(
        self, run: _PhaseRun, stats: loop.EpochStats, evaluate: Callable, loader: Any
    ) -> None:
        """Evaluate and save (the averaged weights with --ema), then decide whether to go on."""
        with self.averaged(run.module):
            row = self.record_epoch(run, stats, evaluate())
        fitted = False
        if self.budget_s is not None and not self.position.finished:
            fitted = self.fit_to_budget(run, stats, loader)
        reason = self.stop_reason(row, run, budget=not fitted)
        if reason and not self.position.finished:
            self.position.finished = True
            self.log(f"stopping after epoch {row['epoch']}: {reason}")
        if not self.failed_saves & {"metrics.csv", "last.safetensors", "best.safetensors"}:
            self.save_state(run)  # last, and only over whole files: resume redoes a failed epoch

    def fit_to_budget(self, run: _PhaseRun, stats: loop.EpochStats, loader: Any) -> bool:
        """--budget: refit what is left of the run to the speed of the epoch just finished.

        Stopping at an epoch's end would cut the schedule before it anneals, the costliest way
        to keep a budget (a 10m run stopped after 2 of 3 epochs scored 93.4%, against 94.6% for
        the same two epochs annealed): a slower machine ends the last epoch early instead, and
        the schedule shrinks to end with it. A faster one (a planned run, not the user's
        epochs) gets more steps: a 30m run whose first steps were slow ended at 87% of its
        budget. True when what is left now fits.
        """
        from tlearn.training.planner import FIXED_OVERHEAD_S, SAFETY, fit_remaining, max_epochs

        cfg = self.cfg
        if run.size_of or run.first != 0 or run.epochs != cfg.epochs:
            return False  # progressive sizes or several phases: the stop rule alone
        done = self.position.epoch
        step_s = stats.seconds / max(1, self.epoch_steps(loader, done - 1))
        other_s = max(0.0, time.perf_counter() - self.epoch_started - stats.seconds) + 1.0
        left = self.budget_s * SAFETY - FIXED_OVERHEAD_S - (self.setup_s + self.elapsed())
        planned_left = cfg.epochs - done
        last_planned = self.epoch_steps(loader, cfg.epochs - 1)
        full = self.epoch_steps(loader)
        most = max_epochs(len(self.splits.train)) - done if self.plan else planned_left
        fit = fit_remaining(left, step_s, other_s, planned_left, full, last_planned, most)
        if fit is None or fit[0] == 0:
            return fit is None  # it still fits; or not even a share of an epoch does: stop
        epochs_left, last = fit
        longer = (epochs_left - 1) * full + last > (planned_left - 1) * full + last_planned
        if longer and self.plan is None:
            return True  # the user's epochs are a plan of their own: only ever shortened
        cfg.epochs = run.epochs = done + epochs_left
        cfg.last_epoch_steps = last if last < full else None
        self.reschedule(run, loader)
        note = (
            f"the budget is {'leaving time' if longer else 'running short'} ({left:.0f}s left "
            f"at {cfg.batch_size / step_s:,.0f} img/s): {epochs_left} more epoch(s), the last "
            f"of {last} batches, and the schedule ends with them"
        )
        self.log(note)
        plan = self.plan
        if plan is not None:
            plan.epochs = cfg.epochs
            plan.reasons.append(f"after epoch {done}: {note}")
        self.record_length(plan)
        return True

    def stop_reason(
        self, row: dict, run: _PhaseRun | None = None, budget: bool = True
    ) -> str | None:
        """Early stopping (--patience) or a budget the next epoch would overrun (--budget)."""
        if self.early.update(row):
            return (
                f"{self.cfg.monitor} has not improved for {self.early.patience} epoch(s) "
                "(--patience)"
            )
        if budget and self.budget_s is not None and not self.position.finished:
            used = self.setup_s + self.elapsed()
            last = time.perf_counter() - self.epoch_started
            if run is not None and run.size_of and row["epoch"] < self.cfg.epochs:
                # progressive resizing: the next epoch has larger images than this one
                now, then = run.size_of(row["epoch"] - 1), run.size_of(row["epoch"])
                full = run.full_size
                last *= progressive.relative_cost(then, full) / progressive.relative_cost(now, full)
            next_end = used + last
            if next_end > BUDGET_OVERRUN * self.budget_s:
                return (
                    f"another epoch would end near {next_end:.0f}s, past the "
                    f"{self.budget_s:.0f}s budget (--budget {self.cfg.budget})"
                )
        return None

    def record_epoch(
        self, run: _PhaseRun, stats: loop.EpochStats, pred: loop.Predictions | None
    ) -> dict:
        epoch = self.position.epoch + 1
        val_loss, val_acc = loop.loss_and_accuracy(pred) if pred is not None else (None, None)
        elapsed = self.elapsed()
        row = {
            "epoch": epoch,
            "train_loss": round(stats.loss, 5),
            "val_loss": None if val_loss is None else round(val_loss, 5),
            "val_accuracy": None if val_acc is None else round(val_acc, 5),
            "images_per_s": round(stats.images_per_second, 1),
            "elapsed_s": round(elapsed, 1),
            "skipped": max(stats.skipped, self.skipped_count("train")),
        }
        classes = self.spec.classes
        if (
            pred is not None
            and len(pred.labels)
            and (self.cfg.balance != "none" or len(classes) < 20)
        ):
            recall = per_class_recall(pred.logits, pred.labels, len(classes))
            for name, r in zip(classes, recall, strict=True):
                row[f"recall_{name}"] = None if r is None else round(r, 5)
            self.log("  val recall per class: " + ", ".join(
                f"{name} {'-' if r is None else f'{r:.3f}'}"
                for name, r in zip(classes, recall, strict=True)
            ))  # fmt: skip
        self.rows.append(row)
        self.steps.on_epoch(row)
        val_text = (
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}" if val_acc is not None else "no val"
        )
        self.log(
            f"epoch {epoch}/{self.cfg.epochs}{self.size_note}  train_loss {stats.loss:.4f}  "
            f"{val_text}  "
            f"{stats.images_per_second:,.0f} img/s  {elapsed:.1f}s"
        )
        self.position = Position(phase=run.index, epoch=epoch, finished=epoch >= self.cfg.epochs)
        self.try_save("metrics.csv", self.write_metrics)
        self.spec.metrics = {
            "epoch": epoch,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "train_loss": stats.loss,
            "skipped_train": self.skipped_count("train"),
            "skipped_val": self.skipped_count("val"),
        }
        self.try_save("last.safetensors", self.save_model("last.safetensors"))
        self.val_predictions["last.safetensors"] = pred
        score = val_acc if val_acc is not None else -stats.loss
        correct = None
        if pred is not None and len(pred.labels):
            correct = pred.logits.argmax(1) == pred.labels
        if score > self.best_score or not_clearly_worse(correct, self.best_correct):
            if score > self.best_score:  # the bar later epochs are held to
                self.best_score, self.best_correct = score, correct
            self.try_save("best.safetensors", self.save_model("best.safetensors"))
            self.val_predictions["best.safetensors"] = pred
        return row

    # -- --ema -----------------------------------------------------------------------------

    def ensure_average(self, module: nn.Module) -> None:
        if self.cfg.ema and self.ema_module is not module:
            self.ema, self.ema_module = WeightAverage(module, self.cfg.ema), module

    def averaged(self, module: nn.Module) -> Any:
        if self.ema is None or self.ema_module is not module:
            return contextlib.nullcontext()
        return self.ema.swapped_in(module)

    def keep_average(self) -> None:
        """The averaged weights become the model the run returns (the files already hold them)."""
        if self.ema is not None and self.ema_module is not None:
            self.ema.copy_to(self.ema_module)

    def save_model(self, name: str) -> Callable[[], Any]:
        return lambda: save_model(self.run_dir / name, self.model, self.spec)

    def capture(self, run: _PhaseRun) -> dict:
        return capture(
            run.module,
            run.optimizer,
            run.scheduler,
            Position(**{**asdict(self.position), "phase": run.index}),
            scope="top" if run.module is not self.model else "model",
            rows=self.rows,
            best_score=self.best_score,
            best_correct=self.best_correct,
            lr_scale=self.lr_scale,
            nan_retries=self.nan_retries,
            elapsed=self.elapsed(),
            skipped=self.skipped,
            metrics=self.spec.metrics,
            config=self.spec.config,
            n_train=len(self.splits.train),
            ema=None if self.ema is None else self.ema.state_dict(),
            early=self.early.state_dict(),
        )

    def save_state(self, run: _PhaseRun) -> None:
        self.check_finite(run.module, self.position.step)
        state = self.capture(run)
        self.try_save(STATE_NAME, lambda: save_state(self.run_dir / STATE_NAME, state))

    def try_save(self, name: str, write: Callable[[], Any]) -> None:
        """A failed write (disk full, folder gone read-only) keeps the previous file and says so."""
        try:
            write()
        except OSError as e:
            self.failed_saves.add(name)
            self.log(
                f"warning: could not write {self.run_dir / name} ({e.strerror or e}); "
                "the previous one is kept"
            )
        else:
            self.failed_saves.discard(name)

    def pending_phase(self) -> int | None:
        return None if self.pending is None else self.pending["position"]["phase"]

    def apply_pending(self, module: nn.Module, run: _PhaseRun | None = None) -> None:
        """Put a resumed run's tensors and RNGs back (and its optimizer, inside the same phase)."""
        if self.pending is None:
            return
        optimizer, scheduler = (run.optimizer, run.scheduler) if run else (None, None)
        restore(self.pending, module, optimizer, scheduler)
        if self.pending.get("ema") is not None:
            if self.ema is None:  # a finished run resumed: no epoch rebuilt the average
                self.ema = WeightAverage(module, self.cfg.ema or 0.999)
                self.ema_module = module
            self.ema.load_state_dict(self.pending["ema"])
        self.pending = None

    def optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """A phase's optimizer, at the lowered rate when a NaN retry happened earlier."""
        for g in groups:
            g["lr"] *= self.lr_scale
        return build_optimizer(groups, self.cfg.optimizer, self.cfg.momentum)

    def check_finite(self, module: nn.Module, step: int) -> None:
        """Weights that overflowed must never reach a checkpoint: treat them as a NaN loss."""
        if not all(torch.isfinite(p).all() for p in module.parameters() if p.requires_grad):
            raise loop.NonFiniteLoss(float("nan"), max(0, step - 1))

    def note_skipped(self, split: str, i: int) -> None:
        """Warn once per file that could not be decoded, with the decoder's reason."""
        if i in self.skipped[split]:
            return
        source = self.splits.train if split == "train" else self.splits.val
        try:
            source.load(i)
            reason = f"{source.describe(i)} failed to decode in a loader process"
        except TlearnError as e:
            reason = str(e)
        self.skipped[split][i] = printable(reason)
        self.log(f"warning: skipped {self.skipped[split][i]}")

    def skipped_count(self, split: str) -> int:
        return max(len(self.skipped[split]), self.shortfall[split])

    def note_features_shortfall(self, split: str, source: Any, features: Any) -> None:
        """Images left out of a feature set: named when it says which rows it kept."""
        if source is None or features is None:
            return
        self.shortfall[split] = len(source) - len(features)
        kept = getattr(features, "indices", None)
        if kept is not None:
            for i in sorted(set(range(len(source))) - set(torch.as_tensor(kept).tolist())):
                self.note_skipped(split, i)

    def interrupted(self) -> None:
        pos = self.position
        saved = (
            "the last checkpoint could not be written, so resuming repeats some steps"
            if STATE_NAME in self.failed_saves
            else f"progress is saved in {self.run_dir}"
        )
        raise Interrupted(
            self.stop.signum or 2,
            f"stopped by {self.stop.signal_name} at epoch {pos.epoch + 1}, step {pos.step}; "
            f"{saved}: continue with `tlearn train --resume {self.run_dir}`",
        )

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.started

    def finish(self) -> None:
        """The summary of skipped files, and a clear failure if the final files are missing."""
        n_train, n_val = self.skipped_count("train"), self.skipped_count("val")
        if n_train or n_val:
            lines = [f"{split}\t{reason}" for split in ("train", "val")
                     for _, reason in sorted(self.skipped[split].items())]  # fmt: skip
            lines += [f"{split}\t{self.skipped_count(split) - len(self.skipped[split])} more, "
                      "not named (their features came from the feature cache)"
                      for split in ("train", "val")
                      if self.skipped_count(split) > len(self.skipped[split])]  # fmt: skip
            self.try_save(
                "skipped.txt",
                lambda: atomic_write_text(self.run_dir / "skipped.txt", "\n".join(lines) + "\n"),
            )
            self.log(
                f"skipped {n_train} training and {n_val} validation image(s) that could not be "
                f"decoded (listed in {self.run_dir / 'skipped.txt'})"
            )
        if self.failed_saves:
            raise TlearnError(
                f"could not write {', '.join(sorted(self.failed_saves))} in {self.run_dir} (see "
                f"the warnings above): free space there and run `tlearn train --resume "
                f"{self.run_dir}`"
            )

    def write_metrics(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())


@dataclass
class _PhaseRun:
    """One optimizer's stretch of epochs: `first` to `first + epochs` on `module`."""

    index: int
    first: int
    epochs: int
    module: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    set_mode: Callable[[], Any]
    # The training image size of an epoch (progressive resizing); None: always the full size.
    size_of: Callable[[int], int] | None = None
    full_size: int = 0

    @property
    def end(self) -> int:
        return self.first + self.epochs


def scale_learning_rate(optimizer: torch.optim.Optimizer, scheduler: Any, factor: float) -> None:
    """Scale the rates now and for the rest of the schedule (LambdaLR multiplies base_lrs)."""
    for g in optimizer.param_groups:
        g["lr"] *= factor
        if "initial_lr" in g:
            g["initial_lr"] *= factor
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
