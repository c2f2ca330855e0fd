"""Assembling a classifier: from backbones for a run, or from a model file's spec. One place.

Training, the LR finder, the budget probe and `tlearn.load` all build their classifier here, so
a model file always rebuilds into the very network that was trained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tlearn.checkpoint import ModelSpec
from tlearn.errors import TlearnError
from tlearn.models.backbones import Backbone, create_backbone
from tlearn.models.classifier import Classifier
from tlearn.models.ensemble import EnsembleClassifier, parse_weights
from tlearn.models.fusion import build_fusion
from tlearn.models.heads import build_head
from tlearn.models.normalize import NormalizedBackbone
from tlearn.models.stages import stage_taps
from tlearn.preprocessing import Preprocessing


def stage_feature_taps(
    features: str, backbones: Sequence[Backbone], strategy: str
) -> list[list[str]]:
    """For each backbone, the stages whose pooled outputs join its features (`--features`).

    `auto` pools the stages when the backbone stays frozen (its last features are ImageNet's,
    its middle stages transfer further) and uses the last features when it trains.
    """
    wanted = features == "stages" or (features == "auto" and strategy == "linear-probe")
    taps = [stage_taps(b.module) if wanted else [] for b in backbones]
    missing = [b.name for b, t in zip(backbones, taps, strict=True) if not t]
    if features == "stages" and missing:
        raise TlearnError(
            f"--features stages: tlearn does not know the stages of {missing[0]}: "
            "pass --features last"
        )
    return taps


def build_classifier(
    backbones: Sequence[Backbone],
    num_classes: int,
    *,
    head: str = "linear",
    hidden: Sequence[int] = (256, 128),
    dropout: float = 0.0,
    fusion: str = "concat",
    taps: Sequence[Sequence[str]] | None = None,
) -> Classifier:
    """Backbones (each with its own normalisation and stage taps), fusion and a fresh head."""
    taps = taps or [[] for _ in backbones]
    wrapped = [
        NormalizedBackbone(b.module, b.preprocessing, t)
        for b, t in zip(backbones, taps, strict=True)
    ]
    widths = [feature_width(b, w) for b, w in zip(backbones, wrapped, strict=True)]
    joined = build_fusion(fusion, widths)
    top = build_head(
        head,
        joined.out_features,
        num_classes,
        hidden=tuple(hidden),
        dropout=dropout,
        input_norm=any(taps),
    )
    return Classifier(wrapped, top, joined)


def feature_width(backbone: Backbone, wrapped: NormalizedBackbone) -> int:
    return wrapped.feature_width() if wrapped.taps else backbone.num_features


def backbone_records(classifier: Classifier, backbones: Sequence[Backbone]) -> list[dict]:
    """What a model file says about each backbone: enough to rebuild it with no network."""
    return [
        {
            "name": b.name,
            "library": b.library,
            "weights_source": b.weights_source,
            "num_features": feature_width(b, w),
            "taps": list(w.taps),
            "preprocessing": b.preprocessing.to_dict(),
        }
        for b, w in zip(backbones, classifier.backbones, strict=True)
    ]


def build_from_spec(spec: ModelSpec) -> torch.nn.Module:
    """The untrained skeleton a model file describes, for its tensors to fill."""
    if spec.ensemble:  # members' classifiers under one averaging module
        return ensemble_from_spec(spec)
    backbones = []
    for record in spec.backbones:
        pre = Preprocessing.from_dict(record["preprocessing"])
        name = record["name"]
        qualified = name if "/" in name else f"{record['library']}/{name}"
        backbone = create_backbone(qualified, "none", pre.input_size)
        try:
            backbones.append(NormalizedBackbone(backbone.module, pre, record.get("taps", ())))
        except AttributeError as e:  # a tapped stage the network does not have
            raise TlearnError(
                f"the model file names stages {name} does not have ({e}): the file was altered "
                "or written by an incompatible tlearn, use another copy"
            ) from e
    fusion = build_fusion(spec.fusion, [int(b["num_features"]) for b in spec.backbones])
    head = build_head(
        spec.head["kind"],
        fusion.out_features,
        len(spec.classes),
        hidden=tuple(spec.head.get("hidden", (256, 128))),
        dropout=float(spec.head.get("dropout", 0.5)),
        input_norm=bool(spec.head.get("input_norm", False)),
    )
    classifier = Classifier(backbones, head, fusion).to(memory_format=torch.channels_last).eval()
    classifier.temperature = spec.temperature  # fitted after training; 1.0 in older files
    return classifier


def ensemble_from_spec(spec: ModelSpec) -> EnsembleClassifier:
    """The untrained skeleton of an ensemble file: each member's, under one averaging module."""
    try:
        records = spec.ensemble["members"]
        weights = parse_weights(spec.ensemble["weights"], len(records))
        member_specs = [ModelSpec(**{k: v for k, v in r.items() if k != "source"}) for r in records]
    except (KeyError, TypeError) as e:
        raise TlearnError(
            f"broken ensemble metadata ({e}): rebuild it with `tlearn ensemble`"
        ) from e
    return EnsembleClassifier([build_from_spec(s) for s in member_specs], weights).eval()
