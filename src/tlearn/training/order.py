"""Training batch order as a pure function of (seed, epoch), so a run can restart mid-epoch.

A resumed run must see exactly the batches the interrupted one would have seen next. Each epoch's
shuffle is therefore drawn from a generator seeded with `epoch_seed(seed, epoch)`, never from a
generator whose state depends on what ran before; the position inside an epoch is a batch index.

Two kinds of loader are served, both yielding `(images, labels, indices)` batches (or None):
- a `DataLoader` built with an `EpochSampler`: the sampler starts at the batch asked for, so the
  skipped part of the epoch is never decoded (the PIL path, where decoding is the cost);
- any other loader with a `generator` attribute (the decode-once `DecodedLoader`): the generator
  is reseeded for the epoch and the batches before the resume point are drawn and dropped, which
  replays every random draw (order and batch augmentation) exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import Sampler

from tlearn.data.sampling import rank_batches, rank_order
from tlearn.training.balance import draw_order


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for one epoch's draws; stable across processes (no Python hash randomisation)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + 0x5EED) % (2**63 - 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
    return torch.randperm(n, generator=generator)


class EpochSampler(Sampler[int]):
    """Indices of one epoch in a seeded order, from batch `start_batch` on.

    `set_epoch(epoch, start_batch)` before each pass; `len()` counts what is left of the epoch,
    so a DataLoader over it reports the remaining batches.
    """

    def __init__(self, n: int, seed: int, batch_size: int, shuffle: bool = True):
        self.n, self.seed, self.batch_size = int(n), int(seed), int(batch_size)
        self.shuffle = shuffle
        self.epoch, self.start_batch = 0, 0
        self.sample_weights: torch.Tensor | None = None  # `--balance sampler`: weighted draws
        self.rank, self.world = 0, 1  # several processes: this one's share of each global batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def order(self) -> torch.Tensor:
        """This process's positions of the epoch, in order (all of them for one process)."""
        return rank_order(self._order(), self.batch_size, self.rank, self.world)

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        if self.sample_weights is not None:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            return draw_order(self.n, generator, self.sample_weights)
        return epoch_permutation(self.n, self.seed, self.epoch)

    @property
    def batches(self) -> int:
        """Steps in a whole epoch."""
        return rank_batches(self.n, self.batch_size, self.world)

    def batch_indices(self, order: torch.Tensor, k: int) -> torch.Tensor:
        """Dataset positions that batch `k` of the epoch asks for."""
        return order[k * self.batch_size : (k + 1) * self.batch_size]

    def __iter__(self) -> Iterator[int]:
        yield from self.order()[self.start_batch * self.batch_size :].tolist()

    def __len__(self) -> int:
        n = self.n if self.world == 1 else self.batches * self.batch_size
        return max(0, n - self.start_batch * self.batch_size)


def batches_per_epoch(loader: Any) -> int:
    """Whole-epoch batch count, whatever position an `EpochSampler` was last left at."""
    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, EpochSampler):
        return sampler.batches
    return len(loader)


class EpochBatches:
    """One epoch of `loader` from batch `start`, as an iterable `train_one_epoch` can consume.

    Every batch position is yielded, None included, so the caller's step count equals the batch
    index. `expected(k)` says which dataset positions batch k asked for (None when the loader
    cannot say), which is how files that failed to decode in a loader process are named.
    """

    def __init__(
        self, loader: Any, seed: int, epoch: int, start: int = 0, limit: int | None = None
    ):
        self.loader, self.seed, self.epoch, self.start = loader, int(seed), int(epoch), int(start)
        # `--steps-per-epoch`: the epoch ends after this many batches of its shuffled order (a
        # budget's refit may change it while the epoch runs); None: the whole loader
        self.limit = limit
        self.dataset = getattr(loader, "dataset", None)
        sampler = getattr(loader, "sampler", None)
        self.sampler = sampler if isinstance(sampler, EpochSampler) else None
        self._order: torch.Tensor | None = None

    @property
    def total(self) -> int:
        """Batches in the whole epoch, the part already trained included."""
        full = batches_per_epoch(self.loader)
        return full if self.limit is None else max(1, min(full, int(self.limit)))

    @property
    def partial(self) -> bool:
        """True when the epoch stops before the end of the data (so no image counts as lost)."""
        return self.total < batches_per_epoch(self.loader)

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def expected(self, k: int) -> torch.Tensor | None:
        if self.sampler is None or self._order is None:
            return None
        return self.sampler.batch_indices(self._order, k)

    def __iter__(self) -> Iterator[Any]:
        generator = getattr(self.loader, "generator", None)
        if isinstance(generator, torch.Generator):
            # DataLoader: seeds its worker processes; DecodedLoader: its order and augmentation.
            generator.manual_seed(epoch_seed(self.seed, self.epoch) ^ 0x1F)
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch, self.start)
            self._order = self.sampler.order()
            batches = iter(self.loader)
        else:
            batches = _drop(self.loader, self.start)
        for k, batch in enumerate(batches, start=self.start):
            if k >= self.total:  # read each step: a refit may shorten or lengthen the epoch
                return
            yield batch


def _drop(batches: Iterable[Any], n: int) -> Iterator[Any]:
    for k, batch in enumerate(batches):
        if k >= n:
            yield batch
