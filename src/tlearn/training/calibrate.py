"""After the last epoch: one temperature per saved model, fitted on the validation logits.

The trainer keeps the validation predictions of the epochs it saved as `best` and `last`; each
file gets the temperature fitted on its own epoch's logits (`tlearn.models.calibration`), written
into its metadata with its tensors untouched. Accuracy cannot change: T > 0 keeps every argmax.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlearn.checkpoint import write_calibration
from tlearn.models.calibration import calibration_record


def calibrate_run(run_dir: Path, predictions: dict[str, Any], log: Callable[[str], Any]) -> dict:
    """Fit and store a temperature in each model file named in `predictions`; return `last`'s.

    `predictions` maps a file name to the `loop.Predictions` of the epoch it holds.
    """
    records: dict[str, dict] = {}
    for name, pred in predictions.items():
        path = run_dir / name
        if pred is None or len(pred.labels) < 2 or not path.is_file():
            continue
        records[name] = calibration_record(pred.logits, pred.labels, "val")
        write_calibration(path, records[name])
    if not records:
        log("calibration: no validation images, so probabilities stay uncalibrated")
        return {}
    shown = records.get("best.safetensors") or next(iter(records.values()))
    log(
        f"calibration: temperature {shown['temperature']:.3f} fitted on "
        f"{shown['images']} validation images, ECE {shown['ece_before']:.4f} -> "
        f"{shown['ece_after']:.4f}"
    )
    return records.get("last.safetensors", {})
