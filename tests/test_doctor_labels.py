"""Label issues: which listed rows `--exclude` drops by default (the more-likely-wrong ones)."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.doctor.findings import Finding, counts
from tlearn.doctor.labels import find_label_issues, wrong_label_probability
from tlearn.doctor.run import DoctorResult

pytest.importorskip("cleanlab")
pytest.importorskip("sklearn")


def _clusters(seed: int, flips: int, ambiguous: int):
    """Three Gaussian classes in 16-D, `flips` labels moved to another class, and `ambiguous`
    points halfway between classes 0 and 1 whose (right) label is either: hard, not wrong."""
    rng = np.random.default_rng(seed)
    means = 4.0 * np.eye(3, 16)
    labels = np.repeat(np.arange(3), 80)
    x = means[labels] + rng.normal(size=(len(labels), 16))
    mid = (means[0] + means[1]) / 2 + 0.6 * rng.normal(size=(ambiguous, 16))
    x = np.concatenate([x, mid]).astype(np.float32)
    given = np.concatenate([labels, rng.integers(0, 2, ambiguous)])
    flipped = rng.choice(len(labels), flips, replace=False)
    given[flipped] = (given[flipped] + rng.integers(1, 3, flips)) % 3
    hard = np.arange(len(labels), len(labels) + ambiguous)
    return x, given, flipped, hard


def test_flipped_labels_are_excluded_and_hard_right_ones_only_listed():
    x, given, flipped, hard = _clusters(0, flips=12, ambiguous=20)
    issues = find_label_issues(x, given, 3, folds=5, seed=0)
    listed = set(issues.positions.tolist())
    dropped = set(issues.positions[issues.wrong_probability > 0.5].tolist())
    assert len(issues.wrong_probability) == len(issues.positions)
    assert dropped <= listed
    assert len(dropped & set(flipped.tolist())) >= 8  # most flips are dropped
    assert len(dropped & set(hard.tolist())) <= 3  # few hard, right labels are
    assert len(listed & set(hard.tolist())) > len(dropped & set(hard.tolist()))  # but listed


def test_clean_data_loses_almost_nothing():
    x, given, _, _ = _clusters(1, flips=0, ambiguous=0)
    issues = find_label_issues(x, given, 3, folds=5, seed=0)
    assert (issues.wrong_probability > 0.5).sum() <= 2


def test_wrong_label_probability_follows_the_probe_and_the_noise_matrix():
    # two classes, the probe sure of class 0 for the first rows: a row labelled 1 there is wrong
    probs = np.array([[0.99, 0.01]] * 40 + [[0.02, 0.98]] * 40 + [[0.5, 0.5]] * 4)
    labels = np.array([0] * 38 + [1] * 2 + [1] * 40 + [0, 1, 0, 1])
    wrong = wrong_label_probability(labels, probs)
    assert wrong.shape == (len(labels),)
    assert ((wrong >= 0) & (wrong <= 1)).all()
    assert (wrong[38:40] > 0.5).all()  # confidently another class
    assert (wrong[:38] < 0.1).all() and (wrong[40:80] < 0.1).all()
    assert (wrong[80:] < 0.6).all()  # a coin toss is not "confidently wrong"


def test_summary_says_how_many_label_rows_exclude_drops():
    findings = [
        Finding("label", "a.jpg", action="exclude"),
        Finding("label", "b.jpg", action="review"),
        Finding("label", "c.jpg", action="review"),
        Finding("duplicate", "d.jpg"),
    ]
    result = DoctorResult(findings, counts(findings), {}, None, {"files": 0.1})
    text = result.summary()
    assert "label          3 (1 more likely wrong than right: action exclude" in text
    assert "duplicate      1\n" in text + "\n"  # all of a kind dropped: nothing added
