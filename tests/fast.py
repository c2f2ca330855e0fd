"""Options that make a training run take a second: a tiny network, tiny images, no cache."""

from __future__ import annotations

# test_resnet: a tiny timm ResNet; 32 px; four images a step; no feature cache
TINY = dict(
    backbone="test_resnet", weights="none", image_size=32, workers=0, batch_size=4,
    val_split=0.25, log=lambda line: None, cache=False,
)  # fmt: skip
