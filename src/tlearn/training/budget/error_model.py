"""The budget planner's accuracy model: which trade of pixels for epochs is expected to score best.

Only comparisons matter (`make_plan` takes the option with the least relative error), so the
model is a few exponents, fitted where each is named.
"""

from __future__ import annotations

# The error falls like epochs^-0.35 up to about 2 epochs (a plain fine-tuning script at 64 px:
# 90.6 / 92.7% test after 1 / 2 epochs), then like epochs^-0.05, and like size^-0.22. Budget
# plans on Fashion-MNIST (Lite0, 4 stages frozen and stored, flips, one-cycle at 3e-3) scored
# 94.25 / 94.29 / 94.65% test after 3 / 4 / 12 epochs at 64 px, and 94.61 / 94.97% after 2 / 7
# at 96 px: past two epochs, pixels buy more than epochs.
ERROR_EPOCH_EXPONENT = 0.35
SATURATING_EPOCHS = 2
# The early fall is counted in optimizer steps too: two epochs of a small dataset are few steps.
# On the clothing photos (24 steps an epoch) the Fashion-MNIST model bought pixels with them:
# `--budget 2m` planned 1.95 epochs at 192 px (47 steps, refitted to 34) and scored 84.9-87.9%
# test, where 4 epochs at 128 px (96 steps) had scored 91.1%; sign-digits (24 steps an epoch)
# scored 98.1 / 99.8 / 100% after 48 / 72 / 120 steps (benchmarks/results/budget_lr.md).
SATURATING_STEPS = 100
LATE_EPOCH_EXPONENT = 0.05
ERROR_SIZE_EXPONENT = 0.22
PROBE_ERROR_FACTOR = 1.2  # frozen features vs one fine-tuning epoch at the same size


def expected_error(
    image_size: int, epochs: float, backbone_size: int, probe: bool, steps: float | None = None
) -> float:
    """Relative test error (1.0 = one fine-tuning epoch at 64 px): only comparisons matter.

    `steps`: the optimizer steps those epochs take. Fewer than `SATURATING_STEPS` count as
    less than `SATURATING_EPOCHS` of progress, however many passes over the data they make.
    """
    size = min(image_size, backbone_size)
    by_size = (64 / size) ** ERROR_SIZE_EXPONENT
    if probe:
        return PROBE_ERROR_FACTOR * by_size
    epochs = max(epochs, 1e-9)
    progress = epochs
    if steps is not None:
        progress = min(epochs, SATURATING_EPOCHS * max(steps, 1e-9) / SATURATING_STEPS)
    early = min(progress, SATURATING_EPOCHS) ** -ERROR_EPOCH_EXPONENT
    late = max(1.0, epochs / SATURATING_EPOCHS) ** -LATE_EPOCH_EXPONENT
    return by_size * early * late


def max_epochs(n_train: int) -> int:
    """Where more epochs stop paying: about 3 million images seen, 10 to 60 epochs."""
    return int(min(60, max(10, round(3_000_000 / max(1, n_train)))))
