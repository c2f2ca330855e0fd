"""One training run from a resolved config to a run folder: the recipe, top to bottom.

spec -> splits -> backbones + head -> strategy phases -> (cached features | images) -> epochs
-> metrics.csv, last/best.safetensors. Read it like torchvision's reference train.py.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tlearn.checkpoint import ModelSpec, save_model
from tlearn.config import TrainConfig
from tlearn.data import Splits, load_train_splits
from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text
from tlearn.models import Backbone, Classifier, build_head, create_backbone
from tlearn.models.normalize import NormalizedBackbone
from tlearn.preprocessing import Preprocessing, model_input
from tlearn.training import loop
from tlearn.training.features import extract_features, image_loader
from tlearn.training.runtime import (
    autocast_factory,
    pick_device,
    pick_precision,
    seed_everything,
)
from tlearn.training.schedule import build_scheduler
from tlearn.training.strategies import (
    GRADUAL_DEFAULT_DECAY,
    Phase,
    apply_phase,
    build_optimizer,
    freeze_batchnorm_of_frozen,
    plan_phases,
    trainable_parameter_count,
)

Log = Callable[[str], None]


@dataclass
class RunResult:
    model: Classifier
    spec: ModelSpec
    run_dir: Path


def build_classifier(backbones: list[Backbone], num_classes: int, cfg: TrainConfig) -> Classifier:
    head = build_head(
        cfg.head,
        sum(b.num_features for b in backbones),
        num_classes,
        hidden=cfg.hidden_sizes,
        dropout=cfg.dropout,
    )
    wrapped = [NormalizedBackbone(b.module, b.preprocessing) for b in backbones]
    return Classifier(wrapped, head)


def backbone_records(backbones: list[Backbone]) -> list[dict]:
    return [
        {
            "name": b.name,
            "library": b.library,
            "weights_source": b.weights_source,
            "num_features": b.num_features,
            "preprocessing": b.preprocessing.to_dict(),
        }
        for b in backbones
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


def resolve_strategy(cfg: TrainConfig, n_train: int, log: Log) -> str:
    """`auto` until the budget planner exists: frozen backbone for small data, else gradual."""
    if cfg.strategy != "auto":
        return cfg.strategy
    choice = "linear-probe" if n_train < 2000 else "gradual"
    log(f"strategy auto -> {choice} ({n_train} training images)")
    return choice


def fit(cfg: TrainConfig, log: Log = print) -> RunResult:
    cfg.validate()
    seed_everything(cfg.seed)
    device = pick_device(cfg.device)
    precision = pick_precision(device, cfg.precision)
    autocast = autocast_factory(device, precision)

    splits = load_train_splits(
        cfg.data,
        data_root=cfg.data_root,
        val_split=cfg.val_split,
        seed=cfg.seed,
        train_limit=cfg.train_limit,
        eval_limit=default_eval_limit(cfg),
    )
    run_dir = prepare_run_dir(cfg.out, cfg.data)
    cfg.out = str(run_dir)
    strategy = resolve_strategy(cfg, len(splits.train), log)
    if len(cfg.backbone) > 1 and cfg.weights not in ("auto", "none"):
        raise TlearnError(
            "--weights FILE fits one backbone: give one --backbone, or --weights auto"
        )
    backbones = [create_backbone(n, cfg.weights, cfg.image_size) for n in cfg.backbone]
    model = build_classifier(backbones, len(splits.classes), cfg).to(device)
    model = model.to(memory_format=torch.channels_last)
    stages = [b.stages() for b in backbones]
    phases = plan_phases(strategy, cfg.epochs, min(len(s) for s in stages))
    data_pre = model_input([b.preprocessing for b in backbones])

    resolved = TrainConfig.from_dict(
        {**cfg.to_dict(), "strategy": strategy, "out": str(run_dir), "lr": cfg.resolved_lr()}
    )
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
    log(f"strategy {strategy}, head {cfg.head}, device {device}, precision {precision}")
    log(f"run folder {run_dir}")

    spec = ModelSpec(
        classes=list(splits.classes),
        backbones=backbone_records(backbones),
        head={"kind": cfg.head, "hidden": list(cfg.hidden_sizes), "dropout": cfg.dropout},
        config=resolved.to_dict(),
    )
    use_features = (
        cfg.cache and all(p.trainable_stages == 0 for p in phases) and cfg.augment == "none"
    )
    trainer = _Epochs(cfg, model, spec, splits, run_dir, device, autocast, log)
    if use_features:
        trainer.run_on_features(data_pre, precision)
    else:
        trainer.run_on_images(phases, stages, data_pre)
    return RunResult(model.cpu(), spec, run_dir)


class _Epochs:
    """The epoch loop shared by the cached-feature and whole-image paths, and its bookkeeping."""

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
    ) -> None:
        self.cfg, self.model, self.spec, self.splits = cfg, model, spec, splits
        self.run_dir, self.device, self.autocast, self.log = run_dir, device, autocast, log
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.rows: list[dict] = []
        self.best_accuracy = -1.0
        self.epoch = 0
        self.started = time.perf_counter()
        self.generator = torch.Generator().manual_seed(cfg.seed)

    # -- the two paths ---------------------------------------------------------------------

    def run_on_features(self, pre: Preprocessing, precision: str) -> None:
        """Frozen backbone: compute features once, then train only the head on them."""
        cfg = self.cfg
        self.log(f"computing frozen features once ({precision}); the head then trains on them")
        train_x, train_y = extract_features(
            self.model, self.splits.train, pre, cfg, self.device, self.autocast, "features/train"
        )
        val = None
        if self.splits.val is not None:
            val = extract_features(
                self.model, self.splits.val, pre, cfg, self.device, self.autocast, "features/val"
            )
        skipped = len(self.splits.train) - len(train_y)
        if skipped:
            self.log(f"skipped {skipped} training images that could not be decoded")
        self.log(f"features ready in {time.perf_counter() - self.started:.1f}s")
        head = self.model.head
        loader = DataLoader(
            TensorDataset(train_x, train_y),
            batch_size=cfg.batch_size,
            shuffle=True,
            generator=self.generator,
        )
        val_loader = DataLoader(TensorDataset(*val), batch_size=1024) if val is not None else None
        groups = apply_phase(
            head, [], Phase(cfg.epochs, 0), cfg.resolved_lr(), 1.0, cfg.weight_decay
        )
        for p in self.model.backbones.parameters():
            p.requires_grad_(False)
        optimizer = build_optimizer(groups, cfg.optimizer, cfg.momentum)
        steps = cfg.epochs * len(loader)
        scheduler = build_scheduler(optimizer, steps, int(cfg.warmup * len(loader)), cfg.schedule)
        for _ in range(cfg.epochs):
            stats = loop.train_one_epoch(
                head,
                loader,
                optimizer,
                scheduler,
                self.loss_fn,
                self.device,
                self.autocast,
                head.train,
                f"epoch {self.epoch + 1}/{cfg.epochs}",
            )
            pred = (
                loop.predict_all(head, val_loader, self.device, self.autocast)
                if val_loader
                else None
            )
            self.end_epoch(stats, pred)

    def run_on_images(
        self, phases: list[Phase], stages: list[list[list[nn.Parameter]]], pre: Preprocessing
    ) -> None:
        cfg = self.cfg
        train_loader = image_loader(
            self.splits.train, pre, cfg, train=True, generator=self.generator
        )
        val_loader = (
            image_loader(self.splits.val, pre, cfg, train=False)
            if self.splits.val is not None
            else None
        )
        decay = cfg.lr_decay
        if cfg.strategy_kind in ("gradual", "auto") and decay >= 1.0:
            decay = GRADUAL_DEFAULT_DECAY
        for phase in phases:
            groups = apply_phase(
                self.model.head, stages, phase, cfg.resolved_lr(), decay, cfg.weight_decay
            )
            optimizer = build_optimizer(groups, cfg.optimizer, cfg.momentum)
            steps = phase.epochs * len(train_loader)
            warmup = int(min(cfg.warmup, phase.epochs) * len(train_loader))
            scheduler = build_scheduler(optimizer, steps, warmup, cfg.schedule)
            self.log(
                f"phase: {phase.epochs} epoch(s), top {phase.trainable_stages} backbone stage(s) "
                f"training, {trainable_parameter_count(self.model):,} trainable parameters"
            )

            def set_mode() -> None:
                self.model.train()
                freeze_batchnorm_of_frozen(self.model)

            for _ in range(phase.epochs):
                stats = loop.train_one_epoch(
                    self.model,
                    train_loader,
                    optimizer,
                    scheduler,
                    self.loss_fn,
                    self.device,
                    self.autocast,
                    set_mode,
                    f"epoch {self.epoch + 1}/{cfg.epochs}",
                )
                pred = (
                    loop.predict_all(self.model, val_loader, self.device, self.autocast)
                    if val_loader
                    else None
                )
                self.end_epoch(stats, pred)

    # -- bookkeeping -----------------------------------------------------------------------

    def end_epoch(self, stats: loop.EpochStats, pred: loop.Predictions | None) -> None:
        self.epoch += 1
        val_loss, val_acc = loop.loss_and_accuracy(pred) if pred is not None else (None, None)
        elapsed = time.perf_counter() - self.started
        row = {
            "epoch": self.epoch,
            "train_loss": round(stats.loss, 5),
            "val_loss": None if val_loss is None else round(val_loss, 5),
            "val_accuracy": None if val_acc is None else round(val_acc, 5),
            "images_per_s": round(stats.images_per_second, 1),
            "elapsed_s": round(elapsed, 1),
            "skipped": stats.skipped,
        }
        self.rows.append(row)
        val_text = (
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}" if val_acc is not None else "no val"
        )
        self.log(
            f"epoch {self.epoch}/{self.cfg.epochs}  train_loss {stats.loss:.4f}  {val_text}  "
            f"{stats.images_per_second:,.0f} img/s  {elapsed:.1f}s"
        )
        self.write_metrics()
        self.spec.metrics = {
            "epoch": self.epoch,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "train_loss": stats.loss,
        }
        save_model(self.run_dir / "last.safetensors", self.model, self.spec)
        score = val_acc if val_acc is not None else -stats.loss
        if score > self.best_accuracy:
            self.best_accuracy = score
            save_model(self.run_dir / "best.safetensors", self.model, self.spec)

    def write_metrics(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())
