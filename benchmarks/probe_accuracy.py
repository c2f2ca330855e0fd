"""How far a real epoch's training speed falls from the budget probe's, over finished budget runs.

The planner times two training steps on random tensors at each size (the faster of two) and
multiplies by `PROBE_TO_EPOCH` to get an epoch; that factor was measured once, on Fashion-MNIST
at 64 px. A real epoch also loads, flips and collates its batches, runs the loop's hooks and
reads losses back, at the run's own batch size. This reads each run folder's plan.json (the
probe's img/s at the planned size, on the path the run took) and metrics.csv (each epoch's
training img/s; for `gradual`, the epochs of its last phase, when the whole network trains),
and reports probe / real for each run and the median over them.

    python benchmarks/probe_accuracy.py RUN_DIR... [--out benchmarks/results]
      -> OUT/probe_accuracy.{json,md}
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def probed_ips(plan: dict) -> float | None:
    """The probe's training img/s at the planned size, on the input path the run took."""
    size = plan.get("image_size")
    rows = [c for c in plan.get("candidates", []) if c.get("image_size") == size]
    if not rows:
        return None
    stored = (plan.get("run") or {}).get("input_path") == "stored-stages"
    return rows[0].get("stored_train_ips") if stored else rows[0].get("train_ips")


def trained_ips(run_dir: Path, plan: dict) -> list[float]:
    """Each epoch's training img/s where the planned network trains at its planned size."""
    with open(run_dir / "metrics.csv", newline="") as f:
        speeds = [float(row["images_per_s"]) for row in csv.DictReader(f)]
    phases = (plan.get("run") or {}).get("phases") or [{"epochs": len(speeds)}]
    first_of_last = sum(p["epochs"] for p in phases[:-1])
    return speeds[max(1, first_of_last) :]  # the run's first epoch also warms up


def measure(run_dir: Path) -> dict | None:
    plan_file = run_dir / "plan.json"
    if not plan_file.is_file() or not (run_dir / "metrics.csv").is_file():
        return None
    plan = json.loads(plan_file.read_text())
    probe, real = probed_ips(plan), trained_ips(run_dir, plan)
    if not probe or not real:
        return None
    median = statistics.median(real)
    return {
        "run": str(run_dir),
        "strategy": plan.get("strategy"),
        "input_path": (plan.get("run") or {}).get("input_path"),
        "image_size": plan.get("image_size"),
        "batch_size": plan.get("batch_size"),
        "probe_ips": round(probe, 1),
        "epoch_ips": round(median, 1),
        "probe_over_epoch": round(probe / median, 3),
    }


def table(rows: list[dict], summary: dict) -> str:
    lines = [
        "# The budget probe's training speed against real epochs (`benchmarks/probe_accuracy.py`)",
        "",
        f"Median probe / epoch over {summary['runs']} runs: **{summary['median']:.2f}** "
        f"(quartiles {summary['q1']:.2f} - {summary['q3']:.2f}).",
        "",
        "| run | strategy | path | size | batch | probe img/s | epoch img/s | probe / epoch |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        name = "/".join(Path(r["run"]).parts[-2:])
        lines.append(
            f"| {name} | {r['strategy']} | {r['input_path']} | {r['image_size']} | "
            f"{r['batch_size']} | {r['probe_ips']} | {r['epoch_ips']} | {r['probe_over_epoch']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="finished --budget run folders")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = [r for r in (measure(run) for run in args.runs) if r is not None]
    if not rows:
        raise SystemExit("no budget run folder with plan.json and metrics.csv among the given")
    ratios = sorted(r["probe_over_epoch"] for r in rows)
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    summary = {"runs": len(rows), "median": statistics.median(ratios), "q1": q1, "q3": q3}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "probe_accuracy.json").write_text(json.dumps({**summary, "rows": rows}, indent=1))
    (args.out / "probe_accuracy.md").write_text(table(rows, summary))
    print(table(rows, summary))


if __name__ == "__main__":
    main()
