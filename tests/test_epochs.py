"""The epoch loop: same seed, same run; resume with the recipes on; --steps-per-epoch."""

from __future__ import annotations

import contextlib

import pytest
import torch

import tlearn
from fast import TINY
from runs import InterruptingLoss, assert_same_run, metric_rows
from tlearn.cli import main
from tlearn.training import loop
from tlearn.training.interrupt import Interrupted
from tlearn.training.state import load_state

RECIPES = dict(epochs=3, patience=2, ema=0.9, balance="sampler", augment="light")


@pytest.mark.parametrize("path", ["decode-once", "pil"])
def test_same_seed_gives_the_same_metrics(unbalanced, tmp_path, path):
    extra = {"memory_limit": "1"} if path == "pil" else {}
    for name in ("a", "b"):
        tlearn.train(
            str(unbalanced), out=str(tmp_path / name), strategy="finetune", seed=3,
            **RECIPES, **extra, **TINY,
        )  # fmt: skip
    assert metric_rows(tmp_path / "a") == metric_rows(tmp_path / "b")
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_resume_with_ema_and_patience_gives_the_same_run(unbalanced, tmp_path, monkeypatch):
    options = dict(TINY, strategy="finetune", deterministic=True, **RECIPES)
    tlearn.train(str(unbalanced), out=str(tmp_path / "a"), **options)
    InterruptingLoss.at, InterruptingLoss.calls = 6, 0  # epoch 2 (4 steps an epoch), step 2
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", InterruptingLoss)
    with pytest.raises(Interrupted):
        tlearn.train(str(unbalanced), out=str(tmp_path / "b"), **options)
    monkeypatch.undo()
    state = load_state(tmp_path / "b" / "state.pt")
    assert state["ema"] is not None and state["early"]["patience"] == 2
    tlearn.train(resume=str(tmp_path / "b"), log=TINY["log"])
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_a_limited_epoch_draws_a_fresh_share_and_resumes_inside_it():
    from torch.utils.data import DataLoader, TensorDataset

    from tlearn.training.order import EpochBatches, EpochSampler

    data = TensorDataset(torch.arange(24))
    loader = DataLoader(data, batch_size=4, sampler=EpochSampler(24, seed=3, batch_size=4))

    def seen(epoch: int, start: int = 0, limit: int | None = 3) -> list[list[int]]:
        batches = EpochBatches(loader, 3, epoch, start, limit)
        return [b[0].tolist() for b in batches]

    first, second = seen(0), seen(1)
    assert len(first) == len(second) == 3 and len(EpochBatches(loader, 3, 0, 0, 3)) == 3
    assert first != second  # each epoch a different share
    assert seen(0, start=1) == first[1:]  # resuming inside the share replays the rest of it
    assert len(seen(0, limit=None)) == 6 and not EpochBatches(loader, 3, 0).partial
    batches = EpochBatches(loader, 3, 0, 0, 2)
    taken = []
    for batch in batches:  # a refit may lengthen the running epoch
        taken.append(batch)
        batches.limit = 4
    assert len(taken) == 4


def test_steps_per_epoch_trains_that_many_steps_and_resumes_the_same(
    unbalanced, tmp_path, monkeypatch
):
    options = dict(TINY, strategy="finetune", deterministic=True, epochs=3, steps_per_epoch=2)
    InterruptingLoss.at, InterruptingLoss.calls = 0, 0  # counts the training steps
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", InterruptingLoss)
    tlearn.train(str(unbalanced), out=str(tmp_path / "a"), **options)
    assert InterruptingLoss.calls == 3 * 2  # 16 training images in batches of 4: 2 of 4 batches
    rows = metric_rows(tmp_path / "a")
    assert len(rows) == 3 and all(row["skipped"] == "0" for row in rows)
    InterruptingLoss.at, InterruptingLoss.calls = 4, 0  # epoch 2, its last step
    with pytest.raises(Interrupted):
        tlearn.train(str(unbalanced), out=str(tmp_path / "b"), **options)
    monkeypatch.undo()
    tlearn.train(resume=str(tmp_path / "b"), log=TINY["log"])
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_steps_per_epoch_must_be_positive(capsys):
    assert main(["train", "x", "--steps-per-epoch", "0"]) == 2
    assert "--steps-per-epoch 0 is out of range" in capsys.readouterr().err


def test_train_accuracy_counts_the_hits_of_the_steps_as_trained():
    """A model that does not move (rate 0): the epoch's train accuracy is its accuracy on the
    training rows, counted apart; mixed targets count their largest share."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.arange(40) % 3
    model = torch.nn.Linear(5, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batches = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]
    expected = (model(x).argmax(1) == y).float().mean().item()
    for readback in (1, 3):
        stats = loop.train_one_epoch(
            model, batches, optimizer, scheduler, torch.nn.CrossEntropyLoss(),
            torch.device("cpu"), contextlib.nullcontext, model.train, readback_every=readback,
        )  # fmt: skip
        assert stats.accuracy == pytest.approx(expected)
    mixed = torch.nn.functional.one_hot(y, 3).float() * 0.7 + 0.1  # mixup-like soft targets
    soft = [(x[i : i + 8], mixed[i : i + 8]) for i in range(0, 40, 8)]
    stats = loop.train_one_epoch(
        model, soft, optimizer, scheduler, torch.nn.CrossEntropyLoss(),
        torch.device("cpu"), contextlib.nullcontext, model.train,
    )  # fmt: skip
    assert stats.accuracy == pytest.approx(expected)


def test_metrics_csv_has_the_train_accuracy_of_each_epoch(make_image_folder, tmp_path):
    data = make_image_folder(n=10)
    run = tmp_path / "run"
    tlearn.train(str(data), out=str(run), strategy="finetune", epochs=2, **TINY)
    rows = metric_rows(run)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(0.0 <= float(r["train_accuracy"]) <= 1.0 for r in rows)
