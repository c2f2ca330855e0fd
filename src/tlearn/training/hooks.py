"""What a run does beside the plain epoch loop, one concern per hook, each in its own module.

The loop (`tlearn.training.epochs.Epochs`) trains and evaluates; averaging the weights (EMA),
early stopping, keeping a `--budget`, the NaN guard, naming undecodable files, the per-step log
and checkpointing are hooks it calls at fixed points. As Lightning's callbacks do, a hook
carries its own resume state: `state.pt` holds `{hook.key: hook.state_dict()}` beside the
loop's position, so adding a concern never means listing its fields in the loop.

Every method receives the loop running it (`loop`), for the run's config, clock, log and files.
Hooks run in the order the loop lists them; on an epoch's end the first stop reason wins.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from tlearn.training.phase import PhaseRun


@dataclass
class Step:
    """One batch position of an epoch, after its optimizer step."""

    batches: Any  # the epoch's `EpochBatches` (its loader, order and step limit)
    batch: Any  # the batch trained on, or None when every image in it failed to decode
    progress: Any  # the epoch's `EpochProgress` (steps done, running loss)


@dataclass
class EpochEnd:
    """A finished epoch, evaluated and recorded."""

    row: dict  # its metrics.csv row
    stats: Any  # its `EpochStats` (loss, images, seconds)
    loader: Any  # the training loader, for the length of the epochs still to come
    progress: Any = None  # its `EpochProgress`: `logged` holds the losses of its last steps


class Hook:
    """A concern of the run with its own resume state; every method does nothing by default."""

    key: str | None = None  # where state.pt keeps `state_dict()`; None: the hook keeps none
    rewinds: bool = False  # a NaN retry puts its state back to the failed epoch's start

    def on_restored(self, loop: Any, module: Any) -> None:
        """A resumed run's tensors were just put back into `module`."""

    def on_phase_start(self, loop: Any, run: PhaseRun) -> None:
        """A phase (one optimizer's stretch of epochs) begins or resumes."""

    def on_epoch_start(self, loop: Any, run: PhaseRun) -> None:
        """An epoch begins or resumes."""

    def after_step(self, loop: Any, run: PhaseRun, step: Step) -> None:
        """After each batch position, undecodable batches too."""

    def evaluating(self, loop: Any, run: PhaseRun) -> AbstractContextManager:
        """Held while the epoch is evaluated and its model files written."""
        return contextlib.nullcontext()

    def on_epoch_end(self, loop: Any, run: PhaseRun, end: EpochEnd) -> str | None:
        """A reason to stop the run now, or None to go on."""
        return None

    def after_epoch(self, loop: Any, run: PhaseRun) -> None:
        """After the loop decided whether to go on (the position says)."""

    def on_train_end(self, loop: Any) -> None:
        """Training is over: final files, summaries."""

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        """Resume from what `state_dict` returned (called only when state.pt holds some)."""

    def rewind(self, state: Any) -> None:
        """A NaN retry: back to the state captured at the failed epoch's start (`rewinds`)."""
        self.load_state_dict(state)


def hook_states(hooks: list[Hook]) -> dict[str, Any]:
    """Each keyed hook's resume state, for state.pt."""
    return {h.key: h.state_dict() for h in hooks if h.key is not None}


def load_hook_states(hooks: list[Hook], state: dict[str, Any]) -> None:
    for h in hooks:
        if h.key is not None and state.get(h.key) is not None:
            h.load_state_dict(state[h.key])


def first_reason(reasons: list[str | None]) -> str | None:
    return next((r for r in reasons if r), None)
