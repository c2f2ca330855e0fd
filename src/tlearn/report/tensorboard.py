"""--tensorboard, at the end of a run: the confusion matrix and the mistakes, as images.

Scalars and the learning rate go to RUN/tb/ while training (`tlearn.training.steplog`); the
figures the report drew join them here, so TensorBoard shows the same pictures as report.html.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tlearn.errors import TlearnError


def log_report(log_dir: Path, figures_dir: Path) -> None:
    """Add the report's confusion matrices and mistake pictures to the run's TensorBoard log."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TlearnError(
            "--tensorboard needs the tensorboard package: pip install 'tlearn[tensorboard]'"
        ) from e
    with SummaryWriter(log_dir=str(log_dir)) as writer:
        for name in ("confusion.png", "confusion_normalized.png", "reliability.png"):
            if (figures_dir / name).is_file():
                writer.add_image(f"results/{name[:-4]}", _array(figures_dir / name), 0,
                                 dataformats="HWC")  # fmt: skip
        for path in sorted(figures_dir.glob("mistake_*.png")):
            writer.add_image(f"mistakes/{path.stem}", _array(path), 0, dataformats="HWC")


def _array(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))
