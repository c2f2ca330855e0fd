"""--budget: parsing, the pure planner on synthetic measurements, the probe, and budget runs."""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch

import tlearn
from fast import TINY
from runs import metric_rows
from tlearn.cli import main
from tlearn.config import TrainConfig, parse_duration
from tlearn.errors import TlearnError
from tlearn.training.budget import (
    PlanInputs,
    Throughput,
    budget_batch_size,
    early_stages,
    expected_error,
    fit_remaining,
    make_plan,
    refit_schedule,
    split_epochs,
)
from tlearn.training.budget.plan import REPORT_FIXED_S
from tlearn.training.budget.probe import report_images
from tlearn.training.interrupt import Interrupted
from tlearn.training.state import load_state


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
    assert plan.head == "linear" and plan.epochs == 1 and plan.augment == "none"  # solved
    assert plan.estimated_s <= 120


FULL_STEPS = 469  # 60,000 images in batches of 128


def trained_epochs(plan) -> float:
    """Passes over the data a plan trains, shares of epochs included."""
    return plan.epochs * (plan.steps_per_epoch or FULL_STEPS) / FULL_STEPS


def test_ten_minutes_fine_tunes_at_64px_to_the_end_of_the_budget():
    plan = make_plan(inputs(600))
    assert plan.strategy == "finetune" and plan.image_size == 64
    # ~216 s an epoch with validation (the probe's steps x 1.2): 2.67 fit, so 3 epochs of 418
    assert plan.epochs == 3 and plan.steps_per_epoch == 418
    assert 2.6 < trained_epochs(plan) < 2.7
    assert plan.augment == "flip"  # a few epochs: flips only
    assert plan.schedule == "onecycle"
    assert 0.98 * 600 <= plan.estimated_s <= 600
    assert any("418 of the 469 batches" in r for r in plan.reasons)


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


# clothing10's 2-minute plan (3,068 photos, batch 128: 24 steps an epoch), as it was probed
CLOTHING = [
    Throughput(96, 226.6, 927.6, 370.5, 2495.4),
    Throughput(128, 68.8, 487.5, 239.5, 874.9),
    Throughput(160, 36.3, 302.8, 164.6, 560.0, measured=False),
    Throughput(192, 23.0, 207.0, 119.1, 390.0, measured=False),
    Throughput(224, 16.0, 150.6, 89.8, 290.0, measured=False),
]


def test_few_steps_an_epoch_buy_steps_before_pixels():
    # the same 2 epochs are most of the early fall with 200 steps, little of it with 48
    assert expected_error(192, 2, 224, False, steps=48) > expected_error(192, 2, 224, False, 200)
    assert expected_error(192, 2, 224, False, 200) == expected_error(192, 2, 224, probe=False)
    # 1.95 epochs at 192 px (47 steps) against 4.35 at 128 px (104 steps): 85-88% vs 91% test
    assert expected_error(192, 1.95, 224, False, 47) > expected_error(128, 4.35, 224, False, 104)
    photos = dict(n_train=3068, n_val=341, native_size=400, frozen_stages=4, throughputs=CLOTHING)
    plan = make_plan(inputs(120, **photos))
    assert plan.image_size <= 160 and plan.epochs * 24 >= 70
    # with thousands of steps an epoch (CIFAR-10's 45,000 images) pixels still win
    many = make_plan(inputs(1800, **{**photos, "n_train": 45_000, "n_val": 5000}))
    assert many.image_size >= 128


def test_little_data_per_class_unfreezes_gradually():
    plan = make_plan(inputs(600, n_train=500, n_val=100, classes=10))
    assert plan.strategy == "gradual"
    assert plan.epochs >= 10


@pytest.mark.parametrize(
    "n_train, batch", [(100, 16), (220, 16), (540, 32), (1486, 64), (3068, 128), (50000, 128)]
)
def test_a_budget_batch_gives_every_epoch_enough_steps(n_train, batch):
    assert budget_batch_size(n_train) == batch
    assert n_train // batch >= 16 or batch == 16  # the fewest images a batch: 16


def test_a_budget_run_trains_at_the_batch_its_plan_was_measured_at(
    make_image_folder, tmp_path, monkeypatch
):
    import tlearn.training.budget.probe as planner

    def fine_tuning(plan_inputs):
        plan = make_plan(plan_inputs)
        plan.strategy, plan.epochs, plan.steps_per_epoch = "gradual", 1, None
        return plan

    monkeypatch.setattr(planner, "make_plan", fine_tuning)
    out = tmp_path / "run"
    options = {**TINY, "image_size": None, "batch_size": None}
    tlearn.train(str(make_image_folder(n=8)), out=str(out), budget="30s", **options)
    plan = json.loads((out / "plan.json").read_text())
    config = __import__("yaml").safe_load((out / "config.yaml").read_text())
    assert plan["batch_size"] == config["batch_size"] == 16


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
    ran_to = plan["events"][-1]["epochs"] if plan.get("events") else plan["epochs"]
    assert len(metric_rows(out)) <= ran_to  # planned, or as the keeper refitted it


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


def test_a_budget_run_refits_its_epochs_and_records_them(
    make_image_folder, tmp_path, monkeypatch, fake_clock
):
    import tlearn.training.budget.probe as planner

    def overplanned(inputs: PlanInputs) -> planner.Plan:
        plan = make_plan(inputs)
        plan.strategy, plan.epochs = "finetune", 40  # far more than 4 seconds allow
        return plan

    monkeypatch.setattr(planner, "make_plan", overplanned)
    SlowsDown.clock, SlowsDown.tick, SlowsDown.after, SlowsDown.calls = fake_clock, 0.1, 10**9, 0
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", SlowsDown)  # 0.1 s a step on the clock
    lines: list[str] = []
    out = tmp_path / "run"
    data = make_image_folder(n=24)  # 36 training images: 18 steps of 2 per epoch
    options = {**TINY, "batch_size": 2, "image_size": None, "log": lines.append}
    tlearn.train(str(data), out=str(out), budget="4s", **options)
    refit = [line for line in lines if line.startswith("refitted to the budget")]
    assert refit and "instead of 40" in refit[0]
    config = __import__("yaml").safe_load((out / "config.yaml").read_text())
    plan = json.loads((out / "plan.json").read_text())
    # config.yaml and the plan hold what was planned before training; the refit is an event
    assert config["epochs"] == plan["applied"]["epochs"] == plan["epochs"] == 40
    refitted = plan["events"][0]
    assert refitted["epochs"] < 40 and refitted["why"].startswith("refitted after")
    final = plan["events"][-1]
    lengths = {k: final[k] for k in ("epochs", "steps_per_epoch", "last_epoch_steps")}
    assert load_state(out / "state.pt")["budget"]["lengths"] == lengths  # what a resume reads
    assert len(metric_rows(out)) <= final["epochs"]


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
    """Cross-entropy that moves the run's fake clock `tick` seconds a call, and `pause` more from
    call `after` on: a machine that becomes slower once the run has planned its epochs."""

    after, calls, tick, pause, clock = 0, 0, 0.0, 0.0, None

    def forward(self, logits, labels):
        cls = type(self)
        cls.calls += 1
        cls.clock.advance(cls.tick + (cls.pause if cls.calls > cls.after else 0.0))
        return super().forward(logits, labels)


def test_a_budget_run_that_slows_down_still_anneals_by_its_end(
    make_image_folder, tmp_path, monkeypatch, fake_clock
):
    lines: list[str] = []
    data = make_image_folder(n=12)  # 18 training images: 9 steps of 2 an epoch
    SlowsDown.after, SlowsDown.calls, SlowsDown.pause = 9, 0, 0.4
    SlowsDown.clock, SlowsDown.tick = fake_clock, 0.1
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", SlowsDown)
    options = {**TINY, "batch_size": 2, "log": lines.append}
    out = tmp_path / "run"
    # epoch 1 runs at 0.1 s a step; from epoch 2 each step takes 0.4 s more: 7 more epochs of 9
    # steps would take over 25 s, past the budget (on the fake clock: no test time is spent)
    tlearn.train(str(data), out=str(out), strategy="finetune", epochs=8, budget="25s", **options)
    short = [line for line in lines if "the budget is running short" in line]
    assert short, lines
    assert __import__("yaml").safe_load((out / "config.yaml").read_text())["epochs"] == 8
    config = json.loads((out / "plan.json").read_text())["events"][-1]  # the length it ran to
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


def gradual_plan(monkeypatch, epochs: int) -> None:
    """The planner plans `gradual` for `epochs` (little data), whatever it measured."""
    import tlearn.training.budget.probe as planner

    def planned(inputs: PlanInputs) -> planner.Plan:
        plan = make_plan(inputs)
        plan.strategy, plan.epochs, plan.steps_per_epoch = "gradual", epochs, None
        return plan

    monkeypatch.setattr(planner, "make_plan", planned)


def test_a_gradual_budget_run_stretches_its_last_phase_and_resumes_its_thaw(
    make_image_folder, tmp_path, monkeypatch, fake_clock
):
    gradual_plan(monkeypatch, 3)  # the head alone for 1 epoch, then the whole network for 2
    SlowsDown.clock, SlowsDown.tick, SlowsDown.after, SlowsDown.calls = fake_clock, 0.1, 10**9, 0
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", SlowsDown)  # 0.1 s a step on the clock
    lines: list[str] = []
    data = make_image_folder(n=12)  # 18 training images: 9 steps of 2 an epoch
    options = {**TINY, "batch_size": 2, "image_size": None, "deterministic": True}
    options.pop("log")
    tlearn.train(str(data), out=str(tmp_path / "a"), budget="30s", **options, log=lines.append)
    assert not any(line.startswith("refitted to the budget") for line in lines)  # head-only
    stretched = [line for line in lines if "the budget is leaving time" in line]
    assert stretched, "\n".join(lines)
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    final = plan["events"][-1]
    assert plan["run"]["phases"][0] == {"epochs": 1, "trainable_stages": 0}
    assert final["epochs"] > 3 and len(metric_rows(tmp_path / "a")) == final["epochs"]
    phases = [line for line in lines if line.startswith("phase:")]
    assert len(phases) == 2 and phases[1].startswith("phase: 2 epoch(s)")  # as planned
    # interrupted in the stretched part (epoch 5), then resumed: the thaw and the length hold
    SlowsDown.calls, SlowsDown.after = 0, 10**9
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", InterruptAt)
    InterruptAt.at, InterruptAt.trained = 4 * 9 + 2, 0
    b = tmp_path / "b"
    with pytest.raises(Interrupted):
        tlearn.train(str(data), out=str(b), budget="30s", **options, log=print)
    length = load_state(b / "state.pt")["budget"]["lengths"]["epochs"]
    assert length > 3 and metric_rows(b) == metric_rows(tmp_path / "a")[:4]
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", SlowsDown)
    resumed: list[str] = []
    tlearn.train(resume=str(b), log=resumed.append)
    # planned as config.yaml says (the head alone for 1 epoch), the refitted length in the last
    assert [line for line in resumed if line.startswith("phase:")] == [
        f"phase: {length - 1} epoch(s), top 5 backbone stage(s) training, 372,882 trainable "
        "parameters"
    ]
    assert len(metric_rows(b)) == length  # a resumed run only ever shortens: not this one


class InterruptAt(SlowsDown):
    """`SlowsDown` at 0.1 s a step that sends itself SIGINT at training call `at`."""

    at, trained = 0, 0

    def forward(self, logits, labels):
        cls = type(self)
        if logits.requires_grad:  # a training step, not validation
            cls.trained += 1
            if cls.trained == cls.at:
                os.kill(os.getpid(), signal.SIGINT)
        return super().forward(logits, labels)


def test_a_refit_moves_only_the_last_phase():
    from tlearn.training.strategies import plan_backbone_phases

    planned = plan_backbone_phases("gradual", 7, [8])
    longer = plan_backbone_phases("gradual", 7, [8], ending_at=11)
    assert longer[:-1] == planned[:-1] and longer[-1].trainable_stages == 8
    assert sum(p.epochs for p in longer) == 11 and longer[-1].epochs == planned[-1].epochs + 4
    assert plan_backbone_phases("gradual", 7, [8], ending_at=4)[-1].epochs == 1
    assert plan_backbone_phases("gradual", 7, [8], ending_at=7) == planned
    with pytest.raises(TlearnError, match="ends before its last phase starts"):
        plan_backbone_phases("gradual", 7, [8], ending_at=3)


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


def test_the_probe_runs_the_network_at_each_candidate_size(monkeypatch):
    """The backbones resize inputs to their own size: a probe that forgot it timed one size."""
    from tlearn.models import create_backbone
    from tlearn.models.normalize import NormalizedBackbone
    from tlearn.training.budget import measure_throughput
    from tlearn.training.build import build_classifier
    from tlearn.training.runtime import autocast_factory

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
    from tlearn.training.budget import measure_throughput
    from tlearn.training.build import build_classifier
    from tlearn.training.runtime import autocast_factory

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


def test_a_resumed_budget_run_trains_to_the_length_its_refits_left():
    from tlearn.training.budget.keeper import BudgetKeeper, resumed_length

    cfg = TrainConfig(data="x", epochs=8)
    lengths = {"epochs": 3, "steps_per_epoch": None, "last_epoch_steps": 4}
    resumed_length(cfg, {"budget": {"refitted": True, "lengths": lengths}})
    assert (cfg.epochs, cfg.steps_per_epoch, cfg.last_epoch_steps) == (3, None, 4)
    resumed_length(cfg, {"budget": None})  # a run without --budget: nothing to apply
    assert cfg.epochs == 3
    keeper = BudgetKeeper(None)
    assert keeper.state_dict() is None  # no budget, nothing in state.pt
    keeper = BudgetKeeper(60.0)
    keeper.load_state_dict({"refitted": True, "lengths": lengths})
    assert keeper.state_dict() == {"refitted": True, "lengths": lengths}


def test_a_probe_measured_before_on_this_machine_is_not_timed_again(monkeypatch):
    """Planning costs a budget almost nothing the second time (issue 16: at most 10% of it)."""
    from tlearn.models import create_backbone
    from tlearn.training.budget import probe
    from tlearn.training.build import build_classifier
    from tlearn.training.runtime import autocast_factory

    model = build_classifier([create_backbone("test_resnet", "none", 32)], 2, TrainConfig(data="x"))
    plain = autocast_factory(torch.device("cpu"), "fp32")
    cpu = torch.device("cpu")
    first = probe.measure_throughput(model, [32, 48], cpu, plain, plain, batch=2, remember_as="t")

    class Timed(Exception):
        pass

    def no_timing(*args, **kwargs):
        raise Timed  # the probe lets RuntimeError and AssertionError pass as "cannot take it"

    monkeypatch.setattr(probe, "_training_ips", no_timing)
    again = probe.measure_throughput(model, [32, 48], cpu, plain, plain, batch=2, remember_as="t")
    assert again == first
    with pytest.raises(Timed):  # another batch: a new measurement
        probe.measure_throughput(model, [32], cpu, plain, plain, batch=4, remember_as="t")


def test_larger_sizes_are_extrapolated_from_the_two_smallest_probed():
    """Measured on sign-digits (Lite0, freeze:4): 96 and 128 px timed, 160-224 extrapolated."""
    from tlearn.training.budget.plan import Throughput, extrapolated

    measured = [Throughput(96, 186.3, 891.9, 237.4, None), Throughput(128, 90.4, 334.4, 138.6)]
    rest = extrapolated(measured, [160, 192, 224])
    assert [t.image_size for t in rest] == [160, 192, 224] and not any(t.measured for t in rest)
    # the same run also timed them: 63.3, 36.9 and 26.4 images/s training
    for t, real in zip(rest, (63.3, 36.9, 26.4), strict=True):
        assert t.train_ips == pytest.approx(real, rel=0.16)
    assert rest[-1].train_ips == pytest.approx(26.4, rel=0.02)
    assert all(t.prefix_ips is None for t in rest)  # not measured: not made up
    noisy = [Throughput(96, 90.0, 300.0), Throughput(128, 100.0, 300.0)]  # larger timed faster
    assert extrapolated(noisy, [256])[0].train_ips == pytest.approx(100.0 / 4)
    assert extrapolated(measured[:1], [160]) == []


def test_the_report_after_training_is_inside_the_budget():
    """report.html scores the held-out images after training: the plan keeps time for it,
    so the whole command, report included, ends at the budget."""
    without, planned = make_plan(inputs(600)), make_plan(inputs(600, report_images=10_000))
    # 10,000 images decoded at 20,000/s and scored at 64 px's 1,300/s, then the figures
    expected = 10_000 / 20_000 + 10_000 / 1300.0 + REPORT_FIXED_S
    assert planned.report_s == pytest.approx(expected, abs=0.1)
    assert without.report_s == 0
    assert trained_epochs(planned) < trained_epochs(without)  # the report's time is not training
    assert 0.98 * 600 <= planned.estimated_s <= 600
    assert any("report.html" in r for r in planned.reasons)
    assert all("report_s" in c for c in planned.candidates)
    # the refit to the real speed leaves the report its time too
    step_s = 128 / 350.0
    used = 60.0
    shorter = refit_schedule(planned, step_s, FULL_STEPS, 40, used, 60)
    longer = refit_schedule(without, step_s, FULL_STEPS, 40, used, 60)
    assert shorter[0] * (shorter[1] or FULL_STEPS) < longer[0] * (longer[1] or FULL_STEPS)


def test_the_report_scores_the_datas_own_test_folder_else_the_validation_split(
    make_image_folder, tmp_path
):
    splits = SimpleNamespace(val=[0] * 5)
    flat = make_image_folder(root=tmp_path / "flat", n=6)  # split by training: validation
    assert report_images(TrainConfig(data=str(flat)), splits) == 5
    split = make_image_folder(root=tmp_path / "split", n=6, layout="split-test")
    assert report_images(TrainConfig(data=str(split)), splits) == 2 * 3  # test/: 3 a class
