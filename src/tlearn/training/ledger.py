"""The files a run could not decode: each named once with its reason, counted, and listed in
skipped.txt at the end; the run's final files checked to exist."""

from __future__ import annotations

from typing import Any

import torch

from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text


def printable(text: str) -> str:
    """File names that are not valid UTF-8 (surrogate escapes) shown with backslashes, not crash."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class SkippedFiles:
    """Part of `Epochs`: the skipped-file ledger (`self.skipped`, `self.shortfall`)."""

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

    def finish(self) -> None:
        """The summary of skipped files, and a clear failure if the final files are missing."""
        n_train, n_val = self.skipped_count("train"), self.skipped_count("val")
        if n_train or n_val:
            lines = [f"{split}\t{reason}" for split in ("train", "val")
                     for _, reason in sorted(self.skipped[split].items())]  # fmt: skip
            lines += [f"{split}\t{self.skipped_count(split) - len(self.skipped[split])} more, "
                      "not named (their features came from the feature cache)"
                      for split in ("train", "val")
                      if self.skipped_count(split) > len(self.skipped[split])]  # fmt: skip
            self.try_save(
                "skipped.txt",
                lambda: atomic_write_text(self.run_dir / "skipped.txt", "\n".join(lines) + "\n"),
            )
            self.log(
                f"skipped {n_train} training and {n_val} validation image(s) that could not be "
                f"decoded (listed in {self.run_dir / 'skipped.txt'})"
            )
        if self.failed_saves:
            raise TlearnError(
                f"could not write {', '.join(sorted(self.failed_saves))} in {self.run_dir} (see "
                f"the warnings above): free space there and run `tlearn train --resume "
                f"{self.run_dir}`"
            )
