"""Frozen-backbone features of any source, as plain arrays, for code that is not training.

`tlearn doctor` sits beside training (it may not import it), yet it needs exactly the features a
linear probe trains on, from the same on-disk cache. The API builds one `FrozenFeatures` and hands
it down; the doctor only calls it. The stage features of a frozen backbone (what `--strategy
linear-probe` uses by default) are computed, so a doctor run and a probe run share cache entries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from tlearn.config import TrainConfig
from tlearn.data.sources import ImageSource
from tlearn.models import create_backbone
from tlearn.models.normalize import NormalizedBackbone
from tlearn.models.stages import stage_taps
from tlearn.preprocessing import model_input
from tlearn.training.features import extract_features
from tlearn.training.runtime import pick_device, pick_precision


class FrozenFeatures:
    """`features(source, description)` -> (float32 [n, F] features, source positions [n]).

    Positions name the rows: an image that could not be decoded has none. `last_width` is the
    width of the backbone's own pooled output, which ends every row (stage features come first).
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        *,
        weights: str = "auto",
        image_size: int | None = None,
        device: str = "auto",
        workers: int | None = None,
        cache_dir: str | None = None,
        cache: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        made = create_backbone(backbone, weights, image_size)
        wrapped = NormalizedBackbone(made.module, made.preprocessing, stage_taps(made.module))
        self.device = pick_device(device)
        self.precision = pick_precision(self.device, "auto")
        self.model = _Backbones(wrapped.to(self.device).eval())
        self.pre = model_input([made.preprocessing])
        self.input_size = self.pre.input_size
        self.last_width = made.num_features
        self.name = backbone
        self.cfg = TrainConfig(
            data="doctor", backbone=[backbone], workers=workers, cache_dir=cache_dir, cache=cache
        )
        self.log = log

    def __call__(
        self, source: ImageSource, description: str, *, cache: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        if not cache and cfg.cache:
            cfg = TrainConfig.from_dict({**cfg.to_dict(), "cache": False})
        result = extract_features(
            self.model, source, self.pre, cfg, self.device, self.precision, description,
            log=self.log,
        )  # fmt: skip
        rows = result.indices
        positions = np.arange(len(result)) if rows is None else rows.numpy()
        return result.features.float().numpy(), np.asarray(positions, dtype=np.int64)


class _Backbones(torch.nn.Module):
    """What `extract_features` reads of a classifier: its list of backbones."""

    def __init__(self, backbone: NormalizedBackbone) -> None:
        super().__init__()
        self.backbones = torch.nn.ModuleList([backbone])
