"""A run without --budget says how long it will take (on the fake clock: no test time spent)."""

from __future__ import annotations

import torch

import tlearn
from fast import TINY
from tlearn.training.duration import short


class Ticking(torch.nn.CrossEntropyLoss):
    """Cross-entropy that moves the run's fake clock 0.5 s a step."""

    clock = None

    def forward(self, logits, labels):
        type(self).clock.advance(0.5)
        return super().forward(logits, labels)


def test_the_run_says_its_expected_duration_then_what_is_left(
    make_image_folder, tmp_path, monkeypatch, fake_clock
):
    Ticking.clock = fake_clock
    monkeypatch.setattr(torch.nn, "CrossEntropyLoss", Ticking)
    lines: list[str] = []
    data = make_image_folder(n=40)  # 60 training images: 30 steps of 2 an epoch
    options = dict(TINY, batch_size=2, log=lines.append)
    tlearn.train(str(data), out=str(tmp_path / "run"), strategy="finetune", epochs=3, **options)
    expected = [line for line in lines if line.startswith("expected: about")]
    assert len(expected) == 1, lines
    # said at step 15 of 90, timed on steps 5-15 at 0.5 s each: 75 steps, about 38 s
    assert "75 steps at 500 ms" in expected[0] and "about 38s more" in expected[0]
    left = [line.strip() for line in lines if line.strip().startswith("about ")]
    assert len(left) == 2 and left[0].endswith("(2 epoch(s))")  # after epochs 1 and 2 of 3


def test_durations_read_as_a_person_reads_them():
    assert (short(95), short(720), short(9000)) == ("95s", "12 min", "2.5 h")
