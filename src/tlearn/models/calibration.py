"""Temperature scaling (Guo et al. 2017): one number that makes a classifier's confidence honest.

A network trained with cross-entropy is usually over-confident on new images. Dividing its logits
by one temperature T, fitted on held-out images by minimising their negative log-likelihood,
fixes most of that without changing a single prediction (the argmax is the same for any T > 0).
The fit is a pure function of logits and labels, so training and reports share it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tlearn.models.classifier import Classifier

# T is searched as exp(log T) in this box: beyond it a fit is a sign of a broken set, not a model
LOG_T_RANGE = (math.log(0.05), math.log(20.0))


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The T > 0 minimising the NLL of `softmax(logits / T)`; 1.0 when there is nothing to fit.

    LBFGS on log T keeps T positive and the problem smooth (the NLL is convex in 1/T).
    """
    logits = logits.detach().double().cpu().clone()  # inference-mode tensors cannot join autograd
    labels = labels.detach().long().cpu().clone()
    if len(labels) < 2 or logits.shape[1] < 2 or not torch.isfinite(logits).all():
        return 1.0
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    value = float(log_t.detach().clamp(*LOG_T_RANGE).exp())
    before = torch.nn.functional.cross_entropy(logits, labels).item()
    after = torch.nn.functional.cross_entropy(logits / value, labels).item()
    return value if math.isfinite(value) and after <= before else 1.0


@dataclass
class Reliability:
    """Confidence bins of a set of predictions: what a reliability diagram draws."""

    edges: list[float]  # bins + 1 edges over [0, 1]
    confidence: list[float | None]  # mean top-1 probability per bin (None: an empty bin)
    accuracy: list[float | None]  # share of correct top-1 predictions per bin
    counts: list[int]
    ece: float  # expected calibration error: the count-weighted |accuracy - confidence|

    def to_dict(self) -> dict:
        return {
            "edges": self.edges,
            "confidence": self.confidence,
            "accuracy": self.accuracy,
            "counts": self.counts,
            "ece": self.ece,
        }


def reliability(probabilities: Tensor, labels: Tensor, bins: int = 15) -> Reliability:
    """Bin top-1 confidences in `bins` equal-width bins (the usual 15 of Guo et al.)."""
    probabilities, labels = probabilities.detach().double().cpu(), labels.long().cpu()
    confidence, predicted = probabilities.max(1)
    correct = (predicted == labels).double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    which = torch.bucketize(confidence, edges[1:-1])  # bins (lo, hi]; a 0 goes to the first
    counts = torch.bincount(which, minlength=bins)
    conf_sum = torch.bincount(which, weights=confidence, minlength=bins)
    acc_sum = torch.bincount(which, weights=correct, minlength=bins)
    n = max(1, len(labels))
    ece = float(((conf_sum - acc_sum).abs()).sum() / n)
    mean = lambda s, c: None if c == 0 else round(float(s) / int(c), 6)  # noqa: E731
    return Reliability(
        edges=[round(float(e), 6) for e in edges],
        confidence=[mean(s, c) for s, c in zip(conf_sum, counts, strict=True)],
        accuracy=[mean(s, c) for s, c in zip(acc_sum, counts, strict=True)],
        counts=[int(c) for c in counts],
        ece=round(ece, 6),
    )


def expected_calibration_error(logits: Tensor, labels: Tensor, temperature: float = 1.0) -> float:
    return reliability((logits.double() / temperature).softmax(1), labels).ece


def calibration_record(logits: Tensor, labels: Tensor, images_of: str = "val") -> dict:
    """Fit T on these logits; what a model file keeps: T, and ECE and NLL before and after."""
    t = fit_temperature(logits, labels)
    logits, labels = logits.double(), labels.long()
    nll = torch.nn.functional.cross_entropy
    return {
        "temperature": round(t, 6),
        "fitted_on": images_of,
        "images": len(labels),
        "ece_before": expected_calibration_error(logits, labels),
        "ece_after": expected_calibration_error(logits, labels, t),
        "nll_before": round(nll(logits, labels).item(), 6),
        "nll_after": round(nll(logits / t, labels).item(), 6),
    }


def fitted_on_text(fitted_on: str) -> str:
    """What a record's `fitted_on` names, in words: "val", "oof" (out-of-fold training rows of
    a solved probe) or both."""
    return {
        "val": "validation images",
        "oof": "training images held out fold by fold",
        "val+oof": "validation and out-of-fold training images",
    }.get(fitted_on, f"{fitted_on} images")


@contextmanager
def temperature_off(module: nn.Module, off: bool = True) -> Iterator[nn.Module]:
    """Raw logits from every classifier inside `module` (an ensemble's members too), for a while.

    `--no-calibration`, and reports that draw the probabilities before and after scaling.
    """
    classifiers = [m for m in module.modules() if isinstance(m, Classifier)] if off else []
    saved = [c.temperature for c in classifiers]
    for c in classifiers:
        c.temperature = 1.0
    try:
        yield module
    finally:
        for c, t in zip(classifiers, saved, strict=True):
            c.temperature = t
