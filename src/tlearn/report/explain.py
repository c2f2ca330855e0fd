"""`tlearn explain`: for each image, the top-k labels and where the model looked (one PNG each)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import torch

from tlearn.data import build_transform, find_images, open_image
from tlearn.errors import TlearnError
from tlearn.report.figures import DPI
from tlearn.report.gradcam import grad_cam, overlay


@dataclass
class Explanation:
    """One image's top-k labels (most likely first) and the heat map PNG drawn for the first."""

    path: str
    labels: list[str]
    probabilities: list[float]
    figure: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "labels": self.labels, "probabilities": self.probabilities,
                "figure": self.figure}  # fmt: skip


def explain_images(model: Any, paths: list[str | Path], out: Path, topk: int = 3) -> list:
    """Explanations of image files and folders; undecodable files are skipped with a warning."""
    if topk < 1:
        raise TlearnError(f"--topk {topk} must be at least 1")
    files = find_images(paths)
    pre = model.input_preprocessing
    transform = build_transform(pre, train=False)
    tensors, kept = [], []
    for path in files:
        try:
            tensors.append(transform(open_image(path)))
            kept.append(Path(path))
        except TlearnError as e:
            print(f"warning: skipped {e}", file=sys.stderr)
    if not tensors:
        raise TlearnError("none of the given images could be decoded: check the files")
    out.mkdir(parents=True, exist_ok=True)
    batch = torch.stack(tensors)
    classifier = model.classifier.eval()
    with torch.no_grad():
        probabilities = torch.cat([classifier(batch[i : i + 32]).float().softmax(1)
                                   for i in range(0, len(batch), 32)])  # fmt: skip
    top = probabilities.topk(min(topk, len(model.classes)), dim=1)
    maps = grad_cam(classifier, batch, top.indices[:, 0].tolist(), pre.input_size)
    results = []
    for n, (path, image, heat) in enumerate(zip(kept, batch, maps, strict=True)):
        labels = [model.classes[i] for i in top.indices[n].tolist()]
        probs = [round(v, 6) for v in top.values[n].tolist()]
        figure = out / f"{n + 1:03d}_{path.stem}.png"
        draw(image, heat, labels, probs, path.name, figure)
        results.append(Explanation(str(path), labels, probs, str(figure)))
    return results


def draw(image: torch.Tensor, heat: Any, labels: list[str], probs: list[float], name: str,
         path: Path) -> Path:  # fmt: skip
    """The image, its heat map for the top label, and the top-k as bars."""
    fig, (ax_img, ax_cam, ax_bar) = plt.subplots(
        1, 3, figsize=(11, 3.4), gridspec_kw={"width_ratios": [1, 1, 1.3]}
    )
    ax_img.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy())
    ax_img.set_title(name[:40], fontsize=9)
    ax_cam.imshow(overlay(image, heat))
    ax_cam.set_title(f"where it looked for '{labels[0][:24]}'", fontsize=9)
    for ax in (ax_img, ax_cam):
        ax.axis("off")
    y = list(range(len(labels)))[::-1]
    ax_bar.barh(y, probs, color="tab:blue")
    ax_bar.set_yticks(y, [label[:28] for label in labels], fontsize=9)
    ax_bar.set(xlim=(0, 1), xlabel="probability", title=f"top {len(labels)}")
    for yi, p in zip(y, probs, strict=True):
        ax_bar.text(min(p + 0.02, 0.85), yi, f"{100 * p:.1f}%", va="center", fontsize=8)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path
