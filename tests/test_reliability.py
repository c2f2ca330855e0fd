"""Fault injection: kills, signals, failed saves, NaN losses, hostile files and hostile pickles.

The kill tests run the real CLI in a subprocess on a tiny folder with a tiny model
(`test_resnet`, 32 px, `--deterministic`, `--checkpoint-every 1`), SIGKILL it at a random
checkpoint, resume, and require the final weights and metrics to be bit-identical to an
uninterrupted run. Everything else runs in-process.
"""

from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import tlearn
from fast import BASE, quiet
from tlearn.checkpoint import read_model_file
from tlearn.cli import main
from tlearn.config import TrainConfig
from tlearn.data.images import max_image_pixels, open_image, walk_files
from tlearn.errors import TlearnError
from tlearn.training.interrupt import Interrupted
from tlearn.training.order import EpochSampler
from tlearn.training.state import load_state

sys.path.insert(0, str(Path(__file__).parent))
from hostile import make_hostile_folder, make_plain_folder  # noqa: E402
from runs import assert_same_run, metric_rows  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = dict(
    BASE, backbone="test_resnet", batch_size=4, val_split=0.25, deterministic=True, log=quiet
)


# -- helpers ---------------------------------------------------------------------------------------


def cli_args(data: Path, out: Path) -> list[str]:
    return [
        "train", str(data), "--backbone", "test_resnet", "--weights", "none",
        "--image-size", "32", "--workers", "0", "--batch-size", "4", "--epochs", "2",
        "--strategy", "gradual", "--head", "mlp", "--val-split", "0.25", "--deterministic",
        "--checkpoint-every", "1", "--out", str(out),
    ]  # fmt: skip


def env(tmp: Path) -> dict[str, str]:
    path = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "TLEARN_CACHE_DIR": str(tmp / "cache")}


def tlearn_cli(args: list[str], tmp: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tlearn", *args],
        env=env(tmp),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def wait_for_checkpoints(proc: subprocess.Popen, state: Path, count: int) -> None:
    """Block until `count` new versions of state.pt have appeared (or the process ended)."""
    seen, last = 0, None
    while proc.poll() is None and seen < count:
        if state.exists():
            stamp = state.stat().st_mtime_ns
            if stamp != last:
                last, seen = stamp, seen + 1
        time.sleep(0.003)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    return make_plain_folder(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def uninterrupted(plain, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("baseline")
    rc, out, err = finish(tlearn_cli(cli_args(plain, tmp / "run"), tmp))
    assert rc == 0, err
    return tmp / "run"


# -- kill -9 at random steps, then resume --------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_a_random_step_then_resume_gives_the_same_run(
    seed, plain, uninterrupted, tmp_path
):
    run = tmp_path / "run"
    target = random.Random(seed).randint(1, 6)  # 2 epochs of 4 steps: 8 checkpoints
    proc = tlearn_cli(cli_args(plain, run), tmp_path)
    wait_for_checkpoints(proc, run / "state.pt", target)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    position = load_state(run / "state.pt")["position"]
    assert not position["finished"]

    rc, out, err = finish(tlearn_cli(["train", "--resume", str(run)], tmp_path))
    assert rc == 0, err
    assert "resuming" in out
    assert_same_run(uninterrupted, run)


# Run by a subprocess: the NTH atomic write of TARGET writes half its bytes to the temporary
# file, then stops there, as a process killed in the middle of a save would.
_SLOW_SAVE = """
import sys, time
from pathlib import Path
import tlearn.checkpoint, tlearn.training.state
from tlearn import files
target, nth, marker = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
real, calls = files.atomic_write, [0]
def stalled(path, write):
    def half(tmp):
        write(tmp)
        if Path(path).name == target:
            calls[0] += 1
            if calls[0] == nth:
                data = Path(tmp).read_bytes()
                Path(tmp).write_bytes(data[: len(data) // 2])
                marker.write_text("in the middle of a save")
                time.sleep(120)
    real(path, half)
tlearn.checkpoint.atomic_write = tlearn.training.state.atomic_write = stalled
from tlearn.cli import main
sys.exit(main(sys.argv[4:]))
"""


@pytest.mark.parametrize(("target", "nth"), [("last.safetensors", 2), ("state.pt", 6)])
def test_kill_during_a_save_never_leaves_a_truncated_file(
    target, nth, plain, uninterrupted, tmp_path
):
    """Killed while writing epoch 2's last.safetensors, or a mid-epoch state.pt of epoch 2."""
    run, marker = tmp_path / "run", tmp_path / "saving"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, target, str(nth), str(marker), *cli_args(plain, run)],
        env=env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert marker.exists(), "the save was never reached"
    proc.kill()
    proc.wait()
    leftovers = list(run.glob(f".{target}.*.tmp"))
    assert leftovers, "the kill did not land inside the save"
    # the files under their real names are whole: the previous versions
    for name in ("last.safetensors", "best.safetensors"):
        spec, _ = read_model_file(run / name)
        assert spec.metrics["epoch"] >= 1
    assert load_state(run / "state.pt")["position"]["epoch"] >= 1
    if target == "state.pt":
        return  # resuming after such a kill is the SIGKILL test's business; once is enough here
    rc, _, err = finish(tlearn_cli(["train", "--resume", str(run)], tmp_path))
    assert rc == 0, err
    assert not list(run.glob(".*.tmp")), "the resumed run left the dead run's temporaries"
    assert_same_run(uninterrupted, run)


def test_sigterm_checkpoints_and_says_how_to_resume(plain, uninterrupted, tmp_path):
    run = tmp_path / "run"
    proc = tlearn_cli(cli_args(plain, run), tmp_path)
    wait_for_checkpoints(proc, run / "state.pt", 2)
    proc.send_signal(signal.SIGTERM)
    rc, _, err = finish(proc)
    assert rc == 128 + signal.SIGTERM
    assert f"tlearn train --resume {run}" in err
    assert "Traceback" not in err

    rc, _, err = finish(tlearn_cli(["train", "--resume", str(run)], tmp_path))
    assert rc == 0, err
    assert_same_run(uninterrupted, run)


# -- in-process faults -----------------------------------------------------------------------------


class _FaultyLoss(torch.nn.CrossEntropyLoss):
    """Cross-entropy that misbehaves from call `at` on: NaN (`times` calls) or a SIGINT."""

    at, times, fault, calls = 0, 1, "nan", 0

    def forward(self, logits, labels):
        cls = type(self)
        cls.calls += 1
        loss = super().forward(logits, labels)
        if cls.at <= cls.calls < cls.at + cls.times:
            if cls.fault == "sigint":
                os.kill(os.getpid(), signal.SIGINT)
                return loss
            return loss * float("nan")
        return loss


@pytest.fixture
def faulty_loss(monkeypatch):
    def install(at: int, times: int = 1, fault: str = "nan") -> None:
        _FaultyLoss.at, _FaultyLoss.times, _FaultyLoss.fault, _FaultyLoss.calls = (
            at, times, fault, 0
        )  # fmt: skip
        monkeypatch.setattr(torch.nn, "CrossEntropyLoss", _FaultyLoss)

    return install


def test_sigint_in_process_on_the_pil_path_then_resume(plain, tmp_path, faulty_loss, monkeypatch):
    """Ctrl-C mid-epoch with random crops on the PIL loader: same result after resuming."""
    options = dict(TINY, strategy="finetune", epochs=2, augment="light", memory_limit="1")
    tlearn.train(str(plain), out=str(tmp_path / "a"), **options)
    faulty_loss(at=6, fault="sigint")
    with pytest.raises(Interrupted) as caught:
        tlearn.train(str(plain), out=str(tmp_path / "b"), **options)
    assert caught.value.exit_code == 130
    assert "--resume" in str(caught.value)
    monkeypatch.undo()
    assert load_state(tmp_path / "b" / "state.pt")["position"]["step"] == 2  # epoch 2, step 2
    tlearn.train(resume=str(tmp_path / "b"), log=TINY["log"])
    assert_same_run(tmp_path / "a", tmp_path / "b")


def test_nan_loss_restores_lowers_the_rate_once_and_retries(plain, tmp_path, faulty_loss):
    lines: list[str] = []
    faulty_loss(at=6)
    options = dict(TINY, strategy="finetune", epochs=2, lr=0.01, log=lines.append)
    model = tlearn.train(str(plain), out=str(tmp_path / "run"), **options)
    assert any("retrying the epoch" in line for line in lines)
    state = load_state(tmp_path / "run" / "state.pt")
    assert state["nan_guard"]["lr_scale"] == pytest.approx(0.1)
    assert state["position"]["finished"]
    assert [r["epoch"] for r in metric_rows(tmp_path / "run")] == ["1", "2"]
    assert all(torch.isfinite(p).all() for p in model.classifier.parameters())
    assert all(lr <= 0.001 + 1e-12 for lr in state["scheduler"]["base_lrs"])


def test_second_nan_stops_with_the_last_good_checkpoint_intact(plain, tmp_path, faulty_loss):
    faulty_loss(at=6, times=10**6)  # from epoch 2 on, every loss is NaN
    with pytest.raises(TlearnError, match="again .*last good checkpoint"):
        tlearn.train(str(plain), out=str(tmp_path / "run"), strategy="finetune", epochs=3, **TINY)
    spec, tensors = read_model_file(tmp_path / "run" / "last.safetensors")
    assert spec.metrics["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert load_state(tmp_path / "run" / "state.pt")["position"]["epoch"] == 1


def test_failed_save_keeps_the_previous_file_and_resume_completes(plain, tmp_path, monkeypatch):
    import tlearn.checkpoint as ckpt

    real, calls, lines = ckpt.save_file, [], []

    def disk_full(tensors, path, metadata=None):
        calls.append(path)
        if len(calls) == 3:  # epoch 2's last.safetensors
            raise OSError(errno.ENOSPC, "No space left on device")
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    run = tmp_path / "run"
    options = dict(TINY, strategy="finetune", epochs=2, log=lines.append)
    with pytest.raises(TlearnError, match="free space there and run `tlearn train --resume"):
        tlearn.train(str(plain), out=str(run), **options)
    assert any("No space left on device" in x and "previous one is kept" in x for x in lines)
    assert read_model_file(run / "last.safetensors")[0].metrics["epoch"] == 1
    assert load_state(run / "state.pt")["position"]["epoch"] == 1  # not past the failed file
    monkeypatch.undo()
    tlearn.train(resume=str(run), log=TINY["log"])
    assert read_model_file(run / "last.safetensors")[0].metrics["epoch"] == 2


def test_run_folder_that_cannot_be_written_is_refused_before_training(plain, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(TlearnError, match="cannot write to the run folder"):
        tlearn.train(str(plain), out=str(blocker / "run"), epochs=1, **TINY)


# -- resume: what it refuses -----------------------------------------------------------------------


def _unfinished_run(plain: Path, tmp_path: Path) -> Path:
    """A run folder whose state says epoch 1 is done of 2 (made by interrupting nothing)."""
    run = tmp_path / "run"
    tlearn.train(str(plain), out=str(run), strategy="linear-probe", epochs=2, cache=False, **TINY)
    state = load_state(run / "state.pt")
    state["position"] = {**state["position"], "epoch": 1, "finished": False}
    state["rows"] = state["rows"][:1]
    torch.save(state, run / "state.pt")
    return run


def test_resume_refuses_changed_options_and_fresh_runs_keep_off(plain, tmp_path, capsys):
    run = _unfinished_run(plain, tmp_path)
    assert main(["train", "--resume", str(run), "--epochs", "7"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 7 differs from the run's own 2" in err and "Traceback" not in err
    with pytest.raises(TlearnError, match="holds an unfinished run: continue it with"):
        tlearn.train(str(plain), out=str(run), strategy="linear-probe", epochs=2, **TINY)
    with pytest.raises(TlearnError, match="not a run folder"):
        tlearn.train(resume=str(tmp_path / "nowhere"))
    # --workers may change; the run then finishes its second epoch
    assert main(["train", "--resume", str(run), "--workers", "0"]) == 0
    assert [r["epoch"] for r in metric_rows(run)] == ["1", "2"]


class _Evil:
    """A pickle that writes a file when loaded: what a hostile model or state file holds."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_state_pt_is_refused_and_never_run(plain, tmp_path):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    run.mkdir()
    TrainConfig(data=str(plain), out=str(run), backbone=["test_resnet"]).save_yaml(
        run / "config.yaml"
    )
    torch.save({"format": "tlearn.state", "position": _Evil(marker)}, run / "state.pt")
    with pytest.raises(TlearnError, match="never unpickles"):
        tlearn.train(resume=str(run), log=TINY["log"])
    assert not marker.exists()
    (run / "state.pt").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(TlearnError, match="damaged or truncated"):
        tlearn.train(resume=str(run), log=TINY["log"])


def test_malicious_pickle_as_weights_is_refused_and_never_run(plain, tmp_path, capsys):
    marker, evil = tmp_path / "pwned", tmp_path / "weights.pth"
    torch.save({"conv1.weight": _Evil(marker)}, evil)
    args = ["train", str(plain), "--backbone", "resnet18", "--weights", str(evil)]
    assert main([*args, "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert not marker.exists()


# -- hostile data ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loader", ["decode-once", "pil"])
def test_hostile_folder_trains_and_counts_each_skipped_file(loader, tmp_path):
    h = make_hostile_folder(tmp_path)
    lines: list[str] = []
    options = dict(TINY, strategy="finetune", epochs=2, log=lines.append)
    if loader == "pil":
        options["memory_limit"] = "1"  # nothing "fits": the PIL DataLoader path
    model = tlearn.train(str(h.folder), out=str(tmp_path / "run"), **options)
    assert model.classes == ["cat", "dog"]  # the empty class folder is left out
    listed = (tmp_path / "run" / "skipped.txt").read_text(errors="replace").splitlines()
    named = [line for line in listed if "cannot read image" in line]
    for name in h.bad:
        assert sum(f"/{name}" in line for line in named) == 1, name
    assert len(named) == len(h.bad)
    assert model.spec.metrics["skipped_train"] + model.spec.metrics["skipped_val"] == len(h.bad)
    assert not any(name in "\n".join(listed) for name in h.odd if name.isascii())
    assert sum(line.startswith("warning: skipped") for line in lines) == len(h.bad)
    assert any(f"skipped {model.spec.metrics['skipped_train']} training" in x for x in lines)


def test_hostile_folder_is_listed_once_and_strict_stops_before_training(tmp_path):
    h = make_hostile_folder(tmp_path)
    files = [p.name for p in walk_files(h.folder / "dog")]
    assert len(files) == len(set(files)), "the symlink up to the parent was followed"
    with pytest.raises(TlearnError, match=rf"{len(h.bad)} image\(s\) cannot be decoded"):
        tlearn.train(str(h.folder), out=str(tmp_path / "run"), strict=True, epochs=1, **TINY)
    assert not (tmp_path / "run").exists()


def test_pixel_limit_is_configurable(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 80)).save(path)
    assert open_image(path).size == (100, 80)
    with max_image_pixels(5000), pytest.raises(TlearnError, match="--max-image-pixels"):
        open_image(path)
    with pytest.raises(TlearnError, match="max_image_pixels|max-image-pixels"):
        TrainConfig(data="x", max_image_pixels=0).validate()


def _encoded(fmt: str, mode: str = "RGB", **kw) -> bytes:
    a = np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buffer, fmt, **kw)
    return buffer.getvalue()


_VALID = [
    _encoded("PNG"), _encoded("JPEG"), _encoded("GIF", "P"), _encoded("TIFF"), _encoded("BMP"),
    _encoded("WEBP"), _encoded("PNG", "P", transparency=0), _encoded("JPEG", "CMYK"),
    _encoded("PNG", "I;16"), _encoded("PPM"),
]  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    seed=st.sampled_from(range(len(_VALID))),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    cut=st.integers(0, 10**6),
    noise=st.binary(max_size=300),
    suffix=st.sampled_from([".jpg", ".png", ".gif", ".tif", ".webp"]),
)
def test_decoder_on_hostile_bytes_raises_only_tlearn_errors(
    tmp_path_factory, seed, edits, cut, noise, suffix
):
    """Valid files with bytes changed and cut short, or noise: an RGB image or a TlearnError."""
    data = bytearray(_VALID[seed])
    for position, value in edits:
        data[position % len(data)] = value
    data = bytes(data[: cut % (len(data) + 1)]) + noise
    path = tmp_path_factory.getbasetemp() / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        assert open_image(path).mode == "RGB"
    except TlearnError:
        pass


def test_epoch_order_depends_only_on_seed_and_epoch_and_resumes_mid_epoch():
    a, b = EpochSampler(10, seed=3, batch_size=4), EpochSampler(10, seed=3, batch_size=4)
    a.set_epoch(2)
    b.set_epoch(2, start_batch=1)
    full = list(a)
    assert sorted(full) == list(range(10))
    assert list(b) == full[4:] and len(b) == 6
    a.set_epoch(3)
    assert list(a) != full
