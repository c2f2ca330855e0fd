"""Every labelled image a dataset spec holds, split by split, as one catalogue.

The doctor looks at all of a dataset at once: a copy is a copy whichever split holds it, and a
copy in two splits is leakage. So, unlike `train`, it reads `train/`, `val/` and `test/` together
(a built-in set's train and test splits), not the train/validation pair one run uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlearn.data.builtin import BUILTIN_DATASETS, builtin_name, load_builtin
from tlearn.data.sources import CsvSource, FolderSource, ImageSource
from tlearn.errors import TlearnError

SPLIT_FOLDERS = ("train", "val", "test")


@dataclass
class Catalog:
    """The images of every split, in one numbering: item i is `sources[split[i]]`'s `local[i]`."""

    classes: list[str]
    split_names: list[str]
    sources: list[ImageSource]
    split: np.ndarray  # [N] index into split_names
    local: np.ndarray  # [N] position inside its split's source
    labels: np.ndarray  # [N] class index
    paths: list[str]  # what `describe` says: a file path, or "fashion-mnist train #3"

    def __len__(self) -> int:
        return len(self.labels)

    def offset(self, s: int) -> int:
        """Catalogue number of split `s`'s first item."""
        return int(np.searchsorted(self.split, s))

    def split_of(self, i: int) -> str:
        return self.split_names[int(self.split[i])]

    def label_of(self, i: int) -> str:
        return self.classes[int(self.labels[i])]

    def is_file(self, i: int) -> bool:
        return not self.sources[int(self.split[i])].in_memory


def load_catalog(spec: str, data_root: str | None = None) -> Catalog:
    """Every split of `spec` (folder, `train/`+`val/`+`test/` folder, CSV or built-in name)."""
    name = builtin_name(spec)
    if name is not None:
        train = load_builtin(name, "train", data_root)
        pairs = [("train", train), ("test", load_builtin(name, "test", data_root))]
    else:
        path = Path(spec).expanduser()
        if not path.exists():
            raise TlearnError(
                f"no such dataset: {spec}; give a folder of class folders, a CSV of path,label, "
                f"or one of {', '.join(BUILTIN_DATASETS)}."
            )
        if path.is_dir() and (path / "train").is_dir():
            train = FolderSource.from_class_folders(path / "train")
            pairs = [("train", train)] + [
                (s, FolderSource.from_class_folders(path / s, classes=train.classes))
                for s in SPLIT_FOLDERS[1:]
                if (path / s).is_dir()
            ]
        elif path.is_dir():
            pairs = [("all", FolderSource.from_class_folders(path))]
        elif path.suffix.lower() == ".csv":
            pairs = [("all", CsvSource(path))]
        else:
            raise TlearnError(
                f"{spec} is a file but not a .csv; give a folder of class folders, a CSV of "
                f"path,label, or one of {', '.join(BUILTIN_DATASETS)}."
            )
    return _join(pairs)


def _join(pairs: list[tuple[str, ImageSource]]) -> Catalog:
    classes = list(pairs[0][1].classes)
    split = np.concatenate([np.full(len(src), s) for s, (_, src) in enumerate(pairs)])
    local = np.concatenate([np.arange(len(src)) for _, src in pairs])
    labels = np.concatenate([np.asarray(src.targets) for _, src in pairs])
    paths = [src.describe(i) for _, src in pairs for i in range(len(src))]
    return Catalog(
        classes=classes,
        split_names=[s for s, _ in pairs],
        sources=[src for _, src in pairs],
        split=split.astype(np.int64),
        local=local.astype(np.int64),
        labels=labels.astype(np.int64),
        paths=paths,
    )
