"""Ensembles of trained models: their class probabilities averaged, saved as one model file.

An ensemble file is an ordinary tlearn model file (member tensors under ``members.<i>.``, member
specs and weights in the metadata), and its classifier returns the log of the averaged
probabilities: argmax, cross-entropy and softmax downstream (evaluate, predict, export) then mean
exactly what they mean for a single model, with no special case anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tlearn.api import Model, load
from tlearn.checkpoint import ModelSpec, resolve_model_path
from tlearn.data import image_loader, load_train_splits
from tlearn.errors import TlearnError
from tlearn.models.ensemble import MIN_PROBABILITY, EnsembleClassifier, parse_weights
from tlearn.training import loop
from tlearn.training.runtime import (
    autocast_factory,
    inference_batch_size,
    pick_device,
    pick_precision,
)

__all__ = [
    "EnsembleClassifier",
    "build_ensemble",
    "ensemble",
    "fit_weights_to",
    "member_probabilities_on",
    "parse_weights",
]


# ---------------------------------------------------------------- weights


def fit_weights_to(probabilities: Tensor, labels: Tensor, steps: int = 300) -> list[float]:
    """Weights on the simplex maximising the validation log-likelihood of the mixture.

    The log of a weighted mean of probabilities is concave in the weights, so plain gradient
    steps on softmax-parametrised weights reach the optimum; `probabilities` is [N, M, C].
    """
    picked = probabilities[torch.arange(len(labels)), :, labels].double()  # [N, M]
    logits = torch.zeros(picked.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.1)
    for _ in range(steps):
        optimizer.zero_grad()
        mixture = picked @ logits.softmax(0)
        loss = -mixture.clamp_min(MIN_PROBABILITY).log().mean()
        loss.backward()
        optimizer.step()
    return [round(v, 6) for v in logits.detach().softmax(0).tolist()]


# ---------------------------------------------------------------- building


def _member_record(spec: ModelSpec, source: str) -> dict[str, Any]:
    record = asdict(spec)
    record.pop("ensemble")
    record["source"] = source
    return record


def build_ensemble(
    models: Sequence[Model],
    weights: str | Sequence[float] | None,
    sources: Sequence[str],
) -> Model:
    """One Model over trained members that share their class list (same names, same order)."""
    if len(models) < 2:
        raise TlearnError("an ensemble needs at least two models: pass two or more run folders")
    first = models[0].classes
    for model, source in zip(models[1:], sources[1:], strict=True):
        if model.spec.ensemble:
            raise TlearnError(f"{source} is already an ensemble: list its member runs instead")
        if model.classes != first:
            same_set = sorted(model.classes) == sorted(first)
            raise TlearnError(
                f"{source} has "
                + ("its classes in another order" if same_set else "other classes")
                + f" than {sources[0]} ({model.classes[:4]}... vs {first[:4]}...): ensemble "
                "only models trained on the same classes"
            )
    if models[0].spec.ensemble:
        raise TlearnError(f"{sources[0]} is already an ensemble: list its member runs instead")
    weights = parse_weights(weights, len(models))
    members = [_member_record(m.spec, s) for m, s in zip(models, sources, strict=True)]
    spec = ModelSpec(
        classes=list(first),
        backbones=[{**b, "member": i} for i, m in enumerate(models) for b in m.spec.backbones],
        head={"kind": "ensemble", "members": len(models)},
        fusion="ensemble",
        config={"ensemble_of": list(sources), "weights": weights},
        ensemble={"weights": weights, "members": members},
    )
    classifier = EnsembleClassifier([m.classifier for m in models], weights)
    return Model(classifier.eval(), spec)


# ---------------------------------------------------------------- fitting


def member_probabilities_on(
    model: Model,
    data: str,
    *,
    data_root: str | None = None,
    eval_limit: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Each member's probabilities [N, M, C] and the labels on data's validation split.

    The split is drawn with the first member's `val_split` and `seed`, i.e. the images that run
    held out from training, so fitted weights are not chosen on images the members learnt.
    """
    assert isinstance(model.classifier, EnsembleClassifier)
    config = model.spec.ensemble["members"][0].get("config", {})
    splits = load_train_splits(
        data,
        data_root=data_root,
        val_split=float(config.get("val_split", 0.1)) or 0.1,
        seed=int(config.get("seed", 0)),
        eval_limit=eval_limit,
    )
    if splits.val is None or len(splits.val) == 0:
        raise TlearnError(f"{data} has no validation images to fit weights on: pass another DATA")
    if list(splits.classes) != model.classes:
        raise TlearnError(
            f"the classes of {data} differ from the models' classes: fit on the data they learnt"
        )
    members = len(model.classifier.members)
    classes = len(model.classes)

    class _Flat(nn.Module):
        def __init__(self, inner: EnsembleClassifier) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.inner.member_probabilities(x).flatten(1)

    dev = pick_device(device)
    autocast = autocast_factory(dev, pick_precision(dev, "auto"))
    batch_size = inference_batch_size(dev, model.input_preprocessing.input_size, batch_size)
    loader = image_loader(
        splits.val, model.input_preprocessing, train=False, batch_size=batch_size, workers=workers
    )
    pred = loop.predict_all(_Flat(model.classifier).to(dev), loader, dev, autocast, "fit weights")
    model.classifier.cpu()
    if len(pred.labels) == 0:
        raise TlearnError(f"no validation image of {data} could be decoded: check the files")
    return pred.logits.view(-1, members, classes), pred.labels


def ensemble(
    models: Sequence[str | Path],
    *,
    out: str | Path | None = None,
    weights: str | Sequence[float] | None = None,
    fit_weights: str | None = None,
    data_root: str | None = None,
    eval_limit: int | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    workers: int | None = None,
    log=print,
) -> Model:
    """Average trained models (run folders or model files); `fit_weights=DATA` picks the weights.

    With `fit_weights`, the weights maximise the log-likelihood on DATA's validation split;
    `weights` and `fit_weights` together are refused (which one should win is not clear).
    """
    if weights is not None and fit_weights is not None:
        raise TlearnError("give --weights or --fit-weights, not both")
    sources = [str(resolve_model_path(m)) for m in models]
    loaded = [load(m) for m in models]
    result = build_ensemble(loaded, weights, sources)
    if fit_weights is not None:
        probabilities, labels = member_probabilities_on(
            result,
            fit_weights,
            data_root=data_root,
            eval_limit=eval_limit,
            batch_size=batch_size,
            device=device,
            workers=workers,
        )
        fitted = fit_weights_to(probabilities, labels)
        for name, w in zip(sources, fitted, strict=True):
            accuracy = (probabilities[:, sources.index(name)].argmax(1) == labels).float().mean()
            log(f"{name}: weight {w:.3f} (alone {accuracy.item():.4f} on {len(labels)} val images)")
        mixed = (probabilities * torch.tensor(fitted).view(1, -1, 1)).sum(1)
        log(f"ensemble: {(mixed.argmax(1) == labels).float().mean().item():.4f} on the same images")
        result = build_ensemble(loaded, fitted, sources)
        result.spec.config["fit_weights"] = fit_weights
    if out is not None:
        result.save(out)
    return result
