"""Measured per-convolution kernels for bf16 CPU training: same gradients, plain model outside."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from tlearn.training import conv_tuning
from tlearn.training.conv_tuning import CANDIDATES, DEFAULT, TunedConv2d

# (in, out, kernel, stride, padding, bias): ResNet's stem, 3x3, strided, 1x1 shortcut, biased
SHAPES = [
    (3, 8, 7, 2, 3, False),
    (8, 8, 3, 1, 1, False),
    (8, 16, 3, 2, 1, False),
    (8, 16, 1, 2, 0, False),
    (4, 6, 3, 1, 0, True),
]


def _grads(conv: nn.Conv2d, x: torch.Tensor, bf16: bool) -> list[torch.Tensor]:
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = conv(x)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    params = [conv.weight] + ([conv.bias] if conv.bias is not None else [])
    return [out.float().detach(), x.grad] + [p.grad for p in params]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("candidate", CANDIDATES)
def test_every_candidate_computes_the_convolution_and_its_gradients(shape, candidate, monkeypatch):
    """Each kernel choice is the same arithmetic as nn.Conv2d in bf16, up to bf16 rounding."""
    cin, cout, k, s, p, bias = shape
    torch.manual_seed(0)
    plain = nn.Conv2d(cin, cout, k, s, p, bias=bias)
    tuned = copy.deepcopy(plain)
    assert conv_tuning.install(tuned) == 1
    tuned.choices = {}
    x = torch.randn(4, cin, 10, 10).contiguous(memory_format=torch.channels_last)
    monkeypatch.setattr(conv_tuning, "_choose", lambda *args: candidate)
    got = _grads(tuned, x, bf16=True)
    assert list(tuned.choices.values()) == [candidate]
    # reference: the float32 convolution of the same bf16-rounded operands
    reference = copy.deepcopy(plain)
    with torch.no_grad():
        reference.weight.copy_(reference.weight.bfloat16().float())
    want = _grads(reference, x.bfloat16().float(), bf16=False)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == torch.float32
        assert g.shape == w.shape
        assert torch.allclose(g, w, rtol=0.05, atol=0.05 * w.abs().max().item()), candidate


def test_only_bf16_training_calls_are_tuned():
    """Evaluation, fp32 training and frozen weights run nn.Conv2d's own forward."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    conv_tuning.install(conv)
    x = torch.randn(2, 3, 8, 8)
    conv.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
    conv.train()
    conv(x)  # fp32
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
    conv.weight.requires_grad_(False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
    assert not conv.__dict__.get("choices")
    conv.weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(x)
    assert len(conv.choices) == 1


def test_install_and_remove_keep_the_model_plain_outside_training(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, groups=2, padding=1),  # grouped: not eligible
        nn.Conv2d(8, 8, 3, padding="same"),  # string padding: not eligible
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    keys = list(model.state_dict())
    assert conv_tuning.install(model, tmp_path / "tuning.json") == 1
    assert isinstance(model[0], TunedConv2d) and type(model[2]) is nn.Conv2d
    assert list(model.state_dict()) == keys
    x = torch.randn(4, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    twin = copy.deepcopy(model)  # an averaged or best copy keeps working on its own weights
    assert twin[0].weight.data_ptr() != model[0].weight.data_ptr()
    used = conv_tuning.remove(model)
    assert sum(used.values()) == 1
    assert all(type(m) is nn.Conv2d for m in model if isinstance(m, nn.Conv2d))
    assert "choices" not in model[0].__dict__


def test_a_choice_is_measured_once_and_remembered_on_disk(tmp_path, monkeypatch):
    """Same-seed runs compute the same way: the first measurement on a machine is kept."""
    memory = tmp_path / "tuning.json"
    conv_tuning._known.clear()
    calls = []

    def measure(conv, x, dtype, repeats=3, rounds=2):
        calls.append(tuple(x.shape))
        return ("nchw", "matmul")

    monkeypatch.setattr(conv_tuning, "measure", measure)
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    conv_tuning.install(conv, memory)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        conv(torch.randn(4, 3, 8, 8)).float().sum().backward()
        conv(torch.randn(2, 3, 8, 8)).float().sum().backward()  # a short last batch
    assert calls == [(4, 3, 8, 8)]
    stored = json.loads(memory.read_text())
    assert list(stored.values()) == [["nchw", "matmul"]]

    conv_tuning._known.clear()  # a new process: reads the file, measures nothing
    fresh = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    conv_tuning.install(fresh, memory)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fresh(torch.randn(4, 3, 8, 8)).float().sum().backward()
    assert calls == [(4, 3, 8, 8)]
    assert list(fresh.choices.values()) == [("nchw", "matmul")]


def test_measuring_keeps_the_default_unless_another_is_clearly_faster(monkeypatch):
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    times = iter([1.0, 0.95, 0.97, 0.99])  # within noise of the default
    monkeypatch.setattr(conv_tuning, "_fastest", lambda step, repeats: next(times))
    assert conv_tuning.measure(conv, x, torch.bfloat16, rounds=1) == DEFAULT
    times = iter([1.0, 0.95, 0.5, 0.99])
    assert conv_tuning.measure(conv, x, torch.bfloat16, rounds=1) == ("nchw", "onednn")
    # candidates take turns; a fast reading in either round counts
    times = iter([1.2, 0.95, 0.97, 0.99, 0.9, 1.0, 1.0, 0.7])
    assert conv_tuning.measure(conv, x, torch.bfloat16, rounds=2) == ("nchw", "matmul")


def test_measuring_leaves_the_random_stream_and_the_weights_alone():
    torch.manual_seed(5)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    weight = conv.weight.detach().clone()
    x = torch.randn(2, 3, 8, 8)
    state = torch.get_rng_state()
    conv_tuning.measure(conv, x, torch.bfloat16, repeats=1)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(conv.weight, weight) and conv.weight.grad is None


def test_a_bf16_fine_tune_trains_with_measured_kernels_and_returns_a_plain_model(
    tmp_path, make_image_folder, monkeypatch
):
    import tlearn
    from tlearn.training.runtime import tlearn_cache_dir

    data = make_image_folder(classes=("cat", "dog"), n=6, layout="split")
    measured = []
    real = conv_tuning.measure

    def measure(conv, x, dtype, repeats=3, rounds=2):
        measured.append(tuple(conv.weight.shape))
        real(conv, x, dtype, repeats=1, rounds=1)
        return ("nchw", "matmul")  # whatever was faster: the run must train with this one

    monkeypatch.setattr(conv_tuning, "measure", measure)
    conv_tuning._known.clear()
    lines = []
    model = tlearn.train(str(data), backbone="resnet18", weights="none", image_size=32,
                         batch_size=4, workers=0, strategy="finetune", epochs=1, precision="bf16",
                         out=str(tmp_path / "run"), log=lines.append)  # fmt: skip
    # ResNet-18: 20 convolutions, 11 shapes (the stem; per stage a 3x3, and from the second on
    # a strided 3x3 and a 1x1 shortcut)
    assert len(measured) == 11
    assert any(line.startswith("convolutions: 20 of 20 trained with kernels") for line in lines)
    assert not any(isinstance(m, TunedConv2d) for m in model.classifier.modules())
    remembered = json.loads((tlearn_cache_dir() / "conv-tuning.json").read_text())
    assert len(remembered) == 11 and all(v == ["nchw", "matmul"] for v in remembered.values())
    report = model.evaluate(str(data), workers=0)
    assert report.images == 6  # the test split: 3 per class
