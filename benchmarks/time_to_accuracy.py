"""Time to accuracy on Fashion-MNIST (full 60,000 train / 10,000 test), as a user runs it.

Each step is a real `tlearn` command in its own process; wall time and that process's peak
resident memory are recorded, and test accuracy comes from `tlearn evaluate --json`.

  frozen-cold   issue #3's command verbatim: linear probe + MLP head at 64 px, default epochs,
                empty feature cache (decode + features + head)
  frozen-warm   the same with another seed: features come from the cache
  frozen-10     the same, 10 head epochs (cache warm)
  quick         the foundation check: 6,000 training images, linear head, 5 epochs
  finetune      every layer trains, 1 epoch at 64 px

    python benchmarks/time_to_accuracy.py [--only frozen-cold,frozen-warm]
      -> benchmarks/results/time_to_accuracy.{json,md} (rows not rerun are kept)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
FROZEN = ["--backbone", "tf_efficientnet_lite0", "--strategy", "linear-probe", "--head", "mlp",
          "--image-size", "64"]  # fmt: skip

RUNS = {
    "frozen-cold": FROZEN,
    "frozen-warm": FROZEN + ["--seed", "1"],
    "frozen-10": FROZEN + ["--epochs", "10"],
    "quick": [
        "--backbone",
        "tf_efficientnet_lite0",
        "--strategy",
        "linear-probe",
        "--epochs",
        "5",
        "--image-size",
        "64",
        "--train-limit",
        "6000",
    ],  # fmt: skip
    "finetune": [
        "--backbone",
        "tf_efficientnet_lite0",
        "--strategy",
        "finetune",
        "--epochs",
        "1",
        "--image-size",
        "64",
        "--augment",
        "flip",
    ],  # fmt: skip
}


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in GiB (of that process, from wait4's rusage), and stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        # wait4 reaped the child: tell Popen, or it would wait for it again
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{stderr[-2000:]}")
    return wall, round(usage.ru_maxrss / 2**20, 2), stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=",".join(RUNS), help="comma-separated run names")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    work = Path(tempfile.mkdtemp(prefix="tlearn-bench-"))
    env = {**os.environ, "TLEARN_CACHE_DIR": str(work / "cache"), "PYTHONUNBUFFERED": "1"}
    rows = []
    for name in names:
        out_dir = work / name
        tlearn = [sys.executable, "-m", "tlearn"]
        cmd = [*tlearn, "train", "fashion-mnist", *RUNS[name], "--out", str(out_dir)]
        train_s, train_peak, log = run(cmd, env)
        eval_cmd = [*tlearn, "evaluate", str(out_dir), "fashion-mnist", "--json"]
        eval_s, eval_peak, report = run(eval_cmd, env)
        accuracy = json.loads(report)["accuracy"]
        row = {
            "run": name,
            "command": "tlearn train fashion-mnist " + " ".join(RUNS[name]),
            "train_wall_s": round(train_s, 1),
            "evaluate_wall_s": round(eval_s, 1),
            "test_accuracy": accuracy,
            "train_peak_rss_gib": train_peak,
            "evaluate_peak_rss_gib": eval_peak,
            "log_tail": log.strip().splitlines()[-3:],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    shutil.rmtree(work, ignore_errors=True)
    RESULTS.mkdir(exist_ok=True)
    previous = RESULTS / "time_to_accuracy.json"
    if previous.is_file():  # keep the rows this invocation did not rerun, in the usual order
        kept = {r["run"]: r for r in json.loads(previous.read_text()) if r["run"] in RUNS}
        kept.update({r["run"]: r for r in rows})
        rows = [kept[name] for name in RUNS if name in kept]
    (RESULTS / "time_to_accuracy.json").write_text(json.dumps(rows, indent=2))
    lines = [
        "| run | train wall s | evaluate wall s | test accuracy | peak RSS GiB (train) | command |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['train_wall_s']} | {r['evaluate_wall_s']} | "
            f"{r['test_accuracy']:.4f} | {r['train_peak_rss_gib']} | `{r['command']}` |"
        )
    (RESULTS / "time_to_accuracy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
