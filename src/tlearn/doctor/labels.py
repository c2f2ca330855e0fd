"""Likely label errors: confident learning on out-of-fold probabilities of a frozen-feature probe.

A probe that saw an image while training memorises its label, mistakes included, so every image
is scored by a probe trained on the other folds (k-fold cross-validation). cleanlab's
`find_label_issues` then keeps the images whose given label is implausible next to what the
probe thinks of every class (confident learning: per-class thresholds, so a class the probe is
unsure about everywhere does not flood the list), ranked by how little the probe believes the
given label (self-confidence). scikit-learn and cleanlab are the `doctor` extra.

That list is for review; it also holds hard images whose label is right, and leaving those out
of training costs more than the wrong labels do. So each listed image also gets the probability
that its label is wrong (`wrong_label_probability`), and only images more likely mislabelled than
not are the ones `--exclude` drops by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tlearn.errors import TlearnError
from tlearn.models.calibration import fit_temperature

EXTRA = "pip install 'tlearn[doctor]'"
PCA_WIDTH = 256  # principal components the probe sees (see `_reduced`)
PROBE_C = 0.05  # inverse regularisation of the probe (see `out_of_fold_probabilities`)


def require_extra():
    """cleanlab and scikit-learn, or one sentence saying how to install them."""
    try:
        import cleanlab.filter
        import sklearn.linear_model
    except ImportError as e:
        raise TlearnError(
            f"tlearn doctor needs cleanlab and scikit-learn ({e.name} is missing): {EXTRA}"
        ) from e
    return cleanlab.filter, sklearn.linear_model


@dataclass
class LabelIssues:
    positions: np.ndarray  # rows of the probe's input, most likely mislabelled first
    suggested: np.ndarray  # [len(positions)] the probe's class for each
    given_probability: np.ndarray  # the probe's out-of-fold probability of the given label
    wrong_probability: np.ndarray  # [len(positions)] posterior that the given label is wrong
    pred_probs: np.ndarray  # [N, C] out-of-fold probabilities of every row
    folds: int


def out_of_fold_probabilities(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int, seed: int
) -> tuple[np.ndarray, int]:
    """[N, C] probabilities, each row from a logistic regression that never saw it.

    Features are standardised (stage features mix scales) and projected without labels
    (`_reduced`; principal components are not whitened, so noise directions stay small), and the
    regularisation is strong (C = 0.05): with thousands of feature columns and a few thousand
    images a weak one fits the noise it is meant to expose.
    """
    _, linear_model = require_extra()
    from sklearn.model_selection import StratifiedKFold

    present, counts = np.unique(labels, return_counts=True)
    k = int(min(folds, counts.min()))
    if k < 2 or len(present) < 2:
        raise TlearnError(
            "every class needs at least 2 readable images to cross-validate a probe on; "
            "add images or pass --folds 0 to skip the label check"
        )
    features = _reduced(features, seed)
    probs = np.zeros((len(labels), num_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fit_rows, score_rows in splitter.split(features, labels):
        probe = linear_model.LogisticRegression(C=PROBE_C, max_iter=300)
        probe.fit(features[fit_rows], labels[fit_rows])
        probs[np.ix_(score_rows, probe.classes_)] = probe.predict_proba(features[score_rows])
    return probs, k


def _reduced(features: np.ndarray, seed: int) -> np.ndarray:
    """Standardised features projected on their leading principal components.

    The projection uses no labels, so it leaks nothing between folds, and it makes the probe's
    fits several times faster (with thousands of columns, lbfgs spent minutes on 3,000 images).
    """
    from sklearn.decomposition import PCA

    x = features.astype(np.float32)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    width = int(min(PCA_WIDTH, x.shape[1], len(x) - 1))
    if width >= x.shape[1] or width < 2:
        return x
    return PCA(n_components=width, random_state=seed, svd_solver="randomized").fit_transform(x)


def find_label_issues(
    features: np.ndarray, labels: np.ndarray, num_classes: int, folds: int = 5, seed: int = 0
) -> LabelIssues:
    """Rows whose label the probe disputes, worst first (cleanlab's confident learning)."""
    cl_filter, _ = require_extra()
    probs, k = out_of_fold_probabilities(features, labels, num_classes, folds, seed)
    seen = np.unique(labels)
    # cleanlab wants every column a class with examples: a class absent from the rows is dropped
    sub = probs[:, seen] / np.clip(probs[:, seen].sum(1, keepdims=True), 1e-12, None)
    dense = np.searchsorted(seen, labels)
    ranked = cl_filter.find_label_issues(
        labels=dense, pred_probs=sub, return_indices_ranked_by="self_confidence"
    )
    ranked = np.asarray(ranked, dtype=np.int64)
    suggested = seen[np.argmax(sub[ranked], axis=1)] if len(ranked) else ranked
    given = probs[ranked, labels[ranked]] if len(ranked) else np.zeros(0)
    wrong = wrong_label_probability(dense, sub)[ranked]
    return LabelIssues(ranked, suggested, given, wrong, probs, k)


def wrong_label_probability(labels: np.ndarray, pred_probs: np.ndarray) -> np.ndarray:
    """[N] posterior probability that each given label is not the image's true class.

    Bayes' rule with what the data at hand says: cleanlab's noise matrix `P(given = i | true =
    j)` (from the calibrated confident joint) as the likelihood, and the probe's out-of-fold
    probabilities, temperature-scaled to the given labels, as the prior over the true class (a
    regularised probe is under- or over-confident by a factor no constant knows; Bayes' rule
    needs honest probabilities). A label is excluded when this exceeds 1/2 (more likely wrong
    than right): no threshold fitted to one dataset, and data the estimate finds clean loses
    (almost) nothing.
    """
    import cleanlab.count

    joint = cleanlab.count.compute_confident_joint(labels, pred_probs, calibrate=True)
    _, noise_matrix, _ = cleanlab.count.estimate_latent(joint, labels)
    prior = _temperature_scaled(pred_probs, labels)
    likelihood = noise_matrix[labels] * prior  # [N, C]: P(given | true = j) P(true = j)
    total = likelihood.sum(1)
    right = likelihood[np.arange(len(labels)), labels]
    return np.where(total > 0, 1.0 - right / np.where(total > 0, total, 1.0), 0.0)


def _temperature_scaled(pred_probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Probabilities with one temperature fitted to the given labels (their log as logits)."""
    logits = torch.from_numpy(np.log(np.clip(pred_probs, 1e-12, None)))
    t = fit_temperature(logits, torch.from_numpy(labels))
    return (logits / t).softmax(1).numpy()
