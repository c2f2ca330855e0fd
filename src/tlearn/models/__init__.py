"""Backbones (registry, weights), heads and the assembled classifier."""

from tlearn.models.backbones import CURATED, Backbone, create_backbone, list_backbones
from tlearn.models.classifier import Classifier, FusionHead
from tlearn.models.fusion import FUSIONS, build_fusion
from tlearn.models.heads import HEADS, build_head
from tlearn.models.registry import Resolved, resolve
from tlearn.models.weights import load_weights, read_state_dict, weights_available

__all__ = [
    "CURATED",
    "FUSIONS",
    "HEADS",
    "Backbone",
    "Classifier",
    "FusionHead",
    "Resolved",
    "build_fusion",
    "build_head",
    "create_backbone",
    "list_backbones",
    "load_weights",
    "read_state_dict",
    "resolve",
    "weights_available",
]
