"""Stage features: every stage's pooled output joined to the backbone's own features."""

from __future__ import annotations

import copy
import threading

import pytest
import torch
import yaml

import tlearn
from fast import BASE
from tlearn.errors import TlearnError
from tlearn.models import create_backbone
from tlearn.models.normalize import NormalizedBackbone
from tlearn.models.stages import stage_taps

FAST = dict(BASE, batch_size=4, epochs=1)


def test_taps_are_the_libraries_own_stage_modules():
    lite0 = create_backbone("tf_efficientnet_lite0", "none", 64).module
    assert stage_taps(lite0) == [f"blocks.{i}" for i in range(7)]
    # ResNets: the last stage is what the final features pool, so it is not joined twice
    assert stage_taps(create_backbone("resnet18", "none", 32).module) == [
        "layer1",
        "layer2",
        "layer3",
    ]
    # torchvision trunks: stages with weights only, the last (pooled already) left out
    mobilenet = create_backbone("mobilenet_v3_small", "none", 64).module
    taps = stage_taps(mobilenet)
    assert taps[0] == "features.0" and f"features.{len(mobilenet.features) - 1}" not in taps
    assert stage_taps(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))) == []


def test_output_is_each_stage_pooled_then_the_final_features():
    backbone = create_backbone("test_efficientnet", "none", 32)
    body = backbone.module.eval()
    taps = stage_taps(body)
    wrapped = NormalizedBackbone(body, backbone.preprocessing, taps).eval()
    x = torch.rand(3, 3, 32, 32)
    seen: dict[str, torch.Tensor] = {}
    handles = [
        body.get_submodule(n).register_forward_hook(
            lambda m, a, out, n=n: seen.__setitem__(n, out.mean(dim=(2, 3)))
        )
        for n in taps
    ]
    with torch.no_grad():
        out = wrapped(x)
    for h in handles:
        h.remove()
    plain = NormalizedBackbone(body, backbone.preprocessing)
    with torch.no_grad():
        # the same body without taps: the hooks of the tapped wrapper add nothing outside it
        final = plain(x)
    expected = torch.cat([*(seen[n] for n in taps), final], dim=1)
    assert out.shape == (3, wrapped.feature_width())
    assert wrapped.feature_width() > backbone.num_features
    torch.testing.assert_close(out, expected)


def test_copies_and_threads_keep_their_own_stage_outputs():
    backbone = create_backbone("test_efficientnet", "none", 32)
    wrapped = NormalizedBackbone(
        backbone.module.eval(), backbone.preprocessing, stage_taps(backbone.module)
    ).eval()
    twin = copy.deepcopy(wrapped)
    with torch.no_grad():
        twin.body.blocks[0][0].conv.weight.mul_(2)  # the copy computes something else now
    a, b = torch.rand(2, 3, 32, 32), torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        expected_a, expected_b = wrapped(a), wrapped(b)
        assert not torch.allclose(twin(a), expected_a)
    results: dict[str, torch.Tensor] = {}

    def run(name, x):
        with torch.no_grad():
            for _ in range(20):
                results[name] = wrapped(x)

    threads = [threading.Thread(target=run, args=(n, x)) for n, x in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    torch.testing.assert_close(results["a"], expected_a)
    torch.testing.assert_close(results["b"], expected_b)


def test_a_frozen_backbone_trains_on_stage_features_and_reloads(tmp_path, make_image_folder):
    data = make_image_folder(n=5)
    model = tlearn.train(
        str(data), backbone="resnet18", strategy="linear-probe", head="mlp", hidden="8",
        out=str(tmp_path / "run"), **FAST,
    )  # fmt: skip
    record = model.spec.backbones[0]
    assert record["taps"] == ["layer1", "layer2", "layer3"]
    assert record["num_features"] == 64 + 128 + 256 + 512
    assert model.spec.head["input_norm"] is True
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["features"] == "stages"
    again = tlearn.load(tmp_path / "run")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.classifier(x), model.classifier.eval()(x))
    # a file naming stages the network lacks is refused in one sentence
    from tlearn.api import build_from_spec

    record["taps"] = ["layer9"]
    with pytest.raises(TlearnError, match="names stages resnet18 does not have"):
        build_from_spec(model.spec)


def test_a_training_backbone_keeps_the_last_features(tmp_path, make_image_folder):
    data = make_image_folder(n=4)
    model = tlearn.train(
        str(data), backbone="test_resnet", strategy="finetune", out=str(tmp_path / "run"), **FAST
    )
    assert model.spec.backbones[0]["taps"] == []
    assert model.spec.head.get("input_norm") is False
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["features"] == "last"


def test_last_features_can_be_asked_for_a_frozen_backbone(tmp_path, make_image_folder):
    data = make_image_folder(n=4)
    model = tlearn.train(
        str(data), backbone="resnet18", strategy="linear-probe", features="last",
        out=str(tmp_path / "run"), **FAST,
    )  # fmt: skip
    assert model.spec.backbones[0]["num_features"] == 512
    assert isinstance(model.classifier.head, torch.nn.Linear)


def test_stage_and_last_features_have_separate_cache_entries(tmp_path, make_image_folder):
    from tlearn.training.features import weights_digest

    backbone = create_backbone("resnet18", "none", 32)
    plain = NormalizedBackbone(backbone.module, backbone.preprocessing)
    tapped = NormalizedBackbone(backbone.module, backbone.preprocessing, stage_taps(plain.body))
    assert weights_digest(plain) != weights_digest(tapped)


def test_stages_of_an_unknown_network_end_in_one_sentence(tmp_path, make_image_folder):
    from tlearn.config import TrainConfig
    from tlearn.models.backbones import Backbone
    from tlearn.training.build import feature_taps

    backbone = create_backbone("resnet18", "none", 32)
    body = torch.nn.Sequential(torch.nn.Flatten())
    odd = Backbone("odd", "timm", body, 3, backbone.preprocessing, "none")
    cfg = TrainConfig(data="x", features="stages")
    with pytest.raises(TlearnError, match="pass --features last"):
        feature_taps(cfg, [odd], "linear-probe")
    cfg.features = "auto"  # auto falls back to the last features where stages are unknown
    assert feature_taps(cfg, [odd], "linear-probe") == [[]]


def test_the_heads_input_norm_standardises_and_takes_a_single_row():
    from tlearn.models.heads import build_head

    head = build_head("mlp", 6, 3, hidden=(4,), input_norm=True).train()
    norm = head[0]
    x = torch.randn(64, 6) * torch.tensor([1, 10, 100, 0.1, 5, 50]) + 7
    with torch.no_grad():
        z = norm(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0, unbiased=False), torch.ones(6), atol=1e-3, rtol=0)
    before = norm.running_mean.clone()
    head(torch.randn(1, 6)).sum().backward()  # a lone last row: running statistics, no update
    torch.testing.assert_close(norm.running_mean, before)
    assert not list(norm.parameters())


def test_fused_backbones_each_join_their_stages(tmp_path, make_image_folder):
    data = make_image_folder(n=5)
    model = tlearn.train(
        str(data), backbone=["resnet18", "tf_efficientnet_lite0"], strategy="linear-probe",
        out=str(tmp_path / "run"), **FAST,
    )  # fmt: skip
    widths = [b["num_features"] for b in model.spec.backbones]
    assert widths == [64 + 128 + 256 + 512, 16 + 24 + 40 + 80 + 112 + 192 + 320 + 1280]
    again = tlearn.load(tmp_path / "run" / "last.safetensors")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again.classifier(x), model.classifier.eval()(x))
