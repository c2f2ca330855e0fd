"""--balance: class weights, weighted draws and per-class recall."""

from __future__ import annotations

import pytest
import torch

import tlearn
from fast import TINY
from runs import metric_rows
from tlearn.training.balance import class_weights, draw_order, per_class_recall, sample_weights


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
