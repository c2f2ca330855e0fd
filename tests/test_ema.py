"""--ema: the weight average, and that it is what a run saves and returns."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

import tlearn
from fast import TINY
from tlearn.training.ema import WeightAverage
from tlearn.training.state import load_state


def test_weight_average_warms_up_and_swaps():
    module = torch.nn.Linear(2, 1)
    average = WeightAverage(module, 0.99)
    with torch.no_grad():
        module.weight.add_(1.0)
    average.update(module)  # decay 0.1 at the first update: mostly the new weights
    expected = module.weight - 0.1
    assert torch.allclose(average.shadow["weight"], expected)
    raw = module.weight.detach().clone()
    with average.swapped_in(module):
        assert torch.allclose(module.weight, expected)
    assert torch.equal(module.weight, raw)


def test_ema_weights_are_what_is_saved_and_returned(make_image_folder, tmp_path):
    run = tmp_path / "r"
    result = tlearn.train(
        str(make_image_folder()), out=str(run), strategy="finetune", epochs=2, ema=0.9, **TINY
    )
    saved = load_file(run / "last.safetensors")
    raw = load_state(run / "state.pt")["model"]
    ema = load_state(run / "state.pt")["ema"]["shadow"]
    floats = [k for k, v in saved.items() if v.is_floating_point()]
    assert any(not torch.equal(saved[k], raw[k]) for k in floats), "EMA equals the raw weights"
    for k in floats:
        assert torch.equal(saved[k], ema[k]), k
    returned = result.classifier.state_dict()
    assert all(torch.equal(returned[k].cpu(), saved[k]) for k in floats)
