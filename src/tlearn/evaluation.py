"""Metrics of a classifier on labelled data: accuracy, top-5, per-class P/R/F1, confusion matrix."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch


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
    )
