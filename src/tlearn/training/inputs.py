"""The three input paths of a run: cached features, stored frozen stages, or images.

Each builds its loaders and evaluation, then hands them to the same epoch loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from tlearn.data import image_loader
from tlearn.models.prefix import Prefix
from tlearn.preprocessing import Preprocessing
from tlearn.training import distributed, loop, progressive
from tlearn.training.balance import sample_weights
from tlearn.training.features import (
    FeatureLoader,
    FeatureSet,
    compute_features,
    split_features,
)
from tlearn.training.linear_probe import SolvedProbe, load_solved_head
from tlearn.training.order import EpochSampler
from tlearn.training.phase import PhaseRun
from tlearn.training.prefix_cache import PrefixExtractor, flips, storage_dtype
from tlearn.training.runtime import (
    inference_batch_size,
)
from tlearn.training.schedule import build_scheduler
from tlearn.training.strategies import (
    GRADUAL_DEFAULT_DECAY,
    Phase,
    apply_phase,
    freeze_batchnorm_of_frozen,
    trainable_parameter_count,
)


class InputPaths:
    """Part of `Epochs`: how the training data reaches the loop (its loaders and evaluation)."""

    def run_on_features(
        self, pre: Preprocessing, precision: str, probe: SolvedProbe | None = None
    ) -> None:
        """Frozen backbone: compute features once, then train only the head on them (or, with
        `probe`, take the head solved on them)."""
        cfg = self.cfg
        if probe is not None:
            train, val = probe.train, probe.val
        else:
            self.log(f"computing frozen features once ({precision}); the head then trains on them")
            train, val = split_features(
                self.model, self.splits, pre, cfg, self.device, precision, self.log
            )
        skipped = len(self.splits.train) - len(train)
        if skipped:
            self.log(f"skipped {skipped} training images that could not be decoded")
        self.log(f"features ready in {self.clock.now() - self.started:.1f}s")
        head = self.model.top()  # fusion + head: what trains on top of frozen features
        self.ledger.note_features_shortfall("train", self.splits.train, train)
        self.ledger.note_features_shortfall("val", self.splits.val, val)
        if probe is not None:
            self.record_solved(head, probe)
            return
        loader = FeatureLoader(train, cfg.batch_size, shuffle=True, generator=self.generator)
        distributed.shard(loader)  # several processes: each trains on its share of a step
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

        phase = PhaseRun(0, 0, cfg.epochs, head, optimizer, scheduler, head.train)
        self.train_phase(phase, loader, evaluate)
        self.apply_pending(head)

    def record_solved(self, head: nn.Module, probe: SolvedProbe) -> None:
        """The solved head as the run's one epoch: metrics, model files and a finished state."""
        load_solved_head(head, probe.fit)
        for p in self.model.parameters():
            p.requires_grad_(False)
        for p in head.parameters():
            p.requires_grad_(True)
        head.eval()
        optimizer = torch.optim.SGD(head.parameters(), lr=0.0)  # the state's shape only
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
        run = PhaseRun(0, 0, 1, head, optimizer, scheduler, head.eval)
        pred = None
        if probe.val is not None:
            val_loader = FeatureLoader(probe.val, 1024, shuffle=False)
            pred = loop.predict_all(head, val_loader, self.device, self.autocast)
        rows = len(probe.train) * (2 if probe.train.flipped is not None else 1)
        stats = loop.EpochStats(probe.fit.train_loss, rows, probe.seconds)
        self.end_epoch(run, stats, lambda: pred, None)

    def run_on_images(
        self, phases: list[Phase], stages: list[list[list[nn.Parameter]]], pre: Preprocessing
    ) -> None:
        cfg = self.cfg
        sampler = EpochSampler(len(self.splits.train), cfg.seed, cfg.batch_size)
        train_loader = image_loader(
            self.splits.train, pre, train=True, generator=self.generator, sampler=sampler,
            **cfg.loader_options(),
        )  # fmt: skip
        distributed.shard(train_loader)
        if cfg.balance == "sampler":
            inner = getattr(train_loader, "loader", train_loader)  # inside a mixup wrapper
            decoded = getattr(inner, "decoded", None)
            targets = decoded.targets if decoded is not None else self.splits.train.targets
            weights = sample_weights(targets, len(self.splits.classes))
            (sampler if decoded is None else inner).sample_weights = weights
        for i, _ in getattr(train_loader, "skipped", []):  # the decode-once path found them
            self.ledger.note_skipped("train", i)
        val_loader = (
            image_loader(
                self.splits.val,
                pre,
                train=False,
                **cfg.loader_options(
                    False, batch_size=inference_batch_size(self.device, pre.input_size)
                ),
            )  # fmt: skip
            if self.splits.val is not None
            else None
        )

        def evaluate() -> loop.Predictions | None:
            if val_loader is None:
                return None
            pred = loop.predict_all(self.model, val_loader, self.device, self.autocast)
            for i in sorted(set(range(len(self.splits.val))) - set(pred.indices.tolist())):
                self.ledger.note_skipped("val", i)
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
        self.ledger.note_features_shortfall("train", self.splits.train, train)
        self.ledger.note_features_shortfall("val", self.splits.val, val)
        loader = FeatureLoader(
            train, cfg.batch_size, shuffle=True, generator=self.generator, dtype=torch.float32
        )
        distributed.shard(loader)
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
                run = PhaseRun(
                    index, first, phase.epochs, self.model, optimizer, scheduler, set_mode,
                    size_of=size_of, full_size=full,
                )  # fmt: skip
                self.train_phase(run, train_loader, evaluate)
            first += phase.epochs
        self.apply_pending(self.model)
