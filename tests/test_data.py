"""Dataset specs -> sources and splits: layouts, CSV, limits, eval sources and their errors."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from PIL import Image

from tlearn.data import (
    ArraySource,
    CsvSource,
    FolderSource,
    SubsetSource,
    load_eval_source,
    load_train_splits,
    stratified_indices,
    stratified_split,
)
from tlearn.errors import TlearnError


def _names(source) -> list[str]:
    return sorted(source.describe(i).rsplit("/", 1)[-1] for i in range(len(source)))


# --- folder layouts ------------------------------------------------------------------------------


def test_flat_folder_is_split_stratified_seeded_and_disjoint(make_image_folder):
    root = make_image_folder(classes=("cat", "dog", "fox"), n=10)
    s = load_train_splits(str(root), val_split=0.2, seed=3)
    assert s.classes == ["cat", "dog", "fox"]
    assert len(s.train) == 24 and len(s.val) == 6
    assert np.bincount(s.val.targets).tolist() == [2, 2, 2]
    assert not set(_names(s.train)) & set(_names(s.val))
    again = load_train_splits(str(root), val_split=0.2, seed=3)
    assert _names(again.val) == _names(s.val)
    other = load_train_splits(str(root), val_split=0.2, seed=4)
    assert _names(other.val) != _names(s.val)


def test_labels_match_class_folders(make_image_folder):
    s = load_train_splits(str(make_image_folder(n=3)), val_split=0)
    for i in range(len(s.train)):
        folder = s.train.describe(i).split("/")[-2]
        image, label = s.train[i]
        assert s.classes[label] == folder
        assert image.mode == "RGB" and image.size == (20, 16)


def test_val_split_zero_means_no_validation(make_image_folder):
    s = load_train_splits(str(make_image_folder()), val_split=0)
    assert s.val is None and len(s.train) == 12


def test_train_val_layout_is_used_as_is(make_image_folder):
    root = make_image_folder(layout="split", n=6)
    s = load_train_splits(str(root), val_split=0.5)
    assert len(s.train) == 12 and len(s.val) == 6
    assert all("/val/" in s.val.describe(i) for i in range(len(s.val)))


def test_train_val_layout_says_validation_is_val(make_image_folder):
    root = make_image_folder(layout="split", n=6)
    shutil.copytree(root / "val", root / "test")
    s = load_train_splits(str(root), val_split=0.5)
    assert s.validation == "val/, 6 images"
    assert not any("/test/" in src.describe(i) for src in (s.train, s.val) for i in range(len(src)))


def test_train_test_layout_validates_on_a_split_of_train(make_image_folder):
    """test/ is never validated on: the best epoch and every choice would be made on it."""
    root = make_image_folder(layout="split-test", n=8)
    s = load_train_splits(str(root), val_split=0.25, seed=2)
    used = [src.describe(i) for src in (s.train, s.val) for i in range(len(src))]
    assert all("/train/" in p for p in used) and len(set(used)) == 16
    assert len(s.val) == 4 and sorted(s.val.targets.tolist()) == [0, 0, 1, 1]
    assert s.validation == "25% of train/ (stratified, seed 2), 4 images, test/ left for evaluate"
    again = load_train_splits(str(root), val_split=0.25, seed=2)
    assert _names(again.val) == _names(s.val)


def test_train_test_layout_with_val_split_zero_has_no_validation(make_image_folder):
    s = load_train_splits(str(make_image_folder(layout="split-test", n=4)), val_split=0)
    assert s.val is None and len(s.train) == 8 and s.validation == "none (--val-split 0)"


def test_val_folder_missing_a_class_keeps_training_class_order(make_image_folder):
    root = make_image_folder(layout="split", classes=("a", "b", "c"), n=2)
    shutil.rmtree(root / "val" / "a")
    s = load_train_splits(str(root))
    assert s.val.classes == ["a", "b", "c"]
    assert sorted(set(s.val.targets.tolist())) == [1, 2]


def test_val_folder_with_unknown_class_is_an_error(make_image_folder):
    root = make_image_folder(layout="split", n=2)
    shutil.copytree(root / "val" / "cat", root / "val" / "cow")
    with pytest.raises(TlearnError, match="cow"):
        load_train_splits(str(root))


def test_empty_class_folder_is_ignored_with_a_warning(make_image_folder):
    root = make_image_folder(classes=("a", "b"), n=3)
    (root / "empty").mkdir()
    with pytest.warns(UserWarning, match="empty"):
        s = load_train_splits(str(root), val_split=0)
    assert s.classes == ["a", "b"]


def test_nested_and_hidden_files(make_image_folder):
    root = make_image_folder(n=2)
    (root / "cat" / "more").mkdir()
    shutil.copy(root / "cat" / "cat_000.png", root / "cat" / "more" / "deep.png")
    shutil.copy(root / "cat" / "cat_000.png", root / "cat" / "._cat_000.png")
    (root / "cat" / "notes.txt").write_text("x")
    s = load_train_splits(str(root), val_split=0)
    assert _names(s.train).count("deep.png") == 1 and len(s.train) == 5


def test_single_class_is_an_error(make_image_folder):
    root = make_image_folder(classes=("only",))
    with pytest.raises(TlearnError, match="at least 2"):
        load_train_splits(str(root))


def test_folder_without_class_folders_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(TlearnError, match="no class folders"):
        load_train_splits(str(tmp_path / "d"))
    Image.new("RGB", (4, 4)).save(tmp_path / "d" / "x.png")
    with pytest.raises(TlearnError, match="has images but no class folders"):
        load_train_splits(str(tmp_path / "d"))


def test_class_folders_without_images_are_an_error(tmp_path):
    (tmp_path / "d" / "a").mkdir(parents=True)
    (tmp_path / "d" / "b").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(TlearnError, match="no images"):
            load_train_splits(str(tmp_path / "d"))


def test_nonexistent_spec_names_the_choices(tmp_path):
    with pytest.raises(TlearnError, match="no such dataset: .*fashion-mnist"):
        load_train_splits(str(tmp_path / "nothing"))


def test_non_csv_file_is_an_error(tmp_path):
    p = tmp_path / "list.txt"
    p.write_text("a,b\n")
    with pytest.raises(TlearnError, match="not a .csv"):
        load_train_splits(str(p))


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5])
def test_val_split_out_of_range(make_image_folder, bad):
    with pytest.raises(TlearnError, match="val-split"):
        load_train_splits(str(make_image_folder()), val_split=bad)


@pytest.mark.parametrize("kwargs", [{"train_limit": 0}, {"eval_limit": -3}, {"train_limit": 2.5}])
def test_limits_below_one_are_errors(make_image_folder, kwargs):
    with pytest.raises(TlearnError, match="limit"):
        load_train_splits(str(make_image_folder()), **kwargs)


def test_train_and_eval_limits_apply_to_each_split(make_image_folder):
    root = make_image_folder(classes=("a", "b"), n=10)
    s = load_train_splits(str(root), val_split=0.4, train_limit=4, eval_limit=2)
    assert len(s.train) == 4 and len(s.val) == 2
    assert np.bincount(s.train.targets).tolist() == [2, 2]
    assert np.bincount(s.val.targets).tolist() == [1, 1]


def test_class_with_one_image_stays_in_train(make_image_folder):
    root = make_image_folder(classes=("a", "b"), n=4)
    for p in sorted((root / "b").iterdir())[1:]:
        p.unlink()
    s = load_train_splits(str(root), val_split=0.5)
    assert 1 in s.train.targets.tolist()
    assert 1 not in s.val.targets.tolist()


def test_no_validation_possible_warns_and_trains_without(make_image_folder):
    root = make_image_folder(classes=("a", "b"), n=1)
    with pytest.warns(UserWarning, match="too small"):
        s = load_train_splits(str(root), val_split=0.3)
    assert s.val is None and len(s.train) == 2


# --- CSV ----------------------------------------------------------------------------------------


def _write_csv(root, rows, header=None, name="labels.csv"):
    lines = ([header] if header else []) + [f"{p},{lab}" for p, lab in rows]
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_with_relative_paths_and_header(make_image_folder):
    root = make_image_folder(n=4)
    rows = [(f"images/{c}/{c}_{j:03d}.png", c.upper()) for c in ("cat", "dog") for j in range(4)]
    csv_path = _write_csv(root.parent, rows, header="filename,label")
    s = load_train_splits(str(csv_path), val_split=0.25, seed=1)
    assert s.classes == ["CAT", "DOG"]
    assert len(s.train) == 6 and np.bincount(s.val.targets).tolist() == [1, 1]
    image, label = s.train[0]
    assert image.mode == "RGB"


def test_csv_header_detected_by_missing_first_path(make_image_folder):
    root = make_image_folder(n=2)
    rows = [("cat/cat_000.png", "cat"), ("dog/dog_000.png", "dog")]
    csv_path = _write_csv(root, rows, header="img_file,kind")
    assert len(CsvSource(csv_path)) == 2


def test_csv_without_header_and_numeric_labels_sort_numerically(make_image_folder):
    root = make_image_folder(n=3)
    rows = [(f"cat/cat_00{j}.png", lab) for j, lab in enumerate(("10", "9", "2"))]
    src = CsvSource(_write_csv(root, rows))
    assert src.classes == ["2", "9", "10"] and len(src) == 3


def test_csv_missing_files_are_named(make_image_folder):
    root = make_image_folder(n=1)
    rows = [("cat/cat_000.png", "cat"), ("cat/gone.png", "cat"), ("dog/lost.png", "dog")]
    with pytest.raises(TlearnError, match=r"2 file\(s\).*gone.png \(line 2\)"):
        CsvSource(_write_csv(root, rows))


def test_csv_bad_row_is_named(make_image_folder):
    root = make_image_folder(n=1)
    path = root / "bad.csv"
    path.write_text("cat/cat_000.png,cat\ndog/dog_000.png\n")
    with pytest.raises(TlearnError, match="line 2"):
        CsvSource(path)


def test_csv_with_one_label_is_an_error(make_image_folder):
    root = make_image_folder(n=2)
    rows = [("cat/cat_000.png", "cat"), ("cat/cat_001.png", "cat")]
    with pytest.raises(TlearnError, match="at least 2"):
        load_train_splits(str(_write_csv(root, rows)))


# --- eval sources -------------------------------------------------------------------------------


def test_eval_source_prefers_test_then_val(make_image_folder, tmp_path):
    root = make_image_folder(layout="split", n=4)
    assert "/val/" in load_eval_source(str(root)).describe(0)
    shutil.copytree(root / "val", root / "test")
    (root / "test" / "cat" / "cat_000.png").unlink()
    src = load_eval_source(str(root))
    assert "/test/" in src.describe(0) and len(src) == 3


def test_eval_source_keeps_training_classes(make_image_folder):
    root = make_image_folder(layout="split-test", classes=("a", "b", "c"), n=2)
    shutil.rmtree(root / "test" / "a")
    src = load_eval_source(str(root))
    assert src.classes == ["a", "b", "c"] and set(src.targets.tolist()) == {1, 2}


def test_eval_source_of_plain_folder_is_all_of_it(make_image_folder):
    root = make_image_folder(n=3)
    assert len(load_eval_source(str(root))) == 6


def test_eval_source_with_model_classes_maps_and_rejects_unknown(make_image_folder):
    root = make_image_folder(classes=("dog", "cat"), n=2)
    src = load_eval_source(str(root), classes=["bird", "cat", "dog"])
    assert src.classes == ["bird", "cat", "dog"]
    assert sorted(set(src.targets.tolist())) == [1, 2]
    with pytest.raises(TlearnError, match="dog"):
        load_eval_source(str(root), classes=["cat", "bird"])


def test_eval_source_of_train_only_folder_is_an_error(make_image_folder):
    root = make_image_folder(layout="split", n=2)
    shutil.rmtree(root / "val")
    with pytest.raises(TlearnError, match="no test/ or val/"):
        load_eval_source(str(root))


def test_eval_source_csv_and_limit(make_image_folder):
    root = make_image_folder(n=5)
    rows = [(f"{c}/{c}_{j:03d}.png", c) for c in ("cat", "dog") for j in range(5)]
    src = load_eval_source(str(_write_csv(root, rows)), eval_limit=4)
    assert len(src) == 4 and np.bincount(src.targets).tolist() == [2, 2]


# --- stratification and sources -----------------------------------------------------------------


def test_stratified_indices_keep_proportions_and_every_class():
    targets = np.array([0] * 600 + [1] * 300 + [2] * 90 + [3] * 10)
    idx = stratified_indices(targets, 100, seed=0)
    assert len(idx) == 100 and len(set(idx.tolist())) == 100
    assert np.bincount(targets[idx]).tolist() == [60, 30, 9, 1]
    assert (stratified_indices(targets, 100, seed=0) == idx).all()
    tiny = stratified_indices(targets, 4, seed=0)
    assert sorted(targets[tiny].tolist()) == [0, 1, 2, 3]
    assert len(stratified_indices(targets, 5000, seed=0)) == 1000


def test_stratified_split_is_a_partition():
    targets = np.repeat(np.arange(5), [50, 20, 7, 2, 1])
    train, val = stratified_split(targets, 0.2, seed=7)
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(len(targets)))
    assert len(val) == round(0.2 * len(targets))
    assert set(targets[train].tolist()) == {0, 1, 2, 3, 4}
    assert np.bincount(targets[val], minlength=5)[:3].tolist() == [10, 4, 1]


def test_array_source_and_nested_subsets():
    images = np.arange(4 * 3 * 2, dtype=np.uint8).reshape(4, 3, 2)
    src = ArraySource(images, [0, 1, 0, 1], ["a", "b"], "toy/train")
    image, label = src[1]
    assert image.mode == "RGB" and image.size == (2, 3) and label == 1
    assert np.asarray(image)[0, 0].tolist() == [6, 6, 6]
    sub = SubsetSource(SubsetSource(src, [3, 2, 1]), [0, 2])
    assert sub.targets.tolist() == [1, 1] and sub.classes == ["a", "b"]
    assert sub.describe(1) == "toy train #1" and sub.in_memory
    rgb = ArraySource(np.zeros((1, 2, 2, 3), np.uint8), [0], ["a", "b"], "x")
    assert rgb.load(0).size == (2, 2)


def test_folder_source_load_raises_for_corrupt_file(make_image_folder):
    root = make_image_folder(n=2)
    (root / "dog" / "dog_001.png").write_bytes(b"garbage")
    src = FolderSource.from_class_folders(root)
    assert not src.in_memory
    with pytest.raises(TlearnError, match="dog_001.png"):
        src.load(3)
