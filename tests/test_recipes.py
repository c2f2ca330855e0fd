"""Budget planner, early stopping, weight averaging, class balance and same-seed reproducibility."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tlearn
from runs import InterruptingLoss, assert_same_run, metric_rows
from tlearn.cli import main
from tlearn.config import TrainConfig, parse_duration
from tlearn.errors import TlearnError
from tlearn.training.balance import class_weights, draw_order, per_class_recall, sample_weights
from tlearn.training.ema import WeightAverage
from tlearn.training.interrupt import Interrupted
from tlearn.training.planner import (
    PlanInputs,
    Throughput,
    early_stages,
    expected_error,
    fit_remaining,
    make_plan,
    refit_schedule,
    split_epochs,
)
from tlearn.training.state import load_state
from tlearn.training.stopping import EarlyStopping

TINY = dict(
    backbone="test_resnet", weights="none", image_size=32, workers=0, batch_size=4,
    val_split=0.25, log=lambda line: None, cache=False,
)  # fmt: skip


@pytest.fixture
def unbalanced(make_image_folder, tmp_path) -> Path:
    """Three classes, 9/9/3 images: a minority class for --balance to care about."""
    folder = make_image_folder(classes=("a", "b", "c"), n=9)
    for extra in sorted((folder / "c").iterdir())[3:]:
        extra.unlink()
    return folder


# -- --budget parsing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("10m", 600), ("2h", 7200), ("1h30m", 5400), ("45", 45)]
)
def test_budget_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["10x", "", "m", "0m", "-5m", "10m5"])
def test_bad_budget_is_one_sentence(text, capsys):
    with pytest.raises(TlearnError, match="must be a duration like 90s, 10m, 2h") as caught:
        TrainConfig(data="x", budget=text).validate()
    assert str(caught.value).count(". ") == 0 and "\n" not in str(caught.value)


def test_cli_refuses_a_bad_budget_with_exit_2(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--budget", "10x"]) == 2
    err = capsys.readouterr().err
    assert "--budget '10x' must be a duration" in err and "Traceback" not in err


# -- the planner, on synthetic measurements --------------------------------------------------------

# this project's reference CPU: EfficientNet-Lite0 ~350 img/s training at 64 px, ~1300 inference
REFERENCE = [
    Throughput(64, 350.0, 1300.0),
    Throughput(96, 160.0, 600.0),
    Throughput(128, 90.0, 330.0),
]


def inputs(budget_s: float, n_train=60_000, n_val=10_000, classes=10, **kw) -> PlanInputs:
    values = dict(
        budget_s=budget_s, spent_s=10.0, n_train=n_train, n_val=n_val, n_classes=classes,
        native_size=28, backbone_size=224, cpu_cores=2, gpu=False, batch_size=128,
        throughputs=REFERENCE, decode_ips=20_000.0,
    )  # fmt: skip
    values.update(kw)
    return PlanInputs(**values)


def test_tiny_budget_probes_frozen_features():
    plan = make_plan(inputs(120))
    assert plan.strategy == "linear-probe"
    assert plan.head == "mlp" and plan.augment == "none"
    assert plan.estimated_s <= 120


FULL_STEPS = 469  # 60,000 images in batches of 128


def trained_epochs(plan) -> float:
    """Passes over the data a plan trains, shares of epochs included."""
    return plan.epochs * (plan.steps_per_epoch or FULL_STEPS) / FULL_STEPS


def test_ten_minutes_fine_tunes_at_64px_to_the_end_of_the_budget():
    plan = make_plan(inputs(600))
    assert plan.strategy == "finetune" and plan.image_size == 64
    # ~182 s an epoch with validation: 3.15 fit, so 4 epochs of 369 of the 469 batches
    assert plan.epochs == 4 and plan.steps_per_epoch == 369
    assert 3.1 < trained_epochs(plan) < 3.2
    assert plan.augment == "flip"  # a few epochs: flips only
    assert plan.schedule == "onecycle"
    assert 0.98 * 600 <= plan.estimated_s <= 600
    assert any("369 of the 469 batches" in r for r in plan.reasons)


def test_fractional_epochs_become_equal_shares():
    assert split_epochs(2.6, 100) == (3, 86)
    assert split_epochs(3.0, 100) == (3, None)
    assert split_epochs(1.0, 7) == (1, None)
    assert split_epochs(0.5, 10) == (1, 5)


def test_more_budget_buys_epochs_then_pixels_and_stays_inside():
    previous = 0
    for budget in (600, 1800, 3600, 7200, 36_000):
        plan = make_plan(inputs(budget))
        assert plan.estimated_s <= budget, budget
        assert plan.strategy == "finetune"
        compute = trained_epochs(plan) * plan.image_size**2
        assert compute >= previous  # never less compute for more time
        previous = compute
    assert make_plan(inputs(36_000)).image_size > 64  # a long budget grows the images


def test_early_stages_are_those_with_few_weights():
    lite0 = [928, 896, 13968, 39712, 198480, 446784, 1652640, 1017600]  # its 8 stages' sizes
    assert early_stages(lite0) == 4  # 1.6% of the weights, most of the step's time at 64 px
    assert early_stages([9536, 147968, 525568, 2099712, 8393728]) == 2  # resnet18's
    assert early_stages([10, 10]) == 0  # never the whole backbone
    assert early_stages([]) == 0


def test_a_budget_fine_tune_keeps_the_early_stages_frozen():
    plan = make_plan(inputs(600, frozen_stages=4))
    assert plan.strategy == "freeze:4"
    assert any("first 4 backbone stages" in r for r in plan.reasons)
    small = make_plan(inputs(600, n_train=500, n_val=100, classes=10, frozen_stages=4))
    assert small.strategy == "gradual"  # little data thaws everything, top first


def test_storing_the_frozen_stages_buys_epochs_or_pixels_inside_the_budget():
    plain = make_plan(inputs(1800, frozen_stages=4))
    # the reference machine's Lite0 with its first 4 stages' outputs stored (measured here)
    stored = [
        Throughput(t.image_size, t.train_ips, t.infer_ips, t.train_ips * 1.5, 2800 * 64 / s)
        for t, s in zip(REFERENCE, (64, 96, 128), strict=True)
    ]
    plan = make_plan(inputs(1800, frozen_stages=4, throughputs=stored))
    assert trained_epochs(plan) * plan.image_size**2 > trained_epochs(plain) * plain.image_size**2
    assert plan.estimated_s <= 1800 and plan.augment == "flip"
    assert any("computed once" in r for r in plan.reasons)
    assert not any("computed once" in r for r in plain.reasons)
    row = next(c for c in plan.candidates if c["image_size"] == plan.image_size)
    assert row["frozen_stages_once_s"] > 0
    # so many epochs fit that random crops are planned: pixels change, nothing can be stored
    long = make_plan(inputs(36_000, frozen_stages=4, throughputs=stored))
    assert long.augment == "light" and not any("computed once" in r for r in long.reasons)


def test_error_model_prefers_pixels_once_epochs_saturate():
    assert expected_error(64, 8, 224, probe=False) > expected_error(96, 4, 224, probe=False)
    assert expected_error(96, 1, 224, probe=False) > expected_error(64, 3, 224, probe=False)
    # measured on Fashion-MNIST at the same cost: 64 px x 4 94.29%, 96 px x 2 94.61%
    assert expected_error(64, 4, 224, probe=False) > expected_error(96, 2, 224, probe=False)


def test_little_data_per_class_unfreezes_gradually():
    plan = make_plan(inputs(600, n_train=500, n_val=100, classes=10))
    assert plan.strategy == "gradual"
    assert plan.epochs >= 10


def test_the_plan_explains_itself():
    plan = make_plan(inputs(600))
    text = " ".join(plan.reasons)
    assert "600s" in text and "epoch" in text
    assert [c["image_size"] for c in plan.candidates] == [64, 96, 128]


def test_budget_run_records_its_plan_and_the_resolved_config(make_image_folder, tmp_path):
    data = make_image_folder(n=8)
    out = tmp_path / "run"
    lines: list[str] = []
    options = {**TINY, "image_size": None, "log": lines.append}
    tlearn.train(str(data), out=str(out), budget="30s", **options)
    plan = json.loads((out / "plan.json").read_text())
    config = TrainConfig.from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text()))
    assert config.strategy == plan["strategy"] != "auto"
    assert config.epochs == plan["epochs"] and config.image_size == plan["image_size"]
    assert any(line.startswith("plan for --budget 30s") for line in lines)
    assert any("because" in line for line in lines)
    assert len(metric_rows(out)) <= plan["epochs"]


def test_refit_follows_the_real_speed_of_the_first_steps():
    plan = make_plan(inputs(600, frozen_stages=4))
    planned_step_s = 128 / 350.0
    used = plan.estimated_s - trained_epochs(plan) * FULL_STEPS * planned_step_s
    used -= plan.epochs * plan.epoch_other_s + 4.0  # what the plan spends besides steps

    def refit(step_s: float, cap: int = 60) -> float:
        epochs, limit = refit_schedule(plan, step_s, FULL_STEPS, 40, used + 40 * step_s, cap)
        assert limit is None or 40 < limit < FULL_STEPS
        return epochs * (limit or FULL_STEPS) / FULL_STEPS

    assert refit(planned_step_s) == pytest.approx(trained_epochs(plan), abs=0.01)
    faster, slower = refit(planned_step_s / 1.5), refit(planned_step_s * 1.5)
    assert slower < trained_epochs(plan) < faster
    assert faster == pytest.approx(1.5 * trained_epochs(plan), rel=0.05)  # time, not epochs
    assert refit(100.0) == 41 / FULL_STEPS  # past the budget: the epoch ends at the next step
    assert refit(1e-6, cap=7) == 7  # never past the dataset's cap


def test_a_budget_run_refits_its_epochs_and_records_them(make_image_folder, tmp_path, monkeypatch):
    import tlearn.training.planner as planner

    def overplanned(inputs: PlanInputs) -> planner.Plan:
        plan = make_plan(inputs)
        plan.strategy, plan.epochs = "finetune", 40  # far more than 4 seconds allow
        return plan

    monkeypatch.setattr(planner, "make_plan", overplanned)
    lines: list[str] = []
    out = tmp_path / "run"
    data = make_image_folder(n=24)  # 36 training images: 18 steps of 2 per epoch
    options = {**TINY, "batch_size": 2, "image_size": None, "log": lines.append}
    tlearn.train(str(data), out=str(out), budget="4s", **options)
    refit = [line for line in lines if line.startswith("refitted to the budget")]
    assert refit and "instead of 40" in refit[0]
    config = __import__("yaml").safe_load((out / "config.yaml").read_text())
    plan = json.loads((out / "plan.json").read_text())
    assert config["epochs"] == plan["applied"]["epochs"] == plan["epochs"] < 40
    assert config["steps_per_epoch"] == plan["applied"]["steps_per_epoch"]
    assert config["steps_per_epoch"] == plan["steps_per_epoch"]
    assert len(metric_rows(out)) <= config["epochs"]


def test_the_rest_of_a_budget_run_is_refitted_both_ways_at_each_epoch():
    # 3 epochs of 100 steps left at 1 s a step, 5 s besides each: 315 s
    assert fit_remaining(320, 1.0, 5.0, 3, 100, 100, 3) is None  # fits as planned
    assert fit_remaining(250, 1.0, 5.0, 3, 100, 100, 3) == (3, 35)  # 250 - 15 - 200
    assert fit_remaining(150, 1.0, 5.0, 3, 100, 100, 3) == (2, 40)  # 150 - 10 - 100
    assert fit_remaining(7, 1.0, 5.0, 3, 100, 100, 3) == (0, 0)  # not 5 steps: stop
    # faster than planned: the last epoch grows, then epochs are added up to the cap
    assert fit_remaining(300, 1.0, 5.0, 3, 100, 60, 3) == (3, 85)
    assert fit_remaining(500, 1.0, 5.0, 3, 100, 100, 10) == (5, 75)  # 500 - 25 - 400
    assert fit_remaining(500, 1.0, 5.0, 3, 100, 100, 3) is None  # capped: as planned
    assert fit_remaining(318, 1.0, 5.0, 3, 100, 100, 10) is None  # 3 more steps: not worth it
    assert fit_remaining(312, 1.0, 5.0, 3, 100, 100, 3) is None  # 3 steps over: within noise


class SlowsDown(torch.nn.CrossEntropyLoss):
    """Cross-entropy that takes `pause` seconds a call from call `after` on: a machine that
    becomes slower once the run has planned (and refitted) its epochs."""

    after, calls, pause = 0, 0, 0.0

    def forward(self, logits, labels):
        cls = type(self)
        cls.calls += 1
        if cls.calls > cls.after:
            __import__("time").sleep(cls.pause)
        return super().forward(logits, labels)


def test_a_budget_run_that_slows_down_still_anneals_by_its_end(
    make_image_folder, tmp_path, monkeypatch
):
    lines: list[str] = []
    data = make_image_folder(n=12)  # 18 training images: 9 steps of 2 an epoch
    SlowsDown.after, SlowsDown.calls, SlowsDown.pause = 9, 0, 0.4
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", SlowsDown)
    options = {**TINY, "batch_size": 2, "log": lines.append}
    out = tmp_path / "run"
    # epoch 1 runs at full speed; from epoch 2 each step takes 0.4 s more: 7 more epochs of 9
    # steps would take over 25 s, past the budget (which the start-up also spends)
    tlearn.train(str(data), out=str(out), strategy="finetune", epochs=8, budget="25s", **options)
    short = [line for line in lines if "the budget is running short" in line]
    assert short, lines
    config = __import__("yaml").safe_load((out / "config.yaml").read_text())
    assert config["epochs"] < 8 or config["last_epoch_steps"] is not None
    rows = metric_rows(out)
    assert len(rows) == config["epochs"], "\n".join(lines)  # ran to the shortened end
    steps = (config["epochs"] - 1) * 9 + (config["last_epoch_steps"] or 9)
    assert SlowsDown.calls == steps
    state = load_state(out / "state.pt")
    assert state["scheduler"]["last_epoch"] == steps
    # the schedule ended with the run: its last step trained at the end of the cosine
    lr = state["optimizer"]["param_groups"][0]["lr"]
    assert lr < 0.05 * state["optimizer"]["param_groups"][0]["initial_lr"]


def test_budget_stops_before_an_epoch_that_would_overrun(make_image_folder, tmp_path):
    lines: list[str] = []
    options = {**TINY, "log": lines.append}
    data = make_image_folder(n=8)
    tlearn.train(
        str(data), out=str(tmp_path / "r"), strategy="finetune", epochs=500, budget="1s", **options
    )
    assert len(metric_rows(tmp_path / "r")) < 500
    assert any("past the 1s budget" in line for line in lines)
    state = load_state(tmp_path / "r" / "state.pt")
    assert state["position"]["finished"]


# -- early stopping --------------------------------------------------------------------------------


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


# -- weight averaging ------------------------------------------------------------------------------


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


# -- class imbalance -------------------------------------------------------------------------------


def test_class_weights_are_inverse_frequency_with_mean_one():
    targets = torch.tensor([0] * 6 + [1] * 2)
    w = class_weights(targets, 3)  # class 2 absent
    assert w[2] == 0
    assert w[1] == pytest.approx(3 * w[0])
    assert sample_weights(targets, 3).mean() == pytest.approx(1.0)


def test_weighted_draw_evens_out_the_classes():
    targets = torch.tensor([0] * 90 + [1] * 10)
    order = draw_order(100, torch.Generator().manual_seed(0), sample_weights(targets, 2))
    minority = int((targets[order] == 1).sum())
    assert 30 <= minority <= 70  # ~50 of 100, against 10 in a plain permutation
    assert sorted(draw_order(100, torch.Generator().manual_seed(0), None).tolist()) == list(
        range(100)
    )


def test_per_class_recall():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert per_class_recall(logits, labels, 3) == [1.0, pytest.approx(1 / 3), None]


@pytest.mark.parametrize("balance", ["weighted-loss", "sampler"])
def test_balanced_runs_log_recall_per_class(unbalanced, tmp_path, balance):
    lines: list[str] = []
    tlearn.train(
        str(unbalanced), out=str(tmp_path / balance), strategy="finetune", epochs=1,
        balance=balance, **{**TINY, "log": lines.append},
    )  # fmt: skip
    row = metric_rows(tmp_path / balance)[0]
    assert {"recall_a", "recall_b", "recall_c"} <= row.keys()
    assert any("val recall per class: a " in line for line in lines)
    if balance == "weighted-loss":
        assert any("class weights (inverse frequency)" in line for line in lines)


# -- same seed, same metrics; and resuming with the recipes on -------------------------------------

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


def test_the_probe_runs_the_network_at_each_candidate_size(monkeypatch):
    """The backbones resize inputs to their own size: a probe that forgot it timed one size."""
    from tlearn.models import create_backbone
    from tlearn.models.normalize import NormalizedBackbone
    from tlearn.training.planner import measure_throughput
    from tlearn.training.runtime import autocast_factory
    from tlearn.training.trainer import build_classifier

    seen: list[tuple[int, int]] = []
    original = NormalizedBackbone.forward

    def forward(self, images):
        seen.append((images.shape[-1], self.input_size))
        return original(self, images)

    monkeypatch.setattr(NormalizedBackbone, "forward", forward)
    model = build_classifier([create_backbone("test_resnet", "none", 32)], 2, TrainConfig(data="x"))
    plain = autocast_factory(torch.device("cpu"), "fp32")
    measured = measure_throughput(model, [32, 64], torch.device("cpu"), plain, plain, batch=2)
    assert [t.image_size for t in measured] == [32, 64]
    assert {size for size, own in seen} == {32, 64} and all(s == o for s, o in seen)
    assert model.backbones[0].input_size == 32  # the run's model is left as it was


def test_the_probe_times_training_on_stored_frozen_stage_outputs():
    from tlearn.models import create_backbone
    from tlearn.training.planner import measure_throughput
    from tlearn.training.runtime import autocast_factory
    from tlearn.training.trainer import build_classifier

    backbone = create_backbone("test_efficientnet", "none", 32)
    model = build_classifier([backbone], 2, TrainConfig(data="x"))
    first = {id(p) for stage in backbone.stages()[:2] for p in stage}
    frozen = frozenset(n for n, p in model.named_parameters() if id(p) in first)
    plain = autocast_factory(torch.device("cpu"), "fp32")
    cpu = torch.device("cpu")
    (t,) = measure_throughput(model, [32], cpu, plain, plain, 2, frozen, store_prefix=True)
    assert t.stored_train_ips and t.prefix_ips and t.train_ips
    assert model.backbones[0].after_prefix is None  # the run's model computes from images
    (t,) = measure_throughput(model, [32], cpu, plain, plain, 2, frozen)
    assert t.stored_train_ips is None


# -- --steps-per-epoch: epochs that train on a share of the data ----------------------------------


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


# -- which epoch's weights are kept --------------------------------------------------------------


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
