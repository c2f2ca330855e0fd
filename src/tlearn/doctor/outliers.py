"""Images far from every class, and classes far from each other in size.

Outliers are scored by cleanlab's `OutOfDistribution` (the mean distance to an image's nearest
neighbours in feature space, mapped to (0, 1], lower is stranger). Every dataset has a least
typical image, so a rank alone flags something in perfect data; an image is reported only when
its distance stands out from the rest (beyond the median by OUTLIER_MADS robust deviations),
and they are shown for review, not left out: a rare view of a class is worth keeping.
"""

from __future__ import annotations

import numpy as np

from tlearn.doctor.labels import require_extra

OUTLIER_MADS = 6.0
MAX_OUTLIER_SHARE = 0.01  # never more than this share of the images
IMBALANCE_RATIO = 3.0  # largest class over smallest from which imbalance is worth a remedy


def outlier_scores(features: np.ndarray) -> np.ndarray:
    """cleanlab's out-of-distribution score of each row (lower: further from its neighbours)."""
    require_extra()
    from cleanlab.outlier import OutOfDistribution

    k = int(min(10, len(features) - 1))
    return OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False)


def outlier_rows(scores: np.ndarray) -> np.ndarray:
    """Rows whose distance stands out (see the module's docstring), strangest first."""
    distance = -np.log(np.clip(scores, 1e-12, 1.0))
    median = np.median(distance)
    mad = np.median(np.abs(distance - median)) * 1.4826 + 1e-12
    robust = (distance - median) / mad
    rows = np.flatnonzero(robust > OUTLIER_MADS)
    rows = rows[np.argsort(-robust[rows])]
    return rows[: int(MAX_OUTLIER_SHARE * len(scores))]


def imbalance(counts: dict[str, int]) -> tuple[float, str, str]:
    """(largest / smallest class size, largest class, smallest class)."""
    big = max(counts, key=counts.__getitem__)
    small = min(counts, key=counts.__getitem__)
    return counts[big] / max(counts[small], 1), big, small
