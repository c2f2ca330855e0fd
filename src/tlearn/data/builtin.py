"""The built-in datasets (CIFAR-10/100, MNIST, Fashion-MNIST), found offline or downloaded.

Roots are searched in order: the user's `--data-root` (torchvision's layout, or flat IDX files for
the MNIST family), tlearn's cache, and for Fashion-MNIST Debian's `/usr/share/datasets`. Only when
nothing is found does torchvision download into the cache. MNIST-family IDX files are read with
numpy directly: it is faster than torchvision's reader and works on the flat, gzipped layout
Debian ships, which torchvision does not recognise.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
from torchvision import datasets

from tlearn.data.sources import ArraySource
from tlearn.errors import TlearnError

BUILTIN_DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "mnist", "fashion-mnist")

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

_ALIASES = {
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "mnist": "mnist",
    "fashionmnist": "fashion-mnist",
}

# torchvision's class (and folder) name for each dataset
_TV_NAME = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
}
_CIFAR_FOLDER = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
MNIST_CLASSES = [str(d) for d in range(10)]

_IDX_PREFIX = {"train": "train", "test": "t10k"}


def builtin_name(spec: str) -> str | None:
    """The canonical built-in name for a spec (`fashion_mnist`, `CIFAR-10`...), or None."""
    key = spec.strip().lower().replace("-", "").replace("_", "")
    return _ALIASES.get(key)


def datasets_cache_dir() -> Path:
    """Where downloads go (`TLEARN_DATASETS_DIR` overrides, for tests and shared machines)."""
    return Path(os.environ.get("TLEARN_DATASETS_DIR", "~/.cache/tlearn/datasets")).expanduser()


def search_roots(name: str, data_root: str | Path | None = None) -> list[Path]:
    roots = [Path(data_root).expanduser()] if data_root else []
    roots.append(datasets_cache_dir())
    if name == "fashion-mnist":
        roots.append(DEBIAN_FASHION_MNIST)
    return roots


def locate_builtin(name: str, data_root: str | Path | None = None) -> Path | None:
    """The folder holding a built-in dataset on this machine, or None (for `tlearn datasets`)."""
    name = _canonical(name)
    for root in search_roots(name, data_root):
        found = _find_cifar(name, root) if name in _CIFAR_FOLDER else _find_idx(name, "test", root)
        if found is not None:
            return found
    return None


def load_builtin(name: str, split: str, data_root: str | Path | None = None) -> ArraySource:
    """The official `train` or `test` split of a built-in dataset as an in-memory source."""
    name = _canonical(name)
    if split not in _IDX_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    roots = search_roots(name, data_root)
    for root in roots:
        if name in _CIFAR_FOLDER:
            folder = _find_cifar(name, root)
            if folder is not None:
                return _load_cifar(name, split, folder.parent)
        else:
            folder = _find_idx(name, split, root)
            if folder is not None:
                return _load_idx(name, split, folder)
    try:
        return _download(name, split, datasets_cache_dir())
    except Exception as exc:  # offline: URLError, socket errors, torchvision's RuntimeError
        where = ", ".join(str(r) for r in roots)
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[-1] if lines else type(exc).__name__  # torchvision's are multi-line
        raise TlearnError(
            f"dataset {name} was not found in {where} and could not be downloaded ({reason}); "
            "pass --data-root DIR holding it, or connect to the internet to download it."
        ) from exc


def _canonical(name: str) -> str:
    canonical = builtin_name(name)
    if canonical is None:
        raise TlearnError(
            f"unknown built-in dataset {name}; use one of {', '.join(BUILTIN_DATASETS)}."
        )
    return canonical


# --- MNIST family: IDX files -------------------------------------------------------------------


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_idx(name: str, split: str, root: Path) -> Path | None:
    """The folder under `root` with this split's images and labels, in any known layout."""
    prefix = _IDX_PREFIX[split]
    for folder in (root / _TV_NAME[name] / "raw", root / name, root):
        if _idx_file(folder, f"{prefix}-images-idx3-ubyte") and _idx_file(
            folder, f"{prefix}-labels-idx1-ubyte"
        ):
            return folder
    return None


def _load_idx(name: str, split: str, folder: Path) -> ArraySource:
    prefix = _IDX_PREFIX[split]
    images = read_idx(_idx_file(folder, f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(_idx_file(folder, f"{prefix}-labels-idx1-ubyte"))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise TlearnError(
            f"the {name} {split} files in {folder} do not match (images {images.shape}, "
            f"labels {labels.shape}); replace them with the original files."
        )
    classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    return ArraySource(images, labels.astype(np.int64), classes, f"{name}/{split}")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (gzipped or not) of unsigned bytes, as used by the MNIST family."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            data = f.read()
        if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
            raise ValueError("not an IDX file of unsigned bytes")
        ndim = data[3]
        shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
        offset = 4 + 4 * ndim
        if len(data) - offset != int(np.prod(shape)):
            raise ValueError(f"{len(data) - offset} bytes of data for shape {shape}")
        return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)
    except (OSError, ValueError, EOFError) as exc:
        raise TlearnError(
            f"cannot read {path} ({exc}); replace it with the original dataset file."
        ) from exc


# --- CIFAR: torchvision's pickled batches ------------------------------------------------------


def _find_cifar(name: str, root: Path) -> Path | None:
    """The `cifar-10-batches-py` folder in or at `root`."""
    folder = _CIFAR_FOLDER[name]
    marker = "batches.meta" if name == "cifar10" else "meta"
    for candidate in (root / folder, root):
        if candidate.name == folder and (candidate / marker).is_file():
            return candidate
    return None


def _load_cifar(name: str, split: str, root: Path) -> ArraySource:
    cls = getattr(datasets, _TV_NAME[name])
    try:
        ds = cls(str(root), train=split == "train", download=False)
    except (RuntimeError, OSError, ValueError, EOFError) as exc:
        raise TlearnError(
            f"the {name} files in {root / _CIFAR_FOLDER[name]} are incomplete or corrupt ({exc}); "
            "delete that folder and download it again."
        ) from exc
    return ArraySource(np.asarray(ds.data), ds.targets, ds.classes, f"{name}/{split}")


def _download(name: str, split: str, cache: Path) -> ArraySource:
    """Let torchvision download the dataset into tlearn's cache, then load it from there."""
    cache.mkdir(parents=True, exist_ok=True)
    cls = getattr(datasets, _TV_NAME[name])
    ds = cls(str(cache), train=split == "train", download=True)
    data = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    targets = np.asarray(ds.targets, dtype=np.int64)
    if name in _CIFAR_FOLDER:
        classes = list(ds.classes)
    else:
        classes = FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES
    return ArraySource(data, targets, classes, f"{name}/{split}")
