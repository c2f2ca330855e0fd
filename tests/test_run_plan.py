"""plan.json's `run`: every choice of a run, made before its first step, and why."""

from __future__ import annotations

import json

import tlearn
from fast import TINY
from tlearn.training.state import STATE_NAME


def _run_plan(run) -> dict:
    return json.loads((run / "plan.json").read_text())["run"]


def test_the_default_run_says_what_it_chose_and_why(make_image_folder, tmp_path):
    run = tmp_path / "run"
    tlearn.train(str(make_image_folder(n=8)), out=str(run), **TINY)
    plan = _run_plan(run)
    assert plan["strategy"] == "linear-probe" and plan["input_path"] == "solved"
    assert plan["head_fit"] == "lbfgs" and plan["epochs"] == 1
    assert plan["why"]["strategy"].startswith("auto: a linear probe on a CPU")
    assert plan["why"]["epochs"] == "one solve, recorded as one epoch"
    assert plan["why"]["features"].startswith(
        "auto: the candidate with the lowest train + val cross-validation"
    )
    assert plan["phases"] == [{"epochs": 1, "trainable_stages": 0}]


def test_given_options_are_named_as_given_and_resume_keeps_the_record(make_image_folder, tmp_path):
    run = tmp_path / "run"
    data = str(make_image_folder(n=8))
    options = dict(TINY, strategy="finetune", epochs=2, augment="none", lr=0.01)
    tlearn.train(data, out=str(run), **options)
    plan = _run_plan(run)
    assert plan["input_path"] == "images" and plan["head_fit"] == "sgd"
    assert plan["epochs"] == 2 and plan["lr"] == 0.01 and plan["augment"] == "none"
    for name in ("strategy", "epochs", "lr", "augment"):
        assert plan["why"][name] == f"given (--{name})"
    assert plan["why"]["schedule"] == "default"
    written = (run / "plan.json").read_text()
    assert (run / STATE_NAME).is_file()
    tlearn.train(resume=str(run), log=TINY["log"])  # finished: nothing to redo, nothing rewritten
    assert (run / "plan.json").read_text() == written
