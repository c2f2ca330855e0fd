"""From a dataset spec to train/validation/evaluation sources.

Splits and limits are stratified and seeded: a small validation set or a quick `--train-limit`
run must keep every class in proportion, and the same seed must give the same files on every
machine, or two runs cannot be compared.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlearn.data.builtin import BUILTIN_DATASETS, builtin_name, load_builtin
from tlearn.data.exclude import apply_exclude
from tlearn.data.sources import CsvSource, FolderSource, ImageSource, SubsetSource
from tlearn.errors import TlearnError


@dataclass
class Splits:
    train: ImageSource
    val: ImageSource | None
    classes: list[str]
    validation: str = ""  # where validation came from, in words, for the training log


def load_train_splits(
    spec: str,
    *,
    data_root: str | None = None,
    val_split: float = 0.1,
    seed: int = 0,
    train_limit: int | None = None,
    eval_limit: int | None = None,
    exclude: str | None = None,
) -> Splits:
    """Training and validation sources for a spec (folder, CSV or built-in name).

    A folder with `train/` and `val/` uses them as they are; anything else, a `train/` with only
    a `test/` beside it included, is split by `val_split`. `test/` is never validated on: the
    best epoch, a budget refit and every automatic choice are made on validation, and a score
    on images that made the choices is no longer a test score. `tlearn evaluate` scores `test/`.
    The files `exclude` lists (`tlearn doctor`'s issues.csv) are then left out, after the
    split so that the remaining files keep their side of it, and `train_limit` and `eval_limit`
    take stratified subsets of each.
    """
    if not 0 <= val_split < 1:
        raise TlearnError(f"--val-split must be at least 0 and below 1, not {val_split}.")
    _check_limit("train-limit", train_limit)
    _check_limit("eval-limit", eval_limit)

    name = builtin_name(spec)
    val: ImageSource | None
    whole, test_left = "the training set", ""  # for the log line: where validation came from
    if name is not None:
        train, val = _split(load_builtin(name, "train", data_root), val_split, seed)
        whole, test_left = f"{name}'s training set", f", {name}'s test set left for evaluate"
    else:
        path = _existing(spec)
        if path.is_dir() and (path / "train").is_dir():
            train = FolderSource.from_class_folders(path / "train")
            whole = "train/"
            if (path / "val").is_dir():
                val = FolderSource.from_class_folders(path / "val", classes=train.classes)
                whole = ""
            else:
                train, val = _split(train, val_split, seed)
                test_left = ", test/ left for evaluate" if (path / "test").is_dir() else ""
        elif path.is_dir():
            train, val = _split(FolderSource.from_class_folders(path), val_split, seed)
        else:
            train, val = _split(CsvSource(path), val_split, seed)

    train, val = apply_exclude(train, val, exclude)
    if train_limit is not None:
        train = _limit(train, train_limit, seed)
    if val is not None and eval_limit is not None:
        val = _limit(val, eval_limit, seed)
    return Splits(
        train=train,
        val=val,
        classes=list(train.classes),
        validation=_validation_origin(val, val_split, seed, whole, test_left),
    )


def _validation_origin(
    val: ImageSource | None, val_split: float, seed: int, whole: str, test_left: str
) -> str:
    """`whole` is what was split ("" when validation is the folder's own `val/`)."""
    if val is None:
        return "none (--val-split 0)" if val_split == 0 else "none (no image to spare for it)"
    origin = f"{val_split * 100:g}% of {whole} (stratified, seed {seed})" if whole else "val/"
    return f"{origin}, {len(val)} images{test_left}"


def has_held_out_part(spec: str) -> bool:
    """Whether a spec holds images of its own kept from training: a built-in dataset's test
    split, or `test/` (or `val/`) beside `train/`. Other folders and CSVs are split by training,
    so their held-out images are the run's validation split."""
    return builtin_name(spec) is not None or (Path(spec) / "train").is_dir()


def load_eval_source(
    spec: str,
    *,
    data_root: str | None = None,
    eval_limit: int | None = None,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> ImageSource:
    """The held-out set of a spec: the official test split, `test/`, `val/`, or the whole thing.

    Its class list is the dataset's full list in training order. Pass `classes` (the model's) to
    label a standalone folder or CSV by the model's class indices; a class the model does not
    know is then an error rather than a silently wrong label.
    """
    _check_limit("eval-limit", eval_limit)
    name = builtin_name(spec)
    if name is not None:
        source: ImageSource = load_builtin(name, "test", data_root)
        if classes is not None and list(classes) != source.classes:
            raise TlearnError(
                f"the model's classes do not match {name}'s classes; "
                "evaluate it on the dataset it was trained on."
            )
    else:
        path = _existing(spec)
        if path.is_dir() and (path / "train").is_dir():
            held_out = _first_dir(path, ("test", "val"))
            if held_out is None:
                raise TlearnError(
                    f"{path} has a train/ folder but no test/ or val/ folder to evaluate on; "
                    "add one, or give the folder to evaluate directly."
                )
            if classes is None:
                classes = FolderSource.from_class_folders(path / "train").classes
            source = FolderSource.from_class_folders(held_out, classes=classes)
        elif path.is_dir():
            source = FolderSource.from_class_folders(path, classes=classes)
        else:
            source = CsvSource(path, classes=classes)
    if eval_limit is not None:
        source = _limit(source, eval_limit, seed)
    return source


def stratified_indices(targets: Sequence[int] | np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of size `n` keeping class proportions.

    Every class present keeps at least one item when `n` allows, so a small limit never drops a
    class the model is asked to learn.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if n >= len(targets):
        return np.arange(len(targets))
    labels, counts = np.unique(targets, return_counts=True)
    take = _allocate(counts, n, caps=counts, minimum=1 if n >= len(labels) else 0)
    return _pick(targets, labels, take, seed)[0]


def stratified_split(
    targets: Sequence[int] | np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded, stratified `(train_idx, val_idx)` with about `fraction` of each class in val.

    Each class keeps at least one item in train (a class of one image goes to train), so the
    model sees every class; val is empty only when no class can spare an image.
    """
    targets = np.asarray(targets, dtype=np.int64)
    if fraction <= 0 or len(targets) == 0:
        return np.arange(len(targets)), np.zeros(0, dtype=np.int64)
    labels, counts = np.unique(targets, return_counts=True)
    caps = counts - 1
    total = min(max(1, round(fraction * len(targets))), int(caps.sum()))
    take = _allocate(counts, total, caps=caps, minimum=0)
    val_idx, train_idx = _pick(targets, labels, take, seed)
    return train_idx, val_idx


def _allocate(counts: np.ndarray, total: int, *, caps: np.ndarray, minimum: int) -> np.ndarray:
    """Split `total` among classes in proportion to `counts` (largest remainder), within caps."""
    quotas = total * counts / counts.sum()
    alloc = np.minimum(np.maximum(np.floor(quotas).astype(np.int64), minimum), caps)
    while alloc.sum() < total:
        room = np.where(alloc < caps, quotas - alloc, -np.inf)
        alloc[int(np.argmax(room))] += 1
    while alloc.sum() > total:
        excess = np.where(alloc > minimum, alloc - quotas, -np.inf)
        alloc[int(np.argmax(excess))] -= 1
    return alloc


def _pick(
    targets: np.ndarray, labels: np.ndarray, take: np.ndarray, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (chosen, rest) indices: `take[k]` random items of class `labels[k]`."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label, k in zip(labels, take, strict=True):
        members = np.flatnonzero(targets == label)
        chosen.append(rng.permutation(members)[:k])
    picked = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(targets), dtype=bool)
    mask[picked] = False
    return picked, np.flatnonzero(mask)


def _split(
    source: ImageSource, val_split: float, seed: int
) -> tuple[ImageSource, ImageSource | None]:
    if val_split == 0:
        return source, None
    train_idx, val_idx = stratified_split(source.targets, val_split, seed)
    if len(val_idx) == 0:
        warnings.warn(
            f"{source.name} is too small to hold out a validation set (every class has one image); "
            "training without validation.",
            stacklevel=3,
        )
        return source, None
    return SubsetSource(source, train_idx), SubsetSource(source, val_idx)


def _limit(source: ImageSource, n: int, seed: int) -> ImageSource:
    if n >= len(source):
        return source
    return SubsetSource(source, stratified_indices(source.targets, n, seed))


def _check_limit(flag: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
        raise TlearnError(f"--{flag} must be a whole number of images of at least 1, not {value}.")


def _existing(spec: str) -> Path:
    path = Path(spec).expanduser()
    if not path.exists():
        raise TlearnError(
            f"no such dataset: {spec}; give a folder of class folders, a CSV of path,label, "
            f"or one of {', '.join(BUILTIN_DATASETS)}."
        )
    if path.is_file() and path.suffix.lower() != ".csv":
        raise TlearnError(
            f"{spec} is a file but not a .csv; give a folder of class folders, a CSV of "
            f"path,label, or one of {', '.join(BUILTIN_DATASETS)}."
        )
    return path


def _first_dir(root: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        if (root / name).is_dir():
            return root / name
    return None
