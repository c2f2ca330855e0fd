"""Which library owns a backbone name.

Names are the libraries' own, never aliased: a user who reads torchvision's or timm's docs can type
what they read. torchvision wins a name both libraries know (``resnet18`` is the article's
torchvision model); ``timm/NAME`` or ``torchvision/NAME`` forces a library.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from functools import lru_cache

import timm
import torchvision.models as tvm
from timm import is_model  # a lookup: listing every name took 0.4 s of each run's start

from tlearn.errors import TlearnError

TIMM = "timm"
TORCHVISION = "torchvision"


@dataclass(frozen=True)
class Resolved:
    library: str  # "timm" | "torchvision"
    arch: str  # the library's own name; for timm may carry a pretrained tag ("resnet50.a1_in1k")


@lru_cache(maxsize=1)
def torchvision_names() -> tuple[str, ...]:
    return tuple(tvm.list_models(module=tvm))


@lru_cache(maxsize=1)
def timm_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


@lru_cache(maxsize=1)
def timm_tagged_names() -> frozenset[str]:
    return frozenset(timm.list_models(pretrained=True))


def _is_timm(arch: str) -> bool:
    if "." in arch:  # a pretrained tag must be one timm actually publishes
        return arch in timm_tagged_names()
    return bool(is_model(arch))


def resolve(name: str) -> Resolved:
    """Map a user's backbone name to (library, library name), or say which names are close."""
    raw = name.strip()
    forced, _, rest = raw.partition("/")
    if rest and forced in (TIMM, TORCHVISION):
        if forced == TORCHVISION and rest in torchvision_names():
            return Resolved(TORCHVISION, rest)
        if forced == TIMM and _is_timm(rest):
            return Resolved(TIMM, rest)
        raise _unknown(raw, rest, forced)
    if raw in torchvision_names():
        return Resolved(TORCHVISION, raw)
    if _is_timm(raw):
        return Resolved(TIMM, raw)
    raise _unknown(raw, raw, None)


def _unknown(name: str, arch: str, library: str | None) -> TlearnError:
    pool: list[str] = []
    if library in (None, TORCHVISION):
        pool += torchvision_names()
    if library in (None, TIMM):
        pool += timm_names()
    close = difflib.get_close_matches(arch.split(".")[0], pool, n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return TlearnError(f"unknown backbone '{name}'{hint}: run `tlearn backbones` to list them")
