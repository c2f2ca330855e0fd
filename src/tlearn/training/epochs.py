"""The epoch loop shared by every input path, with its bookkeeping and resume state."""

from __future__ import annotations

import contextlib
import csv
import io
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tlearn.checkpoint import ModelSpec, save_model
from tlearn.config import TrainConfig, parse_duration
from tlearn.data import Splits
from tlearn.errors import TlearnError
from tlearn.files import atomic_write_text
from tlearn.models import Classifier
from tlearn.training import distributed, loop, progressive
from tlearn.training.balance import class_weights, per_class_recall
from tlearn.training.budget.clock import Clock
from tlearn.training.budget.keeper import BudgetKeeper
from tlearn.training.checkpointing import Checkpoints
from tlearn.training.duration import RunDuration
from tlearn.training.ema import AveragedWeights
from tlearn.training.feeds import Feed
from tlearn.training.hooks import EpochEnd, Hook, Step, first_reason, hook_states, load_hook_states
from tlearn.training.interrupt import Interrupted, StopRequests
from tlearn.training.ledger import SkippedFiles
from tlearn.training.nan_guard import NanGuard, check_finite
from tlearn.training.order import EpochBatches, batches_per_epoch
from tlearn.training.phase import PhaseRun
from tlearn.training.probe_floor import ProbeFloor
from tlearn.training.schedule import build_scheduler, lr_factor
from tlearn.training.state import (
    STATE_NAME,
    Position,
    capture,
    restore,
    save_state,
)
from tlearn.training.steplog import StepLog
from tlearn.training.stopping import EarlyStopping, not_clearly_worse
from tlearn.training.strategies import (
    GRADUAL_DEFAULT_DECAY,
    Phase,
    apply_phase,
    build_optimizer,
    trainable_parameter_count,
)

Log = Callable[[str], None]


class Epochs:
    """The epoch loop shared by the three input paths; its other concerns are `self.hooks`.

    Where the run is lives in `self.position` (phase, finished epochs, step in the open epoch);
    every checkpoint writes it with the tensors, optimizer, scheduler, RNGs, the metrics rows
    and each hook's own state to `state.pt`.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: Classifier,
        spec: ModelSpec,
        splits: Splits,
        run_dir: Path,
        device: torch.device,
        autocast: Callable,
        log: Log,
        stop: StopRequests,
        state: dict | None,
        clock: Clock | None = None,
    ) -> None:
        self.clock = clock or Clock()  # what --budget and the elapsed times are read from
        self.cfg, self.model, self.spec, self.splits = cfg, model, spec, splits
        self.run_dir, self.device, self.autocast, self.log = run_dir, device, autocast, log
        self.stop = stop
        self.scaler = None  # fp16 on a GPU: the loss scaler (`tlearn.training.step`)
        weight = None
        if cfg.balance == "weighted-loss":
            weight = class_weights(splits.train.targets, len(splits.classes))
            self.log("class weights (inverse frequency): " + ", ".join(
                f"{c} {w:.2f}" for c, w in zip(splits.classes, weight.tolist(), strict=True)
            ))  # fmt: skip
        self.loss_fn = nn.CrossEntropyLoss(
            weight=None if weight is None else weight.to(device),
            label_smoothing=cfg.label_smoothing,
        )
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.started = self.clock.now()
        self.pending = state  # a resumed run's state, applied when its phase is rebuilt
        state = state or {}
        self.position = Position.from_dict(state.get("position", {}))
        self.rows: list[dict] = list(state.get("rows", []))
        self.best_score: float = state.get("best_score", -math.inf)
        self.best_correct: torch.Tensor | None = state.get("best_correct")
        # processes the run started with: its global batch (and --lr-scale) stay theirs
        self.processes: int = int(state.get("processes", distributed.world().size))
        self.elapsed_before: float = state.get("elapsed", 0.0)
        self.failed_saves: set[str] = set()
        self.setup_s = 0.0  # time before the epochs began (loading, planning), for --budget
        self.epoch_started = self.clock.now()
        self.size_note = ""  # " (32px)" while progressive resizing trains below the full size
        self.progress: loop.EpochProgress | None = None  # the open epoch's
        if state.get("metrics"):
            spec.metrics = dict(state["metrics"])
        self.val_predictions: dict[str, loop.Predictions | None] = {}  # of best and last
        # predictions the temperature is fitted on beside them (a solved probe's out-of-fold)
        self.calibration_rows: dict[str, loop.Predictions] = {}
        self.ema = AveragedWeights(cfg.ema)
        self.steps = StepLog(run_dir, cfg.tensorboard, resume=bool(state))
        self.guard = NanGuard()
        self.budget = BudgetKeeper(parse_duration(cfg.budget) if cfg.budget else None)
        self.ledger = SkippedFiles(splits, log)
        # in calling order; on an epoch's end the first reason to stop wins (early stopping's)
        self.hooks: list[Hook] = [
            self.ema,
            self.steps,
            self.guard,
            EarlyStopping(cfg.patience, cfg.monitor),
            self.budget,
            self.ledger,
            RunDuration(),
            Checkpoints(),
        ]
        load_hook_states(self.hooks, state)
        self.floor: ProbeFloor | None = None  # a budget run's probe floor (`keep_probe_floor`)

    def keep_probe_floor(self) -> None:
        """Solve the pretrained probe before fine-tuning and keep it if no epoch beats it."""
        self.floor = ProbeFloor(self.budget.budget_s or 0.0)
        self.hooks.append(self.floor)  # last: after the averaged weights are kept

    def call(self, event: str, *args: Any) -> list[Any]:
        """Every hook's `event`, in order."""
        return [getattr(hook, event)(self, *args) for hook in self.hooks]

    # -- the epoch loop --------------------------------------------------------------------

    def epoch_limit(self, epoch: int | None = None) -> int | None:
        """Batches epoch `epoch` (0-based) stops after: `--steps-per-epoch`, or
        `--last-epoch-steps` for the last one; None: the whole loader."""
        cfg = self.cfg
        limit = cfg.steps_per_epoch
        if epoch is not None and epoch == cfg.epochs - 1 and cfg.last_epoch_steps:
            limit = min(limit or cfg.last_epoch_steps, cfg.last_epoch_steps)
        return limit

    def epoch_steps(self, loader: Any, epoch: int | None = None) -> int:
        """Batches epoch `epoch` trains on (any but the last when None)."""
        full = batches_per_epoch(loader)
        limit = self.epoch_limit(epoch)
        return full if limit is None else max(1, min(full, limit))

    def phase_steps(self, loader: Any, first: int, epochs: int) -> int:
        """Steps of epochs `first` to `first + epochs`: what a phase's schedule spans."""
        return sum(self.epoch_steps(loader, e) for e in range(first, first + epochs))

    def reschedule(self, run: PhaseRun, loader: Any) -> None:
        """Stretch or shrink the phase's schedule to its changed length; the step count goes on."""
        cfg = self.cfg
        per_epoch = self.epoch_steps(loader)
        steps = self.phase_steps(loader, run.first, run.epochs)
        warmup = int(min(cfg.warmup, run.epochs) * per_epoch)
        run.scheduler.lr_lambdas = [
            lambda s: lr_factor(s, steps, warmup, cfg.schedule) for _ in run.optimizer.param_groups
        ]

    def train_feed(
        self, feed: Feed, phases: list[Phase], stages: list[list[list[nn.Parameter]]]
    ) -> None:
        """Each phase of the strategy, with its own optimizer and schedule, from the position."""
        cfg = self.cfg
        decay = cfg.lr_decay
        if cfg.strategy_kind in ("gradual", "auto") and decay >= 1.0:
            decay = GRADUAL_DEFAULT_DECAY
        per_epoch = self.epoch_steps(feed.loader)
        first = 0
        with feed.held():
            for index, phase in enumerate(phases):
                if self.position.epoch < first + phase.epochs and not self.position.finished:
                    groups = apply_phase(
                        self.model.top(), stages, phase, cfg.resolved_lr(), decay, cfg.weight_decay
                    )
                    optimizer = self.optimizer(groups)
                    steps = self.phase_steps(feed.loader, first, phase.epochs)
                    warmup = int(min(cfg.warmup, phase.epochs) * per_epoch)
                    scheduler = build_scheduler(optimizer, steps, warmup, cfg.schedule)
                    if stages:
                        self.log_phase(phase)
                    run = PhaseRun(
                        index, first, phase.epochs, feed.module, optimizer, scheduler,
                        feed.set_mode, size_of=feed.size_of, full_size=feed.full_size,
                    )  # fmt: skip
                    self.train_phase(run, feed.loader, feed.evaluate)
                first += phase.epochs
        self.apply_pending(feed.module)

    def log_phase(self, phase: Phase) -> None:
        self.log(
            f"phase: {phase.epochs} epoch(s), top {phase.trainable_stages} backbone stage(s) "
            f"training, {trainable_parameter_count(self.model):,} trainable parameters"
        )

    def train_phase(self, run: PhaseRun, loader: Any, evaluate: Callable) -> None:
        """The phase's epochs from where the run stands; a NaN/Inf loss retries an epoch once."""
        cfg = self.cfg
        self.apply_pending(run.module, run if self.pending_phase() == run.index else None)
        self.call("on_phase_start", run)
        trained = distributed.wrap(run.module, self.device, cfg.sync_bn)  # several processes
        readback = loop.readback_interval(self.device)
        while self.position.epoch < run.end and not self.position.finished:
            self.epoch_started = self.clock.now()
            if self.stop.requested:  # a signal during feature extraction or evaluation
                self.save_state(run)
                self.interrupted()
            self.call("on_epoch_start", run)
            epoch = self.position.epoch
            pos = self.position
            progress = loop.EpochProgress(
                pos.step, pos.loss_sum, pos.seen, pos.unused, correct=pos.correct
            )
            if not distributed.is_main():  # a resumed epoch's sums are rank 0's: count them once
                progress.loss_sum, progress.seen, progress.correct = 0.0, 0, 0
            self.progress = progress
            limit = self.epoch_limit(epoch)
            batches = EpochBatches(loader, cfg.seed, epoch, progress.step, limit)

            def after_step(
                batch: Any, progress: loop.EpochProgress, batches: EpochBatches = batches
            ) -> None:
                self.after_step(run, Step(batches, batch, progress))

            size = run.size_of(epoch) if run.size_of else None  # progressive resizing
            self.size_note = f" ({size}px)" if size and size != run.full_size else ""
            try:
                with progressive.training_size(run.module, loader, size or 0, run.full_size):
                    stats = loop.train_one_epoch(
                        trained,
                        batches,
                        run.optimizer,
                        run.scheduler,
                        self.loss_fn,
                        self.device,
                        self.autocast,
                        run.set_mode,
                        f"epoch {epoch + 1}/{cfg.epochs}{self.size_note}",
                        progress=progress,
                        after_step=after_step,
                        scaler=self.scaler,
                        now=self.clock.now,
                        readback_every=readback,
                    )
                self.progress = None
                stats = self.job_stats(stats, progress)
                check_finite(run.module, progress.step)
                self.end_epoch(run, stats, evaluate, loader, progress)
            except loop.NonFiniteLoss as e:
                self.progress = None
                self.guard.recover(self, run, e)
        if self.stop.requested:
            self.interrupted()

    def after_step(self, run: PhaseRun, step: Step) -> None:
        progress = step.progress
        self.position.step, self.position.loss_sum = progress.step, progress.loss_sum
        self.position.seen, self.position.unused = progress.seen, progress.unused
        self.position.correct = progress.correct
        self.call("after_step", run, step)
        progress.logged.clear()  # every hook has seen the losses read back since the last step

    def job_stats(self, stats: loop.EpochStats, progress: loop.EpochProgress) -> loop.EpochStats:
        """Several processes: the epoch's loss and images over every rank (one: `stats`)."""
        if not distributed.active():
            return stats
        loss_sum, seen, images, correct = distributed.sum_all(
            progress.loss_sum, progress.seen, stats.images, progress.correct
        )
        seconds = distributed.max_all(stats.seconds)
        accuracy = correct / seen if seen else None
        return loop.EpochStats(loss_sum / max(1.0, seen), int(images), seconds, 0, accuracy)

    # -- bookkeeping -----------------------------------------------------------------------

    def end_epoch(
        self,
        run: PhaseRun,
        stats: loop.EpochStats,
        evaluate: Callable,
        loader: Any,
        progress: loop.EpochProgress | None = None,
    ) -> None:
        """Evaluate and save (the averaged weights with --ema), then decide whether to go on."""
        with contextlib.ExitStack() as held:
            for context in self.call("evaluating", run):
                held.enter_context(context)
            row = self.record_epoch(run, stats, distributed.on_main(evaluate))
        end = EpochEnd(row, stats, loader, progress)
        reason = first_reason(self.call("on_epoch_end", run, end))
        if reason and not self.position.finished:
            self.position.finished = True
            self.log(f"stopping after epoch {row['epoch']}: {reason}")
        self.call("after_epoch", run)

    def record_epoch(
        self, run: PhaseRun, stats: loop.EpochStats, pred: loop.Predictions | None
    ) -> dict:
        epoch = self.position.epoch + 1
        val_loss, val_acc = loop.loss_and_accuracy(pred) if pred is not None else (None, None)
        elapsed = self.elapsed()
        row = {
            "epoch": epoch,
            "train_loss": round(stats.loss, 5),
            "train_accuracy": None if stats.accuracy is None else round(stats.accuracy, 5),
            "val_loss": None if val_loss is None else round(val_loss, 5),
            "val_accuracy": None if val_acc is None else round(val_acc, 5),
            "images_per_s": round(stats.images_per_second, 1),
            "elapsed_s": round(elapsed, 1),
            "skipped": max(stats.skipped, self.ledger.skipped_count("train")),
        }
        classes = self.spec.classes
        if (
            pred is not None
            and len(pred.labels)
            and (self.cfg.balance != "none" or len(classes) < 20)
        ):
            recall = per_class_recall(pred.logits, pred.labels, len(classes))
            for name, r in zip(classes, recall, strict=True):
                row[f"recall_{name}"] = None if r is None else round(r, 5)
            self.log("  val recall per class: " + ", ".join(
                f"{name} {'-' if r is None else f'{r:.3f}'}"
                for name, r in zip(classes, recall, strict=True)
            ))  # fmt: skip
        self.rows.append(row)
        val_text = (
            f"val_loss {val_loss:.4f}  val_acc {val_acc:.4f}" if val_acc is not None else "no val"
        )
        self.log(
            f"epoch {epoch}/{self.cfg.epochs}{self.size_note}  train_loss {stats.loss:.4f}  "
            f"{val_text}  "
            f"{stats.images_per_second:,.0f} img/s  {elapsed:.1f}s"
        )
        self.position = Position(phase=run.index, epoch=epoch, finished=epoch >= self.cfg.epochs)
        self.try_save("metrics.csv", self.write_metrics)
        self.spec.metrics = {
            "epoch": epoch,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "train_loss": stats.loss,
            "skipped_train": self.ledger.skipped_count("train"),
            "skipped_val": self.ledger.skipped_count("val"),
        }
        self.try_save("last.safetensors", self.save_model("last.safetensors"))
        self.val_predictions["last.safetensors"] = pred
        score = val_acc if val_acc is not None else -stats.loss
        correct = None
        if pred is not None and len(pred.labels):
            correct = pred.logits.argmax(1) == pred.labels
        if score > self.best_score or not_clearly_worse(correct, self.best_correct):
            if score > self.best_score:  # the bar later epochs are held to
                self.best_score, self.best_correct = score, correct
            self.try_save("best.safetensors", self.save_model("best.safetensors"))
            self.val_predictions["best.safetensors"] = pred
        return row

    # -- state and files ---------------------------------------------------------------------

    def save_model(self, name: str) -> Callable[[], Any]:
        return lambda: save_model(self.run_dir / name, self.model, self.spec)

    def capture(self, run: PhaseRun) -> dict:
        """The loop's position and records, and every hook's state under its key."""
        return capture(
            run.module,
            run.optimizer,
            run.scheduler,
            Position(**{**asdict(self.position), "phase": run.index}),
            scaler=self.scaler,
            scope="top" if run.module is not self.model else "model",
            rows=self.rows,
            best_score=self.best_score,
            best_correct=self.best_correct,
            elapsed=self.elapsed(),
            metrics=self.spec.metrics,
            config=self.spec.config,
            n_train=len(self.splits.train),
            processes=self.processes,
            **hook_states(self.hooks),
        )

    def save_state(self, run: PhaseRun) -> None:
        if self.progress is not None:  # the open epoch's losses still on the device
            self.progress.flush()
            self.position.loss_sum, self.position.seen = self.progress.loss_sum, self.progress.seen
            self.position.correct = self.progress.correct
        check_finite(run.module, self.position.step)
        state = self.capture(run)
        self.try_save(STATE_NAME, lambda: save_state(self.run_dir / STATE_NAME, state))

    def try_save(self, name: str, write: Callable[[], Any]) -> None:
        """A failed write (disk full, folder gone read-only) keeps the previous file and says so."""
        try:
            write()
        except OSError as e:
            self.failed_saves.add(name)
            self.log(
                f"warning: could not write {self.run_dir / name} ({e.strerror or e}); "
                "the previous one is kept"
            )
        else:
            self.failed_saves.discard(name)

    def pending_phase(self) -> int | None:
        return None if self.pending is None else self.pending["position"]["phase"]

    def apply_pending(self, module: nn.Module, run: PhaseRun | None = None) -> None:
        """Put a resumed run's tensors and RNGs back (and its optimizer, inside the same phase)."""
        if self.pending is None:
            return
        optimizer, scheduler = (run.optimizer, run.scheduler) if run else (None, None)
        restore(self.pending, module, optimizer, scheduler, self.scaler if run else None)
        self.pending = None
        self.call("on_restored", module)

    def optimizer(self, groups: list[dict]) -> torch.optim.Optimizer:
        """A phase's optimizer, at the lowered rate when a NaN retry happened earlier."""
        lowered = self.guard.lr_scale
        for g in groups:  # --lr-scale: to the global batch of `processes` x --batch-size
            g["lr"] *= lowered * distributed.lr_factor(self.cfg.lr_scale, self.processes)
        return build_optimizer(groups, self.cfg.optimizer, self.cfg.momentum)

    def finish(self) -> None:
        """The hooks' last word (the averaged weights kept, skipped.txt), then a clear failure
        if a final file could not be written."""
        self.call("on_train_end")
        if self.failed_saves:
            raise TlearnError(
                f"could not write {', '.join(sorted(self.failed_saves))} in {self.run_dir} (see "
                f"the warnings above): free space there and run `tlearn train --resume "
                f"{self.run_dir}`"
            )

    def interrupted(self) -> None:
        pos = self.position
        saved = (
            "the last checkpoint could not be written, so resuming repeats some steps"
            if STATE_NAME in self.failed_saves
            else f"progress is saved in {self.run_dir}"
        )
        raise Interrupted(
            self.stop.signum or 2,
            f"stopped by {self.stop.signal_name} at epoch {pos.epoch + 1}, step {pos.step}; "
            f"{saved}: continue with `tlearn train --resume {self.run_dir}`",
        )

    def elapsed(self) -> float:
        return self.elapsed_before + self.clock.now() - self.started

    def write_metrics(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(self.rows[0]))
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.run_dir / "metrics.csv", buffer.getvalue())
