"""End to end through the Python API on tiny generated folders: train, evaluate, predict, reload."""

from __future__ import annotations

import csv

import pytest
import torch
from safetensors.torch import load_file

import tlearn
from fast import RESNET18, quiet
from tlearn.errors import TlearnError

# A small, fast recipe: random-init resnet18 at 32 px learns solid colours in a couple of epochs.
FAST = dict(RESNET18, log=quiet)


def test_train_evaluate_predict_reload(tmp_path, make_image_folder):
    data = make_image_folder(classes=("cat", "dog", "owl"), n=8, layout="split")
    run = tmp_path / "run"
    # random features of a frozen net separate solid colours; the head learns them in a few steps
    model = tlearn.train(str(data), strategy="linear-probe", epochs=8, lr=0.05,
                         out=str(run), **FAST)  # fmt: skip
    assert {p.name for p in run.iterdir()} >= {
        "config.yaml", "metrics.csv", "best.safetensors", "last.safetensors",
    }  # fmt: skip
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert set(rows[0]) >= {"train_loss", "val_loss", "val_accuracy", "images_per_s", "elapsed_s"}

    report = model.evaluate(str(data), workers=0)
    assert report.accuracy == 1.0  # solid colours are trivially separable
    assert report.images == 12 and report.confusion_matrix[0] == [4, 0, 0]

    reloaded = tlearn.load(run / "last.safetensors")
    assert reloaded.classes == ["cat", "dog", "owl"]
    image = next((data / "val" / "owl").iterdir())
    (first,) = reloaded.predict(image, topk=2)
    assert first.labels[0] == "owl" and len(first.probabilities) == 2
    # the reloaded model computes exactly what the trained one does
    x = torch.rand(2, 3, 32, 32)
    trained = tlearn.load(run / "last.safetensors")
    torch.testing.assert_close(trained.classifier(x), reloaded.classifier(x))


def test_linear_probe_leaves_backbone_untouched_and_uses_feature_cache(tmp_path, make_image_folder):
    data = make_image_folder(n=6)
    weights = tmp_path / "rn18.pth"
    from torchvision.models import resnet18

    torch.save(resnet18(num_classes=1000).state_dict(), weights)
    lines: list[str] = []
    tlearn.train(str(data), strategy="linear-probe", epochs=2, out=str(tmp_path / "run"),
                 **{**FAST, "weights": str(weights), "log": lines.append})  # fmt: skip
    assert any("frozen features once" in line for line in lines)
    saved = load_file(tmp_path / "run" / "last.safetensors")
    original = torch.load(weights, weights_only=True)
    for key, value in original.items():
        if not key.startswith("fc."):
            assert torch.equal(saved[f"backbones.0.body.{key}"], value), key


def test_article_path_resnet18_mlp_finetune_from_weights_file(tmp_path, make_image_folder):
    """The article's recipe: resnet18, the 512-256-128 MLP head, every layer trained, SGD."""
    data = make_image_folder(n=6)
    weights = tmp_path / "resnet18.pth"
    from torchvision.models import resnet18

    torch.save(resnet18(num_classes=1000).state_dict(), weights)
    model = tlearn.train(str(data), strategy="finetune", head="mlp", hidden="256,128",
                         optimizer="sgd", epochs=1, out=str(tmp_path / "run"),
                         **{**FAST, "weights": str(weights)})  # fmt: skip
    head = model.classifier.head
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 256), (256, 128), (128, 2)]
    assert "file:" in model.spec.backbones[0]["weights_source"]
    saved = load_file(tmp_path / "run" / "last.safetensors")
    original = torch.load(weights, weights_only=True)
    assert not torch.equal(
        saved["backbones.0.body.layer1.0.conv1.weight"], original["layer1.0.conv1.weight"]
    )


def test_freeze_n_trains_only_the_top_stages(tmp_path, make_image_folder):
    data = make_image_folder(n=6)
    weights = tmp_path / "rn.pth"
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), weights)
    tlearn.train(str(data), strategy="freeze:3", epochs=1, out=str(tmp_path / "run"),
                 **{**FAST, "weights": str(weights)})  # fmt: skip
    saved = load_file(tmp_path / "run" / "last.safetensors")
    original = torch.load(weights, weights_only=True)
    same = lambda k: torch.equal(saved[f"backbones.0.body.{k}"], original[k])  # noqa: E731
    assert (
        same("conv1.weight") and same("layer2.0.conv1.weight") and same("layer2.0.bn1.running_mean")
    )
    assert not same("layer3.0.conv1.weight") and not same("layer4.1.conv2.weight")


def test_gradual_thaws_from_the_top(tmp_path, make_image_folder):
    data = make_image_folder(n=6)
    lines: list[str] = []
    tlearn.train(str(data), strategy="gradual", epochs=3, out=str(tmp_path / "run"),
                 **{**FAST, "log": lines.append})  # fmt: skip
    phases = [line for line in lines if line.startswith("phase:")]
    assert "top 0 backbone stage(s)" in phases[0]
    assert "top 5 backbone stage(s)" in phases[-1]


def test_same_seed_same_metrics(tmp_path, make_image_folder):
    data = make_image_folder(n=6)
    runs = []
    for name in ("a", "b"):
        tlearn.train(str(data), strategy="finetune", epochs=1, out=str(tmp_path / name), **FAST)
        runs.append(list(csv.DictReader(open(tmp_path / name / "metrics.csv")))[0]["train_loss"])
    assert runs[0] == runs[1]


def test_config_file_and_override(tmp_path, make_image_folder):
    data = make_image_folder(n=6)
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"data: {data}\nepochs: 3\nhead: mlp\nhidden: 16\nstrategy: finetune\n")
    model = tlearn.train(config=cfg, epochs=1, out=str(tmp_path / "run"), **FAST)
    assert model.spec.config["epochs"] == 1 and model.spec.head["hidden"] == [16]


def test_evaluate_refuses_unknown_classes(tmp_path, make_image_folder):
    data = make_image_folder(root=tmp_path / "a", n=4)
    other = make_image_folder(root=tmp_path / "b", classes=("cat", "zebra"), n=2)
    model = tlearn.train(
        str(data), epochs=1, strategy="finetune", out=str(tmp_path / "run"), **FAST
    )
    with pytest.raises(TlearnError, match="zebra"):
        model.evaluate(str(other), workers=0)
