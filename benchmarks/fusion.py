"""Fusion ablation on Fashion-MNIST: each frozen backbone alone vs their concatenated features.

    PYTHONPATH=src python benchmarks/fusion.py [--backbone A --backbone B] [--train-limit N]

Runs `tlearn.compare.compare` (the same as `tlearn compare`) with a linear probe and an MLP head on
frozen ImageNet backbones at one image size, scores every run on the full official test set, and
writes `benchmarks/results/fusion.json` and `fusion.md`. The issue's bar: the concat fusion at
least 1.0 accuracy point above the better single backbone.
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

from tlearn.compare import compare, format_table

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", action="append", default=None)
    parser.add_argument("--fusion", default="concat")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--head", default="mlp")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-fusion")
    args = parser.parse_args()
    backbones = args.backbone or ["tf_efficientnet_lite0", "tf_efficientnet_lite2"]
    options = {
        "strategy": "linear-probe",
        "head": args.head,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "train_limit": args.train_limit,
        "seed": args.seed,
        "weights": "auto",
    }
    started = time.perf_counter()
    rows = compare(
        "fashion-mnist",
        backbone=backbones,
        fusion=args.fusion,
        out=args.out,
        test_limit=args.test_limit,
        log=lambda line: print(line, flush=True),
        **options,
    )
    table = format_table(rows)
    print(table)
    command = "PYTHONPATH=src python benchmarks/fusion.py " + " ".join(sys.argv[1:])
    machine = {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }
    singles = [r.accuracy for r in rows if len(r.backbones) == 1]
    fused = rows[-1].accuracy
    gain = round(100 * (fused - max(singles)), 2)
    payload = {
        "command": command.strip(),
        "data": "fashion-mnist",
        "options": {**options, "backbones": backbones, "fusion": args.fusion},
        "rows": [asdict(r) for r in rows],
        "gain_over_best_single_points": gain,
        "meets_bar_1_point": gain >= 1.0,
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": machine,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "fusion.json").write_text(json.dumps(payload, indent=2) + "\n")
    limit = f"{args.train_limit} training images" if args.train_limit else "54,000 training images"
    (RESULTS / "fusion.md").write_text(
        f"# Fusion ablation: Fashion-MNIST, frozen backbones at {args.image_size}px\n\n"
        f"`{payload['command']}`\n\n"
        f"Linear probe ({args.head} head, {args.epochs} epochs on cached features, seed "
        f"{args.seed}, {limit} after the 10% validation split), scored on the "
        f"{rows[0].test_images:,}-image official test set; "
        f"{machine['cpu_count']} CPU cores, shared with other jobs (times are noisy).\n\n"
        f"{table}\n\nConcat fusion vs the better single backbone: {gain:+.2f} points "
        f"(bar: +1.0).\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
