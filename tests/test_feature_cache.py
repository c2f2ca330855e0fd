"""The on-disk feature cache: reused when nothing that shapes the features changed, never else."""

from __future__ import annotations

import os

import tlearn

FAST = dict(backbone="resnet18", weights="none", image_size=32, batch_size=8, workers=0)


def _train(data, tmp_path, name, **options):
    lines: list[str] = []
    options = {**FAST, "strategy": "linear-probe", "epochs": 2, **options}
    model = tlearn.train(str(data), out=str(tmp_path / name), log=lines.append, **options)
    return model, "\n".join(lines)


def test_second_run_reuses_features_with_another_head(tmp_path, make_image_folder, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_image_folder(n=6)
    _, first = _train(data, tmp_path, "a")
    assert "cached features reused" not in first
    model, second = _train(data, tmp_path, "b", head="mlp", hidden="16", lr=0.01)
    assert second.count("cached features reused") == 2  # train and val
    assert model.spec.head["kind"] == "mlp"
    entries = list((tmp_path / "cache" / "features").iterdir())
    assert len(entries) == 2


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
