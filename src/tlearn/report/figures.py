"""The report's figures: matplotlib (Agg) PNGs that stay readable from 2 classes to 100s.

Each function draws one figure to a path and returns it. Class labels are thinned (every k-th
name, so at most ~40 show) and turned 90 degrees when there are many, and cell numbers are
printed only where cells are big enough to hold them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display: files only (also what CI and servers have)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_LABELS = 40  # tick labels per axis before they are thinned
DPI = 110


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def training_curves(epochs: Sequence[dict], steps: Sequence[dict], path: Path) -> Path:
    """Loss (per step and per epoch, train and val) and validation accuracy against epochs."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    if steps:
        x = _step_positions(steps)
        ax_loss.plot(x, [_float(r["loss"]) for r in steps], lw=0.7, alpha=0.45,
                     color="tab:blue", label="train loss (per step)")  # fmt: skip
    e = [int(r["epoch"]) for r in epochs]
    ax_loss.plot(e, [_float(r["train_loss"]) for r in epochs], "o-", color="tab:blue",
                 label="train loss (epoch mean)")  # fmt: skip
    ax_loss.plot(e, [_float(r.get("val_loss")) for r in epochs], "s-", color="tab:orange",
                 label="val loss")  # fmt: skip
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend(fontsize=8)
    ax_acc.plot(e, [_float(r.get("val_accuracy")) for r in epochs], "s-", color="tab:orange",
                label="val accuracy")  # fmt: skip
    if any("train_accuracy" in r for r in epochs):
        ax_acc.plot(e, [_float(r.get("train_accuracy")) for r in epochs], "o-",
                    color="tab:blue", label="train accuracy")  # fmt: skip
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_acc.legend(fontsize=8)
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        if e:
            ax.set_xticks(e if len(e) <= 20 else e[:: max(1, len(e) // 10)])
    return _save(fig, path)


def _step_positions(steps: Sequence[dict]) -> list[float]:
    """Each step at its epoch's fraction: step k of n in epoch e sits at e - 1 + k / n."""
    per_epoch: dict[int, int] = {}
    for r in steps:
        per_epoch[int(r["epoch"])] = per_epoch.get(int(r["epoch"]), 0) + 1
    seen: dict[int, int] = {}
    x = []
    for r in steps:
        e = int(r["epoch"])
        seen[e] = seen.get(e, 0) + 1
        x.append(e - 1 + seen[e] / per_epoch[e])
    return x


def lr_schedule(steps: Sequence[dict], path: Path) -> Path:
    """The learning rate at every step (the first parameter group), epochs marked."""
    fig, ax = plt.subplots(figsize=(11, 3), layout="constrained")
    x = _step_positions(steps)
    ax.plot(x, [_float(r["lr"]) for r in steps], color="tab:green")
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning-rate schedule (per step)")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _class_ticks(ax: Any, classes: Sequence[str]) -> None:
    n = len(classes)
    every = max(1, int(np.ceil(n / MAX_LABELS)))
    ticks = list(range(0, n, every))
    names = [classes[i][:24] for i in ticks]
    size = 9 if n <= 20 else 7 if n <= 50 else 6
    ax.set_xticks(ticks, names, rotation=90 if n > 8 else 45, ha="center" if n > 8 else "right",
                  fontsize=size)  # fmt: skip
    ax.set_yticks(ticks, names, fontsize=size)


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path,
              normalized: bool = False) -> Path:  # fmt: skip
    """The confusion matrix as a heat map (rows: true class); row-normalised with `normalized`."""
    return _save(confusion_figure(matrix, classes, normalized), path)


def confusion_figure(matrix: Sequence[Sequence[int]], classes: Sequence[str],
                     normalized: bool = False) -> Any:  # fmt: skip
    counts = np.asarray(matrix, dtype=np.float64)
    n = len(classes)
    values = counts / np.maximum(counts.sum(1, keepdims=True), 1) if normalized else counts
    side = float(np.clip(0.2 * n + 3, 4.5, 16))
    fig, ax = plt.subplots(figsize=(side + 1.2, side), layout="constrained")
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalized else None)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 20:  # numbers in cells only where they fit
        top = values.max() or 1
        for i in range(n):
            for j in range(n):
                text = f"{values[i, j]:.2f}" if normalized else f"{int(counts[i, j])}"
                ax.text(j, i, text, ha="center", va="center", fontsize=8 if n <= 10 else 6,
                        color="white" if values[i, j] > 0.6 * top else "black")  # fmt: skip
    _class_ticks(ax, classes)
    ax.set(
        xlabel="predicted",
        ylabel="true",
        title="confusion matrix, row-normalised" if normalized else "confusion matrix, counts",
    )
    return fig


def reliability_diagram(before: dict, after: dict, temperature: float, path: Path) -> Path:
    """Accuracy against confidence per bin, before and after temperature scaling, with ECE."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, layout="constrained")
    titles = ("before scaling (T = 1)", f"after temperature scaling (T = {temperature:.3f})")
    for ax, rel, title in zip(axes, (before, after), titles, strict=True):
        edges = np.asarray(rel["edges"])
        width = np.diff(edges)
        acc = np.array([np.nan if a is None else a for a in rel["accuracy"]], dtype=float)
        conf = np.array([np.nan if c is None else c for c in rel["confidence"]], dtype=float)
        ax.bar(edges[:-1], np.nan_to_num(acc), width=width, align="edge", color="tab:blue",
               edgecolor="white", label="accuracy")  # fmt: skip
        gap = np.nan_to_num(conf - acc)
        ax.bar(edges[:-1], gap, bottom=np.nan_to_num(acc), width=width, align="edge",
               color="tab:red", alpha=0.3, label="gap to confidence")  # fmt: skip
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-1 probability)",
               title=f"{title}\nECE {100 * rel['ece']:.2f}%")  # fmt: skip
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(fontsize=8, loc="upper left")
    return _save(fig, path)
