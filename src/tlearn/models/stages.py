"""Which modules of a backbone end its stages: their pooled outputs join the final features.

A frozen ImageNet network's last features are specialised to ImageNet's objects; its middle
stages hold shapes and textures that transfer further. Pooling every stage's output and joining
them ("stage features") gave a head on frozen Lite0 features of Fashion-MNIST (64 px) 92.2% test
accuracy, against 89.3% on the final features alone (3 seeds each, the same head); the timm
`feature_info` levels (one per resolution, 5 of Lite0's 7 stages) gave 91.5%.
"""

from __future__ import annotations

from torch import nn

# Containers whose children are the stages, in the libraries' own names: timm's EfficientNet,
# MobileNet and ViT families (`blocks`), its ConvNeXt, RegNet and others (`stages`); torchvision's
# sequential trunks (`features`: EfficientNet, MobileNet, VGG, DenseNet, ConvNeXt), MNASNet
# (`layers`); ResNets in both libraries (`layer1`..`layer4`, below).
_CONTAINERS = ("blocks", "stages", "features", "layers")
# Stage outputs in channels-last layout: pooling their dims 2 and 3 would mix channels.
_CHANNELS_LAST_FAMILIES = ("SwinTransformer", "Hiera", "MambaOut")


def stage_taps(body: nn.Module) -> list[str]:
    """Module names, input to output, whose outputs are a backbone's stages ([] if unknown).

    The last stage is left out where the final features are its own pooled output (ResNets,
    torchvision's `features` trunks): joining it twice would add nothing. Children without
    parameters (a ReLU or pooling between VGG's convolutions) are not stages.
    """
    if any(f in type(body).__name__ for f in _CHANNELS_LAST_FAMILIES):
        return []
    if all(hasattr(body, f"layer{i}") for i in range(1, 5)):
        return ["layer1", "layer2", "layer3"]
    for name in _CONTAINERS:
        container = getattr(body, name, None)
        if isinstance(container, (nn.Sequential, nn.ModuleList)) and len(container) > 1:
            children = [
                f"{name}.{child}"
                for child, module in container.named_children()
                if next(module.parameters(), None) is not None
            ]
            return children[:-1] if name == "features" else children
    return []
