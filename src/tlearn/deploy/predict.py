"""Top-k predictions for image files: the same preprocessing the model was trained with."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlearn.config import check_batch_size
from tlearn.data import build_transform, find_images, open_image
from tlearn.deploy.tta import model_tta
from tlearn.errors import TlearnError
from tlearn.models.fold import example_images, fold_checked


@dataclass
class Prediction:
    """Top-k labels of one image, most likely first."""

    path: str
    labels: list[str]
    probabilities: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "labels": self.labels, "probabilities": self.probabilities}


def predict_paths(
    model: Any, paths: list[str | Path], topk: int = 5, batch_size: int = 64, *, tta: bool = False
) -> list[Prediction]:
    """Top-k labels for image files and folders; `model` is a `tlearn.Model` (or its like)."""
    if topk < 1:
        raise TlearnError(f"--topk {topk} must be at least 1")
    batch_size = check_batch_size(batch_size)
    files = find_images(paths)
    pre, classifier = model.input_preprocessing, model.classifier.eval()
    if tta:  # the model then returns log-probabilities: the softmax below gives them back
        classifier, pre = model_tta(classifier, pre, model.spec.config)
    classifier = fold_checked(classifier, example_images(pre.input_size))
    transform = build_transform(pre, train=False)
    k = min(topk, len(model.classes))
    results: list[Prediction] = []
    for start in range(0, len(files), batch_size):
        tensors, kept = [], []
        for path in files[start : start + batch_size]:
            try:
                tensors.append(transform(open_image(path)))
                kept.append(path)
            except TlearnError as e:
                print(f"warning: skipped {e}", file=sys.stderr)
        if not tensors:
            continue
        with torch.inference_mode():
            batch = torch.stack(tensors).contiguous(memory_format=torch.channels_last)
            probabilities = classifier(batch).float().softmax(1)
        top = probabilities.topk(k, dim=1)
        for path, values, indices in zip(kept, top.values, top.indices, strict=True):
            results.append(
                Prediction(
                    path=str(path),
                    labels=[model.classes[i] for i in indices.tolist()],
                    probabilities=[round(v, 6) for v in values.tolist()],
                )
            )
    if not results:
        raise TlearnError("none of the given images could be decoded: check the files")
    return results
