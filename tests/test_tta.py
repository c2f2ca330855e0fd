"""Test-time augmentation: views, averaging, and `--tta` in evaluate and predict."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import tlearn
from fast import RESNET18, quiet
from tlearn.cli import main
from tlearn.deploy.tta import (
    TTAClassifier,
    crops_seen,
    flips_allowed,
    model_tta,
    tta_size,
    with_tta,
)
from tlearn.preprocessing import Preprocessing

FAST = dict(RESNET18, log=quiet)


class MeanColour(nn.Module):
    """Logits from the mean colour: blind to crops and mirrors of a flat image."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.mean(dim=(2, 3)))


class LeftHalf(nn.Module):
    """Sees only the left half of the image: mirrors change its answer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([half, 1 - half], dim=1) * 10


def test_views_are_twelve_crops_and_mirrors_of_the_input_size():
    tta = TTAClassifier(MeanColour(), 24)
    x = torch.rand(2, 3, tta_size(24), tta_size(24))
    views = list(tta.views(x))
    assert len(views) == tta.num_views == 12
    assert all(v.shape == (2, 3, 24, 24) for v in views)
    assert torch.equal(views[1], views[0].flip(-1)) and torch.equal(views[3], views[2].flip(-1))
    assert TTAClassifier(MeanColour(), 24, flips=False).num_views == 6


def test_a_model_trained_without_crops_sees_only_the_whole_image_and_its_mirror():
    model = MeanColour().eval()
    for augment in ("none", "flip", "shift"):
        tta, pre = model_tta(model, Preprocessing(input_size=24), {"augment": augment})
        assert pre.input_size == 24 and not crops_seen({"augment": augment})
        x = torch.rand(2, 3, 24, 24)
        views = list(tta.views(x))
        assert tta.num_views == len(views) == 2
        assert torch.equal(views[0], x) and torch.equal(views[1], x.flip(-1))
    tta, pre = model_tta(model, Preprocessing(input_size=24), {"augment": "light"})
    assert tta.num_views == 12 and pre.input_size == tta_size(24)
    tta, _ = model_tta(model, Preprocessing(input_size=24), {"augment": "flip", "hflip": False})
    assert tta.num_views == 1
    assert crops_seen(None) and crops_seen({"augment": "medium"})


def test_on_flat_images_tta_equals_plain_prediction():
    torch.manual_seed(0)
    model = MeanColour().eval()
    colours = torch.rand(5, 3, 1, 1)
    plain = model(colours.expand(5, 3, 24, 24)).softmax(1)
    tta, pre = with_tta(model, Preprocessing(input_size=24))
    assert pre.input_size == tta_size(24) == 28
    with torch.no_grad():
        out = tta(colours.expand(5, 3, 28, 28))
    assert out.shape == plain.shape
    torch.testing.assert_close(out.exp(), plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.softmax(1), plain, atol=1e-5, rtol=1e-5)  # log-probs as logits


def test_mirrors_are_averaged_only_when_allowed():
    x = torch.zeros(1, 3, 28, 28)
    x[..., :14] = 1.0  # bright left half
    with_flips = TTAClassifier(LeftHalf(), 24)(x).exp()
    without = TTAClassifier(LeftHalf(), 24, flips=False)(x).exp()
    assert without[0, 0] > 0.99  # every unmirrored view: the left half is bright
    assert 0.3 < with_flips[0, 0] < 0.7  # half the views are mirrored
    assert flips_allowed({"hflip": True}) and not flips_allowed({"hflip": False})
    assert flips_allowed(None)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("tta")
    from conftest import _fill

    data = root / "images"
    _fill(data / "train", ("cat", "dog", "owl"), 8, (20, 16), "png", seed=0)
    _fill(data / "val", ("cat", "dog", "owl"), 4, (20, 16), "png", seed=500)
    model = tlearn.train(str(data), strategy="linear-probe", epochs=6, lr=0.05, augment="light",
                         out=str(root / "run"), cache_dir=str(root / "cache"), **FAST)  # fmt: skip
    return model, data, root / "run"


def test_evaluate_with_tta_keeps_or_improves_accuracy(trained):
    model, data, _ = trained
    plain = model.evaluate(str(data), workers=0)
    tta = model.evaluate(str(data), workers=0, tta=True)
    assert tta.images == plain.images == 12
    assert tta.accuracy >= plain.accuracy
    assert tta.extra["tta_views"] == 12 and "tta_views" not in plain.extra
    assert abs(tta.loss - plain.loss) < 0.5  # probabilities, not scores: the loss stays comparable


def test_predict_with_tta_gives_probabilities_of_the_same_shape(trained):
    model, data, _ = trained
    images = sorted((data / "val" / "owl").iterdir())
    plain = model.predict(images, topk=3)
    tta = model.predict(images, topk=3, tta=True)
    assert [p.path for p in tta] == [p.path for p in plain]
    for a, b in zip(plain, tta, strict=True):
        assert len(b.labels) == 3 and sorted(b.labels) == sorted(a.labels)
        assert 0.99 < sum(b.probabilities) <= 1.0 + 1e-5  # three classes: all of the mass
        assert b.labels[0] == a.labels[0] == "owl"


def test_cli_evaluate_and_predict_take_tta(trained, capsys):
    _, data, run = trained
    assert main(["evaluate", str(run), str(data), "--workers", "0", "--tta", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["extra"]["tta_views"] == 12 and report["accuracy"] == 1.0
    image = next((data / "val" / "dog").iterdir())
    assert main(["predict", str(run), str(image), "--tta", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["labels"][0] == "dog"
