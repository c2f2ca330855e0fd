"""Options that make a training run take a second: one place, which each test file extends.

BASE: no weights file, 32 px images, no loader processes. TINY adds a tiny timm ResNet, four
images a step and no feature cache; RESNET18 is the real architecture (random weights) where a
test needs torchvision's layer names or real stage shapes.
"""

from __future__ import annotations


def quiet(line: str) -> None:
    """A run's log, dropped."""


BASE = dict(weights="none", image_size=32, workers=0)
TINY = dict(BASE, backbone="test_resnet", batch_size=4, val_split=0.25, log=quiet, cache=False)
RESNET18 = dict(BASE, backbone="resnet18", batch_size=8)
