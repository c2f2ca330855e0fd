"""The loop's hooks: each keeps its state under its key; losses read back late but exactly."""

from __future__ import annotations

import contextlib

import pytest
import torch

import tlearn
from fast import TINY
from tlearn.training import loop
from tlearn.training.hooks import Hook, hook_states, load_hook_states
from tlearn.training.nan_guard import NanGuard
from tlearn.training.state import STATE_NAME, load_state, upgraded


def _epoch(readback_every: int, losses: list[float] | None = None) -> tuple:
    """One epoch of a linear model on fixed data; `losses` replaces the loss values."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    x, y = torch.randn(24, 4), torch.randint(0, 3, (24,))
    batches = [(x[i : i + 4], y[i : i + 4]) for i in range(0, 24, 4)]
    calls = iter(losses or [])

    def loss_fn(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(out, labels)
        value = next(calls, None)
        return loss if value is None else loss * 0 + value

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    progress = loop.EpochProgress()
    logged: list = []
    stats = loop.train_one_epoch(
        model, batches, optimizer, scheduler, loss_fn, torch.device("cpu"),
        contextlib.nullcontext, model.train, progress=progress,
        after_step=lambda batch, p: logged.extend(p.take_logged()),
        readback_every=readback_every,
    )  # fmt: skip
    logged.extend(progress.take_logged())  # the last steps, read back when the epoch ended
    return stats, progress, logged, model


def test_losses_read_back_every_few_steps_sum_to_the_same_bits():
    one, progress_one, logged_one, model_one = _epoch(1)
    four, progress_four, logged_four, model_four = _epoch(4)
    assert one.loss == four.loss and progress_one.seen == progress_four.seen == 24
    assert logged_one == logged_four and len(logged_one) == 6  # every step's loss, in order
    assert torch.equal(model_one.weight, model_four.weight)


def test_a_non_finite_loss_read_back_late_names_its_own_step():
    with pytest.raises(loop.NonFiniteLoss) as caught:
        _epoch(4, [1.0, 1.0, float("nan"), 1.0])
    assert caught.value.step == 2  # the third batch, found when the fourth was read back


class _Counter(Hook):
    key = "counter"

    def __init__(self) -> None:
        self.steps = 0

    def after_step(self, loop, run, step) -> None:
        self.steps += 1

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]


def test_a_hooks_state_travels_under_its_key_and_keyless_hooks_keep_none():
    counter, keyless = _Counter(), Hook()
    counter.steps = 5
    states = hook_states([counter, keyless])
    assert states == {"counter": {"steps": 5}}
    fresh = _Counter()
    load_hook_states([fresh, Hook()], states)
    assert fresh.steps == 5


def test_state_pt_holds_each_hooks_state(make_image_folder, tmp_path):
    data = make_image_folder(n=6)
    run = tmp_path / "run"
    tlearn.train(str(data), out=str(run), strategy="finetune", epochs=2, ema=0.9, patience=3,
                 **TINY)  # fmt: skip
    state = load_state(run / STATE_NAME)
    assert state["version"] == 2
    assert state["ema"]["updates"] > 0 and state["early"]["patience"] == 3
    assert state["nan_guard"] == {"lr_scale": 1.0, "retries": 0}
    assert state["skipped"] == {"train": {}, "val": {}}


def test_a_version_1_state_keeps_its_nan_guard():
    old = {"version": 1, "lr_scale": 0.1, "nan_retries": 1}
    assert upgraded(old)["nan_guard"] == {"lr_scale": 0.1, "retries": 1}
    guard = NanGuard()
    guard.load_state_dict(old["nan_guard"])
    assert guard.lr_scale == pytest.approx(0.1) and guard.retries == 1
