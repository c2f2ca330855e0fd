"""The learning-rate range test: the sweep, its suggestion, its files, and `--lr auto`."""

from __future__ import annotations

import csv
import math

import pytest
import yaml

import tlearn
from fast import RESNET18
from tlearn.cli import build_parser, main
from tlearn.config import TrainConfig
from tlearn.errors import TlearnError
from tlearn.training.lr_find import (
    exponential_lrs,
    range_test,
    suggest_lr,
    valley_index,
)

FAST = dict(RESNET18)


def bowl(lr: float) -> float:
    """A loss that falls from 2 to 0.5 between 1e-4 and 1e-2, then blows up past 1e-1."""
    x = math.log10(lr)
    falling = 2.0 - 1.5 / (1 + math.exp(-3 * (x + 3)))
    return falling + (0.0 if x < -1 else 10 ** (2 * (x + 1)) - 1)


def test_sweep_is_exponential_and_stops_when_the_loss_diverges():
    lrs = exponential_lrs(1e-7, 10.0, 100)
    assert lrs[0] == 1e-7 and math.isclose(lrs[-1], 10.0)
    assert math.isclose(lrs[1] / lrs[0], lrs[50] / lrs[49])
    seen, losses, smoothed = range_test(bowl, steps=100)
    assert len(seen) < 100 and smoothed[-1] > 4 * min(smoothed)  # stopped at divergence
    assert losses == [bowl(lr) for lr in seen]


def test_sweep_stops_at_a_non_finite_loss():
    seen, _, _ = range_test(lambda lr: float("nan") if lr > 1e-3 else 1.0, steps=100)
    assert max(seen) <= 1e-3


def test_valley_lands_inside_the_descent():
    result = suggest_lr(bowl, default=1e-3, steps=100)
    assert result.method == "valley"
    assert 1e-4 < result.suggestion < 1e-1
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert valley_index([3.0, 2.0, 2.5, 1.5, 1.0, 0.9, 2.0]) in range(1, 6)
    assert valley_index([1.0, 1.0]) is None


def test_a_curve_that_never_falls_keeps_the_default():
    result = suggest_lr(lambda lr: 1.0 + lr, default=3e-3, steps=100)
    assert result.suggestion == 3e-3 and result.method.startswith("default")


def test_lr_find_writes_plot_and_csv_and_suggests_a_rate_in_range(tmp_path, make_image_folder):
    data = make_image_folder(classes=("cat", "dog", "owl"), n=8)
    out = tmp_path / "sweep"
    code = main(["lr-find", str(data), "--backbone", "resnet18", "--weights", "none",
                 "--image-size", "32", "--batch-size", "8", "--workers", "0", "--no-cache",
                 "--strategy", "linear-probe", "--steps", "40", "--out", str(out)])  # fmt: skip
    assert code == 0
    png, table = out / "lr_find.png", out / "lr_find.csv"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    rows = list(csv.DictReader(open(table)))
    assert 10 <= len(rows) <= 40
    lrs = [float(r["lr"]) for r in rows]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-7)
    marked = [r for r in rows if r["mark"]]
    assert marked and all(1e-7 <= float(r["lr"]) <= 10 for r in marked)


def test_lr_find_on_images_trains_the_widest_phase(tmp_path, make_image_folder):
    data = make_image_folder(n=6)
    lines: list[str] = []
    result = tlearn.lr_find(str(data), strategy="gradual", augment="light", steps=12,
                                out=str(tmp_path / "s"), log=lines.append, **FAST)  # fmt: skip
    assert any("on images, top" in line for line in lines)
    assert 1e-7 <= result.suggestion <= 10 and len(result.lrs) <= 12
    assert (tmp_path / "s" / "lr_find.png").is_file()


def test_lr_is_a_number_or_auto_on_the_command_line():
    parser = build_parser()
    assert parser.parse_args(["train", "d", "--lr", "auto"]).lr == "auto"
    assert parser.parse_args(["train", "d", "--lr", "0.01"]).lr == 0.01
    with pytest.raises(TlearnError, match="--lr"):
        TrainConfig(data="d", lr="fast").validate()
    assert TrainConfig(data="d", lr="0.5").validate().lr == 0.5  # from a YAML string
    assert TrainConfig(data="d", lr="auto").validate().resolved_lr() > 0


def test_train_with_lr_auto_uses_the_suggestion_and_trains_as_if_given_it(
    tmp_path, make_image_folder
):
    data = make_image_folder(classes=("cat", "dog", "owl"), n=8)
    common = dict(strategy="linear-probe", epochs=2, cache_dir=str(tmp_path / "cache"),
                  log=lambda s: None, **FAST)  # fmt: skip
    lines: list[str] = []
    tlearn.train(
        str(data), lr="auto", out=str(tmp_path / "auto"), **{**common, "log": lines.append}
    )
    assert any("features/train" in line and "reused" in line for line in lines)  # swept on them
    run = tmp_path / "auto"
    assert (run / "lr_find.png").is_file() and (run / "lr_find.csv").is_file()
    lr = yaml.safe_load(open(run / "config.yaml"))["lr"]
    assert isinstance(lr, float) and 1e-7 <= lr <= 10
    marked = [r for r in csv.DictReader(open(run / "lr_find.csv")) if "valley" in r["mark"]]
    assert marked and float(marked[0]["lr"]) == pytest.approx(lr, rel=1e-4)
    tlearn.train(str(data), lr=lr, out=str(tmp_path / "given"), **common)

    def metrics(name):
        return [
            (r["train_loss"], r["val_loss"])
            for r in csv.DictReader(open(tmp_path / name / "metrics.csv"))
        ]

    assert metrics("auto") == metrics("given")
