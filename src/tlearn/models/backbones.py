"""The one place that builds timm and torchvision models: headless, with their own preprocessing.

A backbone maps a normalised image batch [B, 3, H, W] to pooled features [B, F]. Its classifier is
removed the library's own way where there is one (timm ``num_classes=0``); torchvision models get
the last class-producing layer replaced by ``nn.Identity`` in place, so parameter names stay those
of the library and pretrained hidden layers (VGG's fc7, MobileNetV3's 1280 layer) are kept.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import timm
import timm.models
import torch
import torchvision.models as tvm
from timm.models import group_parameters
from torch import nn

from tlearn.errors import TlearnError
from tlearn.models import weights as W
from tlearn.models.registry import (
    TIMM,
    TORCHVISION,
    Resolved,
    resolve,
    timm_names,
    torchvision_names,
)
from tlearn.preprocessing import Preprocessing

_IMAGENET_CLASSES = 1000


@dataclass
class Backbone:
    name: str  # as the user wrote it
    library: str  # "timm" | "torchvision"
    module: nn.Module  # [B, 3, H, W] normalised -> [B, num_features]
    num_features: int
    preprocessing: Preprocessing
    weights_source: str

    def stages(self) -> list[list[nn.Parameter]]:
        """Parameter groups from input to output, for ``freeze:N`` and gradual unfreezing.

        Every parameter is in exactly one group; groups without parameters are left out.
        """
        if self.library == TIMM:
            groups = _timm_stages(self.module)
        else:
            groups = _torchvision_stages(self.module)
        return _complete(self.module, groups)


# ---------------------------------------------------------------- creation


def create_backbone(
    name: str, weights: str | None = "auto", image_size: int | None = None
) -> Backbone:
    """Build ``name`` without its classifier and load weights.

    ``weights``: "auto" (installed weights package, then the library's cache or download), "none"
    or None (random init: what a checkpoint reload uses, fast and offline), or a file path.
    """
    resolved = resolve(name)
    choice = "none" if weights is None else str(weights)
    if choice.lower() == "none":
        module, nf = _build(resolved, pretrained=False)
        source = "none"
    elif choice.lower() == "auto":
        module, nf, source = _build_auto(name, resolved)
    else:
        state = W.read_state_dict(choice)
        module, nf = _build(resolved, pretrained=False)
        W.load_weights(module, state, name)
        source = W.file_source(choice)
    pre = _preprocessing(resolved, module).with_size(image_size)
    return Backbone(name, resolved.library, module, nf, pre, source)


def _build_auto(name: str, resolved: Resolved) -> tuple[nn.Module, int, str]:
    pkg = W.package_weights(resolved)
    if pkg is not None:
        path, source = pkg
        module, nf = _build(resolved, pretrained=False)
        W.load_weights(module, W.read_state_dict(path), name)
        return module, nf, source
    if resolved.library == TORCHVISION:
        tw = W.torchvision_default_weights(resolved.arch)
        if tw is None:
            raise W.no_weights_error(name, "torchvision publishes none for it")
        if W.torchvision_cached_file(resolved.arch) is None and not W.can_download(tw.url):
            raise W.no_weights_error(name)
        with W.download_errors(name):
            module, nf = _build(resolved, pretrained=True)
        return module, nf, f"torchvision:{tw}"
    source = W.timm_source(resolved.arch)
    if source is None:
        raise W.no_weights_error(name, "timm publishes none for it")
    cached = W.timm_cached_file(resolved.arch)
    if cached is None and not W.can_download("https://huggingface.co"):
        raise W.no_weights_error(name)
    with W.download_errors(name):
        module, nf = _build(resolved, pretrained=True, file=cached)
    return module, nf, source


def _build(resolved: Resolved, pretrained: bool, file: Path | None = None) -> tuple[nn.Module, int]:
    if resolved.library == TIMM:
        kwargs: dict = {"pretrained": pretrained, "num_classes": 0}
        if pretrained and file is not None:  # load the cached file, skip the hub's network check
            kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
        model = timm.create_model(resolved.arch, **kwargs)
        return model, int(model.num_features)
    kwargs = {}
    if resolved.arch in ("googlenet", "inception_v3"):
        # Fixed whatever the weights, so a reload with weights="none" computes the same function.
        # (With weights, the builder itself drops the aux heads and skips the init.)
        kwargs = {"transform_input": True}
        if not pretrained:
            kwargs.update(aux_logits=False, init_weights=True)
    tw = W.torchvision_default_weights(resolved.arch) if pretrained else None
    model = tvm.get_model(resolved.arch, weights=tw, **kwargs)
    if getattr(model, "aux_logits", False):  # inception_v3 keeps its aux head after loading
        model.aux_logits = False
        for aux in ("AuxLogits", "aux1", "aux2"):
            if hasattr(model, aux):
                setattr(model, aux, None)
    return model, _strip_torchvision_classifier(model, resolved.arch)


def _strip_torchvision_classifier(model: nn.Module, arch: str) -> int:
    """Replace the layer that makes the 1000 ImageNet logits by Identity; return its input width."""
    for attr in ("fc", "classifier", "heads", "head"):
        head = getattr(model, attr, None)
        if isinstance(head, nn.Module):
            break
    else:
        raise RuntimeError(f"torchvision model {arch} has no known classifier attribute")
    if _is_logit_layer(head):
        setattr(model, attr, nn.Identity())
        return _in_width(head)
    parent, idx = _last_logit_layer(head)
    if parent is None:
        raise RuntimeError(f"torchvision model {arch}: no {_IMAGENET_CLASSES}-way layer in {attr}")
    layer = parent[idx]
    parent[idx] = nn.Identity()
    # Dropout right before the logits regularised the old classifier; the new head brings its own.
    j = idx - 1
    while j >= 0 and isinstance(parent[j], nn.Dropout):
        parent[j] = nn.Identity()
        j -= 1
    return _in_width(layer)


def _is_logit_layer(m: nn.Module) -> bool:
    return (isinstance(m, nn.Linear) and m.out_features == _IMAGENET_CLASSES) or (
        isinstance(m, nn.Conv2d) and m.out_channels == _IMAGENET_CLASSES
    )


def _in_width(m: nn.Module) -> int:
    return int(m.in_features if isinstance(m, nn.Linear) else m.in_channels)


def _last_logit_layer(head: nn.Module) -> tuple[nn.Sequential | None, int]:
    found: tuple[nn.Sequential | None, int] = (None, -1)
    for m in head.modules():
        if isinstance(m, nn.Sequential):
            for i, child in enumerate(m):
                if _is_logit_layer(child):
                    found = (m, i)
    return found


# ---------------------------------------------------------------- preprocessing


def _preprocessing(resolved: Resolved, module: nn.Module) -> Preprocessing:
    if resolved.library == TIMM:
        return _timm_preprocessing(getattr(module, "pretrained_cfg", None) or {})
    return _torchvision_preprocessing(resolved.arch)


def _timm_preprocessing(cfg) -> Preprocessing:
    cfg = dict(cfg)
    default = Preprocessing()
    size = cfg.get("input_size") or (3, default.input_size, default.input_size)
    return Preprocessing(
        input_size=int(size[-1]),
        mean=tuple(float(v) for v in cfg.get("mean", default.mean)),
        std=tuple(float(v) for v in cfg.get("std", default.std)),
        interpolation=str(cfg.get("interpolation") or default.interpolation),
        crop_pct=float(cfg.get("crop_pct") or default.crop_pct),
    )


def _torchvision_preprocessing(arch: str) -> Preprocessing:
    """From the default weights' transforms preset, also for weights="none".

    The preset is metadata (no download); using it for random init too means a reload, which
    builds with weights="none", sees the same numbers as training did.
    """
    tw = W.torchvision_default_weights(arch)
    if tw is None:
        return Preprocessing()
    t = tw.transforms()
    crop = int(t.crop_size[0])
    resize = int(t.resize_size[0]) if t.resize_size else crop
    return Preprocessing(
        input_size=crop,
        mean=tuple(float(v) for v in t.mean),
        std=tuple(float(v) for v in t.std),
        interpolation=str(t.interpolation.value),
        crop_pct=round(crop / resize, 4),
    )


# ---------------------------------------------------------------- stages


def _timm_stages(model: nn.Module) -> list[list[nn.Parameter]]:
    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        return _children_stages(model)
    groups = group_parameters(model, matcher)  # {group id: [param names]}
    params = dict(model.named_parameters())
    return [[params[n] for n in groups[g]] for g in sorted(groups)]


def _torchvision_stages(model: nn.Module) -> list[list[nn.Parameter]]:
    if hasattr(model, "layer1") and hasattr(model, "conv1"):  # resnet, resnext, wide_resnet
        stem = [p for m in (model.conv1, model.bn1) for p in m.parameters()]
        return [stem] + [list(getattr(model, f"layer{i}").parameters()) for i in range(1, 5)]
    if hasattr(model, "trunk_output"):  # regnet
        return [list(model.stem.parameters())] + [
            list(c.parameters()) for c in model.trunk_output.children()
        ]
    trunk = getattr(model, "features", None)
    if not isinstance(trunk, nn.Sequential):
        trunk = getattr(model, "layers", None)  # mnasnet
    if isinstance(trunk, nn.Sequential):  # efficientnet, mobilenet, convnext, vgg, densenet, swin
        return [list(c.parameters()) for c in trunk.children()]
    if hasattr(model, "encoder") and hasattr(model, "conv_proj"):  # vit
        enc = model.encoder
        stem = [model.class_token, enc.pos_embedding, *model.conv_proj.parameters()]
        return [stem] + [list(c.parameters()) for c in enc.layers] + [list(enc.ln.parameters())]
    if hasattr(model, "blocks") and hasattr(model, "stem"):  # maxvit
        return [list(model.stem.parameters())] + [list(b.parameters()) for b in model.blocks]
    return _children_stages(model)


def _children_stages(model: nn.Module) -> list[list[nn.Parameter]]:
    own = list(model.parameters(recurse=False))
    groups = [list(c.parameters()) for c in model.children()]
    if own:
        groups.insert(0, own)
    return groups


def _complete(model: nn.Module, groups: list[list[nn.Parameter]]) -> list[list[nn.Parameter]]:
    """Drop empty groups, put any parameter no rule named into a last group, check uniqueness."""
    seen: set[int] = set()
    out: list[list[nn.Parameter]] = []
    for g in groups:
        g = [p for p in g if id(p) not in seen]
        seen.update(id(p) for p in g)
        if g:
            out.append(g)
    rest = [p for p in model.parameters() if id(p) not in seen]
    if rest:  # e.g. a norm kept after the features (convnext's classifier LayerNorm)
        out.append(rest)
    return out


# ---------------------------------------------------------------- listing

# A sensible set to show by default: CPU-friendly first, then the usual stronger ones.
CURATED: tuple[str, ...] = (
    "tf_efficientnet_lite0",
    "tf_efficientnet_lite1",
    "tf_efficientnet_lite2",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenetv4_conv_small",
    "resnet18",
    "resnet34",
    "resnet50",
    "efficientnet_b0",
    "efficientnet_v2_s",
    "regnet_y_400mf",
    "regnet_y_800mf",
    "convnext_tiny",
    "convnext_nano",
    "swin_t",
    "vit_b_16",
    "vit_small_patch16_224",
)


def list_backbones(offline: bool = False, pattern: str | None = None) -> list[dict]:
    """Rows ``name, library, num_features, input_size, weights`` ("-" when not on this machine).

    Without ``pattern`` a curated set; with it, every timm and torchvision name that matches (a
    glob, or a substring when it has no wildcard). ``offline`` keeps only rows whose weights are
    here now, and then also lists timm weights found in the HF cache.
    """
    if pattern:
        glob = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in torchvision_names() if fnmatch.fnmatch(n, glob)]
        names += [
            f"timm/{n}" if n in torchvision_names() else n
            for n in timm_names()
            if fnmatch.fnmatch(n, glob)
        ]
    else:
        names = list(CURATED)
    if offline:
        extra = [n for n in W.cached_timm_names() if n not in names]
        if pattern:
            extra = [n for n in extra if fnmatch.fnmatch(n, glob)]
        names += extra
    rows = []
    for name in names:
        source = W.weights_available(name)
        if offline and source is None:
            continue
        try:  # widths cost a (meta-device) build each: only the first rows of a long search
            info = _describe(name, with_width=len(rows) < _WIDTHS_LISTED)
        except TlearnError:
            continue
        rows.append({"name": name, **info, "weights": source or "-"})
    return rows


_WIDTHS_LISTED = 30  # keeps `tlearn backbones PATTERN` within a few seconds


@cache
def _describe(name: str, with_width: bool = True) -> dict:
    """Library, width (None when skipped) and input size, building on the meta device only."""
    resolved = resolve(name)
    nf: int | None = None
    if with_width:
        try:
            with torch.device("meta"):
                nf = _build(resolved, pretrained=False)[1]
        except Exception:  # some builders compute on real tensors (regnet): build those for real
            nf = _build(resolved, pretrained=False)[1] if name in CURATED else None
    if resolved.library == TIMM:
        pre = _timm_preprocessing(_timm_cfg(resolved.arch))
    else:
        pre = _torchvision_preprocessing(resolved.arch)
    return {"library": resolved.library, "num_features": nf, "input_size": pre.input_size}


def _timm_cfg(arch: str) -> dict:
    cfg = timm.models.get_pretrained_cfg(arch)
    return cfg.to_dict() if cfg is not None else {}
