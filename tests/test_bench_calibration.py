"""benchmarks/calibration.py's estimators and benchmarks/doctor.py's paired standard error."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


calibration = _load("calibration")
doctor = _load("doctor")


def test_equal_mass_ece_by_hand():
    # four images, two bins of two: confidences 0.6, 0.7 (one right) and 0.9, 0.95 (both right)
    p = torch.tensor([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.05, 0.95]])
    labels = torch.tensor([0, 0, 0, 1])
    expected = (2 * abs(0.65 - 0.5) + 2 * abs(0.925 - 1.0)) / 4
    assert abs(calibration.equal_mass_ece(p, labels, bins=2) - expected) < 1e-6


def test_floor_is_binning_noise_that_shrinks_with_more_images():
    g = torch.Generator().manual_seed(0)
    small, large = (2.0 * torch.randn(n, 5, generator=g) for n in (300, 5000))
    for ece in (calibration.equal_width_ece, calibration.equal_mass_ece):
        a = calibration.sampling_floor(small, 1.0, draws=20, ece=ece)
        b = calibration.sampling_floor(large, 1.0, draws=20, ece=ece)
        assert 0 < b < a < 0.1


def test_test_temperature_undoes_a_scale():
    g = torch.Generator().manual_seed(1)
    logits = 2.0 * torch.randn(4000, 5, generator=g)
    labels = torch.multinomial(logits.softmax(1), 1, generator=g).flatten()
    out = calibration.extra_estimates(3.0 * logits, labels, temperature=3.0)
    assert abs(out["test_temperature"] - 3.0) < 0.3
    assert out["test_ece_mass_after"] < out["test_ece_mass_before"]


def test_paired_standard_error_counts_only_discordant_images():
    same = [1, 0, 1, 1]
    assert doctor.paired_se(same, same) == 0.0
    a, b = [1, 0] * 50, [0, 1] * 50  # 100 discordant, no net difference: sqrt(100) / 100
    assert abs(doctor.paired_se(a, b) - 0.1) < 1e-12
    assert np.isclose(doctor.paired_se([0] * 10, [1] * 10), 0.0)  # all moved together
