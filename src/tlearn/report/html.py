"""One self-contained HTML page: inline CSS, figures embedded as data URIs, no script, no network.

The page opens from disk anywhere (a mail attachment, a CI artifact); the same PNGs also sit
beside it for slides and papers. Numbers a test compares carry `data-*` attributes.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1180px; padding: 1em 2em;
       color: #1d232a; }
h1 { font-size: 1.6em; margin-bottom: .2em; } h2 { border-bottom: 2px solid #dde3ea;
       padding-bottom: .2em; margin-top: 2em; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #dde3ea; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f3f6f9; } td.num { text-align: right; }
.scroll { max-height: 420px; overflow: auto; display: inline-block; }
img.figure { max-width: 100%; height: auto; display: block; margin: .5em 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { border: 1px solid #dde3ea; border-radius: 6px; padding: 6px; width: 340px; }
.card img { width: 160px; height: 160px; object-fit: contain; background: #f3f6f9; }
.headline { display: flex; gap: 2.5em; flex-wrap: wrap; margin: 1em 0; }
.headline div { font-size: 1.1em; } .headline b { display: block; font-size: 1.7em; }
.note { color: #5b6673; } pre { background: #f3f6f9; padding: .6em; overflow: auto; }
"""


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def figure(path: Path, alt: str) -> str:
    """An embedded figure, titled with the file that also sits beside the page."""
    name = escape(Path(path).name)
    return f'<img class="figure" src="{data_uri(path)}" alt="{escape(alt)}" title="{name}">'


def cell(value: Any, attrs: dict[str, str] | None = None) -> str:
    text = escape(number(value) if isinstance(value, float) else str(value))
    extra = "".join(f' {k}="{escape(v)}"' for k, v in (attrs or {}).items())
    kind = ' class="num"' if isinstance(value, (int, float)) else ""
    return f"<td{kind}{extra}>{text}</td>"


def number(value: float) -> str:
    """The one format numbers are shown in (and a test reads back): four decimals."""
    return f"{value:.4f}"


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], scroll: bool = False,
          attrs: Iterable[Sequence[dict | None]] | None = None, id_: str = "") -> str:  # fmt: skip
    """`attrs`: per row, per cell, the `data-*` attributes of that cell (or None)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    attr_rows = list(attrs) if attrs is not None else None
    body = []
    for r, row in enumerate(rows):
        cell_attrs = attr_rows[r] if attr_rows is not None else [None] * len(row)
        body.append("<tr>" + "".join(cell(v, a) for v, a in zip(row, cell_attrs, strict=True))
                    + "</tr>")  # fmt: skip
    ident = f' id="{escape(id_)}"' if id_ else ""
    html = f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    return f'<div class="scroll">{html}</div>' if scroll else html


def key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    return table(("", ""), [(k, "" if v is None else v) for k, v in pairs])


def page(title: str, sections: Sequence[tuple[str, str]], lead: str = "") -> str:
    parts = [f"<h1>{escape(title)}</h1>", lead]
    toc = " · ".join(f'<a href="#{escape(slug(name))}">{escape(name)}</a>' for name, _ in sections)
    parts.append(f'<p class="note">{toc}</p>')
    for name, body in sections:
        parts.append(f'<section id="{escape(slug(name))}"><h2>{escape(name)}</h2>{body}</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
