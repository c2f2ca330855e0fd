"""doctor.html: one self-contained page (thumbnails embedded) to review the findings by eye.

The page has no external file, script or font, so it can be mailed, archived or opened offline;
each finding shows its image and the images it was compared with. The longest lists are cut at
MAX_CARDS per kind on the page (issues.csv keeps all of them).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image

from tlearn.data.images import open_image
from tlearn.doctor import duplicates as dup
from tlearn.doctor.findings import KINDS, Finding, sorted_findings
from tlearn.doctor.inputs import Catalog
from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text

MAX_CARDS = 120
THUMB_PX = 112

_STYLE = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222}
table{border-collapse:collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}
th:first-child,td:first-child{text-align:left}
.cards{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ccc;border-radius:6px;padding:6px;width:250px;font-size:12px}
.card img{width:112px;height:112px;object-fit:contain;background:#eee;margin:1px}
.missing{display:inline-block;width:112px;height:112px;background:#fdd;font-size:11px}
.path{word-break:break-all;color:#555}
"""


def write_page(path: Path, result, catalog: Catalog, data: str) -> Path:
    thumbs: dict[str, str] = {}
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>tlearn doctor: "
        f"{_e(data)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>tlearn doctor: {_e(data)}</h1>",
        f"<p>{result.images} images. "
        "Nothing in the data was changed. Review the findings, delete the rows of "
        "<code>issues.csv</code> you disagree with, then <code>tlearn train DATA --exclude "
        "issues.csv</code>.</p>",
        _summary_table(result),
        _class_table(result.class_counts),
    ]
    if result.threshold is not None:
        t = result.threshold
        parts.append(
            f"<p>Near copies: candidates (nearest neighbours in feature space and in a blurry "
            f"thumbnail's) whose aligned fine detail correlates at {t.similarity:.3f} or more: "
            f"halfway between where {t.copies} generated copies of the data's images begin "
            f"({t.copies_from:.3f}) and where its distinct nearest pairs end "
            f"({t.distinct_to:.3f}); and whose backbone features' cosine reaches "
            f"{t.cosine:.3f}, which {dup.CALIBRATION_KEEP:.0%} of the generated copies reach.</p>"
        )
        if not t.separated:
            parts.append(
                "<p>On this data generated copies and distinct images overlap: the threshold "
                "keeps false alarms out, so some near copies may be missed.</p>"
            )
    by_kind: dict[str, list[Finding]] = {}
    for f in sorted_findings(result.findings):
        by_kind.setdefault(f.kind, []).append(f)
    for kind, items in by_kind.items():
        parts.append(f"<h2 id='{kind}'>{kind}: {len(items)}</h2><p>{_e(KINDS.get(kind, ''))}</p>")
        if len(items) > MAX_CARDS:
            parts.append(f"<p>The first {MAX_CARDS} are shown; issues.csv lists all.</p>")
        cards = [_card(f, catalog, thumbs) for f in items[:MAX_CARDS]]
        parts.append("<div class='cards'>" + "".join(cards) + "</div>")
    parts.append("</body></html>")
    atomic_write_text(path, "\n".join(parts))
    return path


def _summary_table(result) -> str:
    rows = "".join(
        f"<tr><td><a href='#{k}'>{k}</a></td><td>{n}</td></tr>"
        for k, n in result.counts.items()
        if n
    )
    return f"<table><tr><th>finding</th><th>count</th></tr>{rows}</table>"


def _class_table(class_counts: dict[str, dict[str, int]]) -> str:
    splits = list(class_counts)
    classes = list(next(iter(class_counts.values())))
    head = "".join(f"<th>{_e(s)}</th>" for s in splits)
    body = "".join(
        f"<tr><td>{_e(c)}</td>"
        + "".join(f"<td>{class_counts[s][c]}</td>" for s in splits)
        + "</tr>"
        for c in classes
    )
    return f"<h2>Images per class</h2><table><tr><th>class</th>{head}</tr>{body}</table>"


def _card(f: Finding, catalog: Catalog, thumbs: dict[str, str]) -> str:
    names = ([f.file] if f.file else []) + f.related[:3]
    images = "".join(_image(n, catalog, thumbs) for n in names)
    label = _e(f.label) + (f" &rarr; <b>{_e(f.suggested)}</b>" if f.suggested else "")
    return (
        f"<div class='card'>{images}<div>{_e(f.split)} {label} &middot; score {f.score:.3f}"
        f" &middot; {_e(f.action)}</div><div>{_e(f.detail)}</div>"
        f"<div class='path'>{_e(f.file)}</div></div>"
    )


def _image(name: str, catalog: Catalog, thumbs: dict[str, str]) -> str:
    if name not in thumbs:
        thumbs[name] = _thumbnail_uri(name, catalog)
    uri = thumbs[name]
    if not uri:
        return "<span class='missing'>cannot be shown</span>"
    return f"<img alt='{_e(name)}' title='{_e(name)}' src='{uri}'>"


def _thumbnail_uri(name: str, catalog: Catalog) -> str:
    """A small JPEG of the image as a data: URI, or "" when it cannot be decoded."""
    try:
        im = _load(name, catalog)
    except TlearnError:
        return ""
    im.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _load(name: str, catalog: Catalog) -> Image.Image:
    if Path(name).is_file():
        return open_image(name)
    i = catalog.paths.index(name)  # an in-memory image ("fashion-mnist/train #3")
    return catalog.sources[int(catalog.split[i])].load(int(catalog.local[i]))


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)
