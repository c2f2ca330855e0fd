"""The budget plan's peak learning rate, measured on the suite's datasets (not one of them).

`FINETUNE_LR` (3e-3 at batch 128, scaled by sqrt(batch / 128)) and the gradual rate (1e-3) were
set on Fashion-MNIST alone. For each dataset this runs `tlearn train DIR --budget T` as a user
would (the plan's own rate), reads the rate from its plan.json, then the same command with
`--lr` at each other multiple of that rate; every run is scored with `tlearn evaluate RUN
DIR/test`. Validation accuracy (the run's best epoch) is recorded beside the test accuracy: a
default should win on both, on most datasets.

    python benchmarks/budget_lr.py DIR... [--budget 2m] [--multipliers 0.33,1,3]
        [--out benchmarks/results] [--work DIR]
      -> OUT/budget_lr.json (every run) and OUT/budget_lr.md (dataset x multiple)
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import suite  # noqa: E402  (a sibling script, not a package)


def planned_rate(run_dir: Path) -> tuple[float, int | None, str]:
    """The plan's peak rate, its batch and its strategy (plan.json of a budget run)."""
    plan = json.loads((run_dir / "plan.json").read_text())
    return float(plan["lr"]), plan.get("batch_size"), str(plan["strategy"])


def best_val_accuracy(run_dir: Path) -> float | None:
    """The best epoch's validation accuracy (metrics.csv), the number the run chose by."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return None
    with path.open() as f:
        scores = [float(r["val_accuracy"]) for r in csv.DictReader(f) if r.get("val_accuracy")]
    return max(scores) if scores else None


def run_one(
    data: Path, budget: str, lr: float | None, run_dir: Path, runner: Callable = suite.run_tlearn
) -> dict:
    """One `tlearn train --budget` (with `--lr` when given) and its test score."""
    extra = ("--lr", f"{lr:.3g}") if lr is not None else ()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    with suite.LoadSampler() as load:
        cell = runner(suite.Method(f"budget{budget}", "tlearn", budget, extra), data, run_dir, None)
    cell["load_avg_1m"] = load.summary()
    if cell.get("status") == suite.DONE:
        cell["val_accuracy"] = best_val_accuracy(run_dir)
        floor = json.loads((run_dir / "plan.json").read_text()).get("probe_floor") or {}
        cell["kept"] = floor.get("kept")  # "fine-tuned", or the probe when it won
    return cell


def measure(
    data: Path,
    budget: str,
    multipliers: list[float],
    work: Path,
    runner: Callable,
    planned: dict | None = None,
) -> dict:
    """A warm-up run at the plan's own rate, then one run at each multiple of that rate.

    The warm-up fills the throughput memory (per machine, size, batch), so every measured run
    plans from the same numbers: a cold first run probes, and had fewer epochs left (sign-digits:
    2 instead of 3 in 2 minutes). `planned`: the plan read by an earlier warm-up, which is
    then skipped (the cache in `work` is warm).
    """
    if planned is None:
        warm = run_one(data, budget, None, work / data.name / "warm-up", runner)
        if warm.get("status") != suite.DONE:
            return {"warm_up": warm, "rows": []}
        lr, batch, strategy = planned_rate(work / data.name / "warm-up")
        planned = {"lr": lr, "batch_size": batch, "strategy": strategy, "warm_up": warm}
    rows = []
    for m in multipliers:
        lr = float(f"{planned['lr'] * m:.3g}")
        cell = run_one(data, budget, lr, work / data.name / f"x{m:g}", runner)
        rows.append({"multiple": m, "lr": lr, **cell})
    return {**planned, "rows": rows}


def merged(old: dict | None, new: dict) -> dict:
    """`new`'s rows replace `old`'s at the same multiple; the others are kept."""
    if not old:
        return new
    by = {r["multiple"]: r for r in old.get("rows", [])} | {r["multiple"]: r for r in new["rows"]}
    return {**old, **new, "rows": [by[m] for m in sorted(by)]}


def render(record: dict) -> str:
    multiples = sorted({r["multiple"] for d in record["datasets"].values() for r in d["rows"]})
    lines = [
        f"# The budget plan's peak learning rate on the suite (`python benchmarks/budget_lr.py"
        f" --budget {record['budget']}`)",
        "",
        *(f"> {n}" for n in record.get("notes", [])),
        "",
        "Each cell: test accuracy / best validation accuracy (peak rate). x1 is the plan's own "
        "rate; the others pass `--lr` at that multiple of it, the rest of the plan unchanged.",
        "",
        "| dataset (strategy, batch) | " + " | ".join(f"x{m:g}" for m in multiples) + " |",
        "|---|" + "---|" * len(multiples),
    ]
    for name, d in record["datasets"].items():
        by = {r["multiple"]: r for r in d["rows"]}
        cells = [fmt(by.get(m)) for m in multiples]
        label = f"{name} ({d.get('strategy', '?')}, {d.get('batch_size', '?')})"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", f"Machine: {record['machine']}.", ""]
    return "\n".join(lines)


def fmt(row: dict | None) -> str:
    if not row or row.get("status") != suite.DONE:
        return row.get("status", "not run") if row else "not run"
    val = row.get("val_accuracy")
    val_text = f"{val:.2%}" if val is not None else "-"
    return f"{row['test_accuracy']:.2%} / {val_text} ({row['lr']:.2g}, {row['wall_s']:.0f} s)"


def multiples(text: str) -> list[float]:
    """`--multipliers 0.33,1,3`: positive numbers; argparse turns the error into one line."""
    try:
        values = [float(m) for m in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of positive numbers (0.33,1,3)")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="ImageFolder trees")
    parser.add_argument("--budget", default="2m")
    parser.add_argument("--multipliers", type=multiples, default="0.33,1,3")
    parser.add_argument("--note", action="append", default=[], help="a line for the table")
    parser.add_argument("--out", type=Path, default=suite.RESULTS)
    parser.add_argument("--work", type=Path, help="run folders (default: a temporary folder)")
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="the cache in --work is warm: take the plan's rate from OUT/budget_lr.json",
    )
    args = parser.parse_args()
    multipliers = args.multipliers
    work = (args.work or Path(tempfile.mkdtemp(prefix="tlearn-lr-"))).resolve()
    machine = suite.machine_info()
    path = args.out / "budget_lr.json"
    record = json.loads(path.read_text()) if path.exists() else {"datasets": {}, "notes": []}
    if record.get("budget", args.budget) != args.budget:
        raise SystemExit(f"{path} holds --budget {record['budget']} runs: use another --out")
    record |= {
        "budget": args.budget,
        "commit": suite.git_commit(),
        "machine": f"{machine['cpu']}, {machine['cpu_cores']} cores, torch {machine['torch']}",
        "notes": list(dict.fromkeys([*record["notes"], *args.note])),
    }
    for data in (d.resolve() for d in args.datasets):
        print(f"{data.name} ...", flush=True)
        old = record["datasets"].get(data.name)
        planned = None
        if args.no_warm_up:
            if not old:
                raise SystemExit(f"--no-warm-up: {path} has no plan of {data.name}")
            planned = {k: old[k] for k in ("lr", "batch_size", "strategy", "warm_up")}
        new = measure(data, args.budget, multipliers, work, suite.run_tlearn, planned)
        record["datasets"][data.name] = merged(old, new)
        suite.write_atomic(args.out / "budget_lr.json", json.dumps(record, indent=1))
        suite.write_atomic(args.out / "budget_lr.md", render(record))
        print(render(record), flush=True)


if __name__ == "__main__":
    main()
