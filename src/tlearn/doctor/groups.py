"""Groups of copies become findings: which copy to leave out, and why.

Within a split one copy of each group is kept (the first by path) and the others are listed;
copies with different labels are all listed (one of the labels is wrong, and the doctor cannot
tell which). A copy in an earlier split of an image of a later one (train before val before
test) is leakage: the earlier copy is listed (with the later copies and its own split's other
copies as related files), so the held-out split stays as it was and keeps measuring what it
should.
"""

from __future__ import annotations

from tlearn.doctor.duplicates import groups_of
from tlearn.doctor.findings import Finding
from tlearn.doctor.inputs import Catalog

EXACT = 1.0  # the score of an exact copy: the most a near pair's pixel similarity can be


def duplicate_findings(
    catalog: Catalog,
    exact: list[list[int]],
    near: list[tuple[int, int, float]],
    digests: list[str],
) -> list[Finding]:
    score: dict[int, float] = {}
    links = [(g[0], m) for g in exact for m in g[1:]]
    for a, b, s in near:
        links.append((a, b))
        score[a], score[b] = max(score.get(a, 0.0), s), max(score.get(b, 0.0), s)
    for g in exact:
        for m in g:
            score[m] = EXACT
    out: list[Finding] = []
    for group in groups_of(len(catalog), links):
        out += _group_findings(catalog, group, score, digests)
    return out


def _group_findings(catalog: Catalog, group: list[int], score, digests) -> list[Finding]:
    order = sorted(group, key=lambda i: (int(catalog.split[i]), catalog.paths[i]))
    out: list[Finding] = []
    last_split = int(catalog.split[order[-1]])
    leaked = [i for i in order if int(catalog.split[i]) < last_split]
    for i in leaked:
        later = [j for j in order if int(catalog.split[j]) > int(catalog.split[i])]
        # its copies in its own split too: two train files of one test picture are also a pair
        peers = [j for j in leaked if j != i and catalog.split[j] == catalog.split[i]]
        out.append(_finding(catalog, "leak", i, later + peers, score, digests))
    rest = [i for i in order if int(catalog.split[i]) == last_split]
    if len(rest) < 2:
        return out
    if len({int(catalog.labels[i]) for i in rest}) > 1:
        for i in rest:
            out.append(
                _finding(catalog, "conflict", i, [j for j in rest if j != i], score, digests)
            )
        return out
    keep = rest[0]
    for i in rest[1:]:
        kind = "duplicate" if digests[i] and digests[i] == digests[keep] else "near-duplicate"
        out.append(_finding(catalog, kind, i, [keep], score, digests))
    return out


def _finding(catalog: Catalog, kind: str, i: int, others: list[int], score, digests) -> Finding:
    exact = any(digests[i] and digests[i] == digests[j] for j in others)
    labels = sorted({catalog.label_of(j) for j in others} - {catalog.label_of(i)})
    detail = "exact copy" if exact else f"near copy (similarity {score.get(i, 0.0):.3f})"
    if labels:
        detail += f"; labelled {', '.join(labels)} there"
    return Finding(
        kind,
        catalog.paths[i],
        catalog.split_of(i),
        catalog.label_of(i),
        score=EXACT if exact else score.get(i, 0.0),
        action="exclude",
        related=[catalog.paths[j] for j in others],
        detail=detail,
    )
