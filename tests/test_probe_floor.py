"""A budget fine-tune's floor: the pretrained probe, solved first, kept when no epoch beats it."""

from __future__ import annotations

import json

import pytest
import torch

import tlearn
from fast import TINY
from tlearn.training import probe_floor
from tlearn.training.budget import make_plan


def plan_everything_as(strategy: str, monkeypatch) -> None:
    """Every budget plan fine-tunes with `strategy`, 2 epochs, flips."""
    import tlearn.training.budget.probe as planner

    def planned(inputs):
        plan = make_plan(inputs)
        plan.strategy, plan.epochs, plan.augment, plan.steps_per_epoch = strategy, 2, "flip", None
        return plan

    monkeypatch.setattr(planner, "make_plan", planned)


@pytest.fixture
def freeze_plan(monkeypatch):
    """Every budget plan fine-tunes the top of the network on stored frozen stages."""
    plan_everything_as("freeze:2", monkeypatch)


def budget_run(data, out, lines):
    options = {**TINY, "backbone": "test_efficientnet", "image_size": None, "log": lines.append}
    return tlearn.train(str(data), out=str(out), budget="1m", **options)


def test_a_budget_fine_tune_solves_the_probe_first_and_records_the_floor(
    freeze_plan, make_image_folder, tmp_path
):
    data = make_image_folder(n=12, size=(40, 40))
    lines: list[str] = []
    budget_run(data, tmp_path / "run", lines)
    assert any("frozen stages computed once" in line for line in lines)
    solved = [line for line in lines if line.startswith("linear probe on the pretrained")]
    assert solved and "of 18 training images solved" in solved[0]  # all of them: no cut
    floor = json.loads((tmp_path / "run" / "plan.json").read_text())["probe_floor"]
    assert floor["training_images"] == 18
    assert floor["kept"] in ("probe", "fine-tuned")
    best = tlearn.load(tmp_path / "run" / "best.safetensors")
    if floor["kept"] == "fine-tuned":
        assert_fine_tuned_won(floor)
        assert best.spec.metrics["epoch"] >= 1


def assert_fine_tuned_won(floor: dict) -> None:
    """Six validation images: compared on loss, fine-tuned no higher than the probe."""
    assert floor["compared_on"] == "val_loss"
    assert floor["best_fine_tuned_val_loss"] <= floor["val_loss"]


def test_a_floor_that_would_overrun_its_share_of_the_budget_is_cut_short(
    freeze_plan, make_image_folder, tmp_path, monkeypatch
):
    monkeypatch.setattr(probe_floor, "PASS_SHARE", 0.0)  # the first batch is already past it
    data = make_image_folder(n=12, size=(40, 40))
    lines: list[str] = []
    budget_run(data, tmp_path / "run", lines)
    floor = json.loads((tmp_path / "run" / "plan.json").read_text())["probe_floor"]
    taken = floor["training_images"]  # one inference batch
    assert 0 < taken < 18
    assert any(f"(the first {taken} of 18 shuffled)" in line for line in lines)


def test_the_probe_is_kept_when_no_fine_tuned_epoch_beats_it(
    freeze_plan, make_image_folder, tmp_path, monkeypatch
):
    data = make_image_folder(n=12, size=(40, 40))
    original = probe_floor.ProbeFloor.on_train_end
    pretrained = {}

    def every_epoch_lost(self, loop):
        pretrained.update(self.pretrained)
        best = loop.val_predictions[
            "best.safetensors"
        ]  # as if fine-tuning had ruined the features:
        wrong = torch.nn.functional.one_hot((best.labels + 1) % best.logits.shape[1])
        best.logits = 20.0 * wrong.float()
        loop.best_score = 0.0
        original(self, loop)

    monkeypatch.setattr(probe_floor.ProbeFloor, "on_train_end", every_epoch_lost)
    lines: list[str] = []
    model = budget_run(data, tmp_path / "run", lines)
    assert any("best.safetensors holds the probe" in line for line in lines)
    floor = json.loads((tmp_path / "run" / "plan.json").read_text())["probe_floor"]
    assert floor["kept"] == "probe"
    best = tlearn.load(tmp_path / "run" / "best.safetensors")
    last = tlearn.load(tmp_path / "run" / "last.safetensors")
    name = next(k for k in pretrained if k.startswith("backbones.0") and "blocks.3" in k)
    kept, fine_tuned = best.classifier.state_dict()[name], last.classifier.state_dict()[name]
    torch.testing.assert_close(kept, pretrained[name])  # the network as pretrained
    assert not torch.equal(fine_tuned, pretrained[name])  # last.safetensors: the last epoch
    assert best.spec.metrics["epoch"] == 0
    torch.testing.assert_close(model.classifier.state_dict()[name], pretrained[name])


@pytest.fixture
def gradual_plan(monkeypatch):
    """Every budget plan unfreezes the network gradually, training on the images."""
    plan_everything_as("gradual", monkeypatch)


def test_a_gradual_budget_run_on_images_solves_the_probe_first(
    gradual_plan, make_image_folder, tmp_path
):
    data = make_image_folder(n=12, size=(40, 40))
    lines: list[str] = []
    budget_run(data, tmp_path / "run", lines)
    assert not any("frozen stages computed once" in line for line in lines)  # the images path
    solved = [line for line in lines if line.startswith("linear probe on the pretrained")]
    assert solved and "of 18 training images solved" in solved[0]
    floor = json.loads((tmp_path / "run" / "plan.json").read_text())["probe_floor"]
    assert floor["training_images"] == 18
    best = tlearn.load(tmp_path / "run" / "best.safetensors")
    if floor["kept"] == "probe":
        assert best.spec.metrics["epoch"] == 0
    else:
        assert_fine_tuned_won(floor)


def test_a_floor_on_images_takes_as_many_training_images_as_its_share_allows(
    gradual_plan, make_image_folder, tmp_path, monkeypatch
):
    monkeypatch.setattr(probe_floor, "PASS_SHARE", 0.0)  # no time left after validation
    data = make_image_folder(n=12, size=(40, 40))
    lines: list[str] = []
    budget_run(data, tmp_path / "run", lines)
    floor = json.loads((tmp_path / "run" / "plan.json").read_text())["probe_floor"]
    classes = len(tlearn.load(tmp_path / "run" / "best.safetensors").spec.classes)
    assert floor["training_images"] == 2 * classes  # the fewest it takes: two a class
    assert any(f"(the first {2 * classes} of 18 shuffled)" in line for line in lines)


def test_a_small_validation_split_is_compared_on_loss_a_large_one_on_accuracy():
    from tlearn.training.loop import Predictions
    from tlearn.training.solve import ProbeFit

    def predictions(n: int, right: int, confidence: float) -> Predictions:
        labels = torch.zeros(n, dtype=torch.long)
        logits = torch.zeros(n, 2)
        logits[:right, 0] = confidence  # right, with this margin
        logits[right:, 1] = confidence  # wrong, as sure
        return Predictions(logits, labels, torch.arange(n), 0.0)

    zero = torch.zeros(4)
    probe = ProbeFit(torch.zeros(2, 4), torch.zeros(2), zero, zero + 1, 0.1, 0.3, 0.8, 0.4)
    # 20 images: the fine-tuned epoch is right more often but confidently wrong where it errs
    small = probe_floor.compare(probe, predictions(20, 19, 12.0), 0.95)
    assert small.metric == "loss" and small.probe_wins
    # 300 images: accuracy decides, as validation then ranks by it reliably
    large = probe_floor.compare(probe, predictions(300, 285, 12.0), 0.95)
    assert large.metric == "accuracy" and not large.probe_wins
