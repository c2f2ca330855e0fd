"""Comparing two run folders: what 'the same run' means for resume and reproducibility tests."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import torch
from safetensors.torch import load_file

TIMING = ("images_per_s", "elapsed_s")  # wall-clock columns differ between identical runs


def metric_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(f)]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical best and last models, and the same metrics apart from timings."""
    for name in ("last.safetensors", "best.safetensors"):
        ta, tb = load_file(a / name), load_file(b / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}: {k} differs"
    assert metric_rows(a) == metric_rows(b)


class InterruptingLoss(torch.nn.CrossEntropyLoss):
    """Cross-entropy that sends itself SIGINT at call `at` (Ctrl-C in the middle of an epoch).

    Set `InterruptingLoss.at, InterruptingLoss.calls = N, 0` and monkeypatch
    `torch.nn.CrossEntropyLoss` with it.
    """

    at, calls = 0, 0

    def forward(self, logits, labels):
        cls = type(self)
        cls.calls += 1
        if cls.calls == cls.at:
            os.kill(os.getpid(), signal.SIGINT)
        return super().forward(logits, labels)
