"""`report.html`: a run and its model's results on held-out data, on one page people look at.

`write_report` takes what is already known (the evaluation `Report` with its per-image logits,
the model, and the run folder when there is one) and writes the figures and the page into
`out`. It trains nothing and scores nothing itself; `tlearn.api` does that and calls it.
"""

from __future__ import annotations

import csv
import json
from html import escape
from pathlib import Path
from typing import Any

import yaml

from tlearn.evaluation import Report
from tlearn.files import atomic_write_text
from tlearn.models.calibration import fitted_on_text
from tlearn.report import figures, html
from tlearn.report.mistakes import mistake_gallery

REPORT_NAME = "report.html"


def read_csv(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_report(
    out: str | Path,
    model: Any,
    report: Report,
    run_dir: str | Path | None = None,
    *,
    split_counts: dict[str, list[int]] | None = None,
    mistakes: int = 12,
) -> Path:
    """Write report.html and its PNGs into `out`; return the page's path.

    `model` is a `tlearn.Model`; `report` comes from its `evaluate` (with `.predictions` and
    `.source`); `split_counts` maps a split name to its images per class, for the data summary.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path(run_dir) if run_dir is not None else None
    sections: list[tuple[str, str]] = []
    if run is not None:
        sections.append(("The run", run_section(run, model)))
    sections.append(("Data", data_section(report, split_counts or {}, run)))
    if run is not None:
        sections.append(("Training", training_section(run, out)))
    sections.append(("Results", results_section(report, out)))
    sections.append(("Calibration", calibration_section(report, model, out)))
    sections.append(("Mistakes", mistakes_section(report, model, out, mistakes)))
    title = f"tlearn report: {model!r} on {report.data}"
    page = html.page(title, sections, headline(report, model, run))
    path = out / REPORT_NAME
    atomic_write_text(path, page)
    return path


def headline(report: Report, model: Any, run: Path | None) -> str:
    acc = html.number(report.accuracy)
    parts = [f'<div>accuracy<b id="accuracy" data-value="{acc}">{acc}</b></div>']
    if report.top5_accuracy is not None:
        top5 = html.number(report.top5_accuracy)
        parts.append(f'<div>top-5<b id="top5" data-value="{top5}">{top5}</b></div>')
    macro = report.averages.get("macro", {}).get("f1")
    if macro is not None:
        parts.append(f'<div>macro F1<b id="macro-f1">{html.number(macro)}</b></div>')
    if report.calibration:
        c = report.calibration
        ece = 100 * c["ece_after" if c["applied"] else "ece_before"]
        parts.append(f"<div>ECE<b>{ece:.2f}%</b></div>")
    where = f"run folder <code>{escape(str(run))}</code>, " if run is not None else ""
    lead = (
        f'<p class="note">{where}held-out data <code>{escape(report.data)}</code>: '
        f"{report.images} images, {len(report.classes)} classes</p>"
    )
    return lead + f'<div class="headline">{"".join(parts)}</div>'


def run_section(run: Path, model: Any) -> str:
    """Config, plan and its reasons, backbones and where their weights came from, time taken."""
    config = model.spec.config or {}
    if (run / "config.yaml").is_file():
        config = yaml.safe_load((run / "config.yaml").read_text()) or config
    parts = ["<h3>Backbones</h3>", html.table(
        ("backbone", "library", "weights", "features", "input px", "mean", "std"),
        [(b["name"], b.get("library", ""), b.get("weights_source", ""), b.get("num_features", ""),
          b["preprocessing"].get("input_size", ""), str(b["preprocessing"].get("mean", "")),
          str(b["preprocessing"].get("std", ""))) for b in model.spec.backbones],
    )]  # fmt: skip
    head = model.spec.head
    parts.append(f"<p>head <b>{escape(str(head.get('kind')))}</b>"
                 + (f", fusion {escape(model.spec.fusion)}" if len(model.spec.backbones) > 1
                    else "") + "</p>")  # fmt: skip
    rows = read_csv(run / "metrics.csv")
    if rows:
        seconds = float(rows[-1].get("elapsed_s") or 0)
        parts.append(f'<p>training took <b id="train-seconds">{seconds:.1f} s</b> over '
                     f"{len(rows)} epoch(s)</p>")  # fmt: skip
    plan_path = run / "plan.json"
    if plan_path.is_file():
        plan = json.loads(plan_path.read_text())
        run = plan.get("run", {})
        why = [f"{k}: {v}" for k, v in run.get("why", {}).items()] + plan.get("reasons", [])
        why += [e.get("why") for e in plan.get("events", [])]
        reasons = "".join(f"<li>{escape(str(r))}</li>" for r in why)
        chosen = plan.get("applied") or {k: v for k, v in run.items() if k not in ("why", "phases")}
        parts.append("<h3>Plan: what was chosen and why</h3>"
                     + html.key_values(sorted(chosen.items())) + f"<ul>{reasons}</ul>")  # fmt: skip
    parts.append("<h3>Configuration (config.yaml)</h3>")
    parts.append(html.table(("option", "value"), sorted((k, str(v)) for k, v in config.items()),
                            scroll=True))  # fmt: skip
    return "".join(parts)


def data_section(report: Report, split_counts: dict[str, list[int]], run: Path | None) -> str:
    """Images per class per split, and the files that could not be decoded, with why."""
    splits = {**split_counts, "held-out": [row["support"] for row in report.per_class]}
    names = list(splits)
    rows = [[c] + [splits[s][i] if i < len(splits[s]) else "" for s in names]
            for i, c in enumerate(report.classes)]  # fmt: skip
    rows.append(["all"] + [sum(splits[s]) for s in names])
    parts = [f"<p>{len(report.classes)} classes; held-out data <code>{escape(report.data)}"
             "</code></p>", html.table(["class", *names], rows, scroll=True)]  # fmt: skip
    skipped = []
    if run is not None and (run / "skipped.txt").is_file():
        skipped = [line.split("\t", 1) for line in (run / "skipped.txt").read_text().splitlines()]
    parts.append("<h3>Skipped files</h3>")
    if skipped:
        parts.append(html.table(("split", "file and reason"),
                                [(s[0], s[-1]) for s in skipped], scroll=True))  # fmt: skip
    elif not report.skipped:
        parts.append('<p class="note">none: every image could be decoded</p>')
    if report.skipped:
        parts.append(f"<p>{report.skipped} held-out image(s) could not be decoded and were "
                     "left out of the results</p>")  # fmt: skip
    return "".join(parts)


def training_section(run: Path, out: Path) -> str:
    epochs, steps = read_csv(run / "metrics.csv"), read_csv(run / "steps.csv")
    if not epochs:
        return '<p class="note">no metrics.csv in the run folder</p>'
    parts = [html.figure(figures.training_curves(epochs, steps, out / "training.png"),
                         "loss and accuracy curves")]  # fmt: skip
    if steps:
        parts.append(html.figure(figures.lr_schedule(steps, out / "lr.png"), "learning rate"))
    keys = [k for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                        "images_per_s", "elapsed_s") if k in epochs[0]]  # fmt: skip
    parts.append(html.table(keys, [[r.get(k, "") for k in keys] for r in epochs], scroll=True))
    return "".join(parts)


def results_section(report: Report, out: Path) -> str:
    """Accuracy, averages, the per-class table, confusion heat maps, the most-confused pairs."""
    summary = [("accuracy", report.accuracy), ("top-5 accuracy", report.top5_accuracy or "-"),
               ("loss (NLL)", report.loss), ("images", report.images),
               ("evaluation seconds", report.seconds)]  # fmt: skip
    parts = [html.key_values(summary)]
    if report.averages:
        parts.append(html.table(
            ("average", "precision", "recall", "f1"),
            [(k, v["precision"], v["recall"], v["f1"]) for k, v in report.averages.items()],
        ))  # fmt: skip
    metrics = ("precision", "recall", "f1")
    parts.append("<h3>Per class</h3>")
    parts.append(html.table(
        ("class", *metrics, "support"),
        [(r["class"], *(r[m] for m in metrics), r["support"]) for r in report.per_class],
        attrs=[[None, *({"data-class": r["class"], "data-metric": m} for m in metrics), None]
               for r in report.per_class],
        scroll=True, id_="per-class",
    ))  # fmt: skip
    counts = figures.confusion(report.confusion_matrix, report.classes, out / "confusion.png")
    normed = figures.confusion(report.confusion_matrix, report.classes,
                               out / "confusion_normalized.png", normalized=True)  # fmt: skip
    parts += ["<h3>Confusion matrix</h3>", html.figure(counts, "confusion matrix, counts"),
              html.figure(normed, "confusion matrix, row-normalised")]  # fmt: skip
    parts.append("<h3>Most confused pairs</h3>")
    if report.most_confused:
        parts.append(html.table(("true class", "taken for", "images"),
                                [(p["true"], p["predicted"], p["count"])
                                 for p in report.most_confused]))  # fmt: skip
    else:
        parts.append('<p class="note">no mistakes</p>')
    return "".join(parts)


def calibration_section(report: Report, model: Any, out: Path) -> str:
    c = report.calibration
    if not c:
        return '<p class="note">no calibration figures for this evaluation</p>'
    path = figures.reliability_diagram(c["reliability_before"], c["reliability_after"],
                                       c["temperature"], out / "reliability.png")  # fmt: skip
    fitted = model.spec.calibration
    where = (f"fitted on {fitted.get('images')} {fitted_on_text(fitted.get('fitted_on', 'val'))} "
             "after training (ECE there "
             f"{100 * fitted['ece_before']:.2f}% &rarr; {100 * fitted['ece_after']:.2f}%)"
             if fitted else "none stored in this model file (T = 1)")  # fmt: skip
    applied = "applied to the probabilities" if c["applied"] else "not applied (--no-calibration)"
    return (
        f"<p>temperature <b>{c['temperature']:.4f}</b>, {where}; {applied}. On this data the "
        f"expected calibration error is <b>{100 * c['ece_before']:.2f}%</b> before scaling and "
        f"<b>{100 * c['ece_after']:.2f}%</b> after (15 bins).</p>"
    ) + html.figure(path, "reliability")


def mistakes_section(report: Report, model: Any, out: Path, k: int) -> str:
    pred, source = getattr(report, "predictions", None), getattr(report, "source", None)
    if pred is None or source is None or k <= 0:
        return '<p class="note">no per-image predictions were kept for this report</p>'
    items = mistake_gallery(model, pred, source, out, k)
    if not items:
        return '<p class="note">no wrong predictions on the held-out data</p>'
    cards = []
    for item in items:
        pictures = html.figure(out / item["thumbnail"], f"{item['image']}")
        if item["heatmap"]:
            pictures += html.figure(out / item["heatmap"], f"Grad-CAM of {item['predicted']}")
        cards.append(
            f'<div class="card"><div style="display:flex;gap:4px">{pictures}</div>'
            f"true <b>{escape(item['true'])}</b>, predicted <b>{escape(item['predicted'])}</b> "
            f"({100 * item['probability']:.1f}%; true class {100 * item['true_probability']:.1f}%)"
            f'<br><span class="note">{escape(item["image"])}</span></div>'
        )
    note = "" if items[0]["heatmap"] else '<p class="note">this network has no map to draw</p>'
    return (
        f"<p>the {len(items)} most confident wrong predictions; beside each image, where the "
        "model looked for its prediction (Grad-CAM on the last convolutional stage)</p>"
        + note
        + f'<div class="cards">{"".join(cards)}</div>'
    )
