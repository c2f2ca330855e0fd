"""The command line as a user meets it: real subcommands, one-sentence errors, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from tlearn.cli import main

FAST = ["--backbone", "resnet18", "--weights", "none", "--image-size", "32",
        "--batch-size", "8", "--workers", "0"]  # fmt: skip


def test_train_evaluate_predict(tmp_path, make_image_folder, capsys):
    data = make_image_folder(classes=("cat", "dog", "owl"), n=6)
    run = tmp_path / "run"
    assert main(["train", str(data), *FAST, "--strategy", "linear-probe", "--epochs", "6",
                 "--lr", "0.05", "--val-split", "0.34", "--out", str(run)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "epoch 6/6" in out and "val_acc" in out and "best model" in out

    assert main(["evaluate", str(run), str(data), "--json", "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 18 and 0.0 <= report["accuracy"] <= 1.0
    assert len(report["confusion_matrix"]) == 3 and report["per_class"][0]["class"] == "cat"

    image = next((data / "dog").iterdir())
    assert (
        main(["predict", str(run / "best.safetensors"), str(image), "--json", "--topk", "2"]) == 0
    )
    line = json.loads(capsys.readouterr().out.strip())
    assert line["path"] == str(image) and len(line["labels"]) == 2
    assert main(["predict", str(run), str(data / "cat"), "--csv"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()
    assert rows[0] == "path,rank,label,probability" and len(rows) == 1 + 6 * 3
    assert main(["predict", str(run), str(data / "cat")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 6


def test_flags_override_config_file(tmp_path, make_image_folder, capsys):
    data = make_image_folder(n=4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {data}\nepochs: 5\nstrategy: linear-probe\n")
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), *FAST, "--epochs", "1", "--out", str(run)]) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    assert "epochs: 1" in (run / "config.yaml").read_text()


def _error_of(args, capsys) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tlearn: error: ") and "Traceback" not in err
    return err


def test_user_errors_are_one_sentence(tmp_path, make_image_folder, capsys):
    data = make_image_folder(n=4)
    one_class = make_image_folder(root=tmp_path / "one", classes=("cat",), n=3)
    (tmp_path / "empty").mkdir()
    save_file({"w": torch.zeros(1)}, tmp_path / "foreign.safetensors")
    assert "no such dataset" in _error_of(["train", str(tmp_path / "nope"), *FAST], capsys)
    assert "no class folders" in _error_of(["train", str(tmp_path / "empty"), *FAST], capsys)
    assert "class" in _error_of(["train", str(one_class), *FAST], capsys)
    err = _error_of(["train", str(data), "--backbone", "resnet181", "--weights", "none"], capsys)
    assert "tlearn backbones" in err
    assert "--epochs" in _error_of(["train", str(data), *FAST, "--epochs", "0"], capsys)
    assert "freeze:N" in _error_of(["train", str(data), *FAST, "--strategy", "thaw"], capsys)
    err = _error_of(["evaluate", str(tmp_path / "foreign.safetensors"), str(data)], capsys)
    assert "not a tlearn model file" in err
    assert "no model at" in _error_of(["predict", str(tmp_path / "missing"), str(data)], capsys)


def test_bad_choice_is_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "x", "--head", "conv"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_module_entry_point_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tlearn", "evaluate", str(tmp_path / "none"), "data"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_datasets_and_backbones_listing(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist" in out and "cifar10" in out
    assert main(["backbones", "--offline"]) == 0
    out = capsys.readouterr().out
    assert "tf_efficientnet_lite0" in out and "package:" in out
