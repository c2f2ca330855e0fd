"""Fold inference-mode batch norms into the convolutions before them.

In eval mode a batch norm is a fixed per-channel scale and shift: folded into the preceding
convolution's weights and bias, a whole pass over the activations disappears. That pass is
memory-bound, and on a CPU it is a large share of a small network's inference (ResNet-18 and
Lite0 at 64 px). The folded module is an inference copy only: model files keep the exact
weights.

Pairs are found without a per-family table: a `Conv2d` registered directly before a
`BatchNorm2d` of its width in the same parent, as timm and torchvision build their blocks. The
batch norm keeps its identity (stage taps and stored-prefix slots hold references to it): only
its `forward` becomes a pass-through (or, for timm's `BatchNormAct2d`, its activation). Whether
the network really feeds each such convolution into that batch norm is checked by the caller,
on one input, against the unfolded network (`fold_checked`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn


def _folded_forward(bn: nn.BatchNorm2d) -> Callable[[torch.Tensor], torch.Tensor]:
    """What is left of `bn` once its scale and shift live in the convolution."""
    drop, act = getattr(bn, "drop", None), getattr(bn, "act", None)
    if drop is None and act is None:
        return lambda x: x
    drop = drop if isinstance(drop, nn.Module) else nn.Identity()
    act = act if isinstance(act, nn.Module) else nn.Identity()
    return lambda x: act(drop(x))


def _fold_pair(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    factor = scale / torch.sqrt(bn.running_var + bn.eps)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    with torch.no_grad():
        conv.weight.mul_(factor.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
        new_bias = (bias - bn.running_mean) * factor + shift
        if conv.bias is None:
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=False)
        else:
            conv.bias.copy_(new_bias)
    bn.forward = _folded_forward(bn)  # type: ignore[method-assign]


def fold_batchnorms(module: nn.Module) -> int:
    """Fold each eval-mode batch norm into the convolution registered just before it, in place.

    Returns how many were folded. Only batch norms with running statistics qualify: without
    them the norm depends on the batch and is not a fixed affine map.
    """
    pairs = []
    for parent in module.modules():
        children = list(parent.children())
        for conv, bn in zip(children, children[1:], strict=False):
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.running_mean is not None
                and bn.running_var is not None
                and bn.num_features == conv.out_channels
            ):
                pairs.append((conv, bn))
    for conv, bn in pairs:
        _fold_pair(conv, bn)
    return len(pairs)


def example_images(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Two random images to check a fold on, drawn from a generator of their own: checking must
    not move a run's random stream."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, size, size, generator=generator).to(device)


def fold_checked(module: nn.Module, example: torch.Tensor, tolerance: float = 1e-3) -> nn.Module:
    """A folded copy of eval-mode `module`, or `module` itself when folding changes its output.

    `example` is one small input of the module's own kind (fp32). The comparison is relative to
    the output's scale, in fp32, before any cast to lower precision.
    """
    if module.training:
        return module
    folded = copy.deepcopy(module)
    if fold_batchnorms(folded) == 0:
        return module
    try:
        with torch.inference_mode():
            want, got = module(example), folded(example)
    except (RuntimeError, ValueError):  # not an input this module takes: leave it as it is
        return module
    return folded if outputs_agree(want, got, tolerance) else module


def outputs_agree(want: object, got: object, tolerance: float) -> bool:
    """Two inference copies' outputs on one input agree: tensors of one shape whose largest
    difference is within `tolerance` of the output's own scale. Rounding in another order passes;
    a mis-folded or mis-laid-out weight is off by that whole scale."""
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        return False
    if want.shape != got.shape:
        return False
    scale = want.float().abs().max().clamp_min(1e-6)
    return bool(((want.float() - got.float()).abs().max() / scale) <= tolerance)
