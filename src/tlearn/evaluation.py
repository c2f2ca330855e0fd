"""Metrics of a classifier on labelled data: accuracy, top-5, per-class P/R/F1, confusion matrix."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tlearn.models.calibration import reliability


@dataclass
class Report:
    """Everything `tlearn evaluate` prints; `to_dict()` is the `--json` output."""

    data: str
    images: int
    accuracy: float
    top5_accuracy: float | None
    loss: float
    classes: list[str]
    per_class: list[dict[str, Any]]  # class, precision, recall, f1, support
    confusion_matrix: list[list[int]]  # rows: true class, columns: predicted class
    skipped: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # {"macro": {precision, recall, f1}, "weighted": {...}}: per-class scores averaged
    averages: dict[str, dict[str, float]] = field(default_factory=dict)
    # the largest off-diagonal cells: [{"true", "predicted", "count"}], most first
    most_confused: list[dict[str, Any]] = field(default_factory=list)
    # temperature, whether it was applied, ECE and reliability bins before and after it
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def summary(self) -> str:
        lines = [f"{self.data}: {self.images} images"]
        if self.skipped:
            lines[0] += f" ({self.skipped} skipped: could not be decoded)"
        lines.append(f"accuracy   {self.accuracy:.4f}")
        if self.top5_accuracy is not None:
            lines.append(f"top-5      {self.top5_accuracy:.4f}")
        lines.append(f"loss       {self.loss:.4f}")
        for kind, avg in self.averages.items():
            lines.append(
                f"{kind:<9}  precision {avg['precision']:.4f}  recall {avg['recall']:.4f}  "
                f"f1 {avg['f1']:.4f}"
            )
        if self.calibration:
            c = self.calibration
            lines.append(
                f"calibration  temperature {c['temperature']:.3f}"
                f"{'' if c['applied'] else ' (not applied)'}  ECE {c['ece_before']:.4f} before, "
                f"{c['ece_after']:.4f} after"
            )
        width = max(len(c) for c in self.classes)
        lines.append("")
        lines.append(f"{'class':<{width}}  precision  recall  f1      support")
        for row in self.per_class:
            lines.append(
                f"{row['class']:<{width}}  {row['precision']:.4f}     {row['recall']:.4f}  "
                f"{row['f1']:.4f}  {row['support']}"
            )
        lines.append("")
        lines.append("confusion matrix (rows: true, columns: predicted)")
        cell = max(5, len(str(max(max(r) for r in self.confusion_matrix))) + 1)
        for name, counts in zip(self.classes, self.confusion_matrix, strict=True):
            lines.append(f"{name:<{width}} " + "".join(f"{c:>{cell}}" for c in counts))
        return "\n".join(lines)


def compute_report(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    data: str,
    skipped: int = 0,
    seconds: float = 0.0,
) -> Report:
    num_classes = len(classes)
    if len(labels) == 0:
        raise ValueError("no predictions to score")
    predicted = logits.argmax(1)
    confusion = torch.bincount(
        labels * num_classes + predicted, minlength=num_classes * num_classes
    ).reshape(num_classes, num_classes)
    true_positive = confusion.diag().double()
    support = confusion.sum(1).double()
    predicted_count = confusion.sum(0).double()
    precision = torch.where(predicted_count > 0, true_positive / predicted_count, 0.0)
    recall = torch.where(support > 0, true_positive / support, 0.0)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, 0.0)
    top5 = None
    if num_classes > 5:
        top = logits.topk(5, dim=1).indices
        top5 = (top == labels[:, None]).any(1).double().mean().item()
    weights = support / support.sum()
    scores = {"precision": precision, "recall": recall, "f1": f1}
    averages = {
        "macro": {k: round(v.mean().item(), 6) for k, v in scores.items()},
        "weighted": {k: round((v * weights).sum().item(), 6) for k, v in scores.items()},
    }
    return Report(
        data=data,
        images=len(labels),
        accuracy=(predicted == labels).double().mean().item(),
        top5_accuracy=top5,
        loss=torch.nn.functional.cross_entropy(logits.float(), labels).item(),
        classes=list(classes),
        per_class=[
            {
                "class": classes[i],
                "precision": round(precision[i].item(), 6),
                "recall": round(recall[i].item(), 6),
                "f1": round(f1[i].item(), 6),
                "support": int(support[i].item()),
            }
            for i in range(num_classes)
        ],
        confusion_matrix=confusion.tolist(),
        skipped=skipped,
        seconds=round(seconds, 3),
        averages=averages,
        most_confused=most_confused(confusion, classes),
    )


def most_confused(confusion: torch.Tensor, classes: list[str], k: int = 10) -> list[dict]:
    """The k largest off-diagonal cells: which true class is taken for which, how often."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().topk(min(k, off.numel()))
    n = len(classes)
    return [
        {"true": classes[i // n], "predicted": classes[i % n], "count": int(v)}
        for v, i in zip(values.tolist(), flat.tolist(), strict=True)
        if v > 0
    ]


def calibration_summary(raw_logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                        applied: bool) -> dict[str, Any]:  # fmt: skip
    """ECE and reliability bins of the raw logits and of the logits over the temperature."""
    before = reliability(raw_logits.double().softmax(1), labels)
    after = reliability((raw_logits.double() / temperature).softmax(1), labels)
    return {
        "temperature": temperature,
        "applied": applied,
        "ece_before": before.ece,
        "ece_after": after.ece,
        "reliability_before": before.to_dict(),
        "reliability_after": after.to_dict(),
    }
