"""`tlearn export`: the graph takes uint8 images and returns probabilities; the check compares
onnxruntime with the fp32 PyTorch model on real images, and a file that disagrees is removed."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

import tlearn
from tiny_run import CLASSES, train_tiny
from tlearn.cli import main
from tlearn.deploy import export as export_module
from tlearn.deploy.inputs import load_files
from tlearn.ensemble import ensemble

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("export"))


def test_onnx_round_trip_with_check_and_metadata(run, capsys):
    assert main(["export", str(run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("check:"))
    agree, total = line.split("top-1 agreement ")[1].split("/")
    assert agree == total == "24", line  # every image of the run's data (a flat folder)
    difference = float(line.split("difference ")[1].split(" ")[0])
    assert difference <= 1e-4
    path = run / "model.onnx"
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == list(CLASSES)
    assert json.loads(meta["backbones"])[0]["name"] == "test_efficientnet"
    spec = json.loads(meta["input"])
    assert (
        spec["dtype"] == "uint8" and spec["layout"] == "NCHW" and spec["shape"][1:] == [3, 32, 32]
    )
    assert meta["tlearn_version"] == tlearn.__version__
    assert json.loads(meta["preprocessing"])["model_input"]["input_size"] == 32
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.type == "tensor(uint8)" and isinstance(inp.shape[0], str)  # dynamic batch
    model = tlearn.load(run)
    images, _ = load_files(
        sorted((run.parent / "images").rglob("*.png")), model.input_preprocessing
    )
    for batch in (images[:1], images[:7]):  # batch sizes other than the traced one
        got = session.run(None, {"images": batch.numpy()})[0]
        with torch.inference_mode():
            want = model.classifier(batch.float() / 255).softmax(1).numpy()
        assert got.shape == (len(batch), 3)
        np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
        assert np.abs(got - want).max() < 1e-4


def test_predict_onnx_reproduces_pytorch_predictions(run, capsys):
    path = run / "model.onnx"
    if not path.exists():
        tlearn.export(run, log=lambda s: None)
    images = str(run.parent / "images")
    assert main(["predict", "--onnx", str(path), images, "--json", "--topk", "3"]) == 0
    from_onnx = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert main(["predict", str(run), images, "--json", "--topk", "3"]) == 0
    from_torch = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(from_onnx) == len(from_torch) == 24
    for a, b in zip(from_onnx, from_torch, strict=True):
        assert a["path"] == b["path"] and a["labels"][0] == b["labels"][0]
        assert abs(a["probabilities"][0] - b["probabilities"][0]) < 1e-3


def test_sabotaged_export_fails_and_leaves_no_file(run, monkeypatch, tmp_path, capsys):
    """An export whose weights drift from the model's must fail the check, exit non-zero and
    leave no file (nor its temporary) behind."""
    real = export_module.write_onnx

    def sabotaged(graph, example, path, meta, log):
        exporter = real(graph, example, path, meta, log)
        proto = onnx.load(str(path))
        for init in proto.graph.initializer:  # nudge every float weight by 5%
            if init.data_type == onnx.TensorProto.FLOAT:
                values = onnx.numpy_helper.to_array(init) * 1.05 + 0.01
                init.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), init.name))
        onnx.save(proto, str(path))
        return exporter

    monkeypatch.setattr(export_module, "write_onnx", sabotaged)
    out = tmp_path / "bad.onnx"
    assert main(["export", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "disagrees with PyTorch" in err and "largest probability difference" in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_check_dir_when_the_runs_data_is_gone(run, tmp_path, capsys):
    moved = tmp_path / "run"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("*.onnx"))
    hidden = tmp_path / "elsewhere"
    shutil.copytree(tlearn.load(moved).spec.config["data"], hidden)
    # point the model's config at data that is not here: the check must ask for --check
    model = tlearn.load(moved)
    model.spec.config["data"] = str(tmp_path / "missing")
    model.save(moved / "best.safetensors")
    assert main(["export", str(moved)]) == 2
    assert "--check DIR" in capsys.readouterr().err
    assert not (moved / "model.onnx").exists()
    assert main(["export", str(moved), "--check", str(hidden / "dog")]) == 0
    assert "images from" in capsys.readouterr().out
    assert (moved / "model.onnx").is_file()


def test_pt2_export_is_verified_and_carries_metadata(run, tmp_path):
    out = tmp_path / "model.pt2"
    result = tlearn.export(run, out, format="pt2", log=lambda s: None)
    assert result.max_difference <= 1e-4 and result.top1_agreement == 1.0
    extra = {"tlearn.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # CPU weights: "No complete tensor found in the group"
        program = torch.export.load(str(out), extra_files=extra)
    assert json.loads(json.loads(extra["tlearn.json"])["classes"]) == list(CLASSES)
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    probabilities = program.module()(images)
    assert probabilities.shape == (3, 3)
    assert torch.allclose(probabilities.sum(1), torch.ones(3), atol=1e-5)


def test_missing_extra_names_the_pip_command(run, monkeypatch, tmp_path):
    import importlib

    real = importlib.import_module

    def no_onnx(name, *a, **k):
        if name.split(".")[0] in ("onnx", "onnxscript"):
            raise ImportError(f"No module named '{name}'", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_onnx)
    with pytest.raises(tlearn.TlearnError, match=r"pip install 'tlearn\[export\]'"):
        tlearn.export(run, tmp_path / "m.onnx", log=lambda s: None)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.slow
def test_fused_and_ensemble_models_export(run, tmp_path):
    """Two backbones fused, and an ensemble of two runs, each one verified graph."""
    fused = train_tiny(run.parent, "fused", backbone=["test_efficientnet", "test_resnet"])
    for source, name in ((fused, "fused.onnx"), (None, "ens.onnx")):
        if source is None:
            source = tmp_path / "ens.safetensors"
            ensemble([run, fused], out=source, log=lambda s: None)
        result = tlearn.export(source, tmp_path / name, log=lambda s: None)
        assert result.max_difference <= 1e-4 and result.top1_agreement == 1.0
        meta = {p.key: p.value for p in onnx.load(str(tmp_path / name)).metadata_props}
        names = [b["name"] for b in json.loads(meta["backbones"])]
        assert "test_resnet" in names and "test_efficientnet" in names
