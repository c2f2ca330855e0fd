"""`tlearn doctor DATA`: every check on one dataset, findings in issues.csv and doctor.html.

The checks share two passes over the images: one decode of every file (its problems, a digest
of its pixels, a thumbnail) and the frozen backbone's features (from the feature cache when a
run already computed them). Nothing in the user's data is written, moved or deleted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image

from tlearn.data.sources import ImageListSource, ImageSource
from tlearn.doctor import duplicates as dup
from tlearn.doctor import pixels
from tlearn.doctor.files import check_catalog, file_findings
from tlearn.doctor.findings import Finding, counts, write_issues
from tlearn.doctor.groups import duplicate_findings
from tlearn.doctor.html import write_page
from tlearn.doctor.inputs import Catalog, load_catalog
from tlearn.doctor.labels import find_label_issues, require_extra
from tlearn.doctor.outliers import IMBALANCE_RATIO, imbalance, outlier_rows, outlier_scores

CALIBRATION_IMAGES = 256  # 64 left the copies' 3% quantile to one or two of them


class Extractor(Protocol):
    """Frozen features of a source: `(features [n, F], source positions [n])`."""

    input_size: int
    name: str

    def __call__(
        self, source: ImageSource, description: str, *, cache: bool = True
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class DoctorResult:
    findings: list[Finding]
    counts: dict[str, int]
    class_counts: dict[str, dict[str, int]]  # split -> class -> images
    threshold: dup.Threshold | None
    seconds: dict[str, float] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)
    images: int = 0

    def summary(self) -> str:
        lines = [f"{self.images} images checked in {sum(self.seconds.values()):.1f}s"]
        dropped = {k: sum(f.kind == k and f.action == "exclude" for f in self.findings)
                   for k in ("label",)}  # fmt: skip
        lines += [f"  {kind:<15}{n}{_dropped(dropped, kind, n)}"
                  for kind, n in self.counts.items() if n]  # fmt: skip
        if not any(self.counts.values()):
            lines.append("  no problems found")
        lines += [f"wrote {p}" for p in self.files.values()]
        return "\n".join(lines)


def _dropped(dropped: dict[str, int], kind: str, n: int) -> str:
    """How many of a kind's rows `--exclude` drops, where not all of them are."""
    if kind not in dropped or dropped[kind] == n:
        return ""
    return f" ({dropped[kind]} more likely wrong than right: action exclude; the rest review)"


def run_doctor(
    data: str,
    features: Extractor,
    *,
    out: str | Path | None = None,
    data_root: str | None = None,
    folds: int = 5,
    seed: int = 0,
    workers: int = 0,
    max_image_pixels: int | None = 89_478_485,
    log: Callable[[str], None] = print,
) -> DoctorResult:
    """Check `data`; write `out/issues.csv` and `out/doctor.html` (default `doctor-<name>/`)."""
    if folds:
        require_extra()  # before minutes of feature extraction, not after
    seconds: dict[str, float] = {}
    clock = time.perf_counter()
    catalog = load_catalog(data, data_root)
    checks = check_catalog(catalog, max_image_pixels, workers)
    findings = file_findings(catalog, checks, features.input_size)
    seconds["files"] = time.perf_counter() - clock
    log(f"{len(catalog)} images in {', '.join(catalog.split_names)}: files checked")

    clock = time.perf_counter()
    feats, rows = _catalog_features(catalog, features)
    seconds["features"] = time.perf_counter() - clock

    clock = time.perf_counter()
    digests = [c.digest for c in checks]
    threshold, near = _near_copies(catalog, checks, feats, rows, digests, seed, features)
    findings += duplicate_findings(catalog, dup.exact_groups(digests), near, digests)
    seconds["duplicates"] = time.perf_counter() - clock

    clock = time.perf_counter()
    if folds:
        findings += _label_findings(catalog, feats, rows, folds, seed)
        findings += _outlier_findings(catalog, feats, rows)
    seconds["labels"] = time.perf_counter() - clock
    class_counts = _class_counts(catalog)
    findings += _imbalance_findings(class_counts)

    result = DoctorResult(findings, counts(findings), class_counts, threshold, seconds)
    result.images = len(catalog)
    out_dir = Path(out) if out else Path(f"doctor-{Path(str(data)).name or 'data'}")
    out_dir.mkdir(parents=True, exist_ok=True)
    result.files["issues"] = write_issues(out_dir / "issues.csv", findings)
    result.files["page"] = write_page(out_dir / "doctor.html", result, catalog, data)
    return result


def _catalog_features(catalog: Catalog, features: Extractor) -> tuple[np.ndarray, np.ndarray]:
    """Features of every decodable item, with their catalogue numbers."""
    parts, rows = [], []
    for s, (name, source) in enumerate(zip(catalog.split_names, catalog.sources, strict=True)):
        f, positions = features(source, f"doctor/{name}")
        parts.append(f)
        rows.append(positions + catalog.offset(s))
    return np.concatenate(parts), np.concatenate(rows)


def _near_copies(catalog, checks, feats, rows, digests, seed, features: Extractor):
    """The calibrated threshold, and `(i, j, similarity)` for each near pair (catalogue numbers)."""
    if len(rows) < 2:
        return None, []
    bases = np.stack([_grey(checks[int(i)]) for i in rows])
    found = dup.search(feats, bases)
    a, b = rows[found.pairs[:, 0]], rows[found.pairs[:, 1]]
    same = [bool(digests[i]) and digests[i] == digests[j] for i, j in zip(a, b, strict=True)]
    exact = np.array(same, dtype=bool)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(rows), min(CALIBRATION_IMAGES, len(rows)), replace=False)
    copies = [dup.make_copy(_load(catalog, rows[r]), rng) for r in pick]
    copy_feats, _ = features(ImageListSource(copies, "generated copies"), "doctor/copies",
                             cache=False)  # fmt: skip
    labels = catalog.labels[rows]
    same_label = labels[found.pairs[:, 0]] == labels[found.pairs[:, 1]]
    threshold = dup.calibrate(
        dup.copy_similarity(bases[pick], np.stack([pixels.grey_base(c) for c in copies])),
        dup.best_per_item(len(rows), found, exact),
        dup.best_per_item(len(rows), found, exact | same_label),
        dup.copy_cosine(feats[pick], copy_feats),
    )
    hit = threshold.passes(found) & ~exact
    found_near = zip(a[hit], b[hit], found.similarity[hit], strict=True)
    near = [(int(i), int(j), float(s)) for i, j, s in found_near]
    return threshold, near


def _grey(check) -> np.ndarray:
    return check.grey if check.grey is not None else np.zeros((pixels.BASE,) * 2, np.uint8)


def _load(catalog: Catalog, i) -> Image.Image:
    return catalog.sources[int(catalog.split[int(i)])].load(int(catalog.local[int(i)]))


def _label_findings(catalog, feats, rows, folds, seed) -> list[Finding]:
    labels = catalog.labels[rows]
    issues = find_label_issues(feats, labels, len(catalog.classes), folds, seed)
    out = []
    ranked = zip(issues.positions, issues.suggested, issues.given_probability,
                 issues.wrong_probability, strict=True)  # fmt: skip
    for r, s, p, wrong in ranked:
        i = int(rows[r])
        given, other = catalog.label_of(i), catalog.classes[int(s)]
        detail = (
            f"probe: {p:.0%} {given}, {issues.pred_probs[r, s]:.0%} {other}; "
            f"label wrong with probability {wrong:.0%}"
        )
        where = (catalog.paths[i], catalog.split_of(i), given)
        action = "exclude" if wrong > 0.5 else "review"  # more likely wrong than right
        out.append(Finding("label", *where, other, 1.0 - float(p), action, detail=detail))
    return out


def _outlier_findings(catalog, feats, rows) -> list[Finding]:
    scores = outlier_scores(feats)
    out = []
    for r in outlier_rows(scores):
        i = int(rows[r])
        where = (catalog.paths[i], catalog.split_of(i), catalog.label_of(i))
        detail = f"out-of-distribution score {scores[r]:.3f}"
        out.append(Finding("outlier", *where, "", 1.0 - float(scores[r]), "review", detail=detail))
    return out


def _class_counts(catalog: Catalog) -> dict[str, dict[str, int]]:
    table = {}
    for s, name in enumerate(catalog.split_names):
        labels = catalog.labels[catalog.split == s]
        table[name] = {c: int((labels == k).sum()) for k, c in enumerate(catalog.classes)}
    return table


def _imbalance_findings(class_counts: dict[str, dict[str, int]]) -> list[Finding]:
    first = next(iter(class_counts))  # the split training learns from
    ratio, big, small = imbalance(class_counts[first])
    if ratio < IMBALANCE_RATIO:
        return []
    n = class_counts[first]
    detail = (
        f"{first}: {big} has {n[big]} images, {small} {n[small]} ({ratio:.1f}x); train with "
        "--balance weighted-loss (or sampler) so the small classes count"
    )
    return [Finding("imbalance", "", first, small, score=ratio, action="review", detail=detail)]
