"""Built-in datasets: names, roots searched offline, IDX reading, and the offline error."""

from __future__ import annotations

import gzip
import struct
from urllib.error import URLError

import numpy as np
import pytest

from tlearn.data import builtin, builtin_name, load_eval_source, load_train_splits, locate_builtin
from tlearn.errors import TlearnError


@pytest.fixture(autouse=True)
def _empty_cache(tmp_path, monkeypatch):
    """Keep tests off the user's cache and off the network."""
    monkeypatch.setenv("TLEARN_DATASETS_DIR", str(tmp_path / "cache"))

    def offline(name, split, cache):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(builtin, "_download", offline)


def _write_idx(path, array: np.ndarray, compress: bool) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape
    )
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _fake_mnist(folder, n=40, compress=True):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        labels = np.arange(n) % 10
        images = rng.integers(0, 256, (n, 28, 28))
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", images, compress)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, compress)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [("fashion-mnist", "fashion-mnist"), ("fashion_mnist", "fashion-mnist"),
     ("FashionMNIST", "fashion-mnist"), ("CIFAR-10", "cifar10"), ("cifar100", "cifar100"),
     ("mnist", "mnist"), ("data/mnist", None), ("imagenet", None)],
)  # fmt: skip
def test_builtin_names(spec, expected):
    assert builtin_name(spec) == expected


@pytest.mark.parametrize("layout", ["flat-gz", "torchvision-raw"])
def test_mnist_found_in_data_root(tmp_path, layout):
    if layout == "flat-gz":
        _fake_mnist(tmp_path / "root", compress=True)
    else:
        _fake_mnist(tmp_path / "root" / "MNIST" / "raw", compress=False)
    s = load_train_splits("mnist", data_root=str(tmp_path / "root"), val_split=0.25)
    assert s.classes == [str(d) for d in range(10)]
    assert len(s.train) == 30 and len(s.val) == 10
    image, label = s.train[0]
    assert image.mode == "RGB" and image.size == (28, 28)
    test = load_eval_source("mnist", data_root=str(tmp_path / "root"), eval_limit=20)
    assert len(test) == 20 and test.name == "mnist/test"
    assert locate_builtin("mnist", tmp_path / "root") is not None


def test_missing_dataset_offline_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setattr(builtin, "DEBIAN_FASHION_MNIST", tmp_path / "none")
    with pytest.raises(TlearnError, match="--data-root DIR.*internet") as err:
        load_train_splits("fashion-mnist", data_root=str(tmp_path / "empty"))
    assert "\n" not in str(err.value)
    assert locate_builtin("cifar10") is None


def test_corrupt_idx_is_a_tlearn_error(tmp_path):
    _fake_mnist(tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bbroken")
    with pytest.raises(TlearnError, match="train-images-idx3-ubyte.gz"):
        load_train_splits("mnist", data_root=str(tmp_path))


def test_corrupt_cifar_folder_is_a_tlearn_error(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(b"not a pickle")
    with pytest.raises(TlearnError, match="corrupt"):
        load_eval_source("cifar10", data_root=str(tmp_path))


@pytest.mark.skipif(
    not builtin.DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's fashion-mnist is not installed"
)
def test_fashion_mnist_from_debian_folder():
    s = load_train_splits("fashion-mnist", val_split=0.1, train_limit=200, eval_limit=50, seed=0)
    assert s.classes[0] == "T-shirt/top" and s.classes[-1] == "Ankle boot"
    assert len(s.train) == 200 and len(s.val) == 50
    assert np.bincount(s.train.targets).tolist() == [20] * 10
    image, label = s.train[5]
    assert image.mode == "RGB" and image.size == (28, 28) and 0 <= label < 10
    test = load_eval_source("fashion-mnist")
    assert len(test) == 10_000 and test.classes == s.classes
    assert test.describe(7) == "fashion-mnist test #7"
    assert locate_builtin("fashion-mnist") == builtin.DEBIAN_FASHION_MNIST
