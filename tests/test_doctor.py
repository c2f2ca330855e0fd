"""`tlearn doctor`: injected faults in tiny generated data are found; `--exclude` drops them."""

from __future__ import annotations

import csv
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
from tlearn.doctor.files import check_file
from tlearn.doctor.findings import Finding, write_issues
from tlearn.errors import TlearnError

pytest.importorskip("cleanlab")
pytest.importorskip("sklearn")

FAST = dict(backbone="tf_efficientnet_lite0", image_size=32, workers=0, log=lambda s: None)


PALETTE = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 210)}


def _picture(path: Path, color, seed: int) -> Path:
    """A class colour with a smooth random pattern: distinct images differ in their layout, as
    photos do (solid noisy colours would all be near copies of each other)."""
    rng = np.random.default_rng(seed)
    pattern = Image.fromarray(rng.integers(0, 255, (4, 4), dtype=np.uint8)).resize(
        (48, 40), Image.Resampling.BICUBIC
    )
    shade = np.asarray(pattern, dtype=np.float32)[..., None] / 255.0 - 0.5
    a = np.clip(np.array(color, dtype=np.float32) + 90 * shade, 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, "RGB").save(path)
    return path


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
    }
    faults["corrupt"].write_bytes(b"this is not a png")
    faults["empty"].write_bytes(b"")
    shutil.copy(train / "green" / "green_003.png", faults["duplicate"])
    shutil.copy(root / "test" / "blue" / "blue_002.png", faults["leak"])
    shutil.move(train / "red" / "red_005.png", faults["label"])
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
    assert result.counts["near-duplicate"] == 0  # distinct noise images are not copies
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


def test_calibrated_threshold_separates_copies_from_other_images():
    """Copies made as `make_copy` makes them score above the threshold calibrated on others."""
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).resize((128, 96))
        for _ in range(40)
    ]
    thumbs = np.stack([dup.thumbnail(im) for im in images])
    copies = [dup.make_copy(im, rng) for im in images]
    cthumbs = np.stack([dup.thumbnail(im) for im in copies])
    feats = np.eye(40, dtype=np.float32) + 0.01  # stand-in features: each image its own axis
    threshold = dup.calibrate(feats[:30], feats[:30], thumbs[:30], cthumbs[:30])
    assert threshold.copies == 30
    fresh = (cthumbs[30:] * thumbs[30:]).sum(1) + 1.0
    assert (fresh >= threshold.combined).mean() >= 0.8  # unseen copies are still caught
    assert dup.near_pairs(feats, thumbs, threshold) == []  # distinct images are not


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
