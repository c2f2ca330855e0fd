"""The most confident wrong predictions, each with its image and a Grad-CAM heat map."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from tlearn.data import build_transform
from tlearn.errors import TlearnError
from tlearn.report.gradcam import grad_cam, overlay

THUMB = 160  # pixels of a gallery picture's longer side


def most_confident_mistakes(logits: torch.Tensor, labels: torch.Tensor, k: int) -> list[int]:
    """Row numbers of the k wrong predictions with the highest top-1 probability."""
    probabilities = logits.float().softmax(1)
    confidence, predicted = probabilities.max(1)
    wrong = (predicted != labels).nonzero().flatten()
    order = confidence[wrong].argsort(descending=True)
    return wrong[order][:k].tolist()


def _picture(array: np.ndarray) -> Image.Image:
    image = Image.fromarray(array)
    scale = THUMB / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = max(image.size) < THUMB  # tiny images (28 px) stay crisp rather than blurred
    return image.resize(size, Image.Resampling.NEAREST if small else Image.Resampling.LANCZOS)


def mistake_gallery(model: Any, pred: Any, source: Any, out: Path, k: int = 12) -> list[dict]:
    """Write mistake_NN.png (the image as the model saw it) and mistake_NN_cam.png; describe each.

    `pred` holds logits, labels and dataset indices (`loop.Predictions`); `source` the images.
    """
    rows = most_confident_mistakes(pred.logits, pred.labels, k)
    if not rows:
        return []
    pre = model.input_preprocessing
    transform = build_transform(pre, train=False)
    probabilities = pred.logits.float().softmax(1)
    images, items = [], []
    for n, row in enumerate(rows, 1):
        index = int(pred.indices[row])
        try:
            images.append(transform(source.load(index)))
        except (TlearnError, OSError):
            continue
        p = probabilities[row]
        items.append({
            "index": index,
            "image": source.describe(index),
            "true": model.classes[int(pred.labels[row])],
            "predicted": model.classes[int(p.argmax())],
            "probability": round(float(p.max()), 6),
            "true_probability": round(float(p[int(pred.labels[row])]), 6),
            "thumbnail": f"mistake_{n:02d}.png",
            "heatmap": None,
        })  # fmt: skip
    if not items:
        return []
    batch = torch.stack(images)
    for item, image in zip(items, batch, strict=True):
        array = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        _picture(array).save(out / item["thumbnail"])
    predicted = [model.classes.index(item["predicted"]) for item in items]
    try:
        maps = grad_cam(model.classifier, batch, predicted, pre.input_size)
    except (RuntimeError, TlearnError) as e:  # a network Grad-CAM cannot follow
        warnings.warn(f"no heat maps in the report: {e}", stacklevel=2)
        return items
    for item, image, heat in zip(items, batch, maps, strict=True):
        item["heatmap"] = item["thumbnail"].replace(".png", "_cam.png")
        _picture(overlay(image, heat)).save(out / item["heatmap"])
    return items
