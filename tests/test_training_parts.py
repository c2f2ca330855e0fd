"""Strategies, schedules and atomic files: the pieces of a run that must not silently go wrong."""

import math

import pytest
import torch
from torch import nn

from tlearn.errors import TlearnError
from tlearn.files import atomic_write, atomic_write_text
from tlearn.training.schedule import lr_factor
from tlearn.training.strategies import (
    Phase,
    apply_phase,
    build_optimizer,
    freeze_batchnorm_of_frozen,
    plan_phases,
)


def test_plan_phases():
    assert plan_phases("linear-probe", 4, 5) == [Phase(4, 0)]
    assert plan_phases("finetune", 2, 5) == [Phase(2, 5)]
    assert plan_phases("freeze:2", 3, 5) == [Phase(3, 3)]
    gradual = plan_phases("gradual", 5, 4)
    assert gradual[0] == Phase(1, 0)
    assert sum(p.epochs for p in gradual) == 5
    assert gradual[-1].trainable_stages == 4
    stages = [p.trainable_stages for p in gradual]
    assert stages == sorted(stages)
    with pytest.raises(TlearnError, match="freeze:0 to freeze:5"):
        plan_phases("freeze:9", 1, 5)


def _tiny():
    stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    top = nn.Sequential(nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))
    head = nn.Linear(4, 2)
    stages = [[list(stem.parameters()), list(top.parameters())]]
    return stem, top, head, stages


def test_optimizer_only_sees_trainable_parameters():
    """The article's bug (freeze in words, train everything) must be impossible."""
    stem, top, head, stages = _tiny()
    groups = apply_phase(head, stages, Phase(1, 1), lr=0.1, lr_decay=0.5, weight_decay=0.01)
    opt = build_optimizer(groups, "sgd", 0.9)
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt == {id(p) for p in [*head.parameters(), *top.parameters()]}
    assert not any(p.requires_grad for p in stem.parameters())
    rates = {g["lr"] for g in opt.param_groups}
    assert rates == {0.1, 0.05}  # the top stage trains at lr * decay
    # biases and norm scales get no weight decay
    for g in opt.param_groups:
        if any(p.ndim <= 1 for p in g["params"]):
            assert g["weight_decay"] == 0.0


def test_linear_probe_trains_head_only_and_freezes_bn_statistics():
    stem, top, head, stages = _tiny()
    groups = apply_phase(head, stages, Phase(1, 0), 0.1, 1.0, 0.0)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in head.parameters()}
    model = nn.Sequential(stem, top)
    model.train()
    freeze_batchnorm_of_frozen(model)
    before = stem[1].running_mean.clone()
    model(torch.randn(2, 3, 9, 9))
    assert torch.equal(before, stem[1].running_mean)


def test_lr_factor_shapes():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(99, 100, 10, "cosine") < 0.01
    assert lr_factor(50, 100, 0, "constant") == 1.0
    peak = max(range(100), key=lambda s: lr_factor(s, 100, 0, "onecycle"))
    assert 20 <= peak <= 30
    assert math.isclose(lr_factor(55, 100, 10, "cosine"), 0.5, abs_tol=1e-9)


def test_atomic_write_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "model.bin"
    atomic_write_text(target, "good")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_inference_batches_fit_a_cpu_cache_and_gpus_get_large_ones():
    from tlearn.training.runtime import inference_batch_size

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert inference_batch_size(cpu, 64) == 64  # measured fastest for Lite0 at 64 px
    assert inference_batch_size(cpu, 224) == 8
    assert inference_batch_size(cpu, 16) == 256  # capped
    assert inference_batch_size(gpu, 64) == 256
    assert inference_batch_size(cpu, 64, asked=17) == 17  # the user's --batch-size wins


def test_allocator_tuning_applies_on_glibc_only_and_once():
    import platform

    from tlearn.training.runtime import tune_allocator

    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert tune_allocator() is expected
    assert tune_allocator() is expected  # idempotent


@pytest.mark.parametrize("bad", [0, -5])
def test_a_bad_inference_batch_size_is_one_sentence(bad):
    from tlearn.training.runtime import inference_batch_size

    with pytest.raises(TlearnError, match=r"--batch-size .* out of range"):
        inference_batch_size(torch.device("cpu"), 64, asked=bad)
