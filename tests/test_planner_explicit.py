"""An option the user gives survives a `--budget` plan; one left unset is the plan's to choose."""

from __future__ import annotations

import json

import pytest
import yaml

from tlearn.cli import main
from tlearn.config import PLANNABLE_DEFAULTS, TrainConfig
from tlearn.training.budget import PLANNED_OPTIONS, Plan, apply_plan


def finetune_plan() -> Plan:
    return Plan(strategy="finetune", image_size=96, epochs=4, lr=3e-3, head="linear",
                augment="flip", schedule="onecycle", estimated_s=100.0, budget_s=120.0,
                steps_per_epoch=37, batch_size=32)  # fmt: skip


def probe_plan() -> Plan:
    return Plan(strategy="linear-probe", image_size=64, epochs=20, lr=3e-3, head="mlp",
                augment="none", schedule="cosine", estimated_s=50.0, budget_s=60.0)  # fmt: skip


def test_unset_options_take_the_plan():
    cfg = TrainConfig(data="x", budget="2m").validate()
    assert all(getattr(cfg, name) is None for name in PLANNED_OPTIONS)
    assert apply_plan(cfg, finetune_plan()) == []
    assert (cfg.strategy, cfg.epochs, cfg.steps_per_epoch) == ("finetune", 4, 37)
    assert cfg.batch_size == 32  # what the plan's throughputs were measured at
    assert (cfg.image_size, cfg.lr, cfg.augment, cfg.schedule) == (96, 3e-3, "flip", "onecycle")
    assert cfg.head is None  # a fine-tuning plan has no say on the head
    assert cfg.fill_defaults().head == "linear"


@pytest.mark.parametrize(
    "name, value, plan",
    [
        ("augment", "none", finetune_plan),  # the default's own value, given explicitly
        ("augment", "light", finetune_plan),
        ("schedule", "cosine", finetune_plan),
        ("schedule", "constant", finetune_plan),
        ("head", "linear", probe_plan),
        ("epochs", 2, finetune_plan),
        ("steps_per_epoch", 5, finetune_plan),
        ("image_size", 128, finetune_plan),
        ("lr", 0.01, finetune_plan),
        ("batch_size", 64, finetune_plan),
    ],
)
def test_each_explicit_option_survives_the_plan(name, value, plan):
    cfg = TrainConfig.from_dict({"data": "x", "budget": "2m", name: value}).validate()
    the_plan = plan()
    assert apply_plan(cfg, the_plan) == [name]
    assert getattr(cfg, name) == value
    assert the_plan.kept == [name] and any("kept as given" in r for r in the_plan.reasons)
    others = {n: getattr(cfg, n) for n in PLANNED_OPTIONS if n != name}
    assert others["augment" if name != "augment" else "schedule"] is not None  # the plan's


def test_the_defaults_fill_only_what_nobody_chose():
    cfg = TrainConfig(data="x", augment="flip").fill_defaults()
    assert cfg.augment == "flip"
    assert (cfg.head, cfg.schedule) == (PLANNABLE_DEFAULTS["head"], PLANNABLE_DEFAULTS["schedule"])
    unset = TrainConfig(data="x")
    assert unset.with_defaults().augment == "none" and unset.augment is None


def test_help_shows_the_defaults_of_plannable_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: none)" in text and "(default: cosine)" in text


def test_budget_run_keeps_explicit_augment_and_schedule(make_image_folder, tmp_path):
    """`tlearn train DATA --budget 2m --augment none --schedule cosine`: neither is the plan's."""
    data = make_image_folder(n=8)
    run = tmp_path / "run"
    fast = ["--backbone", "test_resnet", "--weights", "none", "--image-size", "32",
            "--batch-size", "4", "--workers", "0", "--epochs", "1"]  # fmt: skip
    args = ["train", str(data), "--budget", "2m", "--augment", "none", "--schedule", "cosine"]
    assert main([*args, *fast, "--out", str(run)]) == 0
    plan = json.loads((run / "plan.json").read_text())
    assert plan["applied"]["augment"] == "none" and plan["applied"]["schedule"] == "cosine"
    assert {"augment", "schedule", "epochs"} <= set(plan["kept"])
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["augment"] == "none" and config["schedule"] == "cosine"
    assert config["strategy"] == plan["strategy"] != "auto"
    run_plan = plan["run"]  # the whole run's choices, each with its reason
    assert run_plan["augment"] == "none" and run_plan["why"]["augment"] == "given (--augment)"
    assert run_plan["schedule"] == "cosine" and run_plan["why"]["schedule"] == "given (--schedule)"
    assert (
        run_plan["strategy"] == plan["strategy"] and "--budget plan" in run_plan["why"]["strategy"]
    )
