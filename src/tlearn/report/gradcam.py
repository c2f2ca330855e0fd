"""Where the model looked: Grad-CAM heat maps on a backbone's last convolutional stage.

The maps come from the `grad-cam` package (pytorch_grad_cam, an optional dependency: the
`report` extra). tlearn only chooses the layer: the last module of the first backbone whose
output is still a spatial map, i.e. the end of its last convolutional stage, before pooling.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tlearn.errors import TlearnError
from tlearn.models.classifier import Classifier

_POOLING = ("Pool", "Flatten", "Identity", "Dropout")


def _grad_cam() -> Any:
    try:
        import pytorch_grad_cam
    except ImportError as e:
        raise TlearnError(
            "heat maps need the grad-cam package: pip install 'tlearn[report]'"
        ) from e
    return pytorch_grad_cam


def heatmaps_available() -> bool:
    try:
        _grad_cam()
    except TlearnError:
        return False
    return True


def target_layer(classifier: nn.Module, input_size: int) -> nn.Module:
    """The last module, in the order they finish, that outputs a [B, C, H, W] map (no pooling).

    A map of more than 1x1 is preferred: at small inputs a network's last stage can shrink to one
    pixel, which says nothing about where; then the latest larger map is used.
    """
    inner = next((m for m in classifier.modules() if isinstance(m, Classifier)), None)
    if inner is None:
        raise TlearnError("no tlearn classifier inside this model to draw a heat map for")
    backbone = inner.backbones[0]  # an ensemble's first member's, a fusion's first backbone
    body = getattr(backbone, "body", backbone)
    finished: list[tuple[nn.Module, tuple[int, ...]]] = []

    def record(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.dim() == 4:
            if not any(p in type(module).__name__ for p in _POOLING):
                finished.append((module, tuple(output.shape[2:])))

    handles = [m.register_forward_hook(record) for m in body.modules() if m is not body]
    try:
        with torch.no_grad():
            classifier(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
    if not finished:
        raise TlearnError(
            "this backbone has no convolutional stage to draw a heat map on (a transformer?)"
        )
    spatial = [m for m, (h, w) in finished if h * w > 1]
    return spatial[-1] if spatial else finished[-1][0]


def grad_cam(
    classifier: nn.Module, images: Tensor, classes: list[int], input_size: int | None = None
) -> np.ndarray:
    """[N, H, W] maps in [0, 1] for `classes[i]` of `images[i]` ([N, 3, H, W] in [0, 1])."""
    cam_lib = _grad_cam()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    classifier = classifier.float().eval()
    size = input_size or int(images.shape[-1])
    layer = target_layer(classifier, size)
    maps = []
    with cam_lib.GradCAM(model=classifier, target_layers=[layer]) as cam:
        for start in range(0, len(images), 16):
            batch = images[start : start + 16].float().contiguous()
            targets = [ClassifierOutputTarget(int(c)) for c in classes[start : start + 16]]
            maps.append(cam(input_tensor=batch, targets=targets))
    return np.concatenate(maps).astype(np.float32)


def overlay(image: Tensor | np.ndarray, heatmap: np.ndarray, weight: float = 0.5) -> np.ndarray:
    """An [H, W, 3] uint8 picture: the image under the jet-coloured map."""
    import matplotlib

    picture = image.permute(1, 2, 0).numpy() if isinstance(image, Tensor) else image
    picture = np.clip(picture.astype(np.float32), 0.0, 1.0)
    colours = matplotlib.colormaps["jet"](np.clip(heatmap, 0.0, 1.0))[..., :3]
    return (255 * (weight * picture + (1 - weight) * colours)).round().astype(np.uint8)
