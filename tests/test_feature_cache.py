"""The on-disk feature cache: reused when nothing that shapes the features changed, never else."""

from __future__ import annotations

import os

import tlearn
from fast import RESNET18

FAST = dict(RESNET18)


def _train(data, tmp_path, name, **options):
    lines: list[str] = []
    options = {**FAST, "strategy": "linear-probe", "epochs": 2, **options}
    model = tlearn.train(str(data), out=str(tmp_path / name), log=lines.append, **options)
    return model, "\n".join(lines)


def test_second_run_reuses_features_with_another_head(tmp_path, make_image_folder, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_image_folder(n=6)
    _, first = _train(data, tmp_path, "a")
    # the whole dataset's features are computed once: the val split is sliced from them
    assert "cached features reused" not in first
    assert "features/val: 1 features sliced from the cached whole" in first
    model, second = _train(data, tmp_path, "b", head="mlp", hidden="16", lr=0.01)
    assert second.count("sliced from the cached whole") == 2  # train and val
    assert model.spec.head["kind"] == "mlp"
    # another seed draws another split of the same images: still nothing to compute
    entries = list((tmp_path / "cache" / "features").iterdir())
    assert len(entries) == 1


def test_changed_data_or_weights_never_hit_a_stale_entry(tmp_path, make_image_folder, monkeypatch):
    import torch
    from torchvision.models import resnet18

    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_image_folder(n=6, layout="split")
    weights_a, weights_b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), weights_a)
    torch.save(resnet18().state_dict(), weights_b)
    _, log = _train(data, tmp_path, "a", weights=str(weights_a))
    assert log.count("cached features reused") == 0
    _, log = _train(data, tmp_path, "b", weights=str(weights_a))
    assert log.count("cached features reused") == 2
    # other weights, same data: nothing reused
    _, log = _train(data, tmp_path, "c", weights=str(weights_b))
    assert log.count("cached features reused") == 0
    # a training file rewritten (new bytes, size and mtime): train recomputed, val reused
    victim = sorted((data / "train" / "cat").iterdir())[0]
    victim.write_bytes(sorted((data / "train" / "dog").iterdir())[0].read_bytes() + b"\0")
    os.utime(victim, ns=(1, 1))
    _, log = _train(data, tmp_path, "d", weights=str(weights_a))
    assert log.count("cached features reused") == 1
    assert "features/val: " in log and "features/train: " not in log


def test_no_cache_writes_nothing(tmp_path, make_image_folder, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_image_folder(n=6)
    _train(data, tmp_path, "a", cache=False)
    assert not (tmp_path / "cache").exists()


def test_flip_features_are_cached_with_their_mirror(tmp_path, make_image_folder):
    data = make_image_folder(n=6)
    model, log = _train(data, tmp_path, "a", augment="flip", cache_dir=str(tmp_path / "fc"))
    assert "frozen features once" in log
    (entry,) = [p for p in (tmp_path / "fc").iterdir() if (p / "flipped.npy").exists()]
    assert (entry / "features.npy").exists()


def test_another_seed_reuses_the_whole_dataset(tmp_path, make_image_folder, monkeypatch):
    """A seed changes the split, not the images: the features come from the cached whole."""
    import torch
    from torchvision.models import resnet18

    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_image_folder(n=8)
    weights = tmp_path / "w.pth"
    torch.save(resnet18().state_dict(), weights)
    _train(data, tmp_path, "a", weights=str(weights), val_split=0.25)
    _, log = _train(data, tmp_path, "b", weights=str(weights), val_split=0.25, seed=7)
    assert log.count("sliced from the cached whole") == 2
    assert "features/train: " in log and "features/val: " in log


def test_subset_picks_the_right_rows_and_drops_undecodable_ones():
    import numpy as np
    import torch

    from tlearn.training.features import FeatureSet

    # the whole source had 5 images; image 2 failed to decode, so it has no row
    whole = FeatureSet(
        features=torch.tensor([[0.0], [1.0], [3.0], [4.0]]),
        labels=torch.tensor([0, 1, 1, 0]),
        indices=torch.tensor([0, 1, 3, 4]),
    )
    part = whole.subset(np.array([4, 2, 1]))
    assert part.features.flatten().tolist() == [4.0, 1.0]
    assert part.labels.tolist() == [0, 1]
    assert part.indices.tolist() == [0, 2]  # positions within the subset; position 1 was skipped


def test_computed_rows_are_each_images_features_in_source_order(tmp_path, make_image_folder):
    """Rows are written in place as batches arrive: each must be its own image's features, a
    corrupt image must leave no row (and no unused row behind), and mirrors must match."""
    import torch

    from tlearn.config import TrainConfig
    from tlearn.data import image_loader
    from tlearn.data.sources import FolderSource
    from tlearn.models import create_backbone
    from tlearn.training.build import build_classifier
    from tlearn.training.features import compute_features

    data = make_image_folder(n=5)
    (data / "cat" / "broken.png").write_bytes(b"not an image")
    source = FolderSource.from_class_folders(data)
    cfg = TrainConfig(data=str(data), batch_size=4, workers=0, image_size=32)
    backbone = create_backbone("resnet18", "none", 32)
    network = build_classifier([backbone], 2, cfg).backbones[0].eval()
    pre = backbone.preprocessing
    cpu = torch.device("cpu")
    result = compute_features(network, source, pre, cfg, cpu, "fp32", "features", flip=True)
    assert len(source) == 11 and len(result) == 10
    expected, mirrored, labels, positions = [], [], [], []
    loader = image_loader(source, pre, train=False, **cfg.loader_options(False, batch_size=1))
    with torch.inference_mode():
        for batch in loader:
            if batch is None:
                continue
            expected.append(network(batch[0]).flatten(1))
            mirrored.append(network(batch[0].flip(3)).flatten(1))
            labels.append(batch[1])
            positions.append(torch.as_tensor(batch[2]))
    assert torch.allclose(result.features, torch.cat(expected), atol=1e-4)
    assert torch.allclose(result.flipped, torch.cat(mirrored), atol=1e-4)
    assert result.labels.tolist() == torch.cat(labels).tolist()
    assert result.indices.tolist() == torch.cat(positions).tolist()
    broken = [i for i in range(len(source)) if "broken" in source.describe(i)]
    assert broken and broken[0] not in result.indices.tolist()
