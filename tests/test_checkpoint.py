import pytest
import torch
from safetensors.torch import save_file

import tlearn
from tlearn.checkpoint import ModelSpec, read_model_file, save_model
from tlearn.errors import TlearnError
from tlearn.models import Classifier, build_head, create_backbone
from tlearn.models.normalize import NormalizedBackbone


def _model_and_spec(classes=("a", "b", "c")):
    b = create_backbone("resnet18", "none", 32)
    model = Classifier([NormalizedBackbone(b.module, b.preprocessing)],
                       build_head("mlp", 512, len(classes), hidden=(8,), dropout=0.1))  # fmt: skip
    spec = ModelSpec(
        classes=list(classes),
        backbones=[
            {
                "name": "resnet18",
                "library": "torchvision",
                "weights_source": "none",
                "num_features": 512,
                "preprocessing": b.preprocessing.to_dict(),
            }
        ],  # fmt: skip
        head={"kind": "mlp", "hidden": [8], "dropout": 0.1},
        metrics={"val_accuracy": 0.5},
    )
    return model.eval(), spec


def test_round_trip_is_exact(tmp_path):
    model, spec = _model_and_spec()
    save_model(tmp_path / "m.safetensors", model, spec)
    loaded = tlearn.load(tmp_path / "m.safetensors")
    assert loaded.classes == ["a", "b", "c"]
    assert loaded.spec.metrics == {"val_accuracy": 0.5}
    assert loaded.spec.versions["torch"] == torch.__version__
    original, again = model.state_dict(), loaded.classifier.state_dict()
    assert original.keys() == again.keys()
    assert all(torch.equal(original[k], again[k]) for k in original)
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(loaded.classifier(x), model(x))  # memory layout may differ


def test_file_from_elsewhere_is_refused(tmp_path):
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors")
    with pytest.raises(TlearnError, match="not a tlearn model file"):
        tlearn.load(tmp_path / "other.safetensors")


def test_truncated_file_is_detected(tmp_path):
    model, spec = _model_and_spec()
    path = save_model(tmp_path / "m.safetensors", model, spec)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TlearnError, match="damaged"):
        read_model_file(path)


def test_pickle_or_garbage_is_refused(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"\x80\x04garbage that is not safetensors")
    with pytest.raises(TlearnError):
        tlearn.load(p)


def test_altered_tensors_are_refused(tmp_path):
    model, spec = _model_and_spec()
    spec.classes = ["a", "b"]  # metadata says 2 classes, the head has 3 outputs
    save_model(tmp_path / "m.safetensors", model, spec)
    with pytest.raises(TlearnError, match="does not match"):
        tlearn.load(tmp_path / "m.safetensors")


def test_run_folder_resolves_to_best(tmp_path):
    model, spec = _model_and_spec()
    save_model(tmp_path / "best.safetensors", model, spec)
    assert tlearn.load(tmp_path).classes == ["a", "b", "c"]
    with pytest.raises(TlearnError, match="run folder"):
        tlearn.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TlearnError, match="is it a run folder"):
        tlearn.load(tmp_path / "empty")
