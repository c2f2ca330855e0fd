"""One finding per row: what is wrong, with which file, how sure, and what to do about it.

`issues.csv` is the user's worklist. Its `file` column names the one file a finding would leave
out of training (the extra copy of a duplicate, the training copy of a leaked test image, the
mislabelled file); `action` says whether `tlearn train --exclude issues.csv` leaves it out
(`exclude`) or only shows it (`review`). Deleting a row, or changing its action, changes that.
Label rows are `exclude` only where the label is more likely wrong than right
(`labels.wrong_label_probability`); the others cleanlab lists are there to look at.
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tlearn.files import atomic_write_text

# Kinds in the order the summary and the page show them, with what each means.
KINDS = {
    "unreadable": "not an image Pillow can decode",
    "truncated": "the file ends before the image does",
    "empty": "a zero-byte file",
    "too-large": "more pixels than the decompression-bomb guard allows",
    "leak": "an image of a held-out split is also in an earlier split",
    "duplicate": "the same pixels as another file of the same class",
    "near-duplicate": "a resized, recompressed or cropped copy of another file of the same class",
    "conflict": "a copy (exact or near) of a file with another label",
    "label": "likely mislabelled: the cross-validated probe disputes the label (action exclude "
    "where the label is more likely wrong than right, else review)",
    "outlier": "far from every class in feature space",
    "small": "much smaller than the backbone's input (upscaled, so blurry to the network)",
    "unusual-mode": "stored in an unusual pixel format (converted to RGB on loading)",
    "imbalance": "classes of very different sizes",
}
FILE_KINDS = ("unreadable", "truncated", "empty", "too-large")
DUPLICATE_KINDS = ("leak", "duplicate", "near-duplicate", "conflict")


@dataclass
class Finding:
    kind: str
    file: str  # "" for a finding about the whole dataset (imbalance)
    split: str = ""
    label: str = ""
    suggested: str = ""  # the probe's label for a label issue
    score: float = 0.0  # how sure or how bad; comparable within a kind, higher is worse
    action: str = "exclude"  # exclude | review
    related: list[str] = field(default_factory=list)  # the other copies, for duplicates
    detail: str = ""

    def row(self) -> dict[str, str]:
        d = asdict(self)
        d["related"] = ";".join(self.related)
        d["score"] = f"{self.score:.4f}"
        return d


COLUMNS = [f.name for f in fields(Finding)]


def write_issues(path: Path, findings: list[Finding]) -> Path:
    """Write `issues.csv` atomically, worst first within each kind, kinds in `KINDS` order."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for f in sorted_findings(findings):
        writer.writerow(f.row())
    atomic_write_text(path, text.getvalue())
    return path


def sorted_findings(findings: list[Finding]) -> list[Finding]:
    order = {k: n for n, k in enumerate(KINDS)}
    return sorted(findings, key=lambda f: (order.get(f.kind, len(order)), -f.score, f.file))


def counts(findings: list[Finding]) -> dict[str, int]:
    """Findings per kind, every kind present (zeros included), in `KINDS` order."""
    out = dict.fromkeys(KINDS, 0)
    for f in findings:
        out[f.kind] = out.get(f.kind, 0) + 1
    return out
