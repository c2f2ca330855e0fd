"""Which linear-probe choices win on real photos: features, head, head epochs.

Evidence for choosing these by validation (issue 16, point 3) rather than by a constant fitted
to Fashion-MNIST. For each ImageFolder tree (train/, optional val/, test/), a frozen
tf_efficientnet_lite0 at 224 px, `--strategy linear-probe`, every combination of

  --features last | stages     --head linear | mlp     --epochs 3 | 10 | 30

is trained through `tlearn.train` (the backbone's features computed once per feature kind, then
read from a private feature cache) and scored on validation (what a choice could use: the best
epoch's val accuracy in metrics.csv) and on test/ (what the user gets). Head wall time is the
training call's, features from the cache (the first run of each feature kind also extracts).

    python benchmarks/probe_choices.py /data/sign-digits /data/clothing10
      -> benchmarks/results/probe_choices.{json,md}
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
FEATURES, HEADS, EPOCHS = ("last", "stages"), ("linear", "mlp"), (3, 10, 30)


def best_val(run: Path) -> float:
    with open(run / "metrics.csv", newline="") as f:
        return max(float(r["val_accuracy"]) for r in csv.DictReader(f))


def one_dataset(data: Path, work: Path, log) -> list[dict]:
    import tlearn

    rows = []
    for features, head, epochs in itertools.product(FEATURES, HEADS, EPOCHS):
        run = work / f"{data.name}-{features}-{head}-{epochs}"
        start = time.perf_counter()
        model = tlearn.train(
            str(data),
            out=str(run),
            strategy="linear-probe",
            image_size=224,
            features=features,
            head=head,
            epochs=epochs,
            log=lambda line: None,
        )
        train_s = time.perf_counter() - start
        report = model.evaluate(str(data / "test"))
        row = {
            "dataset": data.name,
            "features": features,
            "head": head,
            "epochs": epochs,
            "val_accuracy": round(best_val(run), 4),
            "test_accuracy": round(report.accuracy, 4),
            "train_wall_s": round(train_s, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        log(json.dumps(row))
        rows.append(row)
    return rows


def render(rows: list[dict], notes: list[str]) -> str:
    lines = ["# Linear-probe choices on real photos (`python benchmarks/probe_choices.py`)", ""]
    lines += [f"> {n}" for n in notes] + [""] * bool(notes)
    lines += [
        "Frozen tf_efficientnet_lite0, 224 px, `--strategy linear-probe`, seed 0; val = best "
        "epoch's validation accuracy (what a choice by validation sees), test = `evaluate` on "
        "test/. Wall: the training call (features from the cache after the first run of each "
        "kind). **Bold**: the best validation score of the dataset, and its test score.",
        "",
        "| dataset | features | head | epochs | val | test | train wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == name]
        top = max(mine, key=lambda r: r["val_accuracy"])
        for r in mine:
            val, test = f"{100 * r['val_accuracy']:.2f}%", f"{100 * r['test_accuracy']:.2f}%"
            if r is top:
                val, test = f"**{val}**", f"**{test}**"
            lines.append(
                f"| {name} | {r['features']} | {r['head']} | {r['epochs']} | {val} | "
                f"{test} | {r['train_wall_s']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path)
    parser.add_argument("--note", action="append", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tlearn-probe-"))
    os.environ["TLEARN_CACHE_DIR"] = str(work / "cache")  # a private feature cache
    rows = []
    for data in args.datasets:
        rows += one_dataset(data.resolve(), work, lambda line: print(line, flush=True))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "probe_choices.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
        (args.out / "probe_choices.md").write_text(render(rows, args.note))
    print(render(rows, args.note))


if __name__ == "__main__":
    main()
