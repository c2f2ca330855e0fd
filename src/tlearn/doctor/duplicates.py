"""Exact copies (the same decoded pixels) and near copies (resized, recompressed, cropped).

Near copies are found in two steps. Candidates: each image's nearest neighbours in the frozen
backbone's feature space and in a blurry thumbnail's space (`candidate_pairs`); the thumbnail
finds the original of a much-downscaled copy that the features of a small image lose.
Confirmation: the candidates' fine detail, aligned (`pixels.pair_similarity`), which two photos
of different shirts on the same cloth fail however alike their features are. The threshold on
that similarity comes from the data itself (`calibrate`), from two sides: copies of some of its
own images are generated the way copies arise (downscaled, trimmed, JPEG-recompressed), and the
data's own nearest pairs, nearly all distinct images, say how alike two different pictures of
this data can look. The threshold sits halfway between where the copies begin and where the
distinct pairs end; a fixed number would be right for one kind of photo only. The benchmark
(`benchmarks/doctor.py`) measures recall and false alarms with it on real data.

A second gate reads the backbone's features: a pair is a copy only if their cosine also reaches
the cosine that the same share of generated copies reach (`Threshold.cosine`). At 32 px the
pixel detail of two different pictures (a B-2 and a bird on the same sky) can align as well as
a halved copy's; their features differ, where a copy's stay close. The gate needs no distinct
side: on photos of one backdrop every nearest pair's features are close, so it only removes
pairs that are less alike than nearly every copy.

Where the distinct pairs end is read two ways, and the higher wins. Their bulk (median and
spread) ignores the data's own copies in the tail, but also the tail of distinct look-alikes,
which grows with the data: two different 32-px CIFAR frogs can match as well as a halved copy.
Pairs of differently labelled images are nearly all distinct pictures, so on a large dataset
the similarity that only one in a thousand of them reach bounds the distinct tail from data
that holds few copies.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from tlearn.doctor import pixels

NEIGHBOURS = 5  # candidates per image in each of the two spaces
CALIBRATION_KEEP = 0.97  # where the copies begin: what 97% of generated copies reach (both gates)
DISTINCT_SPREAD = 4.0  # where distinct pairs end: robust deviations above their median
CROSS_CLASS_TAIL = 0.001  # the share of differently labelled nearest pairs above the threshold
CROSS_CLASS_MIN = 2000  # images with a differently labelled candidate: below, that tail is noise
_BLOCK = 2048  # rows per block of the similarity matrix
_PAIR_BLOCK = 16_384  # pairs per block of feature cosines
_PROJECT_ABOVE = 20_000  # items; more are compared in a 128-dim PCA projection (O(N^2) search)


def make_copy(im: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A copy as copies arise: downscaled to 50-90%, trimmed by 0-8%, saved as JPEG q50-90."""
    scale = rng.uniform(0.5, 0.9)
    w, h = im.size
    im = im.resize((max(int(w * scale), 8), max(int(h * scale), 8)), Image.Resampling.BILINEAR)
    trim = rng.uniform(0.0, 0.08) / 2
    w, h = im.size
    im = im.crop((int(w * trim), int(h * trim), w - int(w * trim), h - int(h * trim)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(50, 91)))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def unit_rows(features: np.ndarray) -> np.ndarray:
    x = features.astype(np.float32)
    if len(x) > _PROJECT_ABOVE:
        x = _project(x, 128)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)


def _project(x: np.ndarray, width: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    sample = x[rng.choice(len(x), min(len(x), 5000), replace=False)]
    mean = sample.mean(0)
    _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
    return (x - mean) @ vt[:width].T


def _fisher(r: np.ndarray) -> np.ndarray:
    """Correlations on the scale where their spread is even (atanh): 0.99 is far from 0.9."""
    return np.arctanh(np.clip(np.asarray(r, dtype=np.float64), -0.9999, 0.9999))


@dataclass
class Threshold:
    """A candidate pair is a copy when its aligned pixel similarity reaches `similarity` and
    its feature cosine reaches `cosine`."""

    similarity: float
    copies_from: float  # the similarity CALIBRATION_KEEP of the generated copies reach
    distinct_to: float  # the end of the data's distinct pairs (see `calibrate`)
    copies: int  # generated copies it was calibrated on
    copy_scores: list[float]  # their similarities (for the benchmark and the page)
    cosine: float = -1.0  # the feature cosine CALIBRATION_KEEP of them reach (-1: no gate)

    @property
    def separated(self) -> bool:
        """False when copies and distinct pairs overlap: then precision wins, recall may fall."""
        return self.copies_from > self.distinct_to

    def passes(self, found: Candidates) -> np.ndarray:
        """[m] which candidate pairs pass both gates."""
        return (found.similarity >= self.similarity) & (found.cosine >= self.cosine)


def calibrate(
    copy_scores: np.ndarray,
    distinct_best: np.ndarray,
    cross_best: np.ndarray | None = None,
    copy_cosines: np.ndarray | None = None,
) -> Threshold:
    """Halfway (on the atanh scale) between the copies' start and the distinct pairs' end.

    `copy_scores`: similarity of each generated copy to its original. `distinct_best`: each
    image's best similarity among its candidates (exact copies left out). A few real copies in
    the data sit in the latter's tail; median and median absolute deviation ignore them.
    `cross_best`: the same among candidates with another label; where there are enough, the
    distinct pairs end no lower than their `1 - CROSS_CLASS_TAIL` quantile. `copy_cosines`:
    each generated copy's feature cosine to its original (none: no feature gate).
    """
    zc, zd = _fisher(copy_scores), _fisher(distinct_best)
    copies_from = float(np.quantile(zc, 1 - CALIBRATION_KEEP))
    median = float(np.median(zd)) if len(zd) else 0.0
    spread = 1.4826 * float(np.median(np.abs(zd - median))) if len(zd) else 0.0
    distinct_to = median + DISTINCT_SPREAD * spread
    if cross_best is not None and len(cross_best) >= CROSS_CLASS_MIN:
        tail = float(np.quantile(_fisher(cross_best), 1 - CROSS_CLASS_TAIL))
        distinct_to = max(distinct_to, tail)
    z = (copies_from + distinct_to) / 2 if copies_from > distinct_to else distinct_to
    gate = -1.0
    if copy_cosines is not None and len(copy_cosines):
        gate = float(np.quantile(copy_cosines, 1 - CALIBRATION_KEEP))
    return Threshold(
        float(np.tanh(z)), float(np.tanh(copies_from)), float(np.tanh(distinct_to)),
        len(copy_scores), sorted(float(s) for s in copy_scores), gate,
    )  # fmt: skip


def candidate_pairs(features: np.ndarray, coarse: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """[m, 2] pairs (i < j, each once): j among i's k nearest in either space, or i in j's."""
    found = [_nearest(unit_rows(features), k), _nearest(coarse.astype(np.float32), k)]
    n = len(features)
    i = np.repeat(np.arange(n), sum(f.shape[1] for f in found))
    j = np.concatenate(found, axis=1).ravel()
    keep = i != j
    lo, hi = np.minimum(i, j)[keep], np.maximum(i, j)[keep]
    return np.unique(np.stack([lo, hi], axis=1), axis=0).astype(np.int64)


def _nearest(x: np.ndarray, k: int) -> np.ndarray:
    """[n, k] each row's k most similar other rows (rows unit-length), blockwise."""
    k = min(k, len(x) - 1)
    out = np.zeros((len(x), max(k, 0)), dtype=np.int64)
    if k <= 0:
        return out
    for start in range(0, len(x), _BLOCK):
        block = x[start : start + _BLOCK] @ x.T
        block[np.arange(len(block)), np.arange(start, start + len(block))] = -np.inf
        out[start : start + len(block)] = np.argpartition(-block, k - 1, axis=1)[:, :k]
    return out


@dataclass
class Candidates:
    pairs: np.ndarray  # [m, 2] rows of the features / bases, i < j
    similarity: np.ndarray  # [m] aligned pixel similarity (`pixels.pair_similarity`)
    cosine: np.ndarray  # [m] cosine of the pair's backbone features


def search(features: np.ndarray, bases: np.ndarray) -> Candidates:
    """Candidate pairs of the items (features and grey bases row by row), with their scores."""
    pairs = candidate_pairs(features, pixels.coarse_views(bases))
    return Candidates(pairs, pixels.pair_similarity(bases, pairs), pair_cosine(features, pairs))


def pair_cosine(features: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """[m] cosine of each pair's feature rows, in blocks of pairs (a gather of all is GBs)."""
    x = features.astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True) + 1e-12
    out = np.empty(len(pairs), dtype=np.float32)
    for start in range(0, len(pairs), _PAIR_BLOCK):
        p = pairs[start : start + _PAIR_BLOCK]
        out[start : start + len(p)] = np.einsum("ij,ij->i", x[p[:, 0]], x[p[:, 1]])
    return out


def copy_cosine(features: np.ndarray, copy_features: np.ndarray) -> np.ndarray:
    """[n] feature cosine of each copy to its original (rows pair up by position)."""
    return pair_cosine(np.concatenate([features, copy_features]), _to_copies(len(features)))


def _to_copies(n: int) -> np.ndarray:
    """[n, 2] pairs of originals and copies stacked as `originals + copies`: row i with n + i."""
    return np.stack([np.arange(n), n + np.arange(n)], axis=1)


def best_per_item(n: int, found: Candidates, leave_out: np.ndarray) -> np.ndarray:
    """[n] each item's best candidate similarity, pairs where `leave_out` is true not counted."""
    best = np.full(n, -1.0)
    keep = ~leave_out
    for side in (0, 1):
        np.maximum.at(best, found.pairs[keep, side], found.similarity[keep])
    return best[best > -1.0]


def copy_similarity(bases: np.ndarray, copies: np.ndarray) -> np.ndarray:
    """[n] similarity of each copy's grey base to its original's (rows pair up by position)."""
    return pixels.pair_similarity(np.concatenate([bases, copies]), _to_copies(len(bases)))


def exact_groups(digests: list[str]) -> list[list[int]]:
    """Items with the same pixel digest, groups of two or more ("" = undecodable, never equal)."""
    by: dict[str, list[int]] = {}
    for i, d in enumerate(digests):
        if d:
            by.setdefault(d, []).append(i)
    return [g for g in by.values() if len(g) > 1]


def groups_of(n: int, pairs: list[tuple[int, int]]) -> list[list[int]]:
    """Connected groups (union-find) of the items the pairs link."""
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for a, b in pairs:
        for x in (a, b):
            members.setdefault(root(x), [])
    for x in range(n):
        r = root(x)
        if r in members:
            members[r].append(x)
    return [sorted(set(g)) for g in members.values() if len(set(g)) > 1]
