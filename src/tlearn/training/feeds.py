"""The three input paths of a run, as three factories that return the same thing: a `Feed`.

Cached features (a frozen backbone: the head trains on its features, computed once), stored
frozen stages (the first stages' outputs computed once, the rest trains on them) or images
(decoded and augmented every epoch). Each builds its loaders and its validation pass; the loop
(`Epochs.train_feed`) then trains every phase on whichever it gets. `train_on` picks the one
`fit` chose; a head solved on the features instead is recorded as the run's one epoch.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from tlearn.data import image_loader
from tlearn.models.prefix import Prefix
from tlearn.preprocessing import Preprocessing
from tlearn.training import distributed, loop, progressive
from tlearn.training.balance import sample_weights
from tlearn.training.features import FeatureLoader, FeatureSet, compute_features, split_features
from tlearn.training.linear_probe import SolvedProbe, load_solved_head
from tlearn.training.order import EpochSampler
from tlearn.training.phase import PhaseRun
from tlearn.training.prefix_cache import PrefixExtractor, flips, storage_dtype
from tlearn.training.runtime import inference_batch_size
from tlearn.training.strategies import Phase, freeze_batchnorm_of_frozen


@dataclass
class Feed:
    """What an input path hands the loop: the training batches, the validation pass, and the
    module that trains (the head on cached features; the whole classifier otherwise)."""

    loader: Any
    evaluate: Callable[[], loop.Predictions | None]
    module: nn.Module
    set_mode: Callable[[], Any]
    size_of: Callable[[int], int] | None = None  # progressive resizing: an epoch's image size
    full_size: int = 0
    held: Callable[[], AbstractContextManager] = field(default=contextlib.nullcontext)


def feature_feed(run: Any, train: FeatureSet, val: FeatureSet | None) -> Feed:
    """Cached features: the fusion and head train on them, the backbones stay frozen."""
    cfg, head = run.cfg, run.model.top()
    loader = FeatureLoader(train, cfg.batch_size, shuffle=True, generator=run.generator)
    distributed.shard(loader)  # several processes: each trains on its share of a step
    if cfg.balance == "sampler":
        loader.sample_weights = sample_weights(train.labels, len(run.splits.classes))
    val_loader = FeatureLoader(val, 1024, shuffle=False) if val is not None else None
    for p in run.model.backbones.parameters():
        p.requires_grad_(False)

    def evaluate() -> loop.Predictions | None:
        if val_loader is None:
            return None
        return loop.predict_all(head, val_loader, run.device, run.autocast)

    return Feed(loader, evaluate, head, head.train)


def image_feed(run: Any, pre: Preprocessing, precision: str) -> Feed:
    """Images, decoded (once, where memory allows) and augmented every epoch."""
    cfg, splits = run.cfg, run.splits
    sampler = EpochSampler(len(splits.train), cfg.seed, cfg.batch_size)
    train_loader = image_loader(
        splits.train, pre, train=True, generator=run.generator, sampler=sampler,
        **cfg.loader_options(),
    )  # fmt: skip
    distributed.shard(train_loader)
    if cfg.balance == "sampler":
        inner = getattr(train_loader, "loader", train_loader)  # inside a mixup wrapper
        decoded = getattr(inner, "decoded", None)
        targets = decoded.targets if decoded is not None else splits.train.targets
        weights = sample_weights(targets, len(splits.classes))
        (sampler if decoded is None else inner).sample_weights = weights
    for i, _ in getattr(train_loader, "skipped", []):  # the decode-once path found them
        run.ledger.note_skipped("train", i)
    val_loader = None
    if splits.val is not None:
        batch = inference_batch_size(run.device, pre.input_size)
        options = cfg.loader_options(False, batch_size=batch)
        val_loader = image_loader(splits.val, pre, train=False, **options)
    if run.floor is not None:  # a budget run: its probe floor, solved before the first step
        run.floor.start_on_images(run, pre, precision)

    def evaluate() -> loop.Predictions | None:
        if val_loader is None:
            return None
        pred = loop.predict_all(run.model, val_loader, run.device, run.autocast)
        for i in sorted(set(range(len(splits.val))) - set(pred.indices.tolist())):
            run.ledger.note_skipped("val", i)
        return pred

    full = pre.input_size
    sizes = progressive.schedule(cfg.epochs, cfg.progressive, full)
    size_of = None
    if sizes[0] < full:
        size_of = sizes.__getitem__
        run.log(f"progressive resizing: epochs at {', '.join(f'{s}px' for s in sizes)}")
    return Feed(train_loader, evaluate, run.model, classifier_mode(run.model), size_of, full)


def stage_feed(run: Any, prefix: Prefix, pre: Preprocessing, precision: str) -> Feed:
    """Frozen first stages: their outputs computed once (mirrors too), the rest trains on them
    (see `tlearn.training.prefix_cache`)."""
    cfg, splits = run.cfg, run.splits
    backbone = run.model.backbones[0]
    extractor = PrefixExtractor(backbone, prefix)
    keep = storage_dtype(precision)
    started = time.perf_counter()

    def outputs(source: Any, name: str, flip: bool) -> FeatureSet:
        return compute_features(
            extractor, source, pre, cfg, run.device, precision, name,
            flip=flip, flatten=False, keep=keep, log=run.log,
        )  # fmt: skip

    train = outputs(splits.train, "frozen stages/train", flips(cfg))
    val = outputs(splits.val, "frozen stages/val", False) if splits.val else None
    shape = "x".join(str(d) for d in train.features.shape[1:])
    run.log(
        f"frozen stages computed once in {time.perf_counter() - started:.1f}s ({shape} per "
        f"image{', mirrors too' if flips(cfg) else ''}); the rest of the network trains on them"
    )
    run.ledger.note_features_shortfall("train", splits.train, train)
    run.ledger.note_features_shortfall("val", splits.val, val)
    loader = FeatureLoader(
        train, cfg.batch_size, shuffle=True, generator=run.generator, dtype=torch.float32
    )
    distributed.shard(loader)
    if cfg.balance == "sampler":
        loader.sample_weights = sample_weights(train.labels, len(splits.classes))

    @contextlib.contextmanager
    def after_the_prefix() -> Iterator[None]:
        backbone.after_prefix = prefix  # the network runs from the stored stages on
        try:
            yield
        finally:
            backbone.after_prefix = None

    batch = inference_batch_size(run.device, pre.input_size)
    if run.floor is not None:  # a budget run: its probe floor, solved before the first step
        with after_the_prefix():
            run.floor.start(run, train, val, batch)
    val_loader = None
    if val is not None:
        val_loader = FeatureLoader(val, batch, shuffle=False, dtype=torch.float32)

    def evaluate() -> loop.Predictions | None:
        if val_loader is None:
            return None
        return loop.predict_all(run.model, val_loader, run.device, run.autocast)

    model = run.model
    return Feed(loader, evaluate, model, classifier_mode(model), None, pre.input_size,
                after_the_prefix)  # fmt: skip


def classifier_mode(model: nn.Module) -> Callable[[], None]:
    """Training mode for the whole classifier, with frozen layers' batch-norms kept in eval."""

    def set_mode() -> None:
        model.train()
        freeze_batchnorm_of_frozen(model)

    return set_mode


def train_on(
    run: Any,
    path: str,
    phases: list[Phase],
    stages: list[list[list[nn.Parameter]]],
    pre: Preprocessing,
    precision: str,
    probe: SolvedProbe | None = None,
    prefix: Prefix | None = None,
) -> None:
    """Train on the input path `fit` chose, or record the solved head as the run's epoch."""
    if path == "images":
        run.train_feed(image_feed(run, pre, precision), phases, stages)
    elif path == "stored-stages":
        run.train_feed(stage_feed(run, prefix, pre, precision), phases, stages)
    else:
        train, val = frozen_features(run, pre, precision, probe)
        if probe is not None:
            record_solved(run, probe)
        else:  # the head alone trains, one phase of every epoch
            run.train_feed(feature_feed(run, train, val), [Phase(run.cfg.epochs, 0)], [])


def frozen_features(
    run: Any, pre: Preprocessing, precision: str, probe: SolvedProbe | None
) -> tuple[FeatureSet, FeatureSet | None]:
    """The frozen backbone's features of both splits: the solved probe's, or computed once."""
    if probe is not None:
        train, val = probe.train, probe.val
    else:
        run.log(f"computing frozen features once ({precision}); the head then trains on them")
        train, val = split_features(
            run.model, run.splits, pre, run.cfg, run.device, precision, run.log
        )
    skipped = len(run.splits.train) - len(train)
    if skipped:
        run.log(f"skipped {skipped} training images that could not be decoded")
    run.log(f"features ready in {run.clock.now() - run.started:.1f}s")
    run.ledger.note_features_shortfall("train", run.splits.train, train)
    run.ledger.note_features_shortfall("val", run.splits.val, val)
    return train, val


def record_solved(run: Any, probe: SolvedProbe) -> None:
    """The solved head as the run's one epoch: metrics, model files and a finished state."""
    head = run.model.top()
    load_solved_head(head, probe.fit)
    for p in run.model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    head.eval()
    optimizer = torch.optim.SGD(head.parameters(), lr=0.0)  # the state's shape only
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    phase = PhaseRun(0, 0, 1, head, optimizer, scheduler, head.eval)
    pred = None
    if probe.val is not None:
        val_loader = FeatureLoader(probe.val, 1024, shuffle=False)
        pred = loop.predict_all(head, val_loader, run.device, run.autocast)
    if probe.held_out is not None:  # the temperature is fitted on these too
        held_out = loop.Predictions(probe.held_out, probe.train.labels, torch.arange(0), 0.0)
        run.calibration_rows = dict.fromkeys(("best.safetensors", "last.safetensors"), held_out)
    rows = len(probe.train) * (2 if probe.train.flipped is not None else 1)
    hits = probe.fit.logits(probe.train.features).argmax(1) == probe.train.labels
    accuracy = float(hits.float().mean()) if len(hits) else None
    stats = loop.EpochStats(probe.fit.train_loss, rows, probe.seconds, accuracy=accuracy)
    # the solve ran before the loop's clock started, so it sits in the setup time: move it to
    # the run's one epoch (metrics.csv said 0 s), keeping setup + elapsed the wall time that
    # --budget reads
    moved = min(probe.seconds, run.setup_s)
    run.setup_s -= moved
    run.elapsed_before += moved
    run.end_epoch(phase, stats, lambda: pred, None)
