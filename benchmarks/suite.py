"""The benchmark suite: tlearn's commands against plain baselines on real datasets, one machine.

Each DATASET_DIR is an ImageFolder tree: `train/<class>/`, an optional `val/`, and `test/`. For
each dataset, each method runs as a user would run it, in a process of its own:

  default     tlearn train DIR --out RUN; then tlearn evaluate RUN DIR/test --json
  budget<T>   the same with --budget T (budget2m, budget5m, budget10m, ...)
  lr          benchmarks/linear_baseline.py DIR: frozen Lite0 at 224 px, pooled last features,
              scikit-learn LogisticRegressionCV (C by 5-fold CV on train), scored on test
  fastai<T>   benchmarks/fastai_compare.py --data DIR --time-budget T: fastai's fine_tune with the
              wall time of the tlearn budget it is compared with (when fastai is importable)

Wall time: the whole training command (the baseline's and fastai's: the whole script, its test
score included; tlearn's evaluate is timed apart). Each tlearn cell starts with an empty feature
cache (what a first run sees) but keeps what tlearn measured of the machine in earlier cells, as a
user's machine would (the suite's own cache folder, under --work).
The machine's 1-minute load average is sampled during each cell: on a shared machine wall times
are inflated, and the table says by how much the machine was busy.

Results are cached cell by cell in OUT/suite.json (the full suite takes hours): a rerun skips the
cells already done, and retries failed, timed-out and skipped ones; --force reruns them all.

    python benchmarks/suite.py /data/sign-digits /data/clothing10 --methods lr,default
    python benchmarks/suite.py DIR... [--methods default,budget2m,budget5m,budget10m,lr,fastai5m]
        [--force] [--timeout 1800] [--note "shared CPU"] [--out benchmarks/results] [--work DIR]
      -> OUT/suite.json (every cell, machine) and OUT/suite.md (dataset x method table)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
DEFAULT_METHODS = "default,budget2m,budget5m,budget10m,lr,fastai5m"
DONE, FAILED, TIMEOUT, SKIPPED = "done", "failed", "timeout", "skipped"


@dataclass(frozen=True)
class Method:
    name: str  # as given: default, budget2m, lr, fastai5m
    kind: str  # tlearn | lr | fastai
    budget: str | None = None  # "2m": tlearn's --budget, or fastai's wall time
    extra: tuple[str, ...] = ()  # more tlearn train options (a benchmark of one option's values)


def parse_methods(text: str) -> list[Method]:
    methods = []
    for name in (part.strip() for part in text.split(",")):
        if name == "default":
            methods.append(Method(name, "tlearn"))
        elif name == "lr":
            methods.append(Method(name, "lr"))
        elif m := re.fullmatch(r"(budget|fastai)(\d+[smh](?:\d+[smh])*)", name):
            methods.append(Method(name, "tlearn" if m[1] == "budget" else "fastai", m[2]))
        else:
            raise SystemExit(
                f"unknown method {name!r}: use default, lr, budget<T> or fastai<T> (T like 2m)"
            )
    if len({m.name for m in methods}) != len(methods):
        raise SystemExit(f"a method is named twice in {text!r}")
    return methods


def command(method: Method, data: Path, run_dir: Path) -> list[str]:
    """The command line a cell runs (what the table's legend shows)."""
    if method.kind == "tlearn":
        budget = ["--budget", method.budget] if method.budget else []
        train = [sys.executable, "-m", "tlearn", "train", str(data), *budget, *method.extra]
        return [*train, "--out", str(run_dir)]
    if method.kind == "lr":
        out = run_dir / "result.json"
        return [sys.executable, str(HERE / "linear_baseline.py"), str(data), "--json", str(out)]
    return [
        sys.executable,
        str(HERE / "fastai_compare.py"),
        "--data",
        str(data),
        "--time-budget",
        str(method.budget),
        "--image-size",
        "224",
        "--out",
        str(run_dir),
    ]


# ------------------------------------------------------------------------------ running a cell


def timed(cmd: list[str], timeout: float | None, env: dict[str, str] | None = None) -> dict:
    """Run `cmd` in its own process group: wall s, exit code, output; killed at `timeout`."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate()
        timed_out = True
    return {
        "wall_s": round(time.perf_counter() - start, 1),
        "rc": proc.returncode,
        "output": output or "",
        "timed_out": timed_out,
    }


def _failure(step: dict, what: str) -> dict:
    if step["timed_out"]:
        return {"status": TIMEOUT, "wall_s": step["wall_s"], "error": f"{what} ran past the limit"}
    return {
        "status": FAILED,
        "wall_s": step["wall_s"],
        "error": f"{what} exited {step['rc']}: {step['output'][-1500:]}",
    }


def run_tlearn(method: Method, data: Path, run_dir: Path, timeout: float | None) -> dict:
    cache = run_dir.parent.parent / "tlearn-cache"  # the suite's own, in --work
    shutil.rmtree(cache / "features", ignore_errors=True)  # a first run's cold feature cache
    env = {**os.environ, "TLEARN_CACHE_DIR": str(cache)}
    train = timed(command(method, data, run_dir), timeout, env)
    (run_dir.parent / f"{run_dir.name}.log").write_text(train["output"])
    if train["rc"] != 0 or train["timed_out"]:
        return _failure(train, "tlearn train")
    evaluate = timed(
        [sys.executable, "-m", "tlearn", "evaluate", str(run_dir), str(data / "test"), "--json"],
        timeout,
        env,
    )
    if evaluate["rc"] != 0 or evaluate["timed_out"]:
        return {**_failure(evaluate, "tlearn evaluate"), "wall_s": train["wall_s"]}
    report = json.loads(evaluate["output"][evaluate["output"].index("{") :])
    return {
        "status": DONE,
        "test_accuracy": report["accuracy"],
        "wall_s": train["wall_s"],
        "details": {"evaluate_wall_s": evaluate["wall_s"], **tlearn_recipe(run_dir, train)},
    }


def tlearn_recipe(run_dir: Path, train: dict) -> dict:
    """What tlearn chose, from the run folder and the log: the table's explanation."""
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    keep = ("strategy", "image_size", "epochs", "features", "head", "augment", "precision")
    recipe = {k: cfg.get(k) for k in keep}
    lines = train["output"].splitlines()
    recipe["validation"] = next((x for x in lines if x.startswith("validation:")), None)
    recipe["log_tail"] = lines[-6:]
    return recipe


def run_lr(method: Method, data: Path, run_dir: Path, timeout: float | None) -> dict:
    step = timed(command(method, data, run_dir), timeout)
    if step["rc"] != 0 or step["timed_out"]:
        return _failure(step, "linear_baseline.py")
    result = json.loads((run_dir / "result.json").read_text())
    return {
        "status": DONE,
        "test_accuracy": result["test_accuracy"],
        "wall_s": step["wall_s"],
        "details": result,
    }


def run_fastai(method: Method, data: Path, run_dir: Path, timeout: float | None) -> dict:
    if importlib.util.find_spec("fastai") is None:
        return {"status": SKIPPED, "error": "fastai is not installed (see fastai_compare.py)"}
    step = timed(command(method, data, run_dir), timeout)
    if step["rc"] != 0 or step["timed_out"]:
        return _failure(step, "fastai_compare.py")
    row = json.loads((run_dir / "fastai_compare.json").read_text())["rows"][0]
    return {
        "status": DONE,
        "test_accuracy": row["test_accuracy"],
        "wall_s": step["wall_s"],
        "details": row,
    }


RUNNERS: dict[str, Callable[[Method, Path, Path, float | None], dict]] = {
    "tlearn": run_tlearn,
    "lr": run_lr,
    "fastai": run_fastai,
}


class LoadSampler:
    """The 1-minute load average every few seconds while a cell runs (start, mean, max)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.samples = every_s, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        s = self.samples
        return {"start": round(s[0], 2), "mean": round(sum(s) / len(s), 2), "max": round(max(s), 2)}


# ------------------------------------------------------------------------------ the suite


def cell_key(dataset: str, method: str) -> str:
    return f"{dataset}/{method}"


def load_record(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"machine": {}, "datasets": {}, "cells": {}, "notes": []}


def pending(record: dict, datasets: list[str], methods: list[Method], force: bool) -> list:
    """(dataset, method) cells to run: all with `force`, else those not done yet."""
    cells = record["cells"]
    return [
        (d, m)
        for d in datasets
        for m in methods
        if force or cells.get(cell_key(d, m.name), {}).get("status") != DONE
    ]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save(record: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "suite.json", json.dumps(record, indent=2) + "\n")
    write_atomic(out / "suite.md", render_markdown(record))


def run_suite(
    datasets: list[Path],
    methods: list[Method],
    out: Path,
    work: Path,
    *,
    force: bool = False,
    timeout: float | None = None,
    notes: list[str] = (),
    runners: dict[str, Callable] = RUNNERS,
    log: Callable[[str], None] = print,
) -> dict:
    """Run every cell not yet done, saving the record after each: a killed suite resumes."""
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise SystemExit(f"two datasets share a folder name: {names}")
    record = load_record(out / "suite.json")
    record["machine"] = machine_info()
    record["notes"] = list(dict.fromkeys([*record.get("notes", []), *notes]))
    for d in datasets:
        record["datasets"][d.name] = {"path": str(d), **count_images(d)}
    record["methods"] = {m.name: describe(m) for m in methods} | record.get("methods", {})
    todo = pending(record, names, methods, force)
    log(f"{len(todo)} cell(s) to run of {len(names) * len(methods)}")
    by_name = dict(zip(names, datasets, strict=True))
    commit = git_commit()  # the code the cells run: taken once, before they run
    for name, method in todo:
        run_dir = work / name / method.name
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        log(f"{name} / {method.name} ...")
        with LoadSampler() as load:
            cell = runners[method.kind](method, by_name[name], run_dir, timeout)
        cell = {
            "dataset": name,
            "method": method.name,
            "test_accuracy": None,
            "wall_s": None,
            **cell,
            "load_avg_1m": load.summary(),
            "finished_at": now(),
            "commit": commit,
        }
        record["cells"][cell_key(name, method.name)] = cell
        save(record, out)
        log(f"  {cell['status']}: {fmt_cell(cell)}  (load {cell['load_avg_1m']})")
    save(record, out)
    return record


def describe(method: Method) -> str:
    if method.kind == "tlearn":
        budget = f" --budget {method.budget}" if method.budget else ""
        return f"`tlearn train DIR{budget} --out RUN`, `tlearn evaluate RUN DIR/test --json`"
    if method.kind == "lr":
        return "`python benchmarks/linear_baseline.py DIR` (Lite0 224 px + LogisticRegressionCV)"
    return (
        f"`python benchmarks/fastai_compare.py --data DIR --time-budget {method.budget} "
        "--image-size 224` (fastai fine_tune)"
    )


def count_images(data: Path) -> dict[str, int]:
    image = re.compile(r"\.(jpe?g|png|bmp|gif|webp|tiff?)$", re.IGNORECASE)
    return {
        f"{part}_images": sum(1 for p in (data / part).rglob("*") if image.search(p.name))
        for part in ("train", "val", "test")
        if (data / part).is_dir()
    }


def machine_info() -> dict[str, Any]:
    import torch

    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        model = found[1].strip() if found else ""
    return {
        "cpu": model or platform.processor(),
        "cpu_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def git_commit() -> str | None:
    try:
        head = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(HERE), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


# ------------------------------------------------------------------------------ the table


def fmt_cell(cell: dict | None) -> str:
    if cell is None:
        return "not run"
    if cell["status"] == DONE:
        return f"{100 * cell['test_accuracy']:.2f}% in {cell['wall_s']:.0f} s"
    if cell["status"] == TIMEOUT:
        return f"timed out after {cell['wall_s']:.0f} s"
    return cell["status"]


def render_markdown(record: dict) -> str:
    """suite.md: dataset x method (test accuracy in wall s), the legend, machine and load."""
    cells, datasets = record["cells"], record["datasets"]
    methods = list(dict.fromkeys(c["method"] for c in cells.values()))
    lines = ["# Benchmark suite (`python benchmarks/suite.py`)", ""]
    lines += [f"> {note}" for note in record.get("notes", [])] + [""] * bool(record.get("notes"))
    lines += [
        "Each cell: test accuracy, in the wall time of the training command (tlearn "
        "train; the baseline's and fastai's whole script, test score included).",
        "",
    ]
    lines += ["| dataset (train / val / test images) | " + " | ".join(methods) + " |"]
    lines += ["|---|" + "---|" * len(methods)]
    for name, info in datasets.items():
        if not any(c["dataset"] == name for c in cells.values()):
            continue
        sizes = " / ".join(str(info.get(f"{p}_images", "-")) for p in ("train", "val", "test"))
        row = [fmt_cell(cells.get(cell_key(name, m))) for m in methods]
        lines.append(f"| {name} ({sizes}) | " + " | ".join(row) + " |")
    lines += ["", "Methods:", ""]
    lines += [f"- {m}: {record.get('methods', {}).get(m, '')}" for m in methods]
    m = record.get("machine", {})
    lines += [
        "",
        f"Machine: {m.get('cpu')}, {m.get('cpu_cores')} cores, GPU {m.get('gpu')}, "
        f"torch {m.get('torch')} ({m.get('torch_threads')} threads), "
        f"Python {m.get('python')}.",
        "",
    ]
    lines += ["| cell | status | load avg 1 min (start / mean / max) | finished | commit |"]
    lines += ["|---|---|---|---|---|"]
    for key, c in cells.items():
        load = c.get("load_avg_1m", {})
        load_text = f"{load.get('start')} / {load.get('mean')} / {load.get('max')}"
        status = c["status"] + (f": {c['error'][:120]}" if c.get("error") else "")
        status = status.replace("|", "/").replace("\n", " ")
        lines.append(
            f"| {key} | {status} | {load_text} | {c.get('finished_at')} | {c.get('commit')} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("datasets", nargs="+", type=Path, help="ImageFolder trees")
    parser.add_argument("--methods", default=DEFAULT_METHODS, help=f"default {DEFAULT_METHODS}")
    parser.add_argument("--force", action="store_true", help="rerun cells already done")
    parser.add_argument("--timeout", type=float, help="seconds one cell may run")
    parser.add_argument("--note", action="append", default=[], help="a line for suite.md")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--work", type=Path, help="run folders (default: a temporary folder)")
    args = parser.parse_args()
    for d in args.datasets:
        if not (d / "train").is_dir() or not (d / "test").is_dir():
            raise SystemExit(f"{d} needs train/ and test/ folders")
    methods = parse_methods(args.methods)
    work = args.work or Path(tempfile.mkdtemp(prefix="tlearn-suite-"))
    datasets = [d.resolve() for d in args.datasets]
    record = run_suite(
        datasets,
        methods,
        args.out,
        work.resolve(),
        force=args.force,
        timeout=args.timeout,
        notes=args.note,
    )
    print(render_markdown(record))


if __name__ == "__main__":
    main()
