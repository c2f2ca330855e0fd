"""The frozen first stages of a backbone, split off so their output can be computed once.

`--strategy freeze:N` keeps a backbone's first N stages frozen while the rest trains. With no
augmentation but flips, what those stages output for an image (or its mirror) never changes,
yet a plain loop recomputes it every epoch, and at the highest resolution of the network it is
the most costly part of a step. `frozen_prefix` finds the modules that compute it, in the order
the network calls them, and checks on one input that the network's output from their stored
output equals its output from the image; `skipped` then runs the network from that point.

Found from the library's own module tree (no per-family table): the top-level children in call
order, descending into a `Sequential` that is only partly frozen. A network whose layout does not
allow the split (the check fails, or a frozen weight lies outside the prefix) gets `None`, and
its run computes every step in full, as before.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class Prefix:
    """Modules (as parent, child name) that compute a body's frozen first stages, in call order."""

    slots: list[tuple[nn.Module, str]]
    output_shape: tuple[int, ...] = ()  # of one image's output, as checked by `frozen_prefix`

    def modules(self) -> list[nn.Module]:
        return [parent._modules[name] for parent, name in self.slots]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.modules():
            x = module(x)
        return x

    @contextmanager
    def skipped(self) -> Iterator[None]:
        """Inside, the body takes the prefix's output as its input (the prefix's modules pass it
        through). The swap holds only for a call, so a checkpoint never misses their weights."""
        kept = self.modules()
        for parent, name in self.slots:
            parent._modules[name] = nn.Identity()
        try:
            yield
        finally:
            for (parent, name), module in zip(self.slots, kept, strict=True):
                parent._modules[name] = module


def call_order(module: nn.Module, example: torch.Tensor) -> list[str]:
    """Names of `module`'s direct children in the order its forward first calls them."""
    order: list[str] = []
    handles = []
    for name, child in module.named_children():

        def note(_m, _args, _out, name: str = name) -> None:
            if name not in order:
                order.append(name)

        handles.append(child.register_forward_hook(note))
    try:
        with torch.no_grad():
            module(example)
    finally:
        for h in handles:
            h.remove()
    return order


def frozen_prefix(body: nn.Module, frozen: set[int], example: torch.Tensor) -> Prefix | None:
    """The modules computing the parameters `frozen` (ids), if they lead the network.

    `example` is one normalised input at the run's size; the split is checked on it in
    evaluation mode (the frozen stages' batch norms use their running statistics in training
    too). Returns None when the split is not exact.
    """
    if not frozen:
        return None
    was_training = body.training
    body.eval()
    try:
        slots = _leading_frozen(body, call_order(body, example), frozen)
        if slots is None:
            return None
        prefix = Prefix(slots)
        covered = {id(p) for m in prefix.modules() for p in m.parameters()}
        if covered != frozen:
            return None
        with torch.no_grad():
            expected = body(example)
            middle = prefix.run(example)
            with prefix.skipped():
                got = body(middle)
        if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-4, atol=1e-5):
            return None
        prefix.output_shape = tuple(middle.shape[1:])
        return prefix
    finally:
        body.train(was_training)


def _leading_frozen(
    container: nn.Module, order: list[str], frozen: set[int]
) -> list[tuple[nn.Module, str]] | None:
    slots: list[tuple[nn.Module, str]] = []
    for name in order:
        child = container._modules[name]
        ids = [id(p) for p in child.parameters()]
        if all(i in frozen for i in ids):
            slots.append((container, name))
            continue
        if any(i in frozen for i in ids):
            if not isinstance(child, nn.Sequential):
                return None  # a partly frozen module whose inner order is its own business
            inner = _leading_frozen(child, list(child._modules), frozen)
            if inner is None:
                return None
            slots.extend(inner)
        break
    return slots
