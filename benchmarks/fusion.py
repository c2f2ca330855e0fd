"""Fusion and ensembles against the best single backbone, per dataset of the suite.

    PYTHONPATH=src python benchmarks/fusion.py [--data fashion-mnist | DIR] [--name NAME]
        [--backbone A --backbone B] [--head mlp --epochs 10 --image-size 64]

Runs `tlearn.compare.compare` (the same as `tlearn compare`): each frozen ImageNet backbone
alone, then their features fused, with the same options and seed; then the two single runs
averaged as an ensemble (`tlearn ensemble RUN_A RUN_B`, equal weights, and with weights fitted on
the validation split, `--fit-weights DATA`). Every model is scored on the data's test split
(`DIR/test`, or the built-in test set). Without --head/--epochs/--image-size each run gets
today's default (`tlearn train DATA --backbone ...`: the solved linear probe, its features and L2
strength chosen on validation, each backbone at its own input size). Writes
`benchmarks/results/fusion.json` (one record per dataset, the others kept) and `fusion.md`. The
issue's bar: the concat fusion at least 1.0 accuracy point above the better single backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

import tlearn
from tlearn.compare import CompareRow, compare, format_table
from tlearn.ensemble import ensemble

RESULTS = Path(__file__).resolve().parent / "results"


def ensemble_row(data: str, rows: list[CompareRow], fit: bool, out: Path) -> CompareRow:
    """The single runs' probabilities averaged, scored like the others on the test split."""
    singles = [r for r in rows if len(r.backbones) == 1]
    started = time.perf_counter()
    model = ensemble(
        [r.run_dir for r in singles], fit_weights=data if fit else None, log=lambda s: None
    )
    fit_s = time.perf_counter() - started
    report = model.evaluate(data)
    name = "ensemble, weights fitted on val" if fit else "ensemble, equal weights"
    model.save(out / f"{'fitted' if fit else 'mean'}.safetensors")
    return CompareRow(
        name=name,
        backbones=[b for r in singles for b in r.backbones],
        fusion="ensemble",
        accuracy=round(report.accuracy, 5),
        train_seconds=round(sum(r.train_seconds for r in singles) + fit_s, 1),
        images_per_second=round(report.images / max(report.seconds, 1e-9), 1),
        parameters=sum(p.numel() for p in model.classifier.parameters()),
        test_images=report.images,
        run_dir=str(out),
    )


def markdown(name: str, record: dict) -> str:
    rows = [CompareRow(**r) for r in record["rows"]]
    o = record["options"]
    how = (
        f"{o.get('head')} head, {o.get('epochs')} epochs on cached features at "
        f"{o.get('image_size')}px"
        if o.get("head")
        else "today's default (`tlearn train DATA --backbone ...`: the solved linear probe, "
        "features and L2 strength chosen on validation, each backbone at its own size)"
    )
    gains = record["gain_over_best_single_points"]
    lines = [
        f"## {name}",
        "",
        f"`{record['command']}`",
        "",
        f"Frozen backbones, {how}, seed {o.get('seed', 0)}; scored on "
        f"{rows[0].test_images:,} test images; {record['machine']['cpu_count']} CPU cores "
        f"(times are noisy). Train s: the training command's wall time (an ensemble: its "
        f"members' and the weight fit).",
        "",
        format_table(rows),
        "",
        "Gain over the better single backbone: "
        + ", ".join(f"{k} {v:+.2f} points" for k, v in gains.items())
        + " (bar for the fusion: +1.0).",
    ]
    if record.get("note"):
        lines += ["", record["note"]]
    return "\n".join(lines) + "\n"


def load_records() -> dict:
    path = RESULTS / "fusion.json"
    if not path.is_file():
        return {}
    records = json.loads(path.read_text())
    if "rows" in records:  # one record, from before there was one per dataset
        records["gain_over_best_single_points"] = {
            "fusion concat": records["gain_over_best_single_points"]
        }
        return {"fashion-mnist (64px, mlp head, 10 epochs)": records}
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--name", default=None, help="the record's name (default: the data's)")
    parser.add_argument("--backbone", action="append", default=None)
    parser.add_argument("--fusion", default="concat")
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--head", default=None)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--weights", default="auto")
    parser.add_argument("--out", default="runs/bench-fusion")
    parser.add_argument("--note", default="")
    parser.add_argument("--markdown", action="store_true", help="only rewrite fusion.md")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    records = load_records()
    if not args.markdown:
        name = args.name or Path(args.data.rstrip("/")).name
        records[name] = run(args)
    text = "# Fusion and ensembles vs the best single backbone (`python benchmarks/fusion.py`)\n\n"
    text += "\n".join(markdown(k, v) for k, v in records.items())
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fusion.json").write_text(json.dumps(records, indent=2) + "\n")
    (RESULTS / "fusion.md").write_text(text)
    return 0


def run(args: argparse.Namespace) -> dict:
    backbones = args.backbone or ["tf_efficientnet_lite0", "tf_efficientnet_lite2"]
    options = {"strategy": "linear-probe", "seed": args.seed, "weights": args.weights}
    given = {"head": args.head, "image_size": args.image_size, "epochs": args.epochs}
    options |= {k: v for k, v in given.items() if v is not None}
    if args.train_limit:
        options["train_limit"] = args.train_limit
    started = time.perf_counter()
    out = Path(args.out)
    rows = compare(args.data, backbone=backbones, fusion=args.fusion, out=out,
                   test_limit=args.test_limit, log=lambda line: print(line, flush=True),
                   **options)  # fmt: skip
    rows += [ensemble_row(args.data, rows, fit, out / "ensemble") for fit in (False, True)]
    print(format_table(rows))
    best = max(r.accuracy for r in rows if len(r.backbones) == 1)
    gains = {
        r.name: round(100 * (r.accuracy - best), 2) for r in rows if len(r.backbones) > 1
    }  # fmt: skip
    return {
        "command": "PYTHONPATH=src python benchmarks/fusion.py " + " ".join(args.argv),
        "data": args.data,
        "options": {**options, "backbones": backbones, "fusion": args.fusion},
        "rows": [asdict(r) for r in rows],
        "gain_over_best_single_points": gains,
        "total_seconds": round(time.perf_counter() - started, 1),
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "tlearn": tlearn.__version__,
        "note": args.note,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
    }


if __name__ == "__main__":
    sys.exit(main())
