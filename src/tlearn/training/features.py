"""Frozen-backbone features computed once per run, and the on-disk cache that keeps them.

A frozen backbone gives the same features every epoch, so recomputing them (the article's loop)
wastes nearly all the time of a linear probe: here they are computed once, in inference mode and
the run's precision, and the head trains on the stored tensors.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tlearn.config import TrainConfig
from tlearn.data import SubsetSource, image_loader
from tlearn.data.fingerprint import fingerprint
from tlearn.data.sampling import draw_order, rank_batches, rank_order
from tlearn.errors import TlearnError
from tlearn.preprocessing import Preprocessing
from tlearn.progress import bar as progress_bar
from tlearn.training import distributed
from tlearn.training.prefix_cache import flips
from tlearn.training.runtime import (
    compile_module,
    inference_batch_size,
    inference_module,
    read_measurements,
    remember_measurement,
    tlearn_cache_dir,
)


@dataclass
class FeatureSet:
    """Frozen-backbone features of a source, in source order (undecodable images left out).

    Unpacks as `(features, labels)`; `flipped` holds the features of the mirrored images when a
    flip augmentation was asked for, so the head can still see both orientations.
    """

    features: torch.Tensor  # [N, F] float32
    labels: torch.Tensor  # [N] int64
    flipped: torch.Tensor | None = None
    # Position in the source of each row (names the undecodable images); None from the cache.
    indices: torch.Tensor | None = None

    def __iter__(self):
        return iter((self.features, self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, positions: np.ndarray) -> FeatureSet:
        """Rows of the items at `positions` of the source, renumbered as a subset's positions."""
        if self.indices is None:
            raise ValueError("features without source positions cannot be subset")
        row_of = torch.full((int(self.indices.max()) + 1 if len(self) else 0,), -1)
        row_of[self.indices] = torch.arange(len(self))
        wanted = torch.as_tensor(np.asarray(positions), dtype=torch.long)
        inside = wanted < len(row_of)
        rows = torch.full_like(wanted, -1)
        rows[inside] = row_of[wanted[inside]]
        keep = rows >= 0  # an image that failed to decode has no row
        rows = rows[keep]
        return FeatureSet(
            self.features[rows],
            self.labels[rows],
            self.flipped[rows] if self.flipped is not None else None,
            torch.arange(len(wanted))[keep],
        )


def extract_features(
    model,
    source,
    pre: Preprocessing,
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    description: str,
    *,
    flip: bool = False,
    log: Callable[[str], None] | None = None,
) -> FeatureSet:
    """Features of every decodable image, served from the on-disk cache when already computed.

    Each backbone has its own cache entry, keyed by its weights (a digest of its tensors), the
    preprocessing, the precision, the flip flag and a fingerprint of the data, so a stale entry
    never serves wrong features, and a fusion reuses what single-backbone runs computed.
    `cfg.cache = False` skips the disk (features are still computed once per run).
    Returns the backbones' features concatenated in backbone order, as `forward_features` does.
    """
    parts = []
    for i, backbone in enumerate(model.backbones):
        name = description if len(model.backbones) == 1 else f"{description}[{i}]"
        parts.append(
            _backbone_features(backbone, source, pre, cfg, device, precision, name, flip, log)
        )
    if len(parts) == 1:
        return parts[0]
    if any(not torch.equal(p.labels, parts[0].labels) for p in parts):
        raise RuntimeError("backbones saw different images")  # decoding is deterministic: a bug
    return FeatureSet(
        torch.cat([p.features for p in parts], dim=1),
        parts[0].labels,
        torch.cat([p.flipped for p in parts], dim=1) if flip else None,
    )


def split_features(
    model, splits, pre: Preprocessing, cfg: TrainConfig, device, precision: str, log=None
) -> tuple[FeatureSet, FeatureSet | None]:
    """A run's training features (mirrors too with `--augment flip`) and validation features."""
    train = extract_features(
        model, splits.train, pre, cfg, device, precision, "features/train", flip=flips(cfg),
        log=log,
    )  # fmt: skip
    val = None
    if splits.val is not None:
        val = extract_features(
            model, splits.val, pre, cfg, device, precision, "features/val", log=log
        )
    return train, val


def _backbone_features(backbone, source, pre, cfg, device, precision, description, flip, log):
    """One backbone's features of `source`, through the cache.

    A split (train or val) is a subset of one dataset; its features are cached for the whole
    dataset, so another seed's split, or the other split, is served by slicing. Computing the
    whole costs little extra when the split is most of it; a small subset (`--train-limit`) is
    computed and cached on its own.
    """
    if not cfg.cache:
        return compute_features(
            backbone, source, pre, cfg, device, precision, description, flip=flip, log=log
        )
    parent = getattr(source, "source", None)
    if isinstance(source, SubsetSource) and parent is not None:
        whole = _cached_or_computed(
            backbone, parent, pre, cfg, device, precision, description, flip, log,
            compute=len(source) >= 0.5 * len(parent),
        )  # fmt: skip
        if whole is not None:
            part = whole.subset(source.indices)
            if log:
                log(f"{description}: {len(part)} features sliced from the cached whole dataset")
            return part
    return _cached_or_computed(
        backbone, source, pre, cfg, device, precision, description, flip, log
    )


def _cached_or_computed(
    backbone, source, pre, cfg, device, precision, description, flip, log, compute: bool = True
) -> FeatureSet | None:
    key = feature_key(backbone, source, pre, precision, flip)
    hit = load_cached(cache_root(cfg), key)
    if distributed.min_all(float(hit is not None)) < 1.0:  # a rank missed: all compute, sharded
        hit = None
    if hit is not None:
        if log and compute:
            log(f"{description}: {len(hit)} cached features reused ({key[:12]})")
        return hit
    if not compute:
        return None
    speed = extraction_speed_key(backbone, pre, device, precision, flip)
    known = read_measurements(tlearn_cache_dir() / SPEED_MEMORY).get(speed)
    if log and isinstance(known, (int, float)) and known > 0:
        log(
            f"{description}: computing {len(source)} images' features, about "
            f"{len(source) / known:.0f}s at the {known:.0f} images/s measured here before"
        )
    started = time.perf_counter()
    result = compute_features(
        backbone, source, pre, cfg, device, precision, description, flip=flip, log=log
    )
    seconds = time.perf_counter() - started
    if seconds > 0 and len(result) >= 64:  # a handful of images measures start-up, not speed
        remember_measurement(tlearn_cache_dir() / SPEED_MEMORY, speed, len(result) / seconds)
    try:
        if distributed.world().local_rank == 0:  # one writer a machine
            store_cached(cache_root(cfg), key, result)
    except OSError as e:  # a full or read-only cache costs speed next time, nothing else
        if log:
            log(f"feature cache not written ({e.strerror}); the run goes on without it")
    return result


SPEED_MEMORY = "extraction-speed.json"  # images/s per backbone, size, precision, machine


def extraction_speed_key(backbone, pre: Preprocessing, device, precision: str, flip: bool) -> str:
    """What an extraction's speed depends on: the network, its input, the machine, the torch."""
    body = getattr(backbone, "body", backbone)
    names = f"{type(body).__name__}:{sum(p.numel() for p in body.parameters())}"
    machine = f"{device}|{platform.processor() or platform.machine()}|{os.cpu_count()}"
    return f"{names}@{pre.input_size}|{precision}|flip={flip}|{machine}|{torch.__version__}"


def compute_features(
    backbone: torch.nn.Module,
    source,
    pre: Preprocessing,
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    description: str,
    *,
    flip: bool = False,
    flatten: bool = True,
    keep: torch.dtype = torch.float32,
    log: Callable[[str], None] | None = None,
) -> FeatureSet:
    """`backbone`'s outputs for every decodable image of `source`, stored as `keep`.

    Without `flatten` the outputs keep their shape (a network's inner activations). In a job of
    several processes each rank computes every N-th image and the shards are gathered once,
    so every rank holds the whole set, in the source's order, as one process would.
    """
    w = distributed.world()
    if not distributed.active() or len(source) < 2 * w.size:
        rows = _extract(backbone, source, pre, cfg, device, precision, description, flip,
                        flatten, keep)  # fmt: skip
        if not rows.count:
            raise TlearnError(f"no image of {source.name} could be decoded: check the files")
        return rows.result()
    positions = np.arange(w.rank, len(source), w.size)
    shard = SubsetSource(source, positions)
    rows = _extract(backbone, shard, pre, cfg, device, precision, description, flip, flatten,
                    keep)  # fmt: skip
    if distributed.min_all(float(rows.count)) == 0:  # every rank asks, so none waits alone
        raise TlearnError(
            f"no image of a process's share of {source.name} ({len(shard)} images) could be "
            "decoded: check the files, or train with one process"
        )
    part = rows.result()
    where = torch.as_tensor(positions)[part.indices]  # back to positions in `source`
    feats, flipped, labels, indices = distributed.gather_rows(
        part.features, part.flipped, part.labels, where
    )
    order = torch.argsort(indices)
    if log:
        log(f"{description}: {len(order)} computed in {w.size} shards, one per process")
    return FeatureSet(
        feats[order], labels[order], flipped[order] if flipped is not None else None,
        indices[order],
    )  # fmt: skip


def _extract(
    backbone, source, pre, cfg, device, precision, description, flip, flatten, keep
) -> _Rows:
    """The batches of `source` through `backbone`, written into rows as they come."""
    batch = inference_batch_size(device, pre.input_size)
    loader = image_loader(source, pre, train=False, **cfg.loader_options(False, batch_size=batch))
    if flatten:
        backbone = torch.nn.Sequential(backbone, torch.nn.Flatten(1))
    extractor, dtype, autocast = inference_module(backbone, device, precision, pre.input_size)
    if cfg.compile:
        compile_module(extractor)
    rows = _Rows(len(source), flip, keep)
    with torch.inference_mode():
        for batch in progress_bar(loader, description, getattr(loader, "batch_size", None)):
            if batch is None:
                continue
            x = batch[0].to(device, dtype, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast():
                out = extractor(x)
                mirrored = extractor(torch.flip(x, dims=[3])) if flip else None
            rows.add(out, mirrored, batch[1], batch[2])
    return rows


class _Rows:
    """Features written batch by batch into tensors allocated once for the whole source.

    Collecting per-batch tensors and joining them at the end held the features three times
    over (the pieces, the join, the reordered copy), and each kept piece pinned heap memory
    between the batches' freed activations: a cold Fashion-MNIST run grew by 2 GiB.
    """

    def __init__(self, capacity: int, flip: bool, dtype: torch.dtype = torch.float32) -> None:
        self.capacity, self.flip, self.count, self.dtype = capacity, flip, 0, dtype
        self.features: torch.Tensor | None = None
        self.flipped: torch.Tensor | None = None
        self.labels = torch.empty(capacity, dtype=torch.long)
        self.indices = torch.empty(capacity, dtype=torch.long)

    def add(self, out, mirrored, labels, indices) -> None:
        if self.features is None:
            shape = (self.capacity, *out.shape[1:])
            self.features = torch.empty(shape, dtype=self.dtype)
            self.flipped = torch.empty(shape, dtype=self.dtype) if self.flip else None
        a, b = self.count, self.count + len(out)
        self.features[a:b] = out
        if self.flipped is not None:
            self.flipped[a:b] = mirrored
        self.labels[a:b] = labels
        self.indices[a:b] = torch.as_tensor(indices)
        self.count = b

    def result(self) -> FeatureSet:
        n = self.count
        feats, flipped = self.features[:n], self.flipped[:n] if self.flipped is not None else None
        labels, indices = self.labels[:n], self.indices[:n]
        if n > 1 and bool((indices[1:] < indices[:-1]).any()):  # loaders keep source order
            order = torch.argsort(indices)
            feats, labels, indices = feats[order], labels[order], indices[order]
            flipped = flipped[order] if flipped is not None else None
        # a source with undecodable images leaves unused rows: drop them from memory
        if n < self.capacity:
            feats, labels, indices = feats.clone(), labels.clone(), indices.clone()
            flipped = flipped.clone() if flipped is not None else None
        return FeatureSet(feats, labels, flipped, indices)


# -- the on-disk cache ----------------------------------------------------------------------------

CACHE_FORMAT = 3  # 2: source positions stored, so splits are slices; 3: crop_pct geometry


def cache_root(cfg: TrainConfig) -> Path:
    if cfg.cache_dir:
        return Path(cfg.cache_dir)
    return tlearn_cache_dir() / "features"


def weights_digest(backbone: torch.nn.Module) -> str:
    """What a backbone computes: its architecture (module type), input handling, every tensor."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(backbone.body).__name__.encode())
    for name, tensor in backbone.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    norm = (backbone.mean.flatten().tolist(), backbone.std.flatten().tolist())
    h.update(repr((norm, backbone.input_size)).encode())
    if backbone.taps:  # stage features are other features (keys without taps stay as they were)
        h.update(repr(backbone.taps).encode())
    return h.hexdigest()


def feature_key(backbone, source, pre: Preprocessing, precision: str, flip: bool) -> str:
    parts = {
        "format": CACHE_FORMAT,
        "weights": weights_digest(backbone),
        "input": pre.to_dict(),
        "precision": precision,
        "flip": flip,
        "data": fingerprint(source),
        "torch": torch.__version__.split("+")[0],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def load_cached(root: Path, key: str) -> FeatureSet | None:
    folder = root / key
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT:
            return None
        features = _load_array(folder / "features.npy")
        labels = torch.from_numpy(np.load(folder / "labels.npy"))
        flipped = _load_array(folder / "flipped.npy") if meta.get("flip") else None
        indices = torch.from_numpy(np.load(folder / "indices.npy"))
    except (OSError, ValueError, json.JSONDecodeError):
        return None  # absent or damaged: recompute
    if not len(features) == len(labels) == len(indices) == meta.get("n"):
        return None
    return FeatureSet(features, labels, flipped, indices)


def store_cached(root: Path, key: str, result: FeatureSet) -> None:
    """Write into a temporary folder, then rename it: readers see a whole entry or none."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / key
    if final.exists():
        return
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=root))
    try:
        np.save(tmp / "features.npy", result.features.numpy())
        np.save(tmp / "labels.npy", result.labels.numpy())
        np.save(tmp / "indices.npy", result.indices.numpy())
        if result.flipped is not None:
            np.save(tmp / "flipped.npy", result.flipped.numpy())
        meta = {"format": CACHE_FORMAT, "n": len(result), "flip": result.flipped is not None}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.exists():
            raise


def _load_array(path: Path) -> torch.Tensor:
    """The array memory-mapped copy-on-write: pages are read as rows are used, not up front.

    Reading 300 MB into memory first cost 0.4 s of a 10 s warm run, only for the split to copy
    the rows it needs again; features larger than memory work the same way.
    """
    return torch.from_numpy(np.load(path, mmap_mode="c"))


class FeatureLoader:
    """Batches of cached features by index slicing, far faster than a per-item DataLoader.

    With flipped features present, each sample is served mirrored or not at random, per epoch:
    the flip augmentation at the cost of a gather.
    """

    def __init__(
        self,
        features: FeatureSet,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.data = features
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.dataset = features  # len(dataset) = items per epoch, as the loop expects
        self.sample_weights: torch.Tensor | None = None  # `--balance sampler`: weighted draws
        self.dtype = dtype  # stored in less (bf16 activations), served as this
        self.rank, self.world = 0, 1  # several processes: this one's share of each global batch

    def __len__(self) -> int:
        if self.shuffle and self.world > 1:
            return rank_batches(len(self.data), self.batch_size, self.world)
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self):
        n = len(self.data)
        order = (
            draw_order(n, self.generator, self.sample_weights) if self.shuffle else torch.arange(n)
        )
        mirror = None
        if self.shuffle and self.data.flipped is not None:
            mirror = torch.rand(n, generator=self.generator) < 0.5  # the same on every rank
        if self.shuffle and self.world > 1:
            order = rank_order(order, self.batch_size, self.rank, self.world)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            x = self.data.features[idx]
            if mirror is not None:
                m = mirror[idx].view(-1, *([1] * (x.dim() - 1)))
                x = torch.where(m, self.data.flipped[idx], x)
            if self.dtype is not None:
                x = x.to(self.dtype)
            yield x, self.data.labels[idx], idx
