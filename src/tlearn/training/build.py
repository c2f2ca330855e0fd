"""The classifier a run's options describe: `tlearn.models.assemble` fed from a TrainConfig."""

from __future__ import annotations

from collections.abc import Sequence

from tlearn.config import PLANNABLE_DEFAULTS, TrainConfig
from tlearn.models import Backbone, Classifier
from tlearn.models.assemble import build_classifier as assemble_classifier
from tlearn.models.assemble import stage_feature_taps


def feature_taps(cfg: TrainConfig, backbones: Sequence[Backbone], strategy: str) -> list[list[str]]:
    """For each backbone, the stages whose pooled outputs join its features (`--features`)."""
    return stage_feature_taps(cfg.features, backbones, strategy)


def build_classifier(
    backbones: Sequence[Backbone],
    num_classes: int,
    cfg: TrainConfig,
    taps: Sequence[Sequence[str]] | None = None,
) -> Classifier:
    """The network `fit`, the LR finder and the budget probe train for `cfg`."""
    return assemble_classifier(
        backbones,
        num_classes,
        head=cfg.head or PLANNABLE_DEFAULTS["head"],
        hidden=cfg.hidden_sizes,
        dropout=cfg.dropout,
        fusion=cfg.fusion,
        taps=taps,
    )
