"""Image sources: indexable lists of labelled images, whatever they are stored in.

A source only knows how to list items and decode one; splitting, limits and transforms live
elsewhere, so the same source serves training, evaluation and the feature cache.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tlearn.data.images import is_image_file, open_image, walk_files
from tlearn.errors import TlearnError


class ImageSource(torch.utils.data.Dataset):
    """Labelled images: `classes` (sorted names), `targets` (int64 per item) and `name`."""

    classes: list[str]
    targets: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.targets)

    def load(self, i: int) -> Image.Image:
        """The i-th image in RGB; raises TlearnError when its file cannot be decoded."""
        raise NotImplementedError

    def describe(self, i: int) -> str:
        """Where the i-th image comes from, for messages about files that were skipped."""
        raise NotImplementedError

    @property
    def in_memory(self) -> bool:
        """True when every item is already decoded, so no item can fail to load."""
        return False

    def __getitem__(self, i: int) -> tuple[Image.Image, int]:
        return self.load(i), int(self.targets[i])

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name!r}, {len(self)} images, {len(self.classes)} classes)"
        )


class FolderSource(ImageSource):
    """Image files on disk with their labels; files are decoded only when loaded."""

    def __init__(self, items: Sequence[tuple[Path, int]], classes: Sequence[str], name: str):
        self.paths = [Path(p) for p, _ in items]
        self.targets = np.asarray([int(t) for _, t in items], dtype=np.int64)
        self.classes = list(classes)
        self.name = str(name)

    @classmethod
    def from_class_folders(
        cls, root: str | Path, classes: Sequence[str] | None = None
    ) -> FolderSource:
        """Read `root/<class>/**/*.jpg` (torchvision ImageFolder layout).

        With `classes` given (the training classes), labels follow that list, so a validation or
        test folder missing a class still lines up with the model's outputs.
        """
        root = Path(root)
        found = scan_class_folders(root)
        if classes is None:
            classes = sorted(found)
            if len(classes) < 2:
                raise TlearnError(
                    f"{root} has {len(classes)} class folder(s) with images; "
                    "a classifier needs at least 2 class folders, each holding its images."
                )
        else:
            classes = list(classes)
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise TlearnError(
                    f"{root} has class folder(s) {', '.join(unknown[:5])} that are not among the "
                    f"training classes ({', '.join(classes[:10])}); rename or remove them."
                )
        index = {c: k for k, c in enumerate(classes)}
        items = [(p, index[c]) for c in sorted(found) for p in found[c]]
        return cls(items, classes, str(root))

    def load(self, i: int) -> Image.Image:
        return open_image(self.paths[i])

    def describe(self, i: int) -> str:
        return str(self.paths[i])


def scan_class_folders(root: Path) -> dict[str, list[Path]]:
    """Map each class folder of `root` to its image files (recursive, sorted).

    A class folder with no images is left out with a warning: it would become a class the model
    can never learn, and it is usually a leftover of the user's own sorting.
    """
    if not root.is_dir():
        raise TlearnError(f"{root} is not a folder; give a folder of class folders.")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        loose = any(is_image_file(f) for f in root.iterdir() if f.is_file())
        hint = "it has images but no class folders" if loose else "it has no class folders"
        raise TlearnError(
            f"{root}: {hint}; put each class's images in its own subfolder named after the class."
        )
    found: dict[str, list[Path]] = {}
    empty: list[str] = []
    for d in subdirs:
        files = sorted(f for f in walk_files(d) if is_image_file(f))
        if files:
            found[d.name] = files
        else:
            empty.append(d.name)
    if not found:
        raise TlearnError(
            f"no images found in the class folders of {root}; "
            "put jpg/png/... files in one subfolder per class."
        )
    if empty:
        warnings.warn(
            f"ignoring {len(empty)} class folder(s) with no images in {root}: "
            + ", ".join(empty[:10]),
            stacklevel=3,
        )
    return found


_PATH_HEADERS = {"path", "file", "filename", "file_name", "filepath", "image", "image_path", "img"}
_LABEL_HEADERS = {"label", "class", "class_name", "target", "category", "y"}


class CsvSource(FolderSource):
    """Rows of `path,label` in a CSV file; relative paths are relative to the file's folder.

    Labels are class names (sorted numerically when they are all integers, so "10" follows "9").
    A header row is recognised by its column names or by a first path that does not exist while
    the next one does.
    """

    def __init__(self, csv_path: str | Path, classes: Sequence[str] | None = None):
        csv_path = Path(csv_path)
        rows = _read_csv_rows(csv_path)
        items = [(_resolve(csv_path.parent, p), label, line) for p, label, line in rows]
        missing = [(p, line) for p, _, line in items if not p.is_file()]
        if missing:
            shown = ", ".join(f"{p} (line {line})" for p, line in missing[:3])
            raise TlearnError(
                f"{len(missing)} file(s) listed in {csv_path} do not exist, e.g. {shown}; "
                "fix the paths (relative to the CSV's folder) or remove those rows."
            )
        found = [label for _, label, _ in items]
        labels = sorted(set(found), key=_label_key(found))
        if classes is None:
            classes = labels
            if len(classes) < 2:
                raise TlearnError(
                    f"{csv_path} has {len(classes)} distinct label(s); "
                    "a classifier needs rows of at least 2 labels."
                )
        else:
            classes = list(classes)
            unknown = sorted(set(labels) - set(classes))
            if unknown:
                raise TlearnError(
                    f"{csv_path} has label(s) {', '.join(unknown[:5])} that are not among the "
                    f"training classes ({', '.join(classes[:10])}); fix or remove those rows."
                )
        index = {c: k for k, c in enumerate(classes)}
        super().__init__([(p, index[label]) for p, label, _ in items], classes, str(csv_path))


def _resolve(base: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else base / path


def _read_csv_rows(csv_path: Path) -> list[tuple[str, str, int]]:
    """Non-empty `(path, label, line number)` rows, header removed."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            raw = [(n, row) for n, row in enumerate(csv.reader(f), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise TlearnError(
            f"cannot read {csv_path} ({exc}); give a UTF-8 CSV of path,label."
        ) from exc
    rows = [(n, [c.strip() for c in row]) for n, row in raw if any(c.strip() for c in row)]
    if rows and _is_header(rows, csv_path):
        rows = rows[1:]
    bad = [n for n, row in rows if len(row) < 2 or not row[0] or not row[1]]
    if bad:
        raise TlearnError(
            f"{csv_path} line {bad[0]} is not a `path,label` row; "
            "give each row an image path and a label separated by a comma."
        )
    if not rows:
        raise TlearnError(f"{csv_path} has no rows; give one `path,label` row per image.")
    return [(row[0], row[1], n) for n, row in rows]


def _is_header(rows: list[tuple[int, list[str]]], csv_path: Path) -> bool:
    first = rows[0][1]
    cells = [c.lower() for c in first[:2]] + ["", ""]
    if cells[0] in _PATH_HEADERS or cells[1] in _LABEL_HEADERS:
        return True
    if len(rows) < 2 or len(rows[1][1]) < 1:
        return False

    base = csv_path.parent
    return not _resolve(base, first[0]).is_file() and _resolve(base, rows[1][1][0]).is_file()


def _label_key(labels):
    labels = list(labels)
    if all(lab.lstrip("-").isdigit() for lab in labels):
        return lambda s: (int(s), s)
    return lambda s: s


class ArraySource(ImageSource):
    """Decoded uint8 images held in memory (the torchvision datasets).

    The raw array is kept and one PIL image is made per `load`, which costs microseconds and
    avoids holding 60,000 PIL objects.
    """

    def __init__(
        self, images: np.ndarray, targets: Sequence[int], classes: Sequence[str], name: str
    ):
        images = np.asarray(images)
        if images.dtype != np.uint8 or not (
            images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)
        ):
            raise ValueError(
                f"expected uint8 N×H×W or N×H×W×3 images, got {images.dtype} {images.shape}"
            )
        self.images = images
        self.targets = np.asarray(targets, dtype=np.int64)
        if len(self.targets) != len(images):
            raise ValueError(f"{len(images)} images but {len(self.targets)} targets")
        self.classes = list(classes)
        self.name = str(name)

    @property
    def in_memory(self) -> bool:
        return True

    def load(self, i: int) -> Image.Image:
        a = self.images[i]
        return Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB").convert("RGB")

    def describe(self, i: int) -> str:
        return f"{self.name.replace('/', ' ')} #{i}"


class ImageListSource(ImageSource):
    """Images made in memory (the doctor's generated copies), of any sizes; one class."""

    def __init__(self, images: Sequence[Image.Image], name: str):
        self.images = [im.convert("RGB") for im in images]
        self.targets = np.zeros(len(self.images), dtype=np.int64)
        self.classes = ["image"]
        self.name = str(name)

    @property
    def in_memory(self) -> bool:
        return True

    def load(self, i: int) -> Image.Image:
        return self.images[i]

    def describe(self, i: int) -> str:
        return f"{self.name} #{i}"


class SubsetSource(ImageSource):
    """A selection of another source's items, keeping its full class list."""

    def __init__(self, source: ImageSource, indices: Sequence[int] | np.ndarray):
        indices = np.asarray(indices, dtype=np.int64)
        if isinstance(source, SubsetSource):  # flatten so describe/load stay one hop away
            indices, source = source.indices[indices], source.source
        self.source = source
        self.indices = indices
        self.classes = source.classes
        self.targets = source.targets[indices]
        self.name = source.name

    @property
    def in_memory(self) -> bool:
        return self.source.in_memory

    def load(self, i: int) -> Image.Image:
        return self.source.load(int(self.indices[i]))

    def describe(self, i: int) -> str:
        return self.source.describe(int(self.indices[i]))
