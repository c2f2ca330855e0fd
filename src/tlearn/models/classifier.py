"""Backbones, fusion and head as one module: what is trained, saved and exported."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from tlearn.errors import TlearnError
from tlearn.models.fusion import FUSIONS, ConcatFusion


class FusionHead(nn.Module):
    """Fusion then head: the part trained on cached features (it shares the classifier's modules).

    With ``concat`` this is the head alone; with ``sum``/``gated`` the projections and gate train
    too, so frozen-backbone runs still learn how to join the backbones.
    """

    def __init__(self, fusion: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.fusion = fusion
        self.head = head

    def forward(self, features: Tensor) -> Tensor:
        return self.head(self.fusion(features))


class Classifier(nn.Module):
    """Image(s) -> logits. With several backbones each gets its own preprocessing of the image.

    Parameter names are ``backbones.<i>.<library name>``, ``fusion.<...>`` (only ``sum``/``gated``
    have any) and ``head.<...>``, so a saved classifier maps back onto the libraries' own models.

    ``temperature`` divides the logits (fitted after training, `tlearn.models.calibration`): a
    plain attribute, not a tensor, so model files of any age load and an export bakes it in.
    """

    temperature: float = 1.0

    def __init__(
        self,
        backbones: Sequence[nn.Module],
        head: nn.Module,
        fusion: str | nn.Module = "concat",
    ):
        super().__init__()
        if not backbones:
            raise TlearnError("a classifier needs at least one backbone: pass --backbone NAME")
        if isinstance(fusion, str):
            if fusion not in FUSIONS:
                raise TlearnError(f"unknown fusion '{fusion}': pass one of {', '.join(FUSIONS)}")
            if fusion != "concat":  # the others need the backbones' widths: build_fusion knows
                raise ValueError(f"pass a module from build_fusion('{fusion}', widths)")
            fusion = ConcatFusion(())
        self.backbones = nn.ModuleList(backbones)
        self.fusion = fusion
        self.head = head

    @property
    def fusion_kind(self) -> str:
        return {"ConcatFusion": "concat", "SumFusion": "sum", "GatedFusion": "gated"}.get(
            type(self.fusion).__name__, type(self.fusion).__name__
        )

    def forward_features(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """Pooled backbone features concatenated in backbone order [B, sum of widths].

        This is the frozen part (what the feature cache stores); fusion and head come after it.
        One input tensor per backbone, or one for all (each backbone resizes and normalises it).
        """
        if isinstance(x, Tensor):
            inputs: Sequence[Tensor] = [x] * len(self.backbones)
        else:
            inputs = list(x)
            if len(inputs) != len(self.backbones):
                raise ValueError(f"{len(inputs)} input tensors for {len(self.backbones)} backbones")
        feats = [torch.flatten(b(t), 1) for b, t in zip(self.backbones, inputs, strict=True)]
        return feats[0] if len(feats) == 1 else torch.cat(feats, dim=1)

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits from `forward_features`' output."""
        return self.head(self.fusion(features))

    def top(self) -> FusionHead:
        """Fusion and head as one module, for training on cached features."""
        return FusionHead(self.fusion, self.head)

    def forward(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        logits = self.forward_head(self.forward_features(x))
        if self.temperature == 1.0:
            return logits
        # in fp32: dividing bf16 logits rounds near-equal ones into ties and moves the argmax
        # (the demo's Shirt recall changed by one image), and a temperature must not
        return logits.float() / self.temperature
