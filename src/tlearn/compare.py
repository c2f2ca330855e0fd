"""The fusion ablation in one call: each backbone alone, then fused, same options and seed.

Each run is an ordinary training run (its own run folder), scored on the dataset's held-out test
split, so the table answers "is the fusion worth its cost?" with the numbers a user would get.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tlearn.api import train
from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text


@dataclass
class CompareRow:
    name: str  # "tf_efficientnet_lite0" or "fusion concat"
    backbones: list[str]
    fusion: str
    accuracy: float
    train_seconds: float
    images_per_second: float  # inference on the test split, decoding included
    parameters: int
    test_images: int
    run_dir: str


def compare(
    data: str,
    *,
    backbone: list[str],
    fusion: str = "concat",
    out: str | Path | None = None,
    test_limit: int | None = None,
    log=print,
    **options: Any,
) -> list[CompareRow]:
    """Train every backbone alone and all of them fused; return one row per run.

    `options` are `tlearn.train`'s (strategy, head, image_size, epochs, ...), the same for every
    run. Run folders go under `out` (`<name>/`), with `compare.json` and `compare.md`.
    """
    backbones = [backbone] if isinstance(backbone, str) else list(backbone)
    if len(backbones) < 2:
        raise TlearnError("compare needs two or more backbones: repeat --backbone NAME")
    if len(set(backbones)) != len(backbones):
        raise TlearnError("compare got the same backbone twice: name each one once")
    base = Path(out) if out else _default_dir(data)
    plans = [(name, [name], "concat") for name in backbones]
    plans.append((f"fusion {fusion}", backbones, fusion))
    rows: list[CompareRow] = []
    for name, names, how in plans:
        log(f"== {name}")
        run_dir = base / re.sub(r"[^A-Za-z0-9_.-]+", "-", name)
        started = time.perf_counter()
        model = train(data, backbone=names, fusion=how, out=str(run_dir), log=log, **options)
        seconds = time.perf_counter() - started
        report = model.evaluate(
            data,
            data_root=options.get("data_root"),
            eval_limit=test_limit,
            device=options.get("device", "auto"),
            workers=options.get("workers"),
            seed=options.get("seed", 0),
        )
        rows.append(
            CompareRow(
                name=name,
                backbones=names,
                fusion=how,
                accuracy=round(report.accuracy, 5),
                train_seconds=round(seconds, 1),
                images_per_second=round(report.images / max(report.seconds, 1e-9), 1),
                parameters=sum(p.numel() for p in model.classifier.parameters()),
                test_images=report.images,
                run_dir=str(run_dir),
            )
        )
        log(f"{name}: accuracy {report.accuracy:.4f} on {report.images} test images")
    write_results(base, rows, {"data": data, "fusion": fusion, "test_limit": test_limit, **options})
    return rows


def format_table(rows: list[CompareRow]) -> str:
    """A Markdown table (readable in a terminal, pasteable into a README)."""
    best_single = max((r.accuracy for r in rows if len(r.backbones) == 1), default=None)
    lines = [
        "| model | accuracy | vs best single | train s | inference img/s | parameters |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        delta = (
            f"{100 * (r.accuracy - best_single):+.2f} pt"
            if best_single is not None and len(r.backbones) > 1
            else ""
        )
        lines.append(
            f"| {r.name} | {100 * r.accuracy:.2f}% | {delta} | {r.train_seconds:.1f} | "
            f"{r.images_per_second:,.0f} | {r.parameters:,} |"
        )
    return "\n".join(lines)


def write_results(base: Path, rows: list[CompareRow], options: dict[str, Any]) -> None:
    base.mkdir(parents=True, exist_ok=True)
    payload = {"options": options, "rows": [asdict(r) for r in rows]}
    atomic_write_text(base / "compare.json", json.dumps(payload, indent=2, default=str) + "\n")
    atomic_write_text(base / "compare.md", format_table(rows) + "\n")


def _default_dir(data: str) -> Path:
    stem = Path(data).name or "data"
    return Path("runs") / f"compare-{stem}-{datetime.now():%Y%m%d-%H%M%S}"
