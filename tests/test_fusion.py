"""Several backbones, one head: fusion modules, per-backbone strategies, fused model files."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import tlearn
from fast import RESNET18, quiet
from tlearn.cli import main
from tlearn.config import TrainConfig
from tlearn.errors import TlearnError
from tlearn.models import build_fusion, build_head, create_backbone
from tlearn.models.fusion import GatedFusion, SumFusion
from tlearn.models.normalize import NormalizedBackbone
from tlearn.preprocessing import Preprocessing
from tlearn.training.strategies import apply_phase, plan_backbone_phases

# Two different architectures (torchvision resnet18: 512 features, 5 stages; timm
# EfficientNet-Lite0: 1280 features, 8 stages), random init at 32 px: fast and offline.
PAIR = ["resnet18", "tf_efficientnet_lite0"]
# the backbones' last features: what the hand-built head below and the widths here assume
FAST = dict(RESNET18, backbone=PAIR, log=quiet, features="last")


@pytest.fixture(autouse=True)
def _private_feature_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))


# ---------------------------------------------------------------- fusion modules


def test_fusion_shapes_and_gate():
    feats = torch.randn(4, 3 + 5)
    concat = build_fusion("concat", [3, 5])
    assert concat.out_features == 8 and torch.equal(concat(feats), feats)
    for kind, cls in (("sum", SumFusion), ("gated", GatedFusion)):
        fusion = build_fusion(kind, [3, 5])
        assert isinstance(fusion, cls) and fusion.out_features == 3  # the narrowest width
        assert fusion(feats).shape == (4, 3)
    gated = build_fusion("gated", [3, 5])
    weights = gated.gate_weights(feats)
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    # the gate starts even: gated == the mean of the projections == sum / 2
    summed = gated.projected(feats).sum(1)
    torch.testing.assert_close(gated(feats), summed / 2)
    # sum is exactly each backbone's projection added, in backbone order
    fusion = build_fusion("sum", [3, 5])
    expected = fusion.projections[0](feats[:, :3]) + fusion.projections[1](feats[:, 3:])
    torch.testing.assert_close(fusion(feats), expected)
    with pytest.raises(TlearnError, match="concat, sum, gated"):
        build_fusion("attention", [3, 5])


def test_fusion_option_is_validated():
    with pytest.raises(TlearnError, match="--fusion 'mean' is not one of concat, sum, gated"):
        TrainConfig(data="x", fusion="mean").validate()


# ---------------------------------------------------------------- strategies per backbone


def _stages():
    return [create_backbone(n, "none", 32).stages() for n in PAIR]


def test_every_strategy_reaches_every_backbone_by_its_own_depth():
    stages = _stages()
    counts = [len(s) for s in stages]
    assert counts[0] != counts[1]  # the case that must not fall back to the shallower depth
    head = torch.nn.Linear(4, 2)

    def trains(phase):
        apply_phase(head, stages, phase, 0.1, 1.0, 0.0)
        return [[all(p.requires_grad for p in st) for st in s] for s in stages]

    (probe,) = plan_backbone_phases("linear-probe", 3, counts)
    assert trains(probe) == [[False] * n for n in counts]
    (finetune,) = plan_backbone_phases("finetune", 3, counts)
    assert trains(finetune) == [[True] * n for n in counts]
    (frozen,) = plan_backbone_phases("freeze:2", 3, counts)
    assert trains(frozen) == [[False, False] + [True] * (n - 2) for n in counts]
    gradual = plan_backbone_phases("gradual", 6, counts)
    assert sum(p.epochs for p in gradual) == 6
    assert trains(gradual[0]) == [[False] * n for n in counts]
    assert trains(gradual[-1]) == [[True] * n for n in counts]
    middle = trains(gradual[1])  # each thawed from the top, by its own share of stages
    assert all(not flags[0] and flags[-1] for flags in middle)
    with pytest.raises(TlearnError, match="freeze:0 to freeze:5"):
        plan_backbone_phases("freeze:6", 3, counts)


# ---------------------------------------------------------------- fused model files


def _manual_logits(path, x: torch.Tensor) -> torch.Tensor:
    """Each part rebuilt on its own from the file: backbones in the listed order, then the head."""
    tensors = load_file(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    records = json.loads(meta["backbones"])
    head_meta = json.loads(meta["head"])
    feats = []
    for i, record in enumerate(records):
        backbone = create_backbone(record["name"], "none", 32)
        prefix = f"backbones.{i}.body."
        backbone.module.load_state_dict(
            {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        )
        pre = Preprocessing.from_dict(record["preprocessing"])
        part = NormalizedBackbone(backbone.module, pre).eval()
        with torch.no_grad():
            feats.append(part(x))
    head = build_head(
        head_meta["kind"],
        sum(r["num_features"] for r in records),
        len(json.loads(meta["classes"])),
        hidden=head_meta["hidden"],
    )
    head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
    with torch.no_grad():
        return head.eval()(torch.cat(feats, dim=1))


def test_fused_predictions_are_the_parts_through_the_saved_head(tmp_path, make_image_folder):
    data = make_image_folder(classes=("cat", "dog", "owl"), n=8, layout="split")
    model = tlearn.train(str(data), strategy="linear-probe", head="mlp", hidden="32", dropout=0.0,
                         epochs=10, lr=0.01, out=str(tmp_path / "run"), **FAST)  # fmt: skip
    path = tmp_path / "run" / "last.safetensors"
    loaded = tlearn.load(path)
    assert [b["name"] for b in loaded.spec.backbones] == PAIR
    assert [b["num_features"] for b in loaded.spec.backbones] == [512, 1280]
    assert loaded.spec.fusion == "concat" and loaded.classes == ["cat", "dog", "owl"]
    # each backbone keeps its own normalisation inside the model
    means = [tuple(b.mean.flatten().tolist()) for b in loaded.classifier.backbones]
    assert means[0] == pytest.approx((0.485, 0.456, 0.406)) and means[1] == pytest.approx(
        (0.5,) * 3
    )

    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        fused = loaded.classifier(x)
    # the classifier divides its logits by the temperature fitted after training
    manual = _manual_logits(path, x) / loaded.spec.temperature
    torch.testing.assert_close(fused, manual, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, model.classifier.eval()(x), rtol=1e-4, atol=1e-5)

    # and the commands that take a model file use it unchanged
    report = loaded.evaluate(str(data), workers=0)
    assert report.images == 12 and report.accuracy == 1.0
    image = next((data / "val" / "owl").iterdir())
    assert loaded.predict(image, topk=1)[0].labels == ["owl"]


@pytest.mark.parametrize(("fusion", "strategy"), [("gated", "linear-probe"), ("sum", "finetune")])
def test_learned_fusion_trains_and_round_trips(tmp_path, make_image_folder, fusion, strategy):
    data = make_image_folder(classes=("cat", "dog"), n=6)
    model = tlearn.train(str(data), strategy=strategy, fusion=fusion, epochs=2, lr=0.01,
                         out=str(tmp_path / "run"), **FAST)  # fmt: skip
    path = tmp_path / "run" / "last.safetensors"
    tensors = load_file(path)
    assert tensors["fusion.projections.0.weight"].shape == (512, 512)
    assert tensors["fusion.projections.1.weight"].shape == (512, 1280)
    assert tensors["head.weight"].shape == (2, 512)
    if fusion == "gated":  # zero at init: non-zero means the fusion trained on cached features
        assert tensors["fusion.gate.weight"].abs().sum() > 0
    loaded = tlearn.load(path)
    assert loaded.spec.fusion == fusion
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.classifier(x), model.classifier.eval()(x))
        again = tlearn.load(loaded.save(tmp_path / "copy.safetensors"))
        assert torch.equal(again.classifier(x), loaded.classifier(x))


def test_two_backbones_with_different_sizes_each_get_their_own(tmp_path, make_image_folder):
    """Data comes at the largest size; the smaller backbone resizes inside the model."""
    data = make_image_folder(classes=("cat", "dog"), n=4)
    small = create_backbone("resnet18", "none", 32)
    large = create_backbone("tf_efficientnet_lite0", "none", 48)
    from tlearn.preprocessing import model_input
    from tlearn.training.build import build_classifier

    cfg = TrainConfig(data=str(data), fusion="concat")
    model = build_classifier([small, large], 2, cfg).eval()
    assert model_input([small.preprocessing, large.preprocessing]).input_size == 48
    x = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True)
        first = model.backbones[0](resized)
        torch.testing.assert_close(model.forward_features(x)[:, :512], first)
        # bf16 inference (evaluate, serve): torch resizes antialiased only in fp32 on a CPU
        prepared = model.backbones[0].prepare(x.to(torch.bfloat16))
    assert prepared.dtype == torch.bfloat16 and prepared.shape == (2, 3, 32, 32)


# ---------------------------------------------------------------- compare


def test_compare_trains_each_alone_and_fused(tmp_path, make_image_folder, capsys):
    data = make_image_folder(classes=("cat", "dog"), n=4, layout="split")
    out = tmp_path / "cmp"
    code = main(["compare", str(data), "--backbone", "resnet18", "--backbone",
                 "tf_efficientnet_lite0", "--weights", "none", "--image-size", "32",
                 "--workers", "0", "--epochs", "1", "--strategy", "linear-probe",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    table = capsys.readouterr().out
    assert "| resnet18 |" in table and "| fusion concat |" in table and "pt |" in table
    rows = json.loads((out / "compare.json").read_text())["rows"]
    assert [r["backbones"] for r in rows] == [["resnet18"], ["tf_efficientnet_lite0"], PAIR]
    assert rows[2]["parameters"] > rows[0]["parameters"] and rows[2]["test_images"] == 4
    assert all((out / r["run_dir"].split("/")[-1] / "best.safetensors").is_file() for r in rows)

    assert main(["compare", str(data), "--backbone", "resnet18", "--out", str(out)]) == 2
    assert "two or more backbones" in capsys.readouterr().err
