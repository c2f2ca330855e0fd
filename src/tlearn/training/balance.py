"""`--balance`: class weights from inverse frequency, for the loss or for drawing images.

A class with a tenth of the images gets ten times the weight, normalised so the average image
weighs 1 (the loss keeps its scale, so the learning rate still fits). With `sampler`, each epoch
draws as many images as the training set holds, with replacement, each with its class's weight:
every class is seen about equally often. A class absent from the training data weighs 0.
"""

from __future__ import annotations

import numpy as np
import torch

from tlearn.data.sampling import draw_order

__all__ = ["class_weights", "draw_order", "per_class_recall", "sample_weights"]


def class_weights(targets: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    counts = torch.bincount(t, minlength=n_classes).double()
    weights = torch.where(counts > 0, len(t) / (n_classes * counts.clamp(min=1)), 0.0)
    present = int((counts > 0).sum())
    weights *= n_classes / max(1, present)  # absent classes do not dilute the mean
    return weights.float()


def sample_weights(targets: np.ndarray | torch.Tensor, n_classes: int) -> torch.Tensor:
    """One weight per image: its class's weight."""
    t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    return class_weights(t, n_classes)[t]


def per_class_recall(
    logits: torch.Tensor, labels: torch.Tensor, n_classes: int
) -> list[float | None]:
    """Recall of each class on a prediction set (None for a class with no examples there)."""
    pred = logits.argmax(1)
    out: list[float | None] = []
    for c in range(n_classes):
        mask = labels == c
        total = int(mask.sum())
        out.append(None if total == 0 else float((pred[mask] == c).sum()) / total)
    return out
