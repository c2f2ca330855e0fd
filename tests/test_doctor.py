"""`tlearn doctor`: injected faults in tiny generated data are found; `--exclude` drops them."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tlearn
from browser import artifact_dir, broken_images, chromium
from conftest import write_image
from tlearn.cli import main
from tlearn.data import load_train_splits
from tlearn.doctor import duplicates as dup
from tlearn.doctor import pixels
from tlearn.doctor.files import check_file
from tlearn.doctor.findings import Finding, write_issues
from tlearn.errors import TlearnError

pytest.importorskip("cleanlab")
pytest.importorskip("sklearn")

FAST = dict(backbone="tf_efficientnet_lite0", image_size=32, workers=0, log=lambda s: None)


PALETTE = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 210)}


def _picture(path: Path, color, seed: int) -> Path:
    """A class colour with a random pattern: distinct images differ in their layout and detail,
    as photos do (solid noisy colours would all be near copies of each other)."""
    rng = np.random.default_rng(seed)
    pattern = Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).resize(
        (48, 40), Image.Resampling.BICUBIC
    )
    shade = np.asarray(pattern, dtype=np.float32)[..., None] / 255.0 - 0.5
    a = np.clip(np.array(color, dtype=np.float32) + 90 * shade, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, "RGB").save(path)
    return path


def _resaved_copy(im: Image.Image) -> Image.Image:
    """The benchmark's near copy: resized to 70%, a 5% crop, JPEG quality 60."""
    w, h = im.size
    im = im.resize((int(w * 0.7), int(h * 0.7)), Image.Resampling.BILINEAR)
    w, h = im.size
    dx, dy = int(w * 0.025), int(h * 0.025)
    buf = io.BytesIO()
    im.crop((dx, dy, w - dx, h - dy)).save(buf, format="JPEG", quality=60)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


@pytest.fixture
def faulty(tmp_path) -> tuple[Path, dict[str, Path]]:
    """train/ + test/ of three colours, with one fault of each kind injected into train/."""
    root = tmp_path / "images"
    for k, (name, color) in enumerate(PALETTE.items()):
        for j in range(16):
            _picture(root / "train" / name / f"{name}_{j:03d}.png", color, 100 * k + j)
        for j in range(6):
            _picture(root / "test" / name / f"{name}_{j:03d}.png", color, 10_000 + 100 * k + j)
    train = root / "train"
    faults = {
        "corrupt": train / "red" / "broken.png",
        "empty": train / "blue" / "empty.jpg",
        "duplicate": train / "green" / "green_copy.png",
        "leak": train / "blue" / "from_test.png",
        "label": train / "green" / "actually_red.png",
        "near": train / "blue" / "blue_004_small.jpg",
    }
    faults["corrupt"].write_bytes(b"this is not a png")
    faults["empty"].write_bytes(b"")
    shutil.copy(train / "green" / "green_003.png", faults["duplicate"])
    shutil.copy(root / "test" / "blue" / "blue_002.png", faults["leak"])
    shutil.move(train / "red" / "red_005.png", faults["label"])
    _resaved_copy(Image.open(train / "blue" / "blue_004.png")).save(faults["near"])
    return root, faults


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_doctor_finds_each_injected_fault_and_writes_its_files(faulty, tmp_path):
    root, faults = faulty
    before = sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*"))
    result = tlearn.doctor(str(root), out=tmp_path / "doc", **FAST)
    rows = _rows(tmp_path / "doc" / "issues.csv")
    by_file: dict[str, set[str]] = {}
    for r in rows:
        by_file.setdefault(Path(r["file"]).name, set()).add(r["kind"])
    assert "unreadable" in by_file["broken.png"]
    assert "empty" in by_file["empty.jpg"]
    dup_rows = [r for r in rows if r["kind"] == "duplicate"]
    assert any({Path(r["file"]).name, Path(r["related"]).name} == {"green_copy.png",
               "green_003.png"} for r in dup_rows)  # fmt: skip
    leak = [r for r in rows if r["kind"] == "leak"]
    assert [Path(r["file"]).name for r in leak] == ["from_test.png"]
    assert Path(leak[0]["related"]).parts[-3:] == ("test", "blue", "blue_002.png")
    labels = {Path(r["file"]).name: r["suggested"] for r in rows if r["kind"] == "label"}
    assert labels.get("actually_red.png") in ("red", "blue")  # not its given green
    assert result.counts["label"] <= 3  # the flipped one, not the clean colours
    near = [r for r in rows if r["kind"] == "near-duplicate"]  # the one resaved copy, no other
    assert [{Path(r["file"]).name, Path(r["related"]).name} for r in near] == [
        {"blue_004.png", "blue_004_small.jpg"}
    ]
    assert "exclude" == next(r["action"] for r in leak)
    assert sorted((p, p.stat().st_mtime_ns) for p in root.rglob("*")) == before  # untouched
    page = (tmp_path / "doc" / "doctor.html").read_text()
    assert "src='http" not in page and "data:image/jpeg;base64," in page


@pytest.mark.slow
def test_doctor_page_shows_every_thumbnail_in_a_browser(faulty, tmp_path):
    root, _ = faulty
    tlearn.doctor(str(root), out=tmp_path / "doc", **FAST)
    with chromium() as driver:
        driver.get((tmp_path / "doc" / "doctor.html").resolve().as_uri())
        count = driver.execute_script("return document.images.length")
        assert count > 0
        assert broken_images(driver) == []
        driver.save_screenshot(str(artifact_dir() / "doctor.png"))


def test_train_exclude_leaves_out_the_listed_files(faulty, tmp_path):
    root, faults = faulty
    issues = tmp_path / "issues.csv"
    write_issues(issues, [
        Finding("leak", str(faults["leak"])),
        Finding("label", str(faults["label"]), suggested="red"),
        Finding("outlier", str(root / "train" / "red" / "red_000.png"), action="review"),
    ])  # fmt: skip

    def file_names(source) -> set[str]:
        return {Path(source.describe(i)).name for i in range(len(source))}

    # train/ + test/: validation is a split of train/, so the sources are subsets of it
    names = file_names(load_train_splits(str(root)).train)
    kept_names = file_names(load_train_splits(str(root), exclude=str(issues)).train)
    assert names - kept_names == {"from_test.png", "actually_red.png"}  # review rows stay
    plain = tmp_path / "list.txt"
    plain.write_text(f"{faults['duplicate']}\n# a comment\n")
    kept = load_train_splits(str(root), exclude=str(plain)).train
    assert len(kept) == len(names) - 1


def test_exclude_flag_reaches_the_run(faulty, tmp_path):
    root, faults = faulty
    listed = tmp_path / "list.txt"
    listed.write_text(str(faults["label"]) + "\n")
    assert main([
        "train", str(root), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
        "--strategy", "linear-probe", "--epochs", "1", "--workers", "0",
        "--exclude", str(listed), "--out", str(tmp_path / "run"),
    ]) == 0  # fmt: skip
    assert f"exclude: {listed}" in (tmp_path / "run" / "config.yaml").read_text()


def test_missing_exclude_file_is_one_sentence(faulty, tmp_path):
    root, _ = faulty
    with pytest.raises(TlearnError, match="--exclude"):
        load_train_splits(str(root), exclude=str(tmp_path / "nope.csv"))


def test_file_checks_name_each_kind_of_broken_file(tmp_path):
    good = write_image(tmp_path / "good.jpg", (10, 200, 10), size=(64, 48))
    data = good.read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("hello")
    Image.new("CMYK", (20, 20)).save(tmp_path / "cmyk.jpg")
    assert check_file(good).problem == ""
    assert check_file(tmp_path / "cut.jpg").problem == "truncated"
    assert check_file(tmp_path / "zero.png").problem == "empty"
    assert check_file(tmp_path / "text.png").problem == "unreadable"
    assert check_file(good, max_pixels=100).problem == "too-large"
    assert check_file(tmp_path / "cmyk.jpg").mode == "CMYK"
    # the digest is of pixels, not bytes: the same pixels saved as PNG match
    Image.open(good).save(tmp_path / "same.png")
    assert check_file(tmp_path / "same.png").digest == check_file(good).digest


def _garment(rng: np.random.Generator, size=(160, 200)) -> Image.Image:
    """A light garment of one shape on a shared red cloth; its print (the detail) is its own."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    cloth = np.stack([170 + 20 * x / w, 30 + 10 * y / h, 50 + 0 * x], -1)  # one backdrop
    body = (abs(x - w / 2) < w * 0.28) & (y > h * 0.15) & (y < h * 0.9)
    sleeves = (abs(x - w / 2) < w * 0.42) & (y > h * 0.15) & (y < h * 0.35)
    shirt = body | sleeves
    a = np.where(shirt[..., None], 235.0, cloth)
    print_ = Image.fromarray(rng.integers(0, 255, (10, 8), dtype=np.uint8)).resize(
        (int(w * 0.4), int(h * 0.35)), Image.Resampling.BICUBIC
    )
    px0, py0 = int(w * 0.3), int(h * 0.4)
    patch = np.asarray(print_, dtype=np.float32)[..., None] * 0.6
    a[py0 : py0 + patch.shape[0], px0 : px0 + patch.shape[1]] -= patch
    a += rng.normal(0, 4, a.shape)  # sensor noise
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")


def test_distinct_garments_on_one_backdrop_are_not_copies_but_a_resaved_copy_is():
    """Same backdrop, same silhouette, features nearly equal (what fooled the feature cosine
    plus thumbnail rule at 224 px on clothing10): only the resaved copy is a near copy."""
    rng = np.random.default_rng(0)
    images = [_garment(rng) for _ in range(40)]
    images.append(_resaved_copy(images[7]))  # item 40 is a copy of item 7
    bases = np.stack([pixels.grey_base(im) for im in images])
    # stand-in features: one shared direction (the backdrop) and a little of each image's own
    feats = 1.0 + 0.02 * rng.normal(size=(len(images), 32)).astype(np.float32)
    feats[40] = feats[7] + 0.01
    found = dup.search(feats, bases)
    copies = np.stack([pixels.grey_base(dup.make_copy(im, rng)) for im in images[:20]])
    threshold = dup.calibrate(
        dup.copy_similarity(bases[:20], copies),
        dup.best_per_item(len(images), found, np.zeros(len(found.pairs), dtype=bool)),
    )
    assert threshold.separated
    hits = found.pairs[found.similarity >= threshold.similarity]
    assert hits.tolist() == [[7, 40]]
    # distinct pairs are alike to the eye at thumbnail size: a blur does not separate them
    coarse = pixels.coarse_views(bases)
    assert (coarse[:40] @ coarse[:40].T)[np.triu_indices(40, 1)].min() > 0.9


def test_the_feature_gate_rejects_look_alikes_whose_pixels_align_but_not_copies():
    """At 32 px a B-2 and a bird on the same sky align in pixel detail as well as a halved copy;
    their features do not. The gate is where 97% of the generated copies' cosines lie."""
    rng = np.random.default_rng(0)
    copy_scores = np.tanh(rng.normal(1.2, 0.1, 256))
    copy_cosines = np.clip(rng.normal(0.9, 0.03, 256), -1, 1)
    distinct = np.tanh(rng.normal(0.25, 0.05, 500))
    threshold = dup.calibrate(copy_scores, distinct, copy_cosines=copy_cosines)
    assert threshold.cosine == pytest.approx(np.quantile(copy_cosines, 0.03))
    pairs = np.array([[0, 1], [2, 3], [4, 5]])
    found = dup.Candidates(pairs, np.array([0.9, 0.9, 0.3]), np.array([0.93, 0.6, 0.99]))
    assert threshold.passes(found).tolist() == [True, False, False]  # a copy, a look-alike, far
    ungated = dup.calibrate(copy_scores, distinct)
    assert ungated.passes(found).tolist() == [True, True, False]


def test_feature_cosines_are_those_of_the_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 8)).astype(np.float32)
    pairs = np.array([[0, 1], [3, 29], [5, 5]])
    got = dup.pair_cosine(x, pairs)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    assert got == pytest.approx([u[0] @ u[1], u[3] @ u[29], 1.0], abs=1e-5)
    assert dup.copy_cosine(x[:2], x[:2] * 3.0) == pytest.approx([1.0, 1.0], abs=1e-5)


def test_pixel_similarity_sees_through_rescaling_and_cropping():
    rng = np.random.default_rng(1)
    im = _garment(rng)
    other = _garment(rng)
    copy = _resaved_copy(im)
    crop = im.crop((8, 10, im.width - 8, im.height - 10)).resize((120, 150))
    bases = np.stack([pixels.grey_base(x) for x in (im, copy, crop, other)])
    s = pixels.pair_similarity(bases, np.array([[0, 1], [2, 0], [0, 3], [0, 0]]))
    assert s[0] > 0.9 and s[1] > 0.9  # either way round
    assert s[2] < s[0] - 0.1
    assert s[3] == pytest.approx(1.0, abs=1e-3)


def test_groups_join_linked_items():
    assert sorted(dup.groups_of(6, [(0, 1), (1, 4), (2, 3)])) == [[0, 1, 4], [2, 3]]
    assert dup.exact_groups(["a", "", "a", "b", ""]) == [[0, 2]]


def test_missing_extra_is_one_sentence(monkeypatch, faulty):
    import builtins

    real = builtins.__import__

    def no_cleanlab(name, *args, **kwargs):
        if name.startswith("cleanlab"):
            raise ImportError("no cleanlab", name="cleanlab")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_cleanlab)
    root, _ = faulty
    with pytest.raises(TlearnError, match=r"pip install 'tlearn\[doctor\]'"):
        tlearn.doctor(str(root), **FAST)


def test_the_distinct_tail_of_a_large_dataset_comes_from_differently_labelled_pairs():
    """The bulk of the distinct pairs (median and spread) misses their tail of look-alikes,
    which grows with the data: with enough differently labelled pairs, the threshold sits
    above all but one in a thousand of them; on small data their tail is noise and is left."""
    rng = np.random.default_rng(0)
    copies = np.tanh(rng.normal(1.2, 0.1, 64))
    distinct = np.tanh(rng.normal(0.25, 0.05, 5000))  # bulk ends near tanh(0.45) = 0.42
    cross = np.tanh(np.concatenate([rng.normal(0.25, 0.05, 4900), rng.uniform(0.6, 0.7, 100)]))
    bulk = dup.calibrate(copies, distinct)
    tail = dup.calibrate(copies, distinct, cross)
    assert bulk.distinct_to < 0.45
    assert tail.distinct_to > 0.6  # 100 of the 5,000 cross pairs sit at 0.6-0.7
    assert (cross > tail.similarity).mean() <= dup.CROSS_CLASS_TAIL
    assert tail.separated and tail.similarity < bulk.copies_from
    few = dup.calibrate(copies, distinct, cross[: dup.CROSS_CLASS_MIN - 1])
    assert few.distinct_to == bulk.distinct_to


def test_two_train_copies_of_a_test_picture_are_leaks_and_a_pair():
    """CIFAR-10 holds such groups: an exact copy made of a train image that is itself in test/
    was reported only as two leaks, never as the duplicate pair it also is."""
    from tlearn.doctor.groups import duplicate_findings
    from tlearn.doctor.inputs import Catalog

    paths = ["train/a/x.png", "train/a/copy_of_x.png", "train/a/other.png", "test/a/x.png"]
    catalog = Catalog(["a"], ["train", "test"], [], np.array([0, 0, 0, 1]),
                      np.array([0, 1, 2, 0]), np.zeros(4, dtype=np.int64), paths)  # fmt: skip
    found = duplicate_findings(catalog, [[0, 1]], [(0, 3, 0.97)], ["d", "d", "e", "f"])
    assert {(f.kind, f.file, tuple(f.related)) for f in found} == {
        ("leak", "train/a/x.png", ("test/a/x.png", "train/a/copy_of_x.png")),
        ("leak", "train/a/copy_of_x.png", ("test/a/x.png", "train/a/x.png")),
    }
    assert all(f.detail.startswith("exact copy") for f in found)  # exact to its train peer
