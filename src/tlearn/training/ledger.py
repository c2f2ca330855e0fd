"""The files a run could not decode: each named once with its reason, counted, and listed in
skipped.txt at the end."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tlearn.data import Splits
from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text
from tlearn.training.hooks import Hook, Step
from tlearn.training.phase import PhaseRun


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate escapes) shown with backslashes, not crash."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class SkippedFiles(Hook):
    """The loop's hook that names undecodable files; what it named is its resume state."""

    key = "skipped"

    def __init__(self, splits: Splits, log: Callable[[str], None]) -> None:
        self.splits, self.log = splits, log
        self.skipped: dict[str, dict[int, str]] = {"train": {}, "val": {}}
        self.shortfall = {"train": 0, "val": 0}  # undecodable images that could not be named

    def note_skipped(self, split: str, i: int) -> None:
        """Warn once per file that could not be decoded, with the decoder's reason."""
        if i in self.skipped[split]:
            return
        source = self.splits.train if split == "train" else self.splits.val
        try:
            source.load(i)
            reason = f"{source.describe(i)} failed to decode in a loader process"
        except TlearnError as e:
            reason = str(e)
        self.skipped[split][i] = printable(reason)
        self.log(f"warning: skipped {self.skipped[split][i]}")

    def skipped_count(self, split: str) -> int:
        return max(len(self.skipped[split]), self.shortfall[split])

    def note_features_shortfall(self, split: str, source: Any, features: Any) -> None:
        """Images left out of a feature set: named when it says which rows it kept."""
        if source is None or features is None:
            return
        self.shortfall[split] = len(source) - len(features)
        kept = getattr(features, "indices", None)
        if kept is not None:
            for i in sorted(set(range(len(source))) - set(torch.as_tensor(kept).tolist())):
                self.note_skipped(split, i)

    def after_step(self, loop: Any, run: PhaseRun, step: Step) -> None:
        """The PIL path: name the files its workers could not decode in this batch."""
        expected = step.batches.expected(step.progress.step - 1)
        if expected is None:
            return
        batch = step.batch
        got = set(batch[2].tolist()) if batch is not None and len(batch) > 2 else set()
        for i in expected.tolist():
            if i not in got:
                self.note_skipped("train", i)

    def on_train_end(self, loop: Any) -> None:
        """skipped.txt and one summary line, when any file was skipped."""
        n_train, n_val = self.skipped_count("train"), self.skipped_count("val")
        if not (n_train or n_val):
            return
        lines = [f"{split}\t{reason}" for split in ("train", "val")
                 for _, reason in sorted(self.skipped[split].items())]  # fmt: skip
        lines += [f"{split}\t{self.skipped_count(split) - len(self.skipped[split])} more, "
                  "not named (their features came from the feature cache)"
                  for split in ("train", "val")
                  if self.skipped_count(split) > len(self.skipped[split])]  # fmt: skip
        path = loop.run_dir / "skipped.txt"
        loop.try_save("skipped.txt", lambda: atomic_write_text(path, "\n".join(lines) + "\n"))
        self.log(
            f"skipped {n_train} training and {n_val} validation image(s) that could not be "
            f"decoded (listed in {path})"
        )

    def state_dict(self) -> dict[str, dict[int, str]]:
        return self.skipped

    def load_state_dict(self, state: dict[str, dict[int, str]]) -> None:
        self.skipped = state
