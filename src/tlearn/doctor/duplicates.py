"""Exact copies (the same decoded pixels) and near copies (resized, recompressed, cropped).

Near copies are pairs that look alike twice over: nearest neighbours in the frozen backbone's
feature space (cosine of the features) whose small grey thumbnails also correlate. Either alone
confuses two photos of similar jeans on the same floor with one photo saved twice: pooled
features forget where things are, thumbnails forget what they are. A pair is a copy when the sum
of the two similarities reaches a threshold calibrated on the data itself (`calibrate`): copies
of some of its own images are generated the way copies arise (downscaled, JPEG-recompressed,
trimmed at the borders), and the threshold is set where nearly all of them (`CALIBRATION_KEEP`)
would be found. A fixed number would be right for one backbone and one kind of photo only; the
copies' scores say where "the same picture" lies for these images and this network. The
benchmark (`benchmarks/doctor.py`) measures recall and false alarms with it on real data.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

THUMB = 16  # side of the grey thumbnails compared, after trimming 5% of each border
CALIBRATION_KEEP = 0.97  # share of generated copies the threshold must catch
PREFILTER_MARGIN = 0.05  # feature cosine below the copies' lowest by this is never a copy
_BLOCK = 2048  # rows per block of the similarity matrix
_PROJECT_ABOVE = 20_000  # items; more are compared in a 128-dim PCA projection (O(N^2) search)


def thumbnail(im: Image.Image) -> np.ndarray:
    """A zero-mean, unit-norm grey THUMB x THUMB vector of the image's central 90%."""
    w, h = im.size
    box = (int(w * 0.05), int(h * 0.05), max(int(w * 0.95), 1), max(int(h * 0.95), 1))
    small = im.crop(box).convert("L").resize((THUMB, THUMB), Image.Resampling.BOX)
    a = np.asarray(small, dtype=np.float32).ravel()
    a = a - a.mean()
    return a / (np.linalg.norm(a) + 1e-6)


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


@dataclass
class Threshold:
    """A pair is a copy when cosine + thumbnail correlation >= `combined`, cosine >= `floor`."""

    combined: float
    floor: float
    copies: int  # generated copies it was calibrated on
    copy_scores: list[float]  # their combined scores (for the benchmark and the page)


def calibrate(
    originals: np.ndarray, copies: np.ndarray, thumbs_o: np.ndarray, thumbs_c: np.ndarray
) -> Threshold:
    """The threshold catching CALIBRATION_KEEP of generated copies (rows pair up by position)."""
    a, b = unit_rows(originals), unit_rows(copies)
    cosine = (a * b).sum(1)
    score = cosine + (thumbs_o * thumbs_c).sum(1)
    combined = float(np.quantile(score, 1 - CALIBRATION_KEEP))
    floor = float(cosine.min()) - PREFILTER_MARGIN
    return Threshold(combined, floor, len(score), sorted(float(s) for s in score))


def near_pairs(
    features: np.ndarray, thumbs: np.ndarray, threshold: Threshold
) -> list[tuple[int, int, float]]:
    """`(i, j, score)` with i < j for every pair at or above the threshold."""
    x = unit_rows(features)
    pairs: list[tuple[int, int, float]] = []
    for start in range(0, len(x), _BLOCK):
        block = x[start : start + _BLOCK] @ x.T
        rows, cols = np.nonzero(block >= threshold.floor)
        i = rows + start
        keep = cols > i
        i, j, cos = i[keep], cols[keep], block[rows[keep], cols[keep]]
        score = cos + (thumbs[i] * thumbs[j]).sum(1)
        hit = score >= threshold.combined
        found = zip(i[hit], j[hit], score[hit], strict=True)
        pairs += [(int(a), int(b), float(s)) for a, b, s in found]
    return pairs


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
