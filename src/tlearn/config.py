"""Every training option in one dataclass: names, defaults, help and validation live here once.

The CLI parser, the YAML/JSON loader and `tlearn.train(**kwargs)` are all built from `TrainConfig`,
so an option cannot exist in one and be missing (or spelled differently) in another.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text
from tlearn.units import parse_bytes, parse_duration  # noqa: F401 (re-exported)

STRATEGIES = ("auto", "linear-probe", "finetune", "gradual", "freeze:N")
HEADS = ("linear", "mlp")
HEAD_FITS = ("auto", "lbfgs", "sgd")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# The augmentation presets, mildest first (tlearn.data.augment defines what each does).
AUGMENTS = ("none", "flip", "shift", "light", "medium", "strong")
FUSIONS = ("concat", "sum", "gated")
FEATURES = ("auto", "last", "stages")
MONITORS = ("val_loss", "val_accuracy")
BALANCES = ("none", "weighted-loss", "sampler")
LR_SCALES = ("none", "linear", "sqrt")  # --lr-scale: x N, x sqrt(N) or as given, N processes

# Options a `--budget` plan may choose: None in a TrainConfig means the user did not give them,
# so an explicit value survives the plan; whatever is still None after planning becomes this.
PLANNABLE_DEFAULTS = {"head": "linear", "augment": "none", "schedule": "cosine"}

MAX_BATCH_SIZE = 1 << 16
DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS = 128, 5
FEATURE_BATCH_SIZE, FEATURE_EPOCHS = 256, 6  # a head alone on cached features (see below)
STAGE_FEATURE_EPOCHS = 3  # the same on stage features, 1.6x wider here (see below)

# Learning rates that work out of the box: a head alone tolerates a high rate, a whole pretrained
# network needs a low one (or it forgets what ImageNet taught it).
DEFAULT_LR = {
    ("sgd", "linear-probe"): 0.1,
    ("sgd", "freeze"): 0.02,
    ("sgd", "finetune"): 0.01,
    ("sgd", "gradual"): 0.02,
    ("adamw", "linear-probe"): 3e-3,
    ("adamw", "freeze"): 1e-3,
    ("adamw", "finetune"): 5e-4,
    ("adamw", "gradual"): 1e-3,
}


def opt(default: Any, help: str, choices: tuple[str, ...] | None = None, **extra: Any) -> Any:
    """A dataclass field carrying the CLI help text, so the parser is generated, not rewritten."""
    meta = {"help": help, "choices": choices, **extra}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """What `tlearn train` does; the resolved copy is written to the run folder as config.yaml."""

    data: str = opt(
        "", "dataset: a folder of class folders, a CSV of path,label, or cifar10/fashion-mnist/..."
    )
    backbone: list[str] = opt(
        ["tf_efficientnet_lite0"], "timm or torchvision model name (repeat to fuse several)"
    )
    weights: str = opt(
        "auto",
        "pretrained weights: auto (package, cache or download), none, or a .pth/.safetensors file",
    )
    fusion: str = opt(
        "concat",
        "how several backbones' features are joined: concat, sum (projected to a common width "
        "and added) or gated (the sum weighted per image by a learned gate)",
        FUSIONS,
    )
    features: str = opt(
        "auto",
        "what the head sees: last (the backbone's pooled output), stages (every stage's output "
        "pooled and joined: shapes and textures as well as objects) or auto (stages when the "
        "backbone stays frozen, last when it trains)",
        FEATURES,
    )
    head: str | None = opt(
        None, "classifier head on top of the pooled features", HEADS, shown_default="linear"
    )
    head_fit: str = opt(
        "auto",
        "how a linear head on frozen features is fitted: lbfgs (solved to convergence, its L2 "
        "strength and --features auto chosen on validation), sgd (--epochs of --optimizer), or "
        "auto (lbfgs unless --epochs or --lr is given)",
        HEAD_FITS,
    )
    hidden: str = opt("256,128", "hidden layer sizes of the mlp head, comma separated")
    dropout: float = opt(0.0, "dropout between the mlp head's layers")
    strategy: str = opt(
        "auto",
        "what trains: linear-probe, freeze:N (first N stages frozen), finetune, gradual, auto",
    )
    lr: float | str | None = opt(
        None,
        "peak learning rate, or auto (run the LR finder first and use its suggestion; "
        "default: chosen for the strategy)",
    )
    lr_decay: float = opt(
        1.0, "layer-wise rate factor per stage below the head for finetune/gradual (e.g. 0.7)"
    )
    optimizer: str = opt("adamw", "optimizer", OPTIMIZERS)
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(0.01, "weight decay (not applied to biases and norms)")
    schedule: str | None = opt(
        None,
        "learning-rate schedule after warm-up (a --budget plan chooses onecycle)",
        SCHEDULES,
        shown_default="cosine",
    )
    warmup: float = opt(0.0, "warm-up length in epochs (fractions allowed)")
    label_smoothing: float = opt(0.1, "label smoothing of the cross-entropy loss")
    epochs: int | None = opt(
        None, "training epochs (default 5; 6 for a head trained on cached features)"
    )
    steps_per_epoch: int | None = opt(
        None,
        "end each epoch after N batches, a fresh shuffled share of the training set each time "
        "(default: the whole set; a --budget plan sets it to use its time to the end)",
    )
    last_epoch_steps: int | None = opt(
        None,
        "end the last epoch after N batches (a --budget run sets it when the machine runs "
        "slower than planned, so the schedule still ends inside the budget)",
    )
    budget: str | None = opt(
        None,
        "time budget for the whole run, e.g. 90s, 10m, 2h: --strategy auto then plans image "
        "size, strategy, epochs and rate to fit it, and no run starts an epoch it cannot finish",
    )
    patience: int | None = opt(
        None, "early stopping: stop after N epochs in which --monitor did not improve"
    )
    monitor: str = opt("val_loss", "what --patience watches", MONITORS)
    ema: float | None = opt(
        None,
        "keep an exponential moving average of the weights with this decay (e.g. 0.999); "
        "it is what is evaluated and saved",
    )
    balance: str = opt(
        "none",
        "class imbalance: none, weighted-loss (inverse class frequency) or sampler (images "
        "drawn with those weights each epoch)",
        BALANCES,
    )
    batch_size: int | None = opt(
        None, "images per step (default 128; 256 for a head trained on cached features)"
    )
    image_size: int | None = opt(None, "input resolution (default: the backbone's own)")
    compile: bool = opt(
        False,
        "torch.compile the network: faster steps after a compilation of a minute or more on a "
        "CPU (worth it for long runs)",
    )
    progressive: int | None = opt(
        None,
        "progressive resizing: train the first epoch at this size, growing to --image-size by "
        "the last epoch (faster epochs; validation and the model use the full size)",
    )
    augment: str | None = opt(
        None,
        "training augmentation: none, flip, shift (flips + translations up to 1/8 of the side), "
        "light (random resized crops + flips), medium "
        "(+ TrivialAugmentWide, random erasing), strong (+ RandAugment, mixup, cutmix); "
        "a --budget plan chooses one when none is given",
        AUGMENTS,
        shown_default="none",
    )
    hflip: bool = opt(True, "random horizontal flips when augmenting (off: flips change labels)")
    mixup: float | None = opt(
        None, "mixup alpha, 0 = off (default: 0.2 with --augment strong, else off)"
    )
    cutmix: float | None = opt(
        None, "cutmix alpha, 0 = off (default: 1.0 with --augment strong, else off)"
    )
    val_split: float = opt(0.1, "fraction held out for validation when the data has no val split")
    train_limit: int | None = opt(None, "train on a stratified subset of N images")
    eval_limit: int | None = opt(
        None,
        "validate on a stratified subset of N images (default with --train-limit: in proportion)",
    )
    exclude: str | None = opt(
        None,
        "leave out the files listed in this file: issues.csv from `tlearn doctor` (rows whose "
        "action is exclude) or one path per line",
    )
    data_root: str | None = opt(None, "folder holding torchvision datasets (offline use)")
    seed: int = opt(0, "random seed for splits, initialisation and order")
    out: str | None = opt(None, "run folder (default: runs/<data>-<time>)")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N")
    nproc: int | None = opt(None, "train in N processes on this machine (torchrun + DDP)")
    lr_scale: str = opt("none", "scale --lr to the global batch (N x --batch-size)", LR_SCALES)
    sync_bn: bool = opt(False, "several GPUs: batch-norm statistics of the global batch")
    precision: str = opt("auto", "compute precision", PRECISIONS)
    workers: int | None = opt(None, "data-loading processes (default: from the CPU count)")
    memory_limit: str | None = opt(
        None, "largest decoded dataset kept in memory, e.g. 4G or 500M (default: half the free RAM)"
    )
    cache_dir: str | None = opt(
        None, "where frozen-backbone features are cached (default: ~/.cache/tlearn/features)"
    )
    cache: bool = opt(
        True, "keep frozen-backbone features on disk for later runs (--no-cache: off)"
    )
    checkpoint_every: int = opt(
        0, "also save a resumable checkpoint every N steps (0: at the end of each epoch only)"
    )
    deterministic: bool = opt(
        False, "bit-identical results for a seed (deterministic kernels, fp32), resumed or not"
    )
    strict: bool = opt(False, "stop before training if any image cannot be decoded, listing them")
    max_image_pixels: int = opt(
        89_478_485, "skip images with more pixels than this (a decompression-bomb guard)"
    )
    calibration: bool = opt(
        True, "fit a temperature on the validation set after training, so probabilities are honest"
    )
    tensorboard: bool = opt(
        False, "also log to RUN/tb/ for TensorBoard (needs `pip install 'tlearn[tensorboard]'`)"
    )

    # -- defaults a plan may fill ----------------------------------------------------------------

    def explicit(self, name: str) -> bool:
        """Whether the user gave option `name` (a plannable option left unset is None)."""
        return getattr(self, name) is not None

    def fill_defaults(self) -> TrainConfig:
        """The plannable options nobody chose (neither the user nor a plan) get their defaults."""
        for name, value in PLANNABLE_DEFAULTS.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        return self

    def with_defaults(self) -> TrainConfig:
        """A copy with the unset plannable options at their defaults; this one is unchanged."""
        return TrainConfig.from_dict(self.to_dict()).fill_defaults()

    # -- derived views -------------------------------------------------------------------------

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        return tuple(int(v) for v in str(self.hidden).split(",") if v.strip())

    @property
    def strategy_kind(self) -> str:
        """`freeze:3` -> `freeze`; the others are their own kind."""
        return self.strategy.split(":", 1)[0]

    @property
    def frozen_stages(self) -> int:
        return int(self.strategy.split(":", 1)[1]) if self.strategy_kind == "freeze" else 0

    def resolved_lr(self) -> float:
        """The peak rate; `auto` reads as the default until the LR finder replaces it."""
        kind = "linear-probe" if self.strategy_kind == "auto" else self.strategy_kind
        if self.lr is None or self.lr == "auto":
            return DEFAULT_LR[(self.optimizer, kind)]
        return float(self.lr)

    @property
    def features_cacheable(self) -> bool:
        """Whether a frozen backbone's features stay the same every epoch (flips are cached with
        their mirrors); any other augmentation, or mixing images, changes the pixels."""
        return self.augment in (None, "none", "flip") and not (self.mixup or self.cutmix)

    def trains_head_on_features(self, strategy: str) -> bool:
        """Whether a run with `strategy` trains only the head, on cached features."""
        return strategy == "linear-probe" and self.features_cacheable

    def resolve_step_defaults(self, strategy: str) -> None:
        """Fill in the epochs, batch size and rate left to their defaults, for `strategy`.

        A head step on cached features is mostly fixed overhead (the matmuls of a 128-row batch
        take a third of it), so there the defaults are batch 256 with the default rate scaled by
        sqrt(2), and 6 epochs: on frozen Lite0 features of Fashion-MNIST that scored 89.25% test
        (4 seeds) in 4.5 s of head training, against 89.10% in 6.6 s for batch 128 x 5 epochs.
        Stage features (`--features`, the default for a frozen backbone) make the first layer
        1.6x wider and its steps 2x slower; there 3 epochs scored 91.41% test (seeds 0-2) in
        about 4 s of head training, 4 epochs 91.67% and 6 epochs 91.81% in 7-9.5 s: 3 keeps a
        warm rerun of a 60,000-image run near 8 s on a 2-core CPU.
        """
        on_features = self.trains_head_on_features(strategy)
        if self.epochs is None:
            if not on_features:
                self.epochs = DEFAULT_EPOCHS
            else:
                stages = self.features != "last"  # auto: stages for a frozen backbone
                self.epochs = STAGE_FEATURE_EPOCHS if stages else FEATURE_EPOCHS
        if self.batch_size is None:
            self.batch_size = FEATURE_BATCH_SIZE if on_features else DEFAULT_BATCH_SIZE
            if on_features and self.lr is None:
                scale = math.sqrt(FEATURE_BATCH_SIZE / DEFAULT_BATCH_SIZE)
                self.lr = round(DEFAULT_LR[(self.optimizer, strategy)] * scale, 6)

    def loader_options(self, train: bool = True, **overrides: Any) -> dict[str, Any]:
        """What `tlearn.data.image_loader` takes from a run's options (augmentation: training),
        with `overrides` (a validation batch size) on top."""
        options: dict[str, Any] = {
            "batch_size": self.batch_size,
            "workers": self.workers,
            "memory_limit_bytes": self.memory_limit_bytes,
            "hflip": self.hflip,
        }
        if train:
            options.update(augment=self.augment, mixup=self.mixup, cutmix=self.cutmix)
        return {**options, **overrides}

    @property
    def memory_limit_bytes(self) -> int | None:
        return None if self.memory_limit is None else parse_bytes(self.memory_limit)

    # -- validation ----------------------------------------------------------------------------

    def validate(self) -> TrainConfig:
        """Reject bad options before any data is read, saying what is allowed."""
        if isinstance(self.backbone, str):
            self.backbone = [self.backbone]
        if not self.data:
            raise TlearnError("no dataset given: name a folder, a CSV file or a built-in dataset")
        if not self.backbone:
            raise TlearnError("no backbone given: pass --backbone NAME (see `tlearn backbones`)")
        self._check_choices()
        try:
            sizes = self.hidden_sizes
        except ValueError:
            sizes = ()
        if self.head == "mlp" and (not sizes or min(sizes) < 1):
            raise TlearnError(f"--hidden {self.hidden!r} must be positive sizes like 256,128")
        if self.epochs is not None:
            _check_range("epochs", self.epochs, 1, 100_000)
        if self.steps_per_epoch is not None:
            _check_range("steps_per_epoch", self.steps_per_epoch, 1, 10_000_000)
        if self.last_epoch_steps is not None:
            _check_range("last_epoch_steps", self.last_epoch_steps, 1, 10_000_000)
        if self.batch_size is not None:
            check_batch_size(self.batch_size)
        _check_range("dropout", self.dropout, 0.0, 0.99)
        _check_range("label_smoothing", self.label_smoothing, 0.0, 0.99)
        _check_range("val_split", self.val_split, 0.0, 0.9)
        _check_range("warmup", self.warmup, 0.0, float(self.epochs or 100_000))
        _check_range("momentum", self.momentum, 0.0, 0.999)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("lr_decay", self.lr_decay, 0.01, 1.0)
        if isinstance(self.lr, str) and self.lr != "auto":
            try:
                self.lr = float(self.lr)
            except ValueError:
                raise TlearnError(f"--lr {self.lr!r} must be a number like 1e-3, or auto") from None
        if self.lr is not None and self.lr != "auto":
            _check_range("lr", self.lr, 1e-8, 10.0)
        for name in ("mixup", "cutmix"):
            if getattr(self, name) is not None:
                _check_range(name, getattr(self, name), 0.0, 10.0)
        if self.image_size is not None:
            _check_range("image_size", self.image_size, 16, 2048)
        if self.progressive is not None:
            _check_range("progressive", self.progressive, 16, 2048)
        for name in ("train_limit", "eval_limit"):
            if getattr(self, name) is not None:
                _check_range(name, getattr(self, name), 2, 10**9)
        for name, hi in (("workers", 64), ("nproc", 1024)):
            if getattr(self, name) is not None:
                _check_range(name, getattr(self, name), 0 if name == "workers" else 1, hi)
        _check_range("checkpoint_every", self.checkpoint_every, 0, 10**9)
        if self.budget is not None:
            parse_duration(self.budget)
        if self.patience is not None:
            _check_range("patience", self.patience, 1, 10**6)
        if self.ema is not None:
            _check_range("ema", self.ema, 0.0, 0.999999)
        _check_range("max_image_pixels", self.max_image_pixels, 1, 10**12)
        if self.memory_limit is not None:
            parse_bytes(self.memory_limit)
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", self.device):
            raise TlearnError(f"--device {self.device!r} must be auto, cpu, cuda or cuda:N")
        return self

    def _check_choices(self) -> None:
        """Each option with a fixed set of values holds one of them (or None where unset)."""
        for name, choices in (
            ("head", HEADS),
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
            ("augment", AUGMENTS),
            ("fusion", FUSIONS),
            ("features", FEATURES),
            ("head_fit", HEAD_FITS),
            ("monitor", MONITORS),
            ("balance", BALANCES),
            ("lr_scale", LR_SCALES),
        ):
            value = getattr(self, name)
            if value is None and name in PLANNABLE_DEFAULTS:
                continue  # not given: a plan or the default decides
            if value not in choices:
                raise TlearnError(
                    f"--{name.replace('_', '-')} {value!r} is not one of {', '.join(choices)}"
                )
        if self.head_fit == "lbfgs" and (self.head == "mlp" or self.fusion != "concat"):
            raise TlearnError(
                "--head-fit lbfgs solves a linear head on joined features: drop --head mlp and "
                "--fusion, or use --head-fit sgd"
            )
        if not re.fullmatch(r"auto|linear-probe|finetune|gradual|freeze:\d+", self.strategy):
            raise TlearnError(
                f"--strategy {self.strategy!r} is not one of auto, linear-probe, finetune, "
                "gradual or freeze:N (N a whole number of stages)"
            )

    # -- files ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        normalised = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalised) - known)
        if unknown:
            raise TlearnError(
                f"unknown option {unknown[0]!r}; the options are those of `tlearn train --help`"
            )
        if isinstance(normalised.get("backbone"), str):
            normalised["backbone"] = [normalised["backbone"]]
        if isinstance(normalised.get("hidden"), (list, tuple)):
            normalised["hidden"] = ",".join(str(v) for v in normalised["hidden"])
        return cls(**normalised)

    def save_yaml(self, path: Path) -> None:
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Options from a YAML or JSON file (`--config run.yaml`)."""
    p = Path(path)
    if not p.is_file():
        raise TlearnError(f"config file {p} does not exist: check the path given to --config")
    try:
        text = p.read_text(encoding="utf-8")
        values = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, json.JSONDecodeError) as e:
        raise TlearnError(
            f"config file {p} could not be read ({e.__class__.__name__}): fix its syntax"
        ) from e
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise TlearnError(f"config file {p} must hold a mapping of option: value")
    return values


def option_fields() -> list[Any]:
    """The dataclass fields that become CLI flags (everything but the positional DATA)."""
    return [f for f in fields(TrainConfig) if f.name != "data"]


def default_of(f: Any) -> Any:
    """An option's default as the help shows it (a plannable option's, though it starts None)."""
    if "shown_default" in f.metadata:
        return f.metadata["shown_default"]
    if f.default is not MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def check_batch_size(value: int) -> int:
    """The one rule for every command's --batch-size (train, evaluate, predict, ensemble)."""
    _check_range("batch_size", value, 1, MAX_BATCH_SIZE)
    return int(value)


def _check_range(name: str, value: Any, lo: float, hi: float) -> None:
    flag = "--" + name.replace("_", "-")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TlearnError(f"{flag} must be a number, not {value!r}")
    if not lo <= value <= hi:
        raise TlearnError(f"{flag} {value} is out of range: use a value from {lo} to {hi}")
