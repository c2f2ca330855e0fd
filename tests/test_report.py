"""report.html, its figures, `tlearn explain`, TensorBoard logs; and the page in a real browser."""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import pytest
import torch

import tlearn
from fast import RESNET18, quiet
from tlearn.cli import main
from tlearn.errors import TlearnError
from tlearn.report import figures
from tlearn.report.gradcam import grad_cam, target_layer

FAST = dict(RESNET18, log=quiet)
CLASSES = ("cat", "dog", "owl")
FIGURES = ("training.png", "lr.png", "confusion.png", "confusion_normalized.png", "reliability.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trained run whose test split holds two mislabelled images: confident mistakes."""
    from conftest import _PALETTE, _fill, write_image

    root = tmp_path_factory.mktemp("report")
    data = root / "data"
    _fill(data / "train", CLASSES, 8, (24, 24), "png", seed=0)
    _fill(data / "val", CLASSES, 3, (24, 24), "png", seed=300)
    _fill(data / "test", CLASSES, 4, (24, 24), "png", seed=600)
    write_image(data / "test" / "cat" / "really_an_owl.png", _PALETTE[2], (24, 24), seed=7)
    write_image(data / "test" / "dog" / "really_a_cat.png", _PALETTE[0], (24, 24), seed=8)
    lines: list[str] = []
    tlearn.train(str(data), strategy="linear-probe", epochs=3, lr=0.05, out=str(root / "run"),
                 tensorboard=True, **{**FAST, "log": lines.append})  # fmt: skip
    return data, root / "run", lines


def test_train_writes_the_report_with_its_figures_beside(run):
    data, run_dir, lines = run
    page = (run_dir / "report.html").read_text()
    assert any(line.startswith("report ") for line in lines)
    for name in FIGURES:
        assert (run_dir / name).stat().st_size > 1000, name
    for section in ("The run", "Data", "Training", "Results", "Calibration", "Mistakes"):
        assert f"<h2>{section}</h2>" in page
    # self-contained: every picture is embedded, nothing is fetched
    sources = re.findall(r'<img[^>]* src="([^"]*)"', page)
    assert len(sources) >= len(FIGURES) + 2
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "really_an_owl.png" in page and "really_a_cat.png" in page  # the mistakes gallery
    assert sorted(run_dir.glob("mistake_*_cam.png"))  # with Grad-CAM heat maps
    assert "torchvision" in page or "timm" in page  # backbones and where the weights came from
    steps = (run_dir / "steps.csv").read_text().splitlines()
    assert steps[0] == "step,epoch,loss,lr" and len(steps) > 3


def test_tensorboard_logs_scalars_and_report_images(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = run
    scalars, images = set(), set()
    for events in (run_dir / "tb").glob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events), size_guidance={"images": 0}).Reload()
        scalars |= set(acc.Tags()["scalars"])
        images |= set(acc.Tags()["images"])
    assert {"train/lr", "train/step_loss", "epoch/val_accuracy"} <= scalars
    assert "results/confusion" in images and any(t.startswith("mistakes/") for t in images)


def test_tensorboard_missing_is_one_sentence(tmp_path, monkeypatch):
    from tlearn.training.steplog import StepLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(TlearnError, match=r"pip install 'tlearn\[tensorboard\]'"):
        StepLog(tmp_path, tensorboard=True)


def test_report_in_a_browser_shows_what_evaluate_json_says(run, capsys):
    from selenium.webdriver.common.by import By

    from browser import artifact_dir, broken_images, chromium

    data, run_dir, _ = run
    assert main(["evaluate", str(run_dir), str(data), "--json", "--workers", "0"]) == 0
    expected = json.loads(capsys.readouterr().out)
    with chromium(1280, 900) as driver:
        driver.get((run_dir / "report.html").resolve().as_uri())
        assert broken_images(driver) == []
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1280, min(height + 50, 8000))
        driver.save_screenshot(str(artifact_dir() / "report.png"))
        shown = driver.find_element(By.ID, "accuracy").text
        cells = {
            (c.get_attribute("data-class"), c.get_attribute("data-metric")): c.text
            for c in driver.find_elements(By.CSS_SELECTOR, "#per-class td[data-metric]")
        }
    assert shown == f"{expected['accuracy']:.4f}" and expected["accuracy"] < 1.0
    assert len(cells) == 3 * len(expected["classes"])
    for row in expected["per_class"]:
        for metric in ("precision", "recall", "f1"):
            assert cells[(row["class"], metric)] == f"{row[metric]:.4f}", (row["class"], metric)


def test_report_command_rebuilds_and_evaluate_writes_one_anywhere(run, tmp_path, capsys):
    data, run_dir, _ = run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("*.png", "report.html", "tb"))
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").is_file() and (copy / "reliability.png").is_file()
    model_file = tmp_path / "model.safetensors"
    shutil.copy(run_dir / "best.safetensors", model_file)
    out = tmp_path / "elsewhere"
    args = ["evaluate", str(model_file), str(data), "--workers", "0", "--report", str(out)]
    assert main(args) == 0
    page = (out / "report.html").read_text()
    assert "<h2>Results</h2>" in page and "<h2>The run</h2>" not in page  # no run folder here
    assert "report " in capsys.readouterr().out


def test_explain_writes_a_figure_per_image_with_top_k(run, tmp_path, capsys):
    data, run_dir, _ = run
    images = [data / "test" / "owl", data / "test" / "cat" / "really_an_owl.png"]
    out = tmp_path / "why"
    assert main(["explain", str(run_dir), *map(str, images), "--out", str(out), "--topk", "2",
                 "--json"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 5 and all(len(r["labels"]) == 2 for r in rows)
    assert all(r["labels"][0] == "owl" for r in rows)
    assert len(list(out.glob("*.png"))) == 5
    (first,) = tlearn.load(run_dir).explain(images[1], out, topk=1)
    assert first.labels == ["owl"] and first.figure.endswith(".png")


@pytest.mark.parametrize("n", [2, 100])
def test_confusion_labels_stay_readable(n):
    classes = [f"a-longish-class-name-{i}" for i in range(n)]
    rng = np.random.default_rng(0)
    fig = figures.confusion_figure(rng.integers(0, 50, (n, n)), classes, normalized=True)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        boxes = [t.get_window_extent(renderer) for t in labels if t.get_text()]
        assert 2 <= len(boxes) <= figures.MAX_LABELS
        assert not any(a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))


def test_grad_cam_picks_the_last_convolutional_stage_and_maps_the_input():
    from tlearn.models import create_backbone
    from tlearn.models.classifier import Classifier
    from tlearn.models.heads import build_head
    from tlearn.models.normalize import NormalizedBackbone

    b = create_backbone("torchvision/resnet18", "none", 64)
    model = Classifier([NormalizedBackbone(b.module, b.preprocessing)],
                       build_head("linear", b.num_features, 3)).eval()  # fmt: skip
    assert target_layer(model, 64) is b.module.layer4
    maps = grad_cam(model, torch.rand(2, 3, 64, 64), [0, 2])
    assert maps.shape == (2, 64, 64) and maps.min() >= 0 and maps.max() <= 1


def test_grad_cam_of_a_pooled_linear_head_is_its_class_activation_map():
    """Behind global average pooling and a linear layer, Grad-CAM's channel weights are the
    class's weights over the map's pixels, so its map is the class activation map (Zhou et al.
    2016) computed in closed form: a wrong gradient, sign or scaling shows here."""
    import torch.nn.functional as F

    from tlearn.models import create_backbone
    from tlearn.models.classifier import Classifier
    from tlearn.models.heads import build_head
    from tlearn.models.normalize import NormalizedBackbone

    torch.manual_seed(0)
    b = create_backbone("torchvision/resnet18", "none", 96)
    head = build_head("linear", b.num_features, 3)
    model = Classifier([NormalizedBackbone(b.module, b.preprocessing)], head).eval()
    images, classes = torch.rand(2, 3, 96, 96), [2, 0]
    maps = grad_cam(model, images, classes)
    captured = []
    hook = b.module.layer4.register_forward_hook(lambda _m, _a, out: captured.append(out))
    with torch.no_grad():
        model(images)
    hook.remove()
    linear = [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]
    weights = linear.weight.detach()[classes]
    cam = torch.einsum("nchw,nc->nhw", captured[0], weights).relu()[:, None]
    cam = cam - cam.amin((2, 3), keepdim=True)
    cam = cam / (cam.amax((2, 3), keepdim=True) + 1e-7)
    cam = F.interpolate(cam, size=(96, 96), mode="bilinear", align_corners=False)[:, 0]
    cam = cam - cam.amin((1, 2), keepdim=True)
    expected = (cam / (cam.amax((1, 2), keepdim=True) + 1e-7)).numpy()
    assert abs(maps - expected).max() < 1e-4
    assert maps.reshape(2, -1).std(1).min() > 0.05  # a map, not a constant


def test_a_split_folder_is_reported_on_its_validation_images(tmp_path, make_image_folder):
    data = make_image_folder(n=10, layout="flat")  # 20 images, split 80/20 by training
    tlearn.train(str(data), strategy="linear-probe", epochs=1, val_split=0.2,
                 out=str(tmp_path / "run"), **FAST)  # fmt: skip
    page = (tmp_path / "run" / "report.html").read_text()
    assert "(validation split)" in page
    assert re.search(r"\b4 images, 2 classes", page)  # the 4 held-out images, not all 20
