"""`tlearn doctor` on a real dataset with known faults injected into a copy of it.

    PYTHONPATH=src python benchmarks/doctor.py [--data /work/data/clothing10] [--image-size N]

Copies DATA (train/ + test/, and val/ when present) to a folder under /tmp (never the repo, and
the original is never written), then injects into train/: 5% of its labels flipped (files moved
to another class folder), 30 exact copies, 30 near copies (resized to 70%, JPEG quality 60, a
5% crop), 20 test images copied in (leakage) and 10 corrupt files (empty, cut short, not an
image). It runs `tlearn.doctor` on the copy and measures recall and precision per kind, then
trains the same linear probe on the clean data, the noisy copy, and the noisy one with
`--exclude issues.csv`, each scored on the untouched test split. Writes
`benchmarks/results/doctor.json` and `doctor.md` (one section per dataset). The machine is
shared, so times are noisy: the record keeps the load average.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
from PIL import Image

import tlearn

RESULTS = Path(__file__).resolve().parent / "results"
COPY_KINDS = ("duplicate", "near-duplicate", "conflict", "leak")
FLIP_SEP = "~"  # zz_flip_<original class>~<file name>


def inject(root: Path, seed: int) -> dict:
    """Faults in root/train, each file named after what was done to it (`zz_flip_...`)."""
    rng = np.random.default_rng(seed)
    train = root / "train"  # names say what was done to a file: `truth_from_names` reads them
    classes = sorted(d.name for d in train.iterdir() if d.is_dir())
    files = sorted(p for p in train.rglob("*") if p.is_file())
    order = rng.permutation(len(files))
    n_flip = round(0.05 * len(files))
    flips, exact, near = (
        order[:n_flip],
        order[n_flip : n_flip + 30],
        order[n_flip + 30 : n_flip + 60],
    )
    truth: dict = {"flip": [], "exact": [], "near": [], "leak": [], "corrupt": []}
    for i in exact:
        src = files[i]
        dst = src.with_name(f"zz_dup_{src.name}")
        shutil.copy(src, dst)
        truth["exact"].append((str(dst), str(src)))
    for i in near:
        src = files[i]
        im = Image.open(src).convert("RGB")
        w, h = im.size
        im = im.resize((int(w * 0.7), int(h * 0.7)), Image.Resampling.BILINEAR)
        w, h = im.size
        dx, dy = int(w * 0.025), int(h * 0.025)
        dst = src.with_name(f"zz_near_{src.stem}.jpg")
        im.crop((dx, dy, w - dx, h - dy)).save(dst, quality=60)
        truth["near"].append((str(dst), str(src)))
    held_out = sorted(p for p in (root / "test").rglob("*") if p.is_file())
    for i in rng.choice(len(held_out), 20, replace=False):
        src = held_out[i]
        dst = train / src.parent.name / f"zz_leak_{src.name}"
        shutil.copy(src, dst)
        truth["leak"].append((str(dst), str(src)))
    for i in flips:  # after the copies, so no copy is of a file that moves
        src = files[i]
        other = [c for c in classes if c != src.parent.name]
        target = train / other[int(rng.integers(len(other)))]
        dst = target / f"zz_flip_{src.parent.name}{FLIP_SEP}{src.name}"  # names repeat by class
        shutil.move(src, dst)
        truth["flip"].append((str(dst), src.parent.name))
    victims = [files[i] for i in order[n_flip + 60 : n_flip + 70]]
    for k, src in enumerate(victims):
        dst = src.with_name(f"zz_bad_{k}{src.suffix}")
        data = src.read_bytes()
        dst.write_bytes([b"", data[: len(data) // 3], b"<html>not an image</html>"][k % 3])
        truth["corrupt"].append(str(dst))
    return truth


def truth_from_names(noisy: Path) -> dict:
    """The injected faults, read back from the names `inject` gave them (so a run can resume)."""
    truth: dict = {"flip": [], "exact": [], "near": [], "leak": [], "corrupt": []}
    for p in sorted((noisy / "train").rglob("zz_*")):
        name = p.name
        if name.startswith("zz_dup_"):
            truth["exact"].append((str(p), str(p.with_name(name[7:]))))
        elif name.startswith("zz_near_"):
            stem = name[8:-4]
            src = next(q for q in p.parent.iterdir() if q.stem == stem and q != p)
            truth["near"].append((str(p), str(src)))
        elif name.startswith("zz_leak_"):
            truth["leak"].append((str(p), str(noisy / "test" / p.parent.name / name[8:])))
        elif name.startswith("zz_flip_"):
            given, _, _ = name[8:].partition(FLIP_SEP)
            truth["flip"].append((str(p), given))
        elif name.startswith("zz_bad_"):
            truth["corrupt"].append(str(p))
    return truth


def reported_pairs(rows: list[dict], root: Path | None = None) -> set[frozenset]:
    """The copy pairs the doctor reported; with `root`, as paths relative to it."""
    name = (lambda p: str(Path(p).relative_to(root))) if root else str  # noqa: E731
    return {
        frozenset((name(r["file"]), name(rel))) for r in rows if r["kind"] in COPY_KINDS
        for rel in r["related"].split(";") if rel
    }  # fmt: skip


def injected_pairs(truth: dict) -> set[frozenset]:
    """The copy pairs `inject` made: each copy with its original."""
    return {frozenset(p) for k in ("exact", "near", "leak") for p in truth[k]}


def score(rows: list[dict], truth: dict) -> dict:
    kinds = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r)
    pairs = reported_pairs(rows)
    corrupt = {r["file"] for k in ("unreadable", "truncated", "empty") for r in kinds.get(k, [])}
    out = {"reported": {k: len(v) for k, v in kinds.items()}}
    out["corrupt_recall"] = np.mean([f in corrupt for f in truth["corrupt"]])
    for kind in ("exact", "near", "leak"):
        out[f"{kind}_recall"] = np.mean([frozenset(p) in pairs for p in truth[kind]])
    injected = injected_pairs(truth)
    out["duplicate_pairs_reported"] = len(pairs)
    out["duplicate_false_alarm_share"] = 1 - len(pairs & injected) / max(len(pairs), 1)
    ranked = [r["file"] for r in kinds.get("label", [])]
    flipped = {f for f, _ in truth["flip"]}
    top = set(ranked[: 2 * len(flipped)])
    out["flip_recall_top2x"] = len(top & flipped) / len(flipped)
    out["flip_recall_all"] = len(set(ranked) & flipped) / len(flipped)
    suggested = {r["file"]: r["suggested"] for r in kinds.get("label", [])}
    hits = [suggested[f] == c for f, c in truth["flip"] if f in suggested]
    out["flip_suggestion_correct"] = float(np.mean(hits)) if hits else 0.0
    dropped = {r["file"] for r in kinds.get("label", []) if r["action"] == "exclude"}
    out["label_rows_excluded"] = len(dropped)
    out["label_rows_excluded_train"] = sum("/train/" in f for f in dropped)
    out["flips_excluded"] = len(dropped & flipped)
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in out.items()}


def unmodified(clean: Path, args) -> dict:
    """Copy findings on the untouched data: every one a false alarm, or a copy it already had."""
    out = Path(args.work) / "doctor-clean"
    result = tlearn.doctor(str(clean), backbone=args.backbone, image_size=args.image_size,
                           out=out, folds=0, log=lambda s: None)  # fmt: skip
    with open(out / "issues.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kind"] in COPY_KINDS]
    pairs = reported_pairs(rows, clean)  # relative: the noisy copy's pairs are compared with them
    exact = {frozenset((r["file"], r["related"])) for r in rows if r["detail"].startswith("exact")}
    return {
        "rows": {k: sum(r["kind"] == k for r in rows) for k in COPY_KINDS},
        "pairs": len(pairs), "exact_pairs": len(exact),
        "threshold": _threshold(result.threshold),
        "pair_paths": sorted(sorted(p) for p in pairs),
    }  # fmt: skip


def preexisting_sheet(rows: list[dict], truth: dict, target: Path, n: int = 48) -> None:
    """The reported pairs that were not injected, side by side, evenly over their scores."""
    from PIL import ImageDraw

    injected = injected_pairs(truth)
    found = sorted(
        (float(r["score"]), r["file"], rel, r["kind"]) for r in rows if r["kind"] in COPY_KINDS
        for rel in r["related"].split(";") if rel and frozenset((r["file"], rel)) not in injected
    )  # fmt: skip
    if not found:
        return
    side, cols = 64, 8
    picked = [found[i] for i in np.unique(np.linspace(0, len(found) - 1, n).astype(int))]
    size = (cols * (2 * side + 8), -(-len(picked) // cols) * (side + 14))
    sheet = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(sheet)
    for k, (similarity, a, b, kind) in enumerate(picked):
        x, y = (k % cols) * (2 * side + 8), (k // cols) * (side + 14)
        for dx, path in ((0, a), (side, b)):
            sheet.paste(Image.open(path).convert("RGB").resize((side, side)), (x + dx, y))
        draw.text((x, y + side), f"{similarity:.2f} {kind}", fill="black")
    sheet.save(target)


def preexisting_share(rows: list[dict], truth: dict, noisy: Path, before: list) -> dict:
    """Of the reported pairs that were not injected: how many the untouched data has too.

    Those are copies the dataset already held (CIFAR-10 has many: Barz & Denzler 2020) or the
    same false alarm twice; the rest are new, made by the injection. Judging the former needs
    eyes: `benchmarks/results/doctor-not-injected-NAME.png` shows a sample.
    """
    injected = injected_pairs(truth)
    old = {frozenset(p) for p in before}
    pairs = reported_pairs(rows)
    others = [p for p in pairs if p not in injected]
    relative = [frozenset(str(Path(f).relative_to(noisy)) for f in p) for p in others]
    seen = sum(p in old for p in relative)
    return {
        "pairs_not_injected": len(others), "of_them_in_untouched_data": seen,
        "false_alarm_share_new_only": (len(others) - seen) / max(len(pairs), 1),
    }  # fmt: skip


def _threshold(t) -> dict:
    return {
        "similarity": round(t.similarity, 4), "copies_from": round(t.copies_from, 4),
        "distinct_to": round(t.distinct_to, 4), "separated": t.separated, "copies": t.copies,
        "cosine": round(t.cosine, 4),
    }  # fmt: skip


def train_and_score(data: Path, out: Path, exclude: Path | None, args) -> tuple[float, list]:
    options = dict(
        backbone=args.backbone, strategy="linear-probe", image_size=args.image_size,
        out=str(out), log=lambda s: None, seed=0,
    )  # fmt: skip
    if exclude is not None:
        options["exclude"] = str(exclude)
    model = tlearn.train(str(data), **options)
    report = model.evaluate(str(data))
    pred = report.predictions  # test images in one order: the source's, whatever the run
    order = pred.indices.argsort()
    correct = (pred.logits.argmax(1) == pred.labels)[order]
    return report.accuracy, correct.int().tolist()


def paired_se(a: list, b: list) -> float:
    """Standard error of accuracy(b) - accuracy(a) on the same images: sqrt(discordant) / n."""
    x, y = np.asarray(a), np.asarray(b)
    discordant = int((x != y).sum())
    n = len(x)
    return float(np.sqrt(discordant - (y.sum() - x.sum()) ** 2 / n) / n) if n else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="/work/data/clothing10")
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--work", default="/tmp/tlearn-doctor-bench")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-train", action="store_true", help="skip the three training runs")
    p.add_argument("--no-warm", action="store_true", help="skip the second (warm-cache) run")
    p.add_argument(
        "--reuse", action="store_true", help="keep --work's copies, faults and doctor findings"
    )
    p.add_argument("--note", default="", help="a line for the results (how the run was made)")
    p.add_argument("--markdown", action="store_true", help="only rewrite doctor.md from .json")
    args = p.parse_args()
    if args.markdown:
        records = json.loads((RESULTS / "doctor.json").read_text())
        text = "\n".join(markdown(r) for r in records.values()) + pooled(records)
        (RESULTS / "doctor.md").write_text(text)
        return 0
    work = Path(args.work)
    clean, noisy = Path(args.data), work / "noisy"  # the original is only read, never written
    if not args.reuse:
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(args.data, noisy, ignore=shutil.ignore_patterns(".*"))
        inject(noisy, args.seed)
    truth = truth_from_names(noisy)
    load = [round(x, 1) for x in os.getloadavg()]
    started = time.perf_counter()
    result = None
    if not (args.reuse and (work / "doctor" / "issues.csv").is_file()):
        result = tlearn.doctor(str(noisy), backbone=args.backbone, image_size=args.image_size,
                               out=work / "doctor", log=lambda s: None)  # fmt: skip
    seconds = time.perf_counter() - started
    warm = None
    if not args.no_warm:
        warm = time.perf_counter()
        tlearn.doctor(str(noisy), backbone=args.backbone, image_size=args.image_size,
                      out=work / "doctor-warm", log=lambda s: None)  # fmt: skip
        warm = round(time.perf_counter() - warm, 1)
    load_after = [round(x, 1) for x in os.getloadavg()]
    with open(work / "doctor" / "issues.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    record = {
        "data": args.data, "backbone": args.backbone, "image_size": args.image_size,
        "images": result.images if result else None,
        "seconds": round(seconds, 1) if result else None, "seconds_warm": warm,
        "stages": {k: round(v, 1) for k, v in result.seconds.items()} if result else None,
        "load_average": {"before": load, "after": load_after},
        "threshold": _threshold(result.threshold) if result else None,
        "injected": {k: len(v) for k, v in truth.items()}, "machine": platform.processor(),
        "note": args.note,
        **score(rows, truth),
    }  # fmt: skip
    record["unmodified"] = unmodified(clean, args)
    record["preexisting"] = preexisting_share(
        rows, truth, noisy, record["unmodified"].pop("pair_paths")
    )
    RESULTS.mkdir(exist_ok=True)
    preexisting_sheet(rows, truth, RESULTS / f"doctor-not-injected-{Path(args.data).name}.png")
    if not args.no_train:
        scored = {  # the noisy runs first: their features are the doctor's, from the cache
            "noisy": train_and_score(noisy, work / "run-noisy", None, args),
            "cleaned": train_and_score(
                noisy, work / "run-cleaned", work / "doctor" / "issues.csv", args
            ),
            "clean": train_and_score(clean, work / "run-clean", None, args),
        }
        acc = {k: v[0] for k, v in scored.items()}
        right = {k: v[1] for k, v in scored.items()}
        record["accuracy"] = acc
        record["test_images"] = len(right["clean"])
        record["correct"] = {k: int(sum(v)) for k, v in right.items()}
        record["se"] = {
            "noisy_minus_clean": paired_se(right["clean"], right["noisy"]),
            "cleaned_minus_noisy": paired_se(right["noisy"], right["cleaned"]),
        }
        lost = acc["clean"] - acc["noisy"]
        record["recovered_share"] = (acc["cleaned"] - acc["noisy"]) / lost if lost > 0 else None
    RESULTS.mkdir(exist_ok=True)  # one record per dataset, the others' kept
    path = RESULTS / "doctor.json"
    records = json.loads(path.read_text()) if path.is_file() else {}
    records = records if "data" not in records else {}  # an old single-record file
    key = Path(args.data).name + (f" (injection seed {args.seed})" if args.seed else "")
    record["seed"] = args.seed
    records[key] = record
    path.write_text(json.dumps(records, indent=1))
    text = "\n".join(markdown(r) for r in records.values()) + pooled(records)
    (RESULTS / "doctor.md").write_text(text)
    print(markdown(record))
    return 0


def _timing(r: dict) -> str:
    if r["images"] is None:
        return "Findings read from an earlier doctor run of the same copy (`--reuse`)."
    t = r["threshold"]
    return (
        f"{r['images']} images, {r['backbone']} at {r['image_size'] or 'its own'} px: cold "
        f"feature cache {r['seconds']} s (stages: {r['stages']}), second run (cached) "
        f"{r['seconds_warm']} s, on a 2-core machine shared with other jobs (load average "
        f"{r['load_average']['before']} before, {r['load_average']['after']} after). Near-copy "
        f"threshold {t['similarity']:.3f}: " + (
            f"halfway between where {t['copies']} generated copies begin "
            f"({t['copies_from']:.3f}) and where the data's distinct nearest pairs end "
            f"({t['distinct_to']:.3f})."
            if t["separated"] else
            f"where the data's distinct nearest pairs end ({t['distinct_to']:.3f}), above where "
            f"{t['copies']} generated copies begin ({t['copies_from']:.3f}): the two overlap, so "
            "precision comes first."
        ) + _cosine_gate(t)
    )  # fmt: skip


def _cosine_gate(t: dict) -> str:
    if "cosine" not in t:  # records made before the feature gate
        return ""
    return f" Feature gate: cosine {t['cosine']:.3f} (what 97% of the generated copies reach)."


ACCURACY_ROWS = (
    ("clean", "clean data"),
    ("noisy", "noisy copy"),
    ("cleaned", "noisy copy, `--exclude issues.csv`"),
)


def _count(r: dict, key: str) -> str:
    return f" ({r['correct'][key]}/{r['test_images']})" if "correct" in r else ""


def _noise(r: dict) -> str:
    """How far the test set can tell the runs apart: paired standard errors, in images."""
    if "se" not in r:
        return ""
    n, se = r["test_images"], r["se"]
    return (
        f" On {n} test images one image is {1 / n:.2%}; paired standard errors (from the images "
        f"the two runs score differently): noisy - clean {se['noisy_minus_clean']:.2%}, "
        f"cleaned - noisy {se['cleaned_minus_noisy']:.2%}, so a difference under about two of "
        "them is noise."
    )


def pooled(records: dict) -> str:
    """Each dataset's injection seeds together: test images lost to the faults and won back."""
    by_data: dict[str, list[dict]] = {}
    for r in records.values():
        if "correct" in r:
            by_data.setdefault(r["data"], []).append(r)
    lines = []
    for data, rs in by_data.items():
        lost = sum(r["correct"]["clean"] - r["correct"]["noisy"] for r in rs)
        back = sum(r["correct"]["cleaned"] - r["correct"]["noisy"] for r in rs)
        share = f"{back / lost:.0%}" if lost > 0 else "n/a"
        se = {k: sum((r["se"][k] * r["test_images"]) ** 2 for r in rs) ** 0.5 for k in rs[0]["se"]}
        lines.append(
            f"- {data}, {len(rs)} injection seed(s): the faults cost {lost} test images in all "
            f"(paired standard error {se['noisy_minus_clean']:.1f}), `--exclude issues.csv` won "
            f"back {back} (standard error {se['cleaned_minus_noisy']:.1f}): {share} of them."
        )
    return "\n# All seeds together\n\n" + "\n".join(lines) + "\n" if lines else ""


def markdown(r: dict) -> str:
    lines = [
        f"# tlearn doctor on {r['data']} with injected faults",
        "",
        _timing(r),
        "",
        "| fault | injected | found | target |",
        "|---|---|---|---|",
        f"| corrupt files | {r['injected']['corrupt']} | {r['corrupt_recall']:.0%} | all |",
        f"| exact duplicates | {r['injected']['exact']} | {r['exact_recall']:.0%} | all |",
        f"| near duplicates | {r['injected']['near']} | {r['near_recall']:.0%} | >= 90% |",
        f"| test images in train | {r['injected']['leak']} | {r['leak_recall']:.0%} | >= 90% |",
        f"| flipped labels (top 2x) | {r['injected']['flip']} | {r['flip_recall_top2x']:.0%} "
        "| >= 70% |",
        "",
        f"Duplicate pairs reported: {r['duplicate_pairs_reported']}, of which "
        f"{r['duplicate_false_alarm_share']:.0%} are not injected ones (target <= 10%; a pair "
        "already in the original data counts here as a false alarm)"
        + (
            f"; {r['preexisting']['of_them_in_untouched_data']} of the "
            f"{r['preexisting']['pairs_not_injected']} not injected are reported on the "
            "untouched data too (copies it already held, or the same false alarm twice), so "
            f"{r['preexisting']['false_alarm_share_new_only']:.0%} are new ones"
            if "preexisting" in r
            else ""
        )
        + ". Flipped labels found "
        f"anywhere in the list: {r['flip_recall_all']:.0%}; suggested label right for "
        f"{r['flip_suggestion_correct']:.0%} of those found. Reported per kind: {r['reported']}.",
    ]
    if "label_rows_excluded" in r:
        lines += [
            "",
            f"Label rows `--exclude` drops by default (`action` exclude: the probe's posterior "
            f"that the label is wrong above 1/2): {r['label_rows_excluded']} "
            f"({r['label_rows_excluded_train']} in train/), holding {r['flips_excluded']} of the "
            f"{r['injected']['flip']} flips; the other label rows are `review` only.",
        ]
    if r.get("note"):
        lines += ["", r["note"]]
    u = r.get("unmodified")
    if u:
        lines += [
            "",
            f"On the unmodified data the doctor reports {u['pairs']} copy pairs "
            f"({u['exact_pairs']} of them exact copies), rows per kind {u['rows']}; near-copy "
            f"threshold there {u['threshold']['similarity']:.3f}.",
        ]
    if "accuracy" in r:
        a = r["accuracy"]
        share = r["recovered_share"]
        lines += [
            "",
            "| linear probe trained on | test accuracy |",
            "|---|---|",
            *(f"| {name} | {a[k]:.2%}{_count(r, k)} |" for k, name in ACCURACY_ROWS),
            "",
            "Share of the lost accuracy recovered: "
            + (f"{share:.0%}" if share is not None else "n/a (noise cost nothing)")
            + " (target >= 50%)."
            + _noise(r),
        ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
