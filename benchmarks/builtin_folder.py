"""Lay out a built-in dataset (Fashion-MNIST, CIFAR-10...) as an ImageFolder tree of PNGs.

The benchmark suite and the linear baseline take `DIR/train/<class>/` and `DIR/test/<class>/`
folders, so a built-in dataset runs through the same path as a user's photos: decoded from
files, validation split off `train/`, scored on `test/` by `tlearn evaluate`.

    python benchmarks/builtin_folder.py fashion-mnist /work/data/fashion-mnist
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

from tlearn.data.builtin import load_builtin


def folder_name(label: str) -> str:
    """A class name safe as one folder name (`T-shirt/top` -> `T-shirt-top`)."""
    return re.sub(r"[^\w.-]+", "-", label).strip("-")


def write_split(name: str, split: str, out: Path) -> int:
    source = load_builtin(name, split)
    folders = [out / split / folder_name(c) for c in source.classes]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    for index, (image, label) in enumerate(zip(source.images, source.targets, strict=True)):
        Image.fromarray(image).save(folders[int(label)] / f"{index:05d}.png")
    return len(source.targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", help="a built-in name: fashion-mnist, mnist, cifar10, cifar100")
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    for split in ("train", "test"):
        print(f"{split}: {write_split(args.dataset, split, args.out)} images")


if __name__ == "__main__":
    main()
