"""Where a run validates: `test/` is never used for a choice, only by `tlearn evaluate`."""

from __future__ import annotations

import shutil

import tlearn
from fast import BASE

TINY = dict(BASE, backbone="test_resnet", batch_size=4, epochs=1, cache=False)


def test_train_test_folder_validates_on_a_split_of_train(make_image_folder, tmp_path):
    data = make_image_folder(layout="split-test", n=8)
    # a class the model does not know: validating on test/ (the old behaviour) is an error
    shutil.copytree(data / "test" / "cat", data / "test" / "cow")
    lines: list[str] = []
    run = tmp_path / "run"
    tlearn.train(str(data), out=str(run), val_split=0.25, log=lines.append, **TINY)
    assert "validation: 25% of train/ (stratified, seed 0), 4 images, test/ left for evaluate" in (
        lines
    )
    shutil.rmtree(data / "test" / "cow")
    report = tlearn.load(run).evaluate(str(data))  # the folder's test/: 4 + 4 images
    assert report.images == 8


def test_train_val_folder_validates_on_val(make_image_folder, tmp_path):
    data = make_image_folder(layout="split", n=6)
    lines: list[str] = []
    tlearn.train(str(data), out=str(tmp_path / "run"), val_split=0.25, log=lines.append, **TINY)
    assert "validation: val/, 6 images" in lines
