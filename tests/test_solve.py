"""The solved linear probe: converged whatever the data size, its choices made on validation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

import tlearn
from fast import TINY
from tlearn.training.features import FeatureSet
from tlearn.training.linear_probe import SMALL_VALIDATION, solve_candidates
from tlearn.training.solve import (
    cross_validate,
    fit_probe,
    out_of_fold_logits,
    solve_logistic,
    standardisation,
)


def blobs(n: int, d: int = 40, classes: int = 3, noise: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g)
    y = torch.arange(n) % classes
    return centers[y] + noise * torch.randn(n, d, generator=g), y


def test_solution_is_converged_even_for_few_images():
    """The gradient of the regularised loss vanishes at the answer: 12 images or 1,200, no
    epoch count decides how far the head got."""
    for n in (12, 1200):
        x, y = blobs(n)
        mean, scale = standardisation(x)
        z = (x - mean) / scale
        weight, bias, _ = solve_logistic(z, y, 3, l2=1e-2)
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        loss = torch.nn.functional.cross_entropy(z @ w.T + b, y) + 0.5e-2 * w.pow(2).sum()
        loss.backward()
        assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_matches_scikit_learn_at_the_same_strength():
    """sklearn's C is 1 / (l2 * n): the same problem, the same minimiser."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    x, y = blobs(300, noise=3.0)
    mean, scale = standardisation(x)
    z = (x - mean) / scale
    weight, bias, _ = solve_logistic(z, y, 3, l2=1e-2, max_iter=500)
    reference = linear_model.LogisticRegression(C=1 / (1e-2 * 300), tol=1e-8, max_iter=5000)
    reference.fit(z.numpy(), y.numpy())
    # softmax weights are defined up to a shift shared by the classes; sklearn centres them
    ours = (weight - weight.mean(0)).numpy()
    assert abs(ours - reference.coef_).max() < 1e-3 * max(1.0, abs(reference.coef_).max())


def test_strength_is_chosen_on_validation():
    """Noisy, high-dimensional data with few rows wants strong regularisation; clean data with
    many rows wants little. The sweep finds each from validation alone, at the lowest loss."""
    x, y = blobs(330, d=200, noise=6.0, seed=1)
    noisy = fit_probe(x[:30], y[:30], x[30:], y[30:], 3)
    x, y = blobs(3000, d=5, noise=0.3, seed=2)
    clean = fit_probe(x[:2000], y[:2000], x[2000:], y[2000:], 3)
    assert noisy.l2 >= 1e-2 and clean.l2 <= 1e-3
    assert noisy.val_loss == min(t["val_loss"] for t in noisy.tried)
    # the folded single linear layer is the same map
    w, b = clean.folded()
    assert torch.allclose(x[2000:] @ w.T + b, clean.logits(x[2000:]), atol=1e-4)


def test_sweep_stops_once_validation_loss_rises():
    x, y = blobs(330, d=200, noise=6.0, seed=1)
    fit = fit_probe(x[:30], y[:30], x[30:], y[30:], 3)
    losses = [t["val_loss"] for t in fit.tried]
    assert len(losses) < 9 and losses[-3] < losses[-2] < losses[-1]


def test_without_validation_it_cross_validates():
    x, y = blobs(90)
    fit = fit_probe(x, y, None, None, 3)
    assert fit.val_accuracy is not None and fit.val_accuracy > 0.9


def test_cross_validation_keeps_a_mirror_out_with_its_image():
    """Random labels on noise: a weakly regularised fit memorises its rows, so an image whose
    exact mirror trained beside it would be scored right; held out together, it is chance."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(80, 120, generator=g), torch.randint(0, 2, (80,), generator=g)
    mirrors = (x.clone(), torch.arange(80))
    tried = cross_validate(x, y, 2, mirrors=mirrors, grid=(1e-5,))
    assert tried[0]["val_accuracy"] < 0.75


def candidates_on(n_train: int, n_val: int) -> tuple[str, object, list[dict], str]:
    """Two candidates: the first 10 columns (signal) or all 60 (signal and noise)."""
    x, y = blobs(n_train + n_val, d=60, noise=2.0, seed=3)
    x[:, 10:] = torch.randn(len(y), 50, generator=torch.Generator().manual_seed(4)) * 3
    train, val = FeatureSet(x[:n_train], y[:n_train]), FeatureSet(x[n_train:], y[n_train:])
    return solve_candidates(train, val, {"last": torch.arange(10), "stages": None}, 3, None, 0)


def test_a_small_validation_split_chooses_by_folds_over_train_and_val():
    """Under SMALL_VALIDATION images the features and strength are chosen by 5-fold over every
    labelled image; the head is still fitted on train alone, so its validation score is honest."""
    chosen, fit, rows, on = candidates_on(300, 30)
    assert on == "cv-train-val" and chosen == "last"
    x, y = blobs(330, d=60, noise=2.0, seed=3)
    pooled = cross_validate(x[:, :10], y, 3)
    assert rows[0]["val_loss"] == round(min(t["val_loss"] for t in pooled), 5)
    assert fit.l2 == rows[0]["l2"] and len(fit.tried) == 1
    _, _, _, on = candidates_on(300, SMALL_VALIDATION)
    assert on == "validation"


def rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_default_linear_probe_run_is_solved(make_image_folder, tmp_path):
    """A linear probe with neither --epochs nor --lr: one solve recorded as one epoch, its
    candidates in the log and in plan.json, the model file predicting as the solved head."""
    data = make_image_folder(classes=("red", "green", "blue"), n=8)
    lines: list[str] = []
    out = tmp_path / "run"
    options = {**TINY, "log": lines.append, "strategy": "linear-probe", "features": "auto"}
    model = tlearn.train(str(data), out=str(out), **options)
    assert any("head solved (L-BFGS)" in line for line in lines)
    assert sum("linear head on" in line for line in lines) == 2  # last and stage features
    assert len(rows(out)) == 1
    # the epoch took the solve's time (the report's "training took"), not the 0 s after it
    solved_s = float(next(x for x in lines if "head solved" in x).split(" in ")[1].split("s")[0])
    assert float(rows(out)[0]["elapsed_s"]) >= solved_s - 0.05
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["head_fit"] == "lbfgs" and config["epochs"] == 1
    assert config["features"] in ("last", "stages")
    plan = json.loads((out / "plan.json").read_text())
    chosen = plan["head_fit"]["chosen"]
    assert chosen == config["features"]
    assert plan["head_fit"]["chosen_on"] == "cv-train-val"  # 3 of 24 images validate
    assert any("cross-validation on the training and validation" in line for line in lines)
    assert {c["features"] for c in plan["head_fit"]["candidates"]} == {"last", "stages"}
    reloaded = tlearn.load(out / "best.safetensors")
    taps = reloaded.spec.backbones[0]["taps"]
    assert bool(taps) == (chosen == "stages")
    assert model.spec.metrics["val_accuracy"] is not None


def test_explicit_epochs_keep_sgd(make_image_folder, tmp_path):
    data = make_image_folder(n=6)
    lines: list[str] = []
    out = tmp_path / "run"
    tlearn.train(
        str(data), out=str(out), **{**TINY, "log": lines.append}, strategy="linear-probe",
        epochs=2,
    )  # fmt: skip
    assert not any("head solved" in line for line in lines)
    assert yaml.safe_load((out / "config.yaml").read_text())["head_fit"] == "sgd"
    assert len(rows(out)) == 2


def test_lbfgs_refuses_an_mlp_head(make_image_folder, tmp_path):
    data = make_image_folder(n=4)
    with pytest.raises(tlearn.TlearnError, match="--head-fit lbfgs solves a linear head"):
        tlearn.train(str(data), out=str(tmp_path / "r"), **TINY, head_fit="lbfgs", head="mlp")


def test_out_of_fold_logits_come_from_fits_that_never_saw_the_row():
    """A mislabelled row is fitted in-sample but contradicted out of fold: the held-out logits
    are what a new image of its class would get."""
    x, y = blobs(300, noise=0.6)
    y = y.clone()
    y[:5] = (y[:5] + 1) % 3  # five labels flipped
    fit = fit_probe(x, y, None, None, 3, grid=(1e-4,))
    held_out = out_of_fold_logits(fit, x, y, None, 3, seed=0)
    in_sample = fit.logits(x)
    given = torch.arange(5)
    p_in = in_sample.softmax(1)[given, y[:5]]
    p_out = held_out.softmax(1)[given, y[:5]]
    assert (p_out < p_in).all() and p_out.max() < 0.5
    # the clean rows are still classified as they are labelled
    assert (held_out[5:].argmax(1) == y[5:]).float().mean() > 0.95


def test_a_solved_probe_fits_its_temperature_on_validation_and_out_of_fold_rows(
    tmp_path, make_image_folder
):
    data = make_image_folder(n=12)
    lines: list[str] = []
    tlearn.train(str(data), out=str(tmp_path / "run"), **{**TINY, "log": lines.append})
    spec = tlearn.load(tmp_path / "run").spec
    assert spec.calibration["fitted_on"] == "val+oof"
    assert spec.calibration["images"] == 24  # 6 validation + 18 training images
    assert any("validation and out-of-fold training images" in line for line in lines)
