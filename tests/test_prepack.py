"""Prepacked convolution weights in CPU inference copies: same outputs, a plain model outside."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tlearn.models import create_backbone
from tlearn.models.fold import example_images
from tlearn.models.prepack import PackedConv2d, prepack_convolutions, unpack
from tlearn.training.runtime import inference_module

needs_onednn = pytest.mark.skipif(
    not hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    or not torch.backends.mkldnn.is_available(),
    reason="this PyTorch build has no oneDNN convolution op",
)


def _resnet(dtype: torch.dtype) -> nn.Module:
    torch.manual_seed(0)
    body = create_backbone("resnet18", "none", 32).module.eval().to(dtype)
    return body.to(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prepacked_copy_computes_the_same_for_other_batches_and_sizes(dtype):
    plain = _resnet(dtype)
    packed = copy.deepcopy(plain)
    example = example_images(32).to(dtype).contiguous(memory_format=torch.channels_last)
    assert prepack_convolutions(packed, example) == 20  # every convolution of ResNet-18
    assert all(isinstance(m, PackedConv2d) for m in packed.modules() if isinstance(m, nn.Conv2d))
    assert packed.state_dict().keys() == plain.state_dict().keys()
    x = torch.rand(5, 3, 32, 32).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # another batch size: the same kernels, the same numbers
        assert torch.equal(packed(x), plain(x))
    x = torch.rand(1, 3, 48, 40).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():  # another image size: kernels may sum in another order
        torch.testing.assert_close(packed(x), plain(x), rtol=1e-4, atol=1e-5)


@needs_onednn
def test_a_packed_copy_falls_back_to_plain_convolutions_when_it_must():
    plain = _resnet(torch.float32)
    packed = copy.deepcopy(plain)
    prepack_convolutions(packed, example_images(32).contiguous(memory_format=torch.channels_last))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        want = plain(x)
    # with gradients on (a caller training it anyway), the plain path runs, and gradients flow
    out = packed(x)
    assert out.requires_grad and torch.allclose(out, want, atol=1e-5)
    # cast after packing: the packed weights no longer match the input, the plain path runs
    packed_bf16 = copy.deepcopy(packed).to(torch.bfloat16)
    assert not any(isinstance(m, PackedConv2d) for m in packed_bf16.modules())
    with torch.inference_mode():
        assert packed_bf16(x.bfloat16()).dtype == torch.bfloat16
    unpack(packed)
    assert not any(isinstance(m, PackedConv2d) for m in packed.modules())
    with torch.no_grad():
        assert torch.equal(packed(x), want)


@needs_onednn
def test_inference_module_prepacks_and_keeps_outputs_and_the_model_file_weights():
    """Lite0's TF-padded convolutions keep their own forward; the rest are prepacked."""
    torch.manual_seed(0)
    model = create_backbone("tf_efficientnet_lite0", "none", 32).module.eval()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    runner, dtype, _ = inference_module(model, torch.device("cpu"), "bf16", 32)
    convs = [m for m in runner.modules() if isinstance(m, nn.Conv2d)]
    packed = [m for m in convs if isinstance(m, PackedConv2d)]
    assert 0 < len(packed) < len(convs)  # Conv2dSame (strided, TF padding) stays as it is
    assert all(type(m).__name__ == "Conv2dSame" for m in convs if m not in packed)
    x = torch.rand(3, 3, 32, 32).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        got = runner(x)
    unpack(runner)
    with torch.inference_mode():
        assert torch.equal(got, runner(x))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())


@needs_onednn
def test_a_copy_that_would_compute_otherwise_is_left_unpacked(monkeypatch):
    """The packed copy is checked on the example against what it computed before packing."""
    plain = _resnet(torch.float32)
    packed = copy.deepcopy(plain)
    real = PackedConv2d.forward
    monkeypatch.setattr(PackedConv2d, "forward", lambda self, x: real(self, x) * 1.1)
    example = example_images(32).contiguous(memory_format=torch.channels_last)
    assert prepack_convolutions(packed, example) == 0
    assert not any(isinstance(m, PackedConv2d) for m in packed.modules())
    with torch.inference_mode():
        assert torch.equal(packed(example), plain(example))


@needs_onednn
def test_a_copy_of_a_network_training_with_tuned_convolutions_is_prepacked_too():
    """Validation during a bf16 run evaluates a copy of the model whose convolutions are tuned."""
    from tlearn.training import conv_tuning

    model = _resnet(torch.float32)
    assert conv_tuning.install(model) == 20
    runner, dtype, _ = inference_module(model, torch.device("cpu"), "bf16", 32)
    assert sum(isinstance(m, PackedConv2d) for m in runner.modules()) == 20
    assert all(
        type(m) is conv_tuning.TunedConv2d for m in model.modules() if isinstance(m, nn.Conv2d)
    )
