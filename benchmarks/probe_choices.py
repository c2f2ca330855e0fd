"""Which linear-probe choices win on real photos: features, head, head epochs.

Evidence for choosing these by validation (issue 16, point 3) rather than by a constant fitted
to Fashion-MNIST. For each ImageFolder tree (train/, optional val/, test/), a frozen
tf_efficientnet_lite0 at 224 px, `--strategy linear-probe`, seed 0, every combination of

  --features last | stages     --head linear | mlp     --epochs 3 | 10 | 30

Validation is tlearn's own (val/, or 10% of train/ split as `tlearn train` splits it). Each
combination trains twice on the same training images with the same seed: once validating on
the validation set, once "validating" on test/ (two trees of symlinks to the same files), so
every epoch's test accuracy comes from cached features too and no image is decoded per
combination; the two runs' training losses are checked to be identical. The table shows the
best epoch's validation accuracy (what a choice by validation sees), the test accuracy at that
epoch, and the training call's wall time (features from the cache after the first run).

    python benchmarks/probe_choices.py /data/sign-digits /data/clothing10
      -> benchmarks/results/probe_choices.{json,md}
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
FEATURES, HEADS, EPOCHS = ("last", "stages"), ("linear", "mlp"), (3, 10, 30)


def link_tree(root: Path, parts: dict[str, list[Path]]) -> Path:
    """`root/<part>/<class>/<file>` symlinks: same resolved files, so the same feature cache."""
    for part, files in parts.items():
        for f in files:
            link = root / part / f.parent.name / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f.resolve())
    return root


def trees(data: Path, work: Path) -> tuple[Path, Path]:
    """(validating tree, testing tree) with tlearn's own training set in both."""
    from tlearn.data import load_train_splits

    splits = load_train_splits(str(data), seed=0)
    files = {
        k: [Path(s.describe(i)) for i in range(len(s))]
        for k, s in (("train", splits.train), ("val", splits.val))
    }
    test = sorted(p for p in (data / "test").rglob("*") if p.is_file())
    val_tree = link_tree(work / f"{data.name}-val", files)
    test_tree = link_tree(work / f"{data.name}-test", {"train": files["train"], "val": test})
    return val_tree, test_tree


def epochs_csv(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def one_dataset(data: Path, work: Path, rows: list[dict], save) -> None:
    """Append a row per combination to `rows`, calling `save()` after each."""
    import tlearn

    val_tree, test_tree = trees(data, work)
    for features, head, epochs in itertools.product(FEATURES, HEADS, EPOCHS):
        options = dict(
            strategy="linear-probe",
            image_size=224,
            features=features,
            head=head,
            epochs=epochs,
            seed=0,
            log=lambda line: None,
        )
        name = f"{data.name}-{features}-{head}-{epochs}"
        start = time.perf_counter()
        tlearn.train(str(val_tree), out=str(work / f"{name}-v"), **options)
        train_s = time.perf_counter() - start
        tlearn.train(str(test_tree), out=str(work / f"{name}-t"), **options)
        val, test = epochs_csv(work / f"{name}-v"), epochs_csv(work / f"{name}-t")
        same = [v["train_loss"] for v in val] == [t["train_loss"] for t in test]
        accs = [float(v["val_accuracy"]) for v in val]
        best = accs.index(max(accs))
        row = {
            "dataset": data.name,
            "features": features,
            "head": head,
            "epochs": epochs,
            "val_accuracy": round(accs[best], 4),
            "best_epoch": best + 1,
            "test_accuracy": round(float(test[best]["val_accuracy"]), 4),
            "test_accuracy_last": round(float(test[-1]["val_accuracy"]), 4),
            "same_training": same,
            "train_wall_s": round(train_s, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        rows.append(row)
        save()


def render(rows: list[dict], notes: list[str]) -> str:
    lines = ["# Linear-probe choices on real photos (`python benchmarks/probe_choices.py`)", ""]
    lines += [f"> {n}" for n in notes] + [""] * bool(notes)
    lines += [
        "Frozen tf_efficientnet_lite0, 224 px, `--strategy linear-probe`, seed 0; val = the "
        "best epoch's validation accuracy (what a choice by validation sees); test = test/ "
        "accuracy at that epoch (and at the last). Wall: the training call (features from the "
        "cache after the first run of each kind). **Bold**: the dataset's best validation "
        "score, and its test score.",
        "",
        "| dataset | features | head | epochs | val (best epoch) | test there | test last "
        "| train wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name]
        top = max(mine, key=lambda r: r["val_accuracy"])
        for r in mine:
            val, test = f"{100 * r['val_accuracy']:.2f}%", f"{100 * r['test_accuracy']:.2f}%"
            if r is top:
                val, test = f"**{val}**", f"**{test}**"
            val += f" ({r['best_epoch']})"
            last = f"{100 * r['test_accuracy_last']:.2f}%"
            same = "" if r["same_training"] else " (training differed!)"
            lines.append(
                f"| {name} | {r['features']} | {r['head']} | {r['epochs']} | {val} | "
                f"{test} | {last} | {r['train_wall_s']}{same} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    work = Path(tempfile.mkdtemp(prefix="tlearn-probe-"))
    os.environ["TLEARN_CACHE_DIR"] = str(work / "cache")  # a private feature cache
    rows: list[dict] = []

    def save() -> None:
        print(json.dumps(rows[-1]), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe_choices.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
        (args.out / "probe_choices.md").write_text(render(rows, args.note))

    for data in args.datasets:
        one_dataset(data.resolve(), work, rows, save)
    print(render(rows, args.note))


if __name__ == "__main__":
    main()
