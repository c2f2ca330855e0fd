"""After the last epoch: one temperature per saved model, fitted on held-out logits.

The trainer keeps the validation predictions of the epochs it saved as `best` and `last`; each
file gets the temperature fitted on its own epoch's logits (`tlearn.models.calibration`), written
into its metadata with its tensors untouched. Accuracy cannot change: T > 0 keeps every argmax.
A solved probe adds its training rows' out-of-fold logits: far more images than the validation
split, which already chose the probe's strength (`tlearn.training.solve.out_of_fold_logits`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tlearn.checkpoint import write_calibration
from tlearn.models.calibration import calibration_record, fitted_on_text


def calibrate_run(
    run_dir: Path,
    predictions: dict[str, Any],
    log: Callable[[str], Any],
    extra: dict[str, Any] | None = None,
) -> dict:
    """Fit and store a temperature in each model file named in `predictions`; return `last`'s.

    `predictions` maps a file name to the `loop.Predictions` of the epoch it holds; `extra` to
    more held-out predictions of the same model (out-of-fold training rows).
    """
    extra = extra or {}
    records: dict[str, dict] = {}
    shown_of = ""
    for name in dict.fromkeys([*predictions, *extra]):
        logits, labels, of = held_out(predictions.get(name), extra.get(name))
        path = run_dir / name
        if len(labels) < 2 or not path.is_file():
            continue
        records[name] = calibration_record(logits, labels, of)
        write_calibration(path, records[name])
        shown_of = shown_of or of
    if not records:
        log("calibration: no validation images, so probabilities stay uncalibrated")
        return {}
    shown = records.get("best.safetensors") or next(iter(records.values()))
    log(
        f"calibration: temperature {shown['temperature']:.3f} fitted on "
        f"{shown['images']} {fitted_on_text(shown['fitted_on'])}, ECE {shown['ece_before']:.4f} -> "
        f"{shown['ece_after']:.4f}"
    )
    return records.get("last.safetensors", {})


def held_out(val: Any, extra: Any) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The logits and labels to fit on, and what they are ("val", "val+oof" or "oof")."""
    parts = [(p, name) for p, name in ((val, "val"), (extra, "oof")) if p is not None]
    parts = [(p, name) for p, name in parts if len(p.labels)]
    if not parts:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long), "val"
    logits = torch.cat([p.logits.float() for p, _ in parts])
    labels = torch.cat([p.labels.long() for p, _ in parts])
    return logits, labels, "+".join(name for _, name in parts)
