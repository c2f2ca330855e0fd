"""Temperature scaling: the fit, ECE, and the temperature's way through model files and models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import tlearn
from fast import RESNET18, quiet
from tlearn.checkpoint import read_model_file, write_calibration
from tlearn.models.calibration import (
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    reliability,
    temperature_off,
)

FAST = dict(RESNET18, log=quiet)


def sampled(n: int = 4000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from them: calibrated by construction (the true T is 1)."""
    g = torch.Generator().manual_seed(seed)
    logits = 2.5 * torch.randn(n, classes, generator=g)
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).flatten()
    return logits, labels


@pytest.mark.parametrize("scale", [0.4, 3.0])
def test_fit_recovers_the_temperature_that_undoes_over_and_under_confidence(scale):
    logits, labels = sampled()
    fitted = fit_temperature(scale * logits, labels)
    assert fitted == pytest.approx(scale, rel=0.1)
    before = expected_calibration_error(scale * logits, labels)
    after = expected_calibration_error(scale * logits, labels, fitted)
    assert after < before / 2


def test_fit_leaves_nothing_to_fit_alone():
    assert fit_temperature(torch.randn(1, 3), torch.tensor([0])) == 1.0
    assert fit_temperature(torch.full((4, 3), float("nan")), torch.tensor([0, 1, 2, 0])) == 1.0


def test_reliability_bins_and_ece_by_hand():
    # two predictions at 0.85 confidence, one right: |0.5 - 0.85|; two at 0.65, both right
    probabilities = torch.tensor([[0.85, 0.15], [0.85, 0.15], [0.65, 0.35], [0.35, 0.65]])
    labels = torch.tensor([0, 1, 0, 1])
    rel = reliability(probabilities, labels, bins=10)
    assert rel.counts[8] == 2 and rel.counts[6] == 2 and sum(rel.counts) == 4
    assert rel.accuracy[8] == 0.5 and rel.accuracy[6] == 1.0
    assert rel.ece == pytest.approx((0.35 * 2 + 0.35 * 2) / 4, abs=1e-6)


def test_calibration_record_keeps_accuracy_and_lowers_nll():
    logits, labels = sampled(seed=1)
    record = calibration_record(4 * logits, labels)
    assert record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"]
    assert record["images"] == len(labels) and record["fitted_on"] == "val"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from conftest import _fill

    root = tmp_path_factory.mktemp("calib")
    _fill(root / "data" / "train", ("cat", "dog", "owl"), 8, (20, 16), "png", seed=0)
    _fill(root / "data" / "val", ("cat", "dog", "owl"), 4, (20, 16), "png", seed=500)
    model = tlearn.train(str(root / "data"), strategy="linear-probe", epochs=3, lr=0.05,
                         out=str(root / "run"), **FAST)  # fmt: skip
    return root / "data", root / "run", model


def test_training_stores_a_temperature_in_best_and_last(run):
    data, run_dir, model = run
    for name in ("best.safetensors", "last.safetensors"):
        spec, _ = read_model_file(run_dir / name)
        assert spec.temperature > 0 and spec.temperature != 1.0
        assert spec.calibration["images"] == 12
    last, _ = read_model_file(run_dir / "last.safetensors")
    assert model.classifier.temperature == last.temperature


def test_temperature_scales_probabilities_not_predictions(run):
    data, run_dir, _ = run
    model = tlearn.load(run_dir)
    t = model.spec.temperature
    assert model.classifier.temperature == t
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        scaled = model.classifier(x)
        with temperature_off(model.classifier):
            raw = model.classifier(x)
    assert model.classifier.temperature == t  # restored
    torch.testing.assert_close(scaled, raw / t)
    calibrated = model.evaluate(str(data), workers=0)
    uncalibrated = model.evaluate(str(data), workers=0, calibration=False)
    assert calibrated.accuracy == uncalibrated.accuracy
    assert calibrated.calibration["applied"] and not uncalibrated.calibration["applied"]
    assert calibrated.calibration["ece_before"] == pytest.approx(
        uncalibrated.calibration["ece_before"], abs=1e-4
    )
    image = next((data / "val" / "owl").iterdir())
    model.classifier.temperature = 1e4  # these logits saturate: a huge T shows it is applied
    (p_cal,) = model.predict(image, topk=1)
    (p_raw,) = model.predict(image, topk=1, calibration=False)
    assert p_cal.labels == p_raw.labels == ["owl"]
    assert p_raw.probabilities[0] > 0.99 and p_cal.probabilities[0] < 0.9


def test_old_model_files_load_with_temperature_one_and_calibration_rewrites_only_metadata(
    run, tmp_path
):
    _, run_dir, _ = run
    old = tmp_path / "old.safetensors"
    with safe_open(str(run_dir / "best.safetensors"), framework="pt") as f:
        meta = {k: v for k, v in (f.metadata() or {}).items() if k != "calibration"}
    from safetensors.torch import save_file

    tensors = load_file(run_dir / "best.safetensors")
    save_file(tensors, str(old), metadata=meta)
    model = tlearn.load(old)
    assert model.spec.temperature == 1.0 and model.classifier.temperature == 1.0
    write_calibration(old, {"temperature": 2.0})
    assert tlearn.load(old).classifier.temperature == 2.0
    for k, v in load_file(old).items():
        assert torch.equal(v, tensors[k])
    with safe_open(str(old), framework="pt") as f:
        assert json.loads(f.metadata()["calibration"]) == {"temperature": 2.0}


def test_no_calibration_option_trains_without_a_temperature(tmp_path, make_image_folder):
    data = make_image_folder(n=6, layout="split")
    model = tlearn.train(str(data), strategy="linear-probe", epochs=1, calibration=False,
                         out=str(tmp_path / "run"), **FAST)  # fmt: skip
    assert model.spec.calibration == {}
    assert tlearn.load(tmp_path / "run").classifier.temperature == 1.0
