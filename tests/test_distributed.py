"""Many processes: torchrun + DDP on CPUs with gloo over 127.0.0.1 (`tlearn.training.distributed`).

The sharding of an epoch is checked in-process; the jobs (two ranks through torchrun, and through
`tlearn train --nproc 2`) run on tiny generated images and take a few seconds each.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

import tlearn
from fast import BASE
from runs import InterruptingLoss, metric_rows
from tlearn.data.decoded import DecodedImages, DecodedLoader
from tlearn.data.sampling import rank_order
from tlearn.errors import TlearnError
from tlearn.training import distributed
from tlearn.training.features import FeatureLoader, FeatureSet
from tlearn.training.interrupt import Interrupted
from tlearn.training.launch import job_failure
from tlearn.training.order import (
    EpochBatches,
    EpochSampler,
    batches_per_epoch,
    epoch_permutation,
)
from tlearn.training.state import load_state

BIN = Path(sys.executable).parent
# a tiny network on tiny images; 48 training images: whole global batches of 2 x 4 or 1 x 8
TINY = dict(BASE, backbone="test_resnet", seed=1)
JOB = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()] + ["--no-cache"]
EPOCH_LINE = re.compile(r"(epoch \d+/\d+  train_loss \S+  val_loss \S+  val_acc \S+)")


# -- the epoch's order, shared out ------------------------------------------------------------


def test_rank_order_gives_each_rank_its_slice_of_every_global_batch():
    order = torch.randperm(21, generator=torch.Generator().manual_seed(0))
    shares = [rank_order(order, 4, r, 2) for r in range(2)]
    assert [len(s) for s in shares] == [12, 12]  # 3 steps of 2 x 4, the last padded
    for k in range(3):
        step = torch.cat([s[k * 4 : (k + 1) * 4] for s in shares])
        padded = torch.cat([order, order[:3]])
        assert torch.equal(step, padded[k * 8 : (k + 1) * 8])  # one process's batch k of 8
    assert set(torch.cat(shares).tolist()) == set(range(21))
    assert torch.equal(rank_order(order, 4, 0, 1), order)  # one process: unchanged


def test_epoch_sampler_shards_resume_and_count_steps():
    one = EpochSampler(30, seed=3, batch_size=8)
    ranks = [EpochSampler(30, seed=3, batch_size=4) for _ in range(2)]
    for r, s in enumerate(ranks):
        s.rank, s.world = r, 2
        s.set_epoch(1, start_batch=2)
    one.set_epoch(1, start_batch=2)
    assert ranks[0].batches == one.batches == 4
    both = sorted(list(ranks[0]) + list(ranks[1]))
    order = epoch_permutation(30, 3, 1)
    padded = torch.cat([order, order[:2]])  # the epoch wrapped round to whole global batches
    assert both == sorted(padded[16:].tolist())  # from batch 2 on
    assert list(one) == order[16:].tolist()
    assert len(ranks[0]) == 8


def test_decoded_and_feature_loaders_serve_a_rank_its_share(tmp_path):
    n = 20
    decoded = DecodedImages(
        torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8),
        torch.arange(n) % 3,
        torch.arange(n),
        n,
    )
    features = FeatureSet(torch.randn(n, 5), torch.arange(n) % 3, indices=torch.arange(n))

    def positions(make, rank, world, batch):
        loader = make(batch)
        loader.rank, loader.world = rank, world
        batches = list(EpochBatches(loader, seed=0, epoch=2))
        assert len(batches) == batches_per_epoch(loader) == -(-n // (batch * world))
        return [b[2] for b in batches]

    def decoded_loader(batch):
        return DecodedLoader(
            decoded, size=8, batch_size=batch, shuffle=True, generator=torch.Generator()
        )

    def feature_loader(batch):
        return FeatureLoader(features, batch, shuffle=True, generator=torch.Generator())

    for make in (decoded_loader, feature_loader):
        alone = positions(make, 0, 1, 8)
        shares = [positions(make, r, 2, 4) for r in range(2)]
        for k, batch in enumerate(alone[:-1]):  # whole global batches: the same images
            assert torch.equal(torch.cat([shares[0][k], shares[1][k]]), batch)
        assert all(len(b) == 4 for s in shares for b in s)  # the last step padded, not short


def test_one_process_helpers_change_nothing(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    module = torch.nn.Linear(2, 2)
    assert distributed.world() == distributed.World(0, 1, 0) and distributed.is_main()
    assert distributed.wrap(module, torch.device("cpu")) is module
    assert distributed.from_main(7) == 7 and distributed.on_main(lambda: 8) == 8
    assert distributed.sum_all(1.5, 2) == [1.5, 2.0]
    assert distributed.per_process_batch(16, 1) == 16


def test_world_from_torchrun_environment_and_rules(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.world() == distributed.World(3, 4, 1)
    assert not distributed.is_main()
    assert distributed.per_process_batch(8, 2) == 4  # 2 x 8 kept on 4 processes
    with pytest.raises(TlearnError, match="divides its global batch of 15"):
        distributed.per_process_batch(5, 3)
    assert distributed.lr_factor("linear", 4) == 4 and distributed.lr_factor("sqrt", 4) == 2
    assert distributed.lr_factor("none", 4) == 1
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(TlearnError, match="outside WORLD_SIZE"):
        distributed.world()


def test_a_failed_job_is_one_sentence_naming_the_rank():
    def failed(**codes: int) -> ChildFailedError:
        failures = {
            int(r[1:]): ProcessFailure(int(r[1:]), 100 + int(r[1:]), c, "/nonexistent")
            for r, c in codes.items()
        }
        return ChildFailedError("tlearn", failures)

    killed = job_failure(failed(r0=2, r1=-9), "runs/x", 2)  # rank 0 saw rank 1 go
    assert isinstance(killed, TlearnError)
    assert str(killed).startswith("rank 1 of 2 was killed by SIGKILL, so the job stopped")
    assert "tlearn train --resume runs/x --nproc 2" in str(killed)
    # the launcher SIGTERMs the survivors of a killed rank: the killed one is named
    terminated = job_failure(failed(r0=-15, r1=-9), "runs/x", 2)
    assert str(terminated).startswith("rank 1 of 2 was killed by SIGKILL")
    crashed = job_failure(failed(r1=1), "runs/x", 2)
    assert "rank 1 of 2 failed with exit code 1" in str(crashed)
    told = job_failure(failed(r0=2, r1=2), "runs/x", 2)  # a TlearnError: rank 0 said it
    assert isinstance(told, SystemExit) and told.code == 2


# -- jobs -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(TLEARN_LOG_RANKS="all", OMP_NUM_THREADS="1", TLEARN_CACHE_DIR=str(tmp_path / "c"))
    scratch = tmp_path.parent / f"{tmp_path.name}-tmp"  # a killed rank's scratch folder stays
    scratch.mkdir(exist_ok=True)
    env["TMPDIR"] = str(scratch)
    return env


def torchrun(tmp_path: Path, data: Path, *options: str) -> subprocess.CompletedProcess:
    command = [
        str(BIN / "torchrun"), "--nproc-per-node=2", "--master-addr=127.0.0.1",
        f"--master-port={free_port()}", "-m", "tlearn", "train", str(data), *JOB, *options,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=tmp_path, env=job_env(tmp_path), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name != "c")  # c: the feature cache


def epoch_lines(text: str, rank: int) -> list[str]:
    prefix = f"rank {rank}: " if rank else ""
    return [
        m.group(1)
        for line in text.splitlines()
        if (line.startswith(prefix) if rank else not line.startswith("rank "))
        and (m := EPOCH_LINE.search(line))
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        ["--strategy", "linear-probe", "--head", "mlp", "--epochs", "3"],  # a head on features
        ["--strategy", "finetune", "--epochs", "2", "--augment", "flip"],  # a whole network, BN
    ],
    ids=["features", "images"],
)
def test_two_ranks_agree_and_match_one_process(options, make_image_folder, tmp_path):
    data = make_image_folder(classes=("a", "b", "c"), n=16, layout="split")
    done = torchrun(tmp_path, data, "--batch-size", "4", "--out", "job", *options)
    output = done.stdout + done.stderr
    assert folders(tmp_path) == ["images", "job"]  # exactly one run folder
    assert (tmp_path / "job" / "best.safetensors").is_file()
    rank0, rank1 = epoch_lines(output, 0), epoch_lines(output, 1)
    assert len(rank0) == int(options[options.index("--epochs") + 1]) and rank0 == rank1
    assert output.count("done: best model") == 1  # rank 0 alone speaks
    assert "2 processes x batch 4 = global batch 8" in output
    if "linear-probe" in options:  # frozen features: each rank computed half, gathered once
        assert re.search(r"features/train: \d+ computed in 2 shards, one per process", output)
    image = next((data / "val" / "b").iterdir())
    assert tlearn.load(tmp_path / "job").predict([str(image)])[0].labels  # an ordinary model

    alone = tmp_path / "alone"
    pairs = zip(options[::2], options[1::2], strict=True)
    same = {o.strip("-").replace("-", "_"): v for o, v in pairs}
    same = {k: int(v) if v.isdigit() else v for k, v in same.items()}
    tlearn.train(str(data), out=str(alone), batch_size=8, cache=False, log=lambda s: None,
                 **TINY, **same)  # fmt: skip
    job, one = metric_rows(tmp_path / "job")[-1], metric_rows(alone)[-1]
    assert abs(float(job["val_accuracy"]) - float(one["val_accuracy"])) <= 0.01
    assert abs(float(job["val_loss"]) - float(one["val_loss"])) <= 0.1


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [[], ["--strategy", "finetune", "--epochs", "300"]],  # planned; the user's, kept to time
    ids=["planned", "kept"],
)
def test_a_budget_counts_the_whole_job_and_every_rank_follows_rank_0(
    options, make_image_folder, tmp_path
):
    """--budget under torchrun: rank 0 probes and plans, its clock refits and stops the run,
    and both ranks train the same epochs (a rank deciding alone would hang the other)."""
    data = make_image_folder(classes=("a", "b", "c"), n=16, layout="split")
    started = time.monotonic()
    job = ["--batch-size", "4", "--budget", "20s", "--out", "job", *options]
    done = torchrun(tmp_path, data, *job)
    wall = time.monotonic() - started
    output = done.stdout + done.stderr
    assert folders(tmp_path) == ["images", "job"]
    rank0, rank1 = epoch_lines(output, 0), epoch_lines(output, 1)
    assert rank0 and rank0 == rank1
    if options:  # 300 epochs do not fit: rank 0's clock shortened or stopped the run
        assert len(rank0) < 300
        assert "the budget is running short" in output or "past the 20s budget" in output
    else:
        assert output.count("plan for --budget 20s") == 1  # rank 0 alone probed and planned
    assert wall < 20 * 1.05 + 45  # the budget, and torchrun's start and end around it


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the process of `rank` that `launcher` started (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_job_and_resume_completes_it(make_image_folder, tmp_path):
    data = make_image_folder(classes=("a", "b", "c"), n=40, size=(48, 40), layout="split")
    run = tmp_path / "job"
    command = [str(BIN / "tlearn"), "train", str(data), *JOB, "--strategy", "finetune",
               "--image-size", "48", "--batch-size", "4", "--epochs", "12", "--nproc", "2",
               "--out", str(run)]  # fmt: skip
    job = subprocess.Popen(
        command, cwd=tmp_path, env=job_env(tmp_path), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.csv").is_file() and job.poll() is None:
            assert time.monotonic() < deadline, "the job wrote no epoch"
            time.sleep(0.05)
        time.sleep(0.3)  # into the next epoch
        victim = rank_pid(job.pid, 1)
        assert victim is not None and job.poll() is None
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        out, err = job.communicate(timeout=90)
    finally:
        job.kill()
    assert time.monotonic() - killed < 60
    assert job.returncode == 2
    assert "rank 1 of 2 was killed by SIGKILL" in err, err[-2000:]
    assert f"tlearn train --resume {run} --nproc 2" in err
    assert "Traceback" not in err
    state = load_state(run / "state.pt")  # intact: it loads, and says where the run stands
    assert 1 <= state["position"]["epoch"] < 12
    assert len(metric_rows(run)) == state["position"]["epoch"]

    resumed = subprocess.run(
        [str(BIN / "tlearn"), "train", "--resume", str(run), "--nproc", "2"],
        cwd=tmp_path, env=job_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [int(r["epoch"]) for r in metric_rows(run)] == list(range(1, 13))
    assert folders(tmp_path) == ["images", "job"]


@pytest.mark.slow
def test_a_one_process_run_continues_on_two_keeping_its_global_batch(
    make_image_folder, tmp_path, monkeypatch
):
    """Stopped mid-epoch with one process x 8, resumed under torchrun as two x 4: the same
    images at every step, so it ends where the uninterrupted run ends."""
    data = make_image_folder(classes=("a", "b", "c"), n=16, layout="split")
    options = dict(TINY, strategy="linear-probe", head="mlp", epochs=2, batch_size=8, cache=False)
    tlearn.train(str(data), out=str(tmp_path / "whole"), log=lambda s: None, **options)
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", InterruptingLoss)
    InterruptingLoss.at, InterruptingLoss.calls = 9, 0  # epoch 2 (6 steps an epoch), step 3
    with pytest.raises(Interrupted):
        tlearn.train(str(data), out=str(tmp_path / "job"), log=lambda s: None, **options)
    monkeypatch.undo()
    state = load_state(tmp_path / "job" / "state.pt")
    assert (state["position"]["epoch"], state["position"]["step"]) == (1, 3)
    done = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node=2", "--master-addr=127.0.0.1",
         f"--master-port={free_port()}", "-m", "tlearn", "train", "--resume", "job"],
        cwd=tmp_path, env=job_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming" in done.stdout and "at epoch 2, step 3" in done.stdout
    whole, job = metric_rows(tmp_path / "whole"), metric_rows(tmp_path / "job")
    assert [r["epoch"] for r in job] == ["1", "2"]
    assert abs(float(job[-1]["val_loss"]) - float(whole[-1]["val_loss"])) < 1e-3
    assert job[-1]["val_accuracy"] == whole[-1]["val_accuracy"]
    assert load_state(tmp_path / "job" / "state.pt")["processes"] == 1  # its global batch: 1 x 8


def _collectives(rank: int, port: int, folder: str) -> None:
    """One of two gloo ranks (spawned): rank 0's answers and errors reach both; sums add up."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), TLEARN_DIST_TIMEOUT="30")
    distributed.init(torch.device("cpu"))
    out: dict = {"rank0": distributed.on_main(lambda: f"made by {distributed.world().rank}")}
    out["sum"] = distributed.sum_all(rank + 1, 10 * rank)
    out["max"] = distributed.max_all(rank)

    def fails() -> None:
        raise TlearnError("bad option")

    try:
        distributed.on_main(fails)
    except TlearnError as e:
        out["error"] = str(e)
    torch.manual_seed(rank)  # different weights on each rank: the check must see it
    try:
        distributed.check_in_sync(torch.nn.Linear(3, 2))
    except RuntimeError as e:
        out["sync"] = "differ" in str(e)
    rows = torch.arange(3 - rank, dtype=torch.bfloat16)[:, None] + 10 * rank  # 3 and 2 rows
    gathered, none = distributed.gather_rows(rows, None)
    out["gathered"] = [gathered.dtype == torch.bfloat16, gathered.flatten().tolist(), none]
    wrapped = distributed.wrap(torch.nn.Linear(3, 2), torch.device("cpu"))
    out["ddp"] = type(wrapped).__name__
    distributed.close()
    (Path(folder) / f"{rank}.json").write_text(json.dumps(out))


@pytest.mark.slow
def test_collectives_of_two_gloo_ranks(tmp_path):
    torch.multiprocessing.spawn(_collectives, args=(free_port(), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        r = json.loads((tmp_path / f"{rank}.json").read_text())
        assert r["rank0"] == "made by 0" and r["sum"] == [3.0, 10.0] and r["max"] == 1.0
        assert r["error"] == "bad option"  # rank 1 raises it too, instead of waiting
        assert r["sync"] is True and r["ddp"] == "DistributedDataParallel"
        assert r["gathered"] == [True, [0.0, 1.0, 2.0, 10.0, 11.0], None]  # rank order, trimmed
