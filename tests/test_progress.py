"""`--quiet`: errors and the final line only; progress bars follow the terminal and the flag."""

from __future__ import annotations

from tlearn.cli import main
from tlearn.progress import QUIET_ENV, bar

TINY_FLAGS = [
    "--backbone", "test_resnet", "--weights", "none", "--image-size", "32", "--workers", "0",
    "--batch-size", "4", "--val-split", "0.25", "--no-cache", "--strategy", "linear-probe",
]  # fmt: skip


def test_quiet_train_prints_only_the_final_line(make_image_folder, tmp_path, capsys, monkeypatch):
    data = make_image_folder(n=6)
    # "0": not quiet, and monkeypatch then removes the variable main sets, so that no later
    # test's subprocess inherits --quiet
    monkeypatch.setenv(QUIET_ENV, "0")
    assert main(["train", str(data), *TINY_FLAGS, "--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr()
    assert len(loud.out.splitlines()) > 5
    code = main(["train", str(data), *TINY_FLAGS, "--out", str(tmp_path / "q"), "--quiet"])
    assert code == 0
    quiet = capsys.readouterr()
    assert quiet.out.splitlines() == [line for line in quiet.out.splitlines() if "done:" in line]
    assert len(quiet.out.splitlines()) == 1 and quiet.err == ""


def test_bars_are_off_under_quiet_even_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    monkeypatch.setenv(QUIET_ENV, "1")
    assert bar(range(3), "x").disable
