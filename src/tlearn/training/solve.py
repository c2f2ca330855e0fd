"""A linear head on frozen features, solved full-batch: the standard linear-probe protocol.

SGD epochs count passes over the data, so 245 images got 3 optimizer steps while 60,000 got
700: the head was under-trained exactly where data is scarce. Multinomial logistic regression
on standardised features is convex; L-BFGS solves it to convergence whatever the data's size
(scikit-learn's LogisticRegression, and the linear probes of CLIP and DINO, do the same). Its
one free choice, the L2 strength, is taken on validation from a short grid, each fit warm
started from the stronger one before it, so the whole sweep on cached features is seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

# Mean cross-entropy + l2/2 * |W|^2. sklearn's C is 1/(l2 * n): for 1,000 to 50,000 images this
# spans its C from about 0.002 to 10,000, the range its LogisticRegressionCV searches.
L2_GRID = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
MAX_ITER = 100  # L-BFGS iterations per strength; warm starts need fewer
CV_FOLDS = 3  # without a validation set, the strength is chosen by k-fold on the training rows
CHOICE_FOLDS = 5  # folds of train + validation when the validation split is too small to choose


@dataclass
class ProbeFit:
    """A solved linear head: logits = ((x - mean) / scale) @ weight.T + bias."""

    weight: Tensor  # [C, F]
    bias: Tensor  # [C]
    mean: Tensor  # [F]
    scale: Tensor  # [F]
    l2: float
    train_loss: float
    val_accuracy: float | None = None
    val_loss: float | None = None
    # Every strength tried: {"l2", "val_accuracy", "val_loss"}, for the log and plan.json.
    tried: list[dict] = field(default_factory=list)

    def logits(self, x: Tensor) -> Tensor:
        return ((x.float() - self.mean) / self.scale) @ self.weight.T + self.bias

    def folded(self) -> tuple[Tensor, Tensor]:
        """The same map as one `nn.Linear` on raw features: (weight, bias)."""
        weight = self.weight / self.scale
        return weight, self.bias - weight @ self.mean


def standardisation(x: Tensor, eps: float = 1e-5) -> tuple[Tensor, Tensor]:
    """Per-feature mean and scale; `eps` as `nn.BatchNorm1d`'s, so a `FeatureNorm` holds it."""
    mean = x.mean(0)
    var = x.var(0, unbiased=False)
    return mean, torch.sqrt(var + eps)


def solve_logistic(
    z: Tensor,
    y: Tensor,
    num_classes: int,
    l2: float,
    init: tuple[Tensor, Tensor] | None = None,
    class_weight: Tensor | None = None,
    max_iter: int = MAX_ITER,
) -> tuple[Tensor, Tensor, float]:
    """Minimise mean cross-entropy + l2/2 |W|^2 on standardised `z`: (weight, bias, loss)."""
    if init is None:
        weight = torch.zeros(num_classes, z.shape[1])
        bias = torch.zeros(num_classes)
    else:
        weight, bias = (t.clone() for t in init)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight.T + bias, y, weight=class_weight)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
        loss = float(closure().detach())
    return weight.detach(), bias.detach(), loss


def score(logits: Tensor, y: Tensor) -> tuple[float, float]:
    """(accuracy, mean cross-entropy)."""
    accuracy = float((logits.argmax(1) == y).float().mean()) if len(y) else 0.0
    return accuracy, float(F.cross_entropy(logits, y)) if len(y) else math.inf


def fit_probe(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor | None,
    val_y: Tensor | None,
    num_classes: int,
    *,
    grid: Sequence[float] = L2_GRID,
    class_weight: Tensor | None = None,
    seed: int = 0,
) -> ProbeFit:
    """The best strength of `grid` on validation (k-fold on the training rows when there is
    none), then that strength's fit on all training rows."""
    train_x = train_x.float()
    mean, scale = standardisation(train_x)
    z = (train_x - mean) / scale
    if val_x is not None and val_y is not None and len(val_y):
        zv = (val_x.float() - mean) / scale
        tried, fits = _sweep(z, train_y, zv, val_y, num_classes, grid, class_weight)
        best = _best(tried)
        weight, bias, loss = fits[best]
    else:
        tried = cross_validate(
            train_x, train_y, num_classes, grid=grid, class_weight=class_weight, seed=seed,
            folds=CV_FOLDS,
        )  # fmt: skip
        best = _best(tried)
        weight, bias, loss = solve_logistic(
            z, train_y, num_classes, grid[best], class_weight=class_weight
        )
    return ProbeFit(
        weight, bias, mean, scale, grid[best], loss,
        tried[best]["val_accuracy"], tried[best]["val_loss"], tried,
    )  # fmt: skip


def _sweep(z, y, zv, yv, num_classes, grid, class_weight, stop_early=True):
    """Fits from the strongest strength to the weakest, each warm started from the last, until
    the validation loss has risen twice in a row (the weak end costs the most iterations)."""
    tried, fits, init = [], [], None
    for l2 in grid:
        weight, bias, loss = solve_logistic(z, y, num_classes, l2, init, class_weight)
        init = (weight, bias)
        accuracy, val_loss = score(zv @ weight.T + bias, yv)
        tried.append({"l2": l2, "val_accuracy": accuracy, "val_loss": val_loss})
        fits.append((weight, bias, loss))
        losses = [t["val_loss"] for t in tried[-3:]]
        if stop_early and len(losses) == 3 and losses[0] < losses[1] < losses[2]:
            break
    return tried, fits


def cross_validate(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    mirrors: tuple[Tensor, Tensor] | None = None,
    grid: Sequence[float] = L2_GRID,
    class_weight: Tensor | None = None,
    seed: int = 0,
    folds: int = CHOICE_FOLDS,
) -> list[dict]:
    """Each strength's accuracy and loss on images held out fold by fold, pooled over the folds.

    `mirrors` is (features, owner): extra training rows, each the mirror of image `owner`, which
    train only when their image does (a mirror beside its held-out image would leak its label).
    """
    rows = x.float() if mirrors is None else torch.cat([x.float(), mirrors[0].float()])
    mean, scale = standardisation(rows)
    z = (x.float() - mean) / scale
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    totals = [{"l2": l2, "val_accuracy": 0.0, "val_loss": 0.0} for l2 in grid]
    for held in order.chunk(min(folds, max(2, len(y)))):
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        zk, yk = z[keep], y[keep]
        if mirrors is not None:
            extra = keep[mirrors[1]]
            zk = torch.cat([zk, (mirrors[0][extra].float() - mean) / scale])
            yk = torch.cat([yk, y[mirrors[1][extra]]])
        tried, _ = _sweep(zk, yk, z[held], y[held], num_classes, grid, class_weight, False)
        for total, t in zip(totals, tried, strict=True):
            total["val_accuracy"] += t["val_accuracy"] * len(held) / len(y)
            total["val_loss"] += t["val_loss"] * len(held) / len(y)
    return totals


def best_strength(tried: list[dict]) -> dict:
    """The row of `tried` that `fit_probe` would choose."""
    return tried[_best(tried)]


def _best(tried: list[dict]) -> int:
    """The lowest validation loss (the first, strongest, of equals).

    Loss, not accuracy: on a validation set of a few hundred images the accuracies of
    neighbouring strengths differ by an image or two and are mostly tied, while the loss, a
    proper score, moves smoothly to a clear minimum.
    """
    return min(range(len(tried)), key=lambda i: tried[i]["val_loss"])


OOF_FOLDS = 5  # folds of the out-of-fold logits a solved probe's temperature is fitted on


def out_of_fold_logits(
    fit: ProbeFit,
    x: Tensor,
    y: Tensor,
    flipped: Tensor | None,
    num_classes: int,
    *,
    class_weight: Tensor | None = None,
    seed: int = 0,
    folds: int = OOF_FOLDS,
) -> Tensor:
    """Each training row's logits from a fit at `fit`'s strength that never saw it (or its mirror).

    The validation split chose the strength by its loss, which already sets the logits' scale,
    so a temperature fitted on it alone comes out near 1 and carries its few images' noise. The
    training rows are many more, and held out fold by fold they are as new to their fit as the
    validation images are. Each fold starts from `fit`'s solution, so it needs few iterations.
    """
    z = (x.float() - fit.mean) / fit.scale
    mirrored = (flipped.float() - fit.mean) / fit.scale if flipped is not None else None
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    logits = torch.zeros(len(y), num_classes)
    for held in order.chunk(min(folds, max(2, len(y)))):
        keep = torch.ones(len(y), dtype=torch.bool)
        keep[held] = False
        zk, yk = z[keep], y[keep]
        if mirrored is not None:
            zk, yk = torch.cat([zk, mirrored[keep]]), torch.cat([yk, yk])
        weight, bias, _ = solve_logistic(
            zk, yk, num_classes, fit.l2, init=(fit.weight, fit.bias), class_weight=class_weight
        )
        logits[held] = z[held] @ weight.T + bias
    return logits
