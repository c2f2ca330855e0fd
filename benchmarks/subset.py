"""Lay out a smaller ImageFolder tree from a bigger one: a few training images a class.

The suite's small sets (clothing60, small2, sign20...) stand in for the user with a few dozen
photos a class, where the defaults are most fragile. They were described in words; this makes
each one a command, so a later session draws the same images. Files are symlinked, not copied.

    python benchmarks/subset.py /work/data/clothing10 /work/data/clothing60 --per-class 60 \
        --test-from val,test

The training images of each class are `random.Random(seed).sample` of its sorted file names
(all of them with `--per-class 0`); the test folder gathers every image of the `--test-from`
parts, each name prefixed with its part so that none collide.
"""

from __future__ import annotations

import argparse
import os
import random
from pathlib import Path


def pick(names: list[str], per_class: int, seed: int) -> list[str]:
    names = sorted(names)
    if per_class <= 0 or per_class >= len(names):
        return names
    return sorted(random.Random(seed).sample(names, per_class))


def link_all(source: Path, names: list[str], folder: Path, prefix: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        os.symlink(source / name, folder / f"{prefix}{name}")


def make_subset(
    src: Path, out: Path, per_class: int, classes: list[str], test_from: list[str], seed: int
) -> tuple[int, int]:
    """(training images, test images) linked under `out`."""
    src = src.resolve()
    if out.exists():
        raise SystemExit(f"{out} exists: remove it or choose another folder")
    chosen = classes or sorted(p.name for p in (src / "train").iterdir() if p.is_dir())
    n_train = n_test = 0
    for c in chosen:
        names = pick(os.listdir(src / "train" / c), per_class, seed)
        link_all(src / "train" / c, names, out / "train" / c)
        n_train += len(names)
        for part in test_from:
            held = sorted(os.listdir(src / part / c))
            link_all(src / part / c, held, out / "test" / c, prefix=f"{part}-")
            n_test += len(held)
    return n_train, n_test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="an ImageFolder tree with train/ (and test/...)")
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=0, help="training images a class")
    parser.add_argument("--classes", default="", help="comma-separated (default: all)")
    parser.add_argument("--test-from", default="test", help="comma-separated parts of src")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classes = [c for c in args.classes.split(",") if c]
    parts = [p for p in args.test_from.split(",") if p]
    n_train, n_test = make_subset(args.src, args.out, args.per_class, classes, parts, args.seed)
    print(f"{args.out}: {n_train} training images, {n_test} test images")


if __name__ == "__main__":
    main()
