"""What trains, and when: the strategy decides which parameters the optimizer ever sees.

The article froze layers in words and then handed every parameter to SGD. Here the optimizer is
built only from parameters a phase trains (`requires_grad` is set to match), and frozen batch-norm
layers are kept in eval mode so their running statistics cannot drift either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tlearn.errors import TlearnError

GRADUAL_DEFAULT_DECAY = 0.7


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs during which the same top `trainable_stages` of each backbone train."""

    epochs: int
    trainable_stages: int  # counted from the top; 0 = head only
    # With fused backbones of different depths: the count for each backbone (None: the same).
    per_backbone: tuple[int, ...] | None = None


def plan_phases(strategy: str, epochs: int, num_stages: int) -> list[Phase]:
    """Split the epochs into phases; `num_stages`: the smallest stage count of the backbones."""
    kind, _, arg = strategy.partition(":")
    if kind == "linear-probe":
        return [Phase(epochs, 0)]
    if kind == "finetune":
        return [Phase(epochs, num_stages)]
    if kind == "freeze":
        frozen = int(arg)
        if frozen > num_stages:
            raise TlearnError(
                f"--strategy freeze:{frozen} freezes more stages than the backbone has "
                f"({num_stages}): use freeze:0 to freeze:{num_stages}"
            )
        return [Phase(epochs, num_stages - frozen)]
    if kind == "gradual":
        # fastai's fine_tune: the head alone first, then the backbone thawed from the top down,
        # reaching all stages halfway through the remaining epochs.
        if epochs == 1:
            return [Phase(1, 0)]
        rest = epochs - 1
        thaw_epochs = max(1, math.ceil(rest / 2))
        phases = [Phase(1, 0)]
        for j in range(1, rest + 1):
            stages = math.ceil(num_stages * min(1.0, j / thaw_epochs))
            if phases[-1].trainable_stages == stages:
                phases[-1] = Phase(phases[-1].epochs + 1, stages)
            else:
                phases.append(Phase(1, stages))
        return phases
    raise TlearnError(f"unknown strategy {strategy!r}")


def plan_backbone_phases(
    strategy: str, epochs: int, stage_counts: list[int], ending_at: int | None = None
) -> list[Phase]:
    """`plan_phases` for several backbones, each by its own depth; with `ending_at`, the last
    phase stretched or shrunk to end there.

    `finetune` trains every stage of every backbone, `freeze:N` freezes the first N stages of
    each, and `gradual` thaws each from the top at its own pace so all are thawed at the same
    epoch. The per-epoch counts are merged into phases where they do not change.

    A `--budget` refit changes only the last phase's length (`budget.keeper`): the thaw is
    planned from the epochs config.yaml holds, so a resumed run thaws at the same epochs.
    """
    phases = _backbone_phases(strategy, epochs, stage_counts)
    if ending_at is None or ending_at == epochs:
        return phases
    last = phases[-1]
    before = epochs - last.epochs
    if ending_at <= before:
        raise TlearnError(
            f"a run of {ending_at} epoch(s) ends before its last phase starts (epoch "
            f"{before + 1}): state.pt does not belong to config.yaml; start a new run"
        )
    return [*phases[:-1], Phase(ending_at - before, last.trainable_stages, last.per_backbone)]


def _backbone_phases(strategy: str, epochs: int, stage_counts: list[int]) -> list[Phase]:
    if len(set(stage_counts)) <= 1:
        return plan_phases(strategy, epochs, stage_counts[0] if stage_counts else 0)
    per_epoch = []
    for n in stage_counts:
        plan = plan_phases(strategy, epochs, n)
        per_epoch.append([p.trainable_stages for p in plan for _ in range(p.epochs)])
    phases: list[Phase] = []
    for counts in zip(*per_epoch, strict=True):
        if phases and phases[-1].per_backbone == counts:
            last = phases[-1]
            phases[-1] = Phase(last.epochs + 1, last.trainable_stages, counts)
        else:
            phases.append(Phase(1, max(counts), counts))
    return phases


def apply_phase(
    head: nn.Module,
    backbone_stages: list[list[list[nn.Parameter]]],
    phase: Phase,
    lr: float,
    lr_decay: float,
    weight_decay: float,
) -> list[dict]:
    """Set requires_grad for the phase and return the optimizer's parameter groups.

    Stage i from the top trains at `lr * lr_decay**(i+1)`: earlier layers hold more general
    features and move less (discriminative rates, as in ULMFiT/fastai).
    """
    groups: list[dict] = []
    groups += _decay_split(list(head.parameters()), lr, weight_decay)
    for which, stages in enumerate(backbone_stages):
        n = len(stages)
        limit = phase.per_backbone[which] if phase.per_backbone else phase.trainable_stages
        for index, params in enumerate(stages):
            depth_from_top = n - index  # 1 for the last stage
            trains = depth_from_top <= limit
            for p in params:
                p.requires_grad_(trains)
            if trains:
                groups += _decay_split(params, lr * lr_decay**depth_from_top, weight_decay)
    for p in head.parameters():
        p.requires_grad_(True)
    return [g for g in groups if g["params"]]


def freeze_batchnorm_of_frozen(model: nn.Module) -> None:
    """Put batch-norms whose affine parameters are frozen into eval mode (call after .train())."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            params = [p for p in m.parameters(recurse=False)]
            if not params or not any(p.requires_grad for p in params):
                m.eval()


def trainable_parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _decay_split(params: list[nn.Parameter], lr: float, weight_decay: float) -> list[dict]:
    """Biases and norm scales get no weight decay: shrinking them only hurts."""
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    return [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0.0},
    ]


def build_optimizer(groups: list[dict], name: str, momentum: float) -> torch.optim.Optimizer:
    """SGD or AdamW, with the fused kernel where every parameter allows it.

    On a CPU torch defaults to its per-tensor loop (no foreach there); the fused AdamW updates
    each tensor in one pass, which made a head's step on cached features 25% faster here.
    """
    fused = _fusable(groups)
    if name == "sgd":
        return torch.optim.SGD(
            groups, lr=groups[0]["lr"], momentum=momentum, nesterov=momentum > 0, fused=fused
        )
    return torch.optim.AdamW(groups, lr=groups[0]["lr"], fused=fused)


def _fusable(groups: list[dict]) -> bool | None:
    params = [p for g in groups for p in g["params"]]
    floats = (torch.float32, torch.float16, torch.bfloat16)
    ok = bool(params) and all(
        p.device.type in ("cpu", "cuda") and p.dtype in floats for p in params
    )
    return True if ok else None
