"""Early stopping (--patience) and which epoch's weights are kept as best."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

import tlearn
from fast import TINY
from runs import metric_rows
from tlearn.training.stopping import EarlyStopping


def test_early_stopping_counts_epochs_without_improvement():
    stop = EarlyStopping(patience=2, monitor="val_accuracy")
    assert not stop.update({"val_accuracy": 0.5})
    assert not stop.update({"val_accuracy": 0.6})
    assert not stop.update({"val_accuracy": 0.6})
    assert stop.update({"val_accuracy": 0.55})
    falls_back = EarlyStopping(patience=1)
    assert not falls_back.update({"val_loss": None, "train_loss": 1.0})
    assert falls_back.update({"val_loss": None, "train_loss": 1.2})


def test_patience_stops_a_run_that_no_longer_improves(make_image_folder, tmp_path):
    lines: list[str] = []
    tlearn.train(
        str(make_image_folder()), out=str(tmp_path / "r"), strategy="linear-probe", epochs=8,
        lr=1e-8, schedule="constant", patience=2, **{**TINY, "log": lines.append},
    )  # fmt: skip
    rows = metric_rows(tmp_path / "r")
    assert len(rows) == 3  # epoch 1 sets the mark, 2 and 3 fail to beat it
    assert any("has not improved for 2 epoch(s)" in line for line in lines)


def test_a_later_epoch_within_validation_noise_is_kept_as_best():
    from tlearn.training.stopping import not_clearly_worse

    best = torch.tensor([True] * 90 + [False] * 10)
    one_fewer = best.clone()
    one_fewer[0] = False
    assert not_clearly_worse(one_fewer, best)  # 1 image apart: noise
    swapped = best.clone()
    swapped[:6], swapped[90:93] = False, True  # 6 lost, 3 gained: 3 <= sqrt(9)
    assert not_clearly_worse(swapped, best)
    worse = best.clone()
    worse[:10] = False  # 10 lost, none gained: 10 > sqrt(10)
    assert not not_clearly_worse(worse, best)
    assert not not_clearly_worse(None, best) and not not_clearly_worse(best[:5], best)


@pytest.mark.parametrize(("second_right", "kept"), [(9, "last"), (2, "first")])
def test_best_model_is_the_last_epoch_unless_validation_clearly_prefers_an_earlier(
    make_image_folder, tmp_path, monkeypatch, second_right, kept
):
    import tlearn.training.loop as loop

    original, calls = loop.predict_all, []

    def canned(*args, **kwargs):  # epoch 1 right on 10 of 12 images, epoch 2 on `second_right`
        pred = original(*args, **kwargs)
        right = 10 if not calls else second_right
        calls.append(right)
        n = len(pred.labels)
        logits = torch.zeros_like(pred.logits)
        wrong = (pred.labels + 1) % pred.logits.shape[1]
        target = torch.where(torch.arange(n) < right * n // 12, pred.labels, wrong)
        logits[torch.arange(n), target] = 1.0
        return loop.Predictions(logits, pred.labels, pred.indices, pred.seconds)

    monkeypatch.setattr(loop, "predict_all", canned)
    data = make_image_folder(n=16)  # 2 classes: 12 validation images at val_split 0.375
    out = tmp_path / "run"
    tlearn.train(str(data), out=str(out), **{**TINY, "epochs": 2, "val_split": 0.375})
    assert len(calls) == 3  # two epochs' validation, then report.html's evaluation
    best, last = load_file(out / "best.safetensors"), load_file(out / "last.safetensors")
    same = all(torch.equal(best[k], last[k]) for k in best)
    assert same == (kept == "last")
