"""Test-time augmentation: average the class probabilities of several views of each image.

The views: the whole image at the input size, and the five crops (four corners and the centre) of
the image resized 1.15x larger, i.e. the same square zoomed in a little and shifted, each also
mirrored: 12 forward passes an image (6 for a model trained with `--no-hflip`, whose classes a
mirror could change). A model trained with random resized crops and flips has seen such views;
averaging them smooths the errors of any single one (the ten-crop evaluation of AlexNet and
ResNet, here with the full view added).

The wrapped model returns the log of the averaged probabilities, so code that takes logits
(argmax, softmax, cross entropy) reads TTA output unchanged: softmax(log p) = p when p sums to 1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from tlearn.preprocessing import Preprocessing

ZOOM = 1.15  # the crops come from the image resized this much larger (ten-crop's 256/224)


def tta_size(size: int) -> int:
    return math.ceil(size * ZOOM)


class TTAClassifier(nn.Module):
    """`[B, 3, L, L]` images in [0, 1] (L = `tta_size(size)`) -> log of mean probabilities."""

    def __init__(self, classifier: nn.Module, size: int, *, flips: bool = True):
        super().__init__()
        self.classifier = classifier
        self.size = int(size)
        self.flips = flips

    @property
    def num_views(self) -> int:
        return 6 * (2 if self.flips else 1)

    def views(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        s = self.size
        whole = TF.resize(x, [s, s], antialias=True) if x.shape[-1] != s else x
        for view in (whole, *TF.five_crop(x, [s, s])):
            yield view
            if self.flips:
                yield view.flip(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for view in self.views(x):
            view = view.contiguous(memory_format=torch.channels_last)
            p = self.classifier(view).float().softmax(dim=1)
            total = p if total is None else total + p
        assert total is not None
        return (total / self.num_views).clamp_min(1e-12).log()


def with_tta(
    classifier: nn.Module, pre: Preprocessing, *, flips: bool = True
) -> tuple[TTAClassifier, Preprocessing]:
    """The TTA model and the preprocessing its input needs (the same, at the larger size)."""
    model = TTAClassifier(classifier, pre.input_size, flips=flips).eval()
    return model, pre.with_size(tta_size(pre.input_size))


def flips_allowed(spec_config: dict | None) -> bool:
    """A model trained with `--no-hflip` learnt classes a mirror can change: no flipped views."""
    return bool((spec_config or {}).get("hflip", True))
