"""Ensembles of trained runs: one model file that load, evaluate and predict use unchanged."""

from __future__ import annotations

import pytest
import torch

import tlearn
from fast import RESNET18, quiet
from tlearn.cli import main
from tlearn.ensemble import EnsembleClassifier, ensemble, fit_weights_to, parse_weights
from tlearn.errors import TlearnError

FAST = dict(RESNET18, log=quiet)


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))


def _run(tmp_path, data, name: str, seed: int) -> str:
    tlearn.train(str(data), strategy="linear-probe", epochs=6, lr=0.05, seed=seed,
                 out=str(tmp_path / name), **FAST)  # fmt: skip
    return str(tmp_path / name)


def test_ensemble_file_loads_evaluates_predicts(tmp_path, make_image_folder, capsys):
    data = make_image_folder(classes=("cat", "dog", "owl"), n=6, layout="split")
    a, b = _run(tmp_path, data, "a", 0), _run(tmp_path, data, "b", 1)
    out = tmp_path / "ens.safetensors"
    assert main(["ensemble", a, b, "--out", str(out), "--weights", "3,1"]) == 0
    assert "weights 0.750, 0.250" in capsys.readouterr().out

    model = tlearn.load(out)
    assert isinstance(model.classifier, EnsembleClassifier)
    assert model.classes == ["cat", "dog", "owl"]
    assert model.spec.ensemble["weights"] == [0.75, 0.25]
    assert [m["source"] for m in model.spec.ensemble["members"]] == [
        f"{a}/best.safetensors",
        f"{b}/best.safetensors",
    ]
    # the file's output is the log of the weighted mean of the members' own probabilities
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        pa = tlearn.load(a).classifier(x).softmax(1)
        pb = tlearn.load(b).classifier(x).softmax(1)
        torch.testing.assert_close(model.classifier(x).exp(), 0.75 * pa + 0.25 * pb)

    report = model.evaluate(str(data), workers=0)
    assert report.images == 9 and report.accuracy == 1.0
    image = next((data / "val" / "dog").iterdir())
    (top,) = model.predict(image, topk=3)
    assert top.labels[0] == "dog" and sum(top.probabilities) == pytest.approx(1.0, abs=1e-4)

    # an ensemble file round-trips like any model file
    again = tlearn.load(model.save(tmp_path / "copy.safetensors"))
    with torch.no_grad():
        assert torch.equal(again.classifier(x), model.classifier(x))
    with pytest.raises(TlearnError, match="already an ensemble"):
        ensemble([out, a])


def test_ensemble_refuses_models_of_other_classes(tmp_path, make_image_folder, capsys):
    one = make_image_folder(root=tmp_path / "one", classes=("cat", "dog"), n=4)
    two = make_image_folder(root=tmp_path / "two", classes=("cat", "owl"), n=4)
    a, b = _run(tmp_path, one, "a", 0), _run(tmp_path, two, "b", 0)
    assert main(["ensemble", a, b, "--out", str(tmp_path / "e.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "other classes" in err and "same classes" in err and "Traceback" not in err
    assert not (tmp_path / "e.safetensors").exists()


def test_weights_are_validated_and_normalised():
    assert parse_weights(None, 4) == [0.25] * 4
    assert parse_weights("0.6,0.4", 2) == pytest.approx([0.6, 0.4])
    assert parse_weights([2, 2, 4], 3) == pytest.approx([0.25, 0.25, 0.5])
    assert parse_weights("1,0", 2) == [1.0, 0.0]
    with pytest.raises(TlearnError, match="3 weights for 2 models"):
        parse_weights("1,1,1", 2)
    with pytest.raises(TlearnError, match="zero or positive"):
        parse_weights("1,-1", 2)
    with pytest.raises(TlearnError, match="zero or positive"):
        parse_weights("0,0", 2)
    with pytest.raises(TlearnError, match="numbers separated by commas"):
        parse_weights("a,b", 2)
    with pytest.raises(TlearnError, match="not both"):
        ensemble(["x", "y"], weights="1,1", fit_weights="data")


def test_fitted_weights_favour_the_member_that_is_right():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (300,), generator=g)
    good = torch.nn.functional.one_hot(labels, 4).float() * 0.9 + 0.025  # right, confident
    noise = torch.rand(300, 4, generator=g).softmax(1)  # uninformative
    weights = fit_weights_to(torch.stack([noise, good], dim=1), labels)
    assert sum(weights) == pytest.approx(1.0) and weights[1] > 0.9


def test_fit_weights_on_validation_split(tmp_path, make_image_folder):
    data = make_image_folder(classes=("cat", "dog"), n=10)
    a, b = _run(tmp_path, data, "a", 0), _run(tmp_path, data, "b", 1)
    lines: list[str] = []
    model = ensemble([a, b], out=tmp_path / "e.safetensors", fit_weights=str(data), workers=0,
                     log=lines.append)  # fmt: skip
    weights = tlearn.load(tmp_path / "e.safetensors").spec.ensemble["weights"]
    assert weights == model.spec.ensemble["weights"] and sum(weights) == pytest.approx(1.0)
    assert model.spec.config["fit_weights"] == str(data)
    # fitted on the 2 images (10%) the runs held out, and says how each member did there
    assert any("on 2 val images" in line for line in lines) and lines[-1].startswith("ensemble:")
