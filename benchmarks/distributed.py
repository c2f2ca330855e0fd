"""One process against two (`tlearn train --nproc 2`: torchrun's launcher, DDP over gloo) on
this machine's CPUs, with the same global batch and seed, as a user runs them.

  finetune   every layer of Lite0 trains at 64 px on --train-limit Fashion-MNIST images, 1 epoch
             with flips, global batch 64 (1 x 64, or 2 x 32)
  probe      a linear probe on Lite0's stage features at 64 px, the same images, an empty
             feature cache (with two processes each extracts half, gathered once)

One process uses every core (torch's own threads); each of two uses half (`--nproc` sets
OMP_NUM_THREADS). Wall time is the whole command (report included); images/s is the last
epoch's training throughput over all processes (metrics.csv); test accuracy is `tlearn evaluate`
on --eval-limit of the test images (stratified).

    python benchmarks/distributed.py [--only finetune] [--train-limit 1000] [--eval-limit 2000]
      -> benchmarks/results/distributed.{json,md}
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
TLEARN = str(Path(sys.executable).parent / "tlearn")
COMMON = ["fashion-mnist", "--backbone", "tf_efficientnet_lite0", "--image-size", "64",
          "--seed", "0"]  # fmt: skip
CASES = {
    "finetune": (["--strategy", "finetune", "--epochs", "1", "--augment", "flip"], 64),
    "probe": (["--strategy", "linear-probe", "--epochs", "3"], 256),
}


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stdout


def one(case: str, processes: int, root: Path, train_limit: int, eval_limit: int) -> dict:
    options, global_batch = CASES[case]
    run = root / f"{case}-{processes}"
    cmd = [TLEARN, "train", *COMMON, *options, "--out", str(run), "--train-limit", str(train_limit),
           "--batch-size", str(global_batch // processes)]  # fmt: skip
    if processes > 1:
        cmd += ["--nproc", str(processes)]
    env = {**os.environ, "TLEARN_CACHE_DIR": str(root / f"cache-{case}-{processes}")}
    env.pop("OMP_NUM_THREADS", None)
    wall, _ = timed(cmd, env)
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    evaluate = [TLEARN, "evaluate", str(run), "fashion-mnist", "--json"]
    evaluate += ["--eval-limit", str(eval_limit)]
    _, report = timed(evaluate, env)
    return {
        "case": case,
        "processes": processes,
        "batch_per_process": global_batch // processes,
        "global_batch": global_batch,
        "command": " ".join(["tlearn", *cmd[1:]]).replace(str(root), "RUNS"),
        "train_wall_s": round(wall, 1),
        "images_per_s_last_epoch": float(rows[-1]["images_per_s"]),
        "val_accuracy": float(rows[-1]["val_accuracy"]),
        "test_accuracy": json.loads(report)["accuracy"],
        "test_images": eval_limit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CASES), help="comma-separated cases")
    parser.add_argument("--train-limit", type=int, default=1000, help="training images")
    parser.add_argument("--eval-limit", type=int, default=2000, help="test images scored")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="tlearn-dist-bench-") as tmp:
        for case in args.only.split(","):
            for processes in (1, 2):
                rows.append(one(case, processes, Path(tmp), args.train_limit, args.eval_limit))
                print(json.dumps(rows[-1]), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    out = {"machine": machine, "load_1min_at_end": load, "rows": rows}
    (RESULTS / "distributed.json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [
        f"Machine: {machine}; 1-minute load average at the end {load:.1f}.",
        "",
        "| case | processes x batch | train wall | images/s (last epoch) | val acc | test acc |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['processes']} x {r['batch_per_process']} | "
            f"{r['train_wall_s']:.1f} s | {r['images_per_s_last_epoch']:,.0f} | "
            f"{r['val_accuracy']:.2%} | {r['test_accuracy']:.2%} |"
        )
    lines += ["", "Commands:", ""] + [f"    {r['command']}" for r in rows]
    (RESULTS / "distributed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
