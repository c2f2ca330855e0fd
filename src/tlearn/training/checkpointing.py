"""When state.pt is written: every `--checkpoint-every` steps, at each epoch's end (over whole
files only), and when a stop is requested (then the run ends, saying how to resume)."""

from __future__ import annotations

from typing import Any

from tlearn.training.hooks import Hook, Step
from tlearn.training.phase import PhaseRun

# an epoch's end writes state.pt only over these whole: a resume then redoes a failed epoch
EPOCH_FILES = frozenset({"metrics.csv", "last.safetensors", "best.safetensors"})


class Checkpoints(Hook):
    """The loop's hook that saves its state (the loop gathers every hook's part of it)."""

    def after_step(self, loop: Any, run: PhaseRun, step: Step) -> None:
        if loop.stop.requested:
            loop.save_state(run)
            loop.interrupted()
        every = loop.cfg.checkpoint_every
        progress, batches = step.progress, step.batches
        if every and progress.step % every == 0 and progress.step < batches.start + len(batches):
            loop.save_state(run)

    def after_epoch(self, loop: Any, run: PhaseRun) -> None:
        if not loop.failed_saves & EPOCH_FILES:
            loop.save_state(run)
