"""When a run fine-tunes with its first stages frozen, compute their output once, not every epoch.

The frozen stages run at the network's highest resolution: on EfficientNet-Lite0 at 64 px the
first four stages (1.6% of the weights) are most of a training step's forward time. With no
augmentation but flips their output for an image, or its mirror, is the same every epoch, so a
run stores both once (in the run's inference precision: bf16 halves the memory) and trains the
rest of the network on them. It is the frozen-feature cache of `linear-probe`, one level down.

Used only where it is exact: one backbone, the same stages frozen for the whole run, no
augmentation that changes pixels, no progressive resizing, and a split `frozen_prefix` verified.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from tlearn.config import TrainConfig
from tlearn.data.decoded import default_memory_limit
from tlearn.models.normalize import NormalizedBackbone
from tlearn.models.prefix import Prefix, frozen_prefix
from tlearn.training.strategies import Phase


class PrefixExtractor(nn.Module):
    """[0, 1] images -> the output of a backbone's frozen first stages."""

    def __init__(self, backbone: NormalizedBackbone, prefix: Prefix) -> None:
        super().__init__()
        self.backbone = backbone
        self.prefix = prefix

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.prefix.run(self.backbone.prepare(images))


def frozen_stage_count(phases: list[Phase], n_stages: int) -> int:
    """Stages frozen in every phase of the run (0 when some phase trains them all)."""
    return min(n_stages - min(p.trainable_stages, n_stages) for p in phases) if phases else 0


def plan_prefix(
    cfg: TrainConfig,
    backbones: list[NormalizedBackbone],
    stages: list[list[list[nn.Parameter]]],
    phases: list[Phase],
    n_images: int,
    precision: str,
    log: Callable[[str], None],
) -> Prefix | None:
    """The prefix whose output this run can store, or None (and why, when it is close)."""
    if not may_store(cfg) or len(phases) != 1 or backbones[0].taps:
        return None
    n_frozen = frozen_stage_count(phases, len(stages[0]))
    if n_frozen == 0 or n_frozen >= len(stages[0]):
        return None
    backbone = backbones[0]
    frozen = {id(p) for stage in stages[0][:n_frozen] for p in stage}
    size = backbone.input_size
    example = torch.rand(2, 3, size, size, device=backbone.mean.device)
    prefix = frozen_prefix(backbone.body, frozen, backbone.prepare(example))
    if prefix is None:
        return None
    per_image = math.prod(prefix.output_shape)
    copies = 2 if flips(cfg) else 1
    need = per_image * copies * n_images * storage_dtype(precision).itemsize
    limit = cfg.memory_limit_bytes or default_memory_limit()
    if need > limit:
        log(
            f"the frozen stages' outputs ({need / 2**30:.1f} GiB) exceed the memory limit "
            f"({limit / 2**30:.1f} GiB, --memory-limit): they are recomputed every step"
        )
        return None
    return prefix


def may_store(cfg: TrainConfig) -> bool:
    """What the options allow: one backbone, pixels that stay the same every epoch (flips are
    stored with their mirrors), no progressive resizing, no compiling."""
    single = len(cfg.backbone) == 1
    return single and cfg.features_cacheable and not (cfg.progressive or cfg.compile)


def flips(cfg: TrainConfig) -> bool:
    return cfg.augment == "flip" and cfg.hflip


def storage_dtype(precision: str) -> torch.dtype:
    """bf16 runs store bf16 (what their inference computes anyway); others keep fp32."""
    return torch.bfloat16 if precision == "bf16" else torch.float32
