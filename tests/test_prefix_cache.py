"""Frozen first stages computed once: the split is exact, and training on it is training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tlearn
from fast import BASE
from tlearn.config import TrainConfig
from tlearn.models import create_backbone
from tlearn.models.prefix import frozen_prefix
from tlearn.training.build import build_classifier
from tlearn.training.prefix_cache import PrefixExtractor
from tlearn.training.strategies import freeze_batchnorm_of_frozen

FAST = dict(BASE, batch_size=4, epochs=1)


def prefix_names(body: nn.Module, n_frozen: int, stages, size: int) -> list[str] | None:
    frozen = {id(p) for stage in stages[:n_frozen] for p in stage}
    prefix = frozen_prefix(body, frozen, torch.rand(2, 3, size, size))
    if prefix is None:
        return None
    name_of = {id(m): n for n, m in body.named_modules()}
    return [name_of[id(m)] for m in prefix.modules()]


def test_lite0_prefix_is_its_stem_and_first_blocks():
    backbone = create_backbone("tf_efficientnet_lite0", "none", 64)
    names = prefix_names(backbone.module, 4, backbone.stages(), 64)
    assert names == ["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"]


def test_resnet_prefix_takes_the_weightless_modules_between_frozen_stages():
    backbone = create_backbone("resnet18", "none", 32)
    names = prefix_names(backbone.module, 2, backbone.stages(), 32)
    assert names is not None and names[0] == "conv1" and names[-1] == "layer1"
    assert "maxpool" in names  # between the stem and layer1: skipping it would be wrong


class ReusesItsInput(nn.Module):
    """A network whose later layers read the image again: no prefix can stand in for it."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 3, 3, padding=1)
        self.second = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x)) + x.mean()


def test_a_split_that_is_not_exact_is_refused():
    net = ReusesItsInput()
    frozen = {id(p) for p in net.first.parameters()}
    assert frozen_prefix(net, frozen, torch.rand(2, 3, 8, 8)) is None
    # and a frozen weight outside the leading modules cannot be stored either
    late = {id(p) for p in net.second.parameters()}
    assert frozen_prefix(net, late, torch.rand(2, 3, 8, 8)) is None


def test_training_on_stored_outputs_gives_the_same_gradients_as_on_images():
    torch.manual_seed(0)
    backbone = create_backbone("test_efficientnet", "none", 32)
    stages = backbone.stages()
    model = build_classifier([backbone], 3, TrainConfig(data="x", head="linear"))
    for stage in stages[:2]:
        for p in stage:
            p.requires_grad_(False)
    wrapped = model.backbones[0]
    frozen = {id(p) for stage in stages[:2] for p in stage}
    prefix = frozen_prefix(wrapped.body, frozen, wrapped.prepare(torch.rand(2, 3, 32, 32)))
    assert prefix is not None
    images, labels = torch.rand(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])

    def gradients(inputs: torch.Tensor) -> list[torch.Tensor]:
        model.zero_grad()
        model.train()
        freeze_batchnorm_of_frozen(model)
        nn.functional.cross_entropy(model(inputs), labels).backward()
        return [p.grad.clone() for p in model.parameters() if p.requires_grad]

    expected = gradients(images)
    with torch.no_grad():
        stored = PrefixExtractor(wrapped, prefix).eval()(images)
    wrapped.after_prefix = prefix
    try:
        got = gradients(stored)
        # a checkpoint taken meanwhile still holds every weight, the frozen ones included
        assert (
            model.state_dict().keys()
            == build_classifier(
                [create_backbone("test_efficientnet", "none", 32)], 3, TrainConfig(data="x")
            )
            .state_dict()
            .keys()
        )
    finally:
        wrapped.after_prefix = None
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("augment, stored", [("flip", True), ("light", False)])
def test_freeze_n_runs_store_the_frozen_stages_only_when_pixels_do_not_change(
    tmp_path, make_image_folder, augment, stored
):
    data = make_image_folder(n=6, size=(40, 40))
    lines: list[str] = []
    model = tlearn.train(
        str(data), backbone="test_efficientnet", strategy="freeze:2", augment=augment,
        out=str(tmp_path / "run"), log=lines.append, **FAST,
    )  # fmt: skip
    assert any("frozen stages computed once" in line for line in lines) is stored
    # the model file is the whole network: it predicts from images as the trained model does
    reloaded = tlearn.load(tmp_path / "run")
    images = sorted((data / "cat").glob("*.png"))[:3]
    ours, theirs = reloaded.predict(images), model.predict(images)
    assert [p.labels for p in ours] == [p.labels for p in theirs]
    torch.testing.assert_close(
        torch.tensor([p.probabilities for p in ours]),
        torch.tensor([p.probabilities for p in theirs]),
    )
