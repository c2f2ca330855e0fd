"""Batch norms folded into convolutions for inference: the same outputs, fewer passes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tlearn.models import create_backbone
from tlearn.models.fold import fold_batchnorms, fold_checked
from tlearn.training.runtime import inference_module


def trained_statistics(module: nn.Module) -> nn.Module:
    """Batch norms with non-trivial statistics and affine terms, as pretrained ones have."""
    torch.manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return module.eval()


@pytest.mark.parametrize("name", ["resnet18", "tf_efficientnet_lite0"])
def test_folding_keeps_the_outputs_and_leaves_the_model_alone(name):
    model = trained_statistics(create_backbone(name, "none", 64).module)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    folded = fold_checked(model, x)
    assert folded is not model
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # timm's BatchNormAct2d keeps its activation: Lite0's ReLU6 still clips
    assert fold_batchnorms(trained_statistics(create_backbone(name, "none", 64).module)) > 10


class AddsBeforeNorm(nn.Module):
    """Registers conv then bn, but normalises the sum with the input: not a foldable pair."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x) + x)


def test_a_pair_the_network_does_not_chain_is_left_unfolded():
    model = trained_statistics(AddsBeforeNorm())
    x = torch.rand(2, 4, 8, 8)
    assert fold_checked(model, x) is model
    assert fold_checked(model.train(), x) is model  # training batch norms are not fixed maps


def test_inference_module_folds_when_given_an_example():
    model = trained_statistics(create_backbone("resnet18", "none", 64).module)
    x = torch.rand(2, 3, 64, 64)
    runner, dtype, autocast = inference_module(model, torch.device("cpu"), "fp32", 64)
    assert sum(isinstance(m, nn.BatchNorm2d) and "forward" in vars(m) for m in runner.modules())
    with torch.inference_mode(), autocast():
        torch.testing.assert_close(runner(x.to(dtype)), model(x), rtol=1e-4, atol=1e-4)
    plain, _, _ = inference_module(model, torch.device("cpu"), "fp32")
    assert plain is model
