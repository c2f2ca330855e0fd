"""Export a model as one file that runs without tlearn, checked against PyTorch on real images.

The graph takes uint8 RGB images (NCHW, the model's size, any batch) and returns probabilities:
scaling, each backbone's normalisation and a fused backbone's own size are inside it, since a
wrong preprocessing is how most exported models come to disagree with the original. The file is
written only once onnxruntime (or torch.export's loader, for pt2) gives the same answers as the
fp32 PyTorch model on a batch of real images; otherwise it is removed and the command fails.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlearn.checkpoint import ModelSpec, library_versions
from tlearn.data import find_images, load_eval_source
from tlearn.deploy.extras import require
from tlearn.deploy.inputs import input_spec, load_files, uint8_transform
from tlearn.errors import TlearnError
from tlearn.preprocessing import Preprocessing

FORMATS = ("onnx", "pt2")
TOLERANCE = 1e-4  # the largest probability difference a verified export may show
CHECK_IMAGES = 32


class ProbabilityGraph(nn.Module):
    """uint8 NCHW RGB images -> class probabilities: the whole contract of an exported file.

    An ensemble's classifier returns log-probabilities; softmax gives them back, as in predict.
    """

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(torch.float32) / 255.0
        return self.classifier(x).float().softmax(dim=1)


@dataclass
class ExportResult:
    path: Path
    format: str
    exporter: str  # which torch exporter wrote it
    images: int  # how many real images the check ran on
    source: str  # where they came from
    max_difference: float
    top1_agreement: float

    def summary(self) -> str:
        agreeing = round(self.top1_agreement * self.images)
        return (
            f"check: {self.images} images from {self.source}: largest probability difference "
            f"{self.max_difference:.2e} (limit {TOLERANCE:.0e}), top-1 agreement "
            f"{agreeing}/{self.images}"
        )


def metadata(spec: ModelSpec, pre: Preprocessing) -> dict[str, str]:
    """What travels inside the exported file (ONNX metadata_props, pt2 extra file): strings."""
    backbones = [
        {k: b.get(k) for k in ("name", "library", "weights_source", "preprocessing", "member")}
        for b in spec.backbones
    ]
    return {
        "tlearn.format": "tlearn.exported",
        "classes": json.dumps(spec.classes),
        "backbones": json.dumps(backbones),
        "head": json.dumps(spec.head),
        "fusion": spec.fusion,
        "preprocessing": json.dumps(
            {
                "model_input": pre.to_dict(),
                "inside_graph": "x / 255, then per backbone "
                "(its size, antialiased bilinear, if not the input's) and (x - mean) / std",
            }
        ),
        "input": json.dumps(input_spec(pre)),
        "metrics": json.dumps(spec.metrics, default=float),
        "versions": json.dumps(library_versions()),
        "tlearn_version": library_versions()["tlearn"],
    }


def export_model(
    model,
    out: str | Path,
    fmt: str = "onnx",
    *,
    check: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> ExportResult:
    """Write `model` (a `tlearn.Model`) as `fmt` to `out`, verified; see the module docstring."""
    if fmt not in FORMATS:
        raise TlearnError(f"unknown export format {fmt!r}: pass --format onnx or --format pt2")
    out = Path(out)
    if out.is_dir():
        raise TlearnError(f"--out {out} is a folder: give a file name such as model.{fmt}")
    pre = model.input_preprocessing
    images, source = check_images(model, check)
    graph = ProbabilityGraph(fp32_copy(model.classifier)).eval()
    with torch.inference_mode():
        reference = torch.cat([graph(b) for b in images.split(CHECK_IMAGES)]).numpy()
    tmp = out.with_name(f".{out.stem}.tmp.{fmt}")  # torch.export's loader wants the suffix
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = metadata(model.spec, pre)
    example = images[:2] if len(images) >= 2 else images.repeat(2, 1, 1, 1)
    try:
        if fmt == "onnx":
            exporter = write_onnx(graph, example, tmp, meta, log)
            run = onnx_runner(tmp)
        else:
            exporter = write_pt2(graph, example, tmp, meta)
            run = pt2_runner(tmp)
        got = np.concatenate([run(b.numpy()) for b in images.split(CHECK_IMAGES)])
        result = compare(got, reference, out, fmt, exporter, source)
        if result.max_difference > TOLERANCE or result.top1_agreement < 1.0:
            raise TlearnError(
                f"the exported model disagrees with PyTorch ({result.summary()}); {out} was not "
                "written: report this with the model and the check images"
            )
        os.replace(tmp, out)
        return result
    finally:
        tmp.unlink(missing_ok=True)


def compare(
    got: np.ndarray, want: np.ndarray, out: Path, fmt: str, exporter: str, source: str
) -> ExportResult:
    difference = np.abs(got.astype(np.float64) - want.astype(np.float64))
    finite = bool(np.isfinite(got).all())
    return ExportResult(
        path=out,
        format=fmt,
        exporter=exporter,
        images=len(want),
        source=source,
        max_difference=float(difference.max()) if finite else float("inf"),
        top1_agreement=float((got.argmax(1) == want.argmax(1)).mean()),
    )


def fp32_copy(classifier: nn.Module) -> nn.Module:
    """The exact fp32 model: an export is made from it and checked against it, never against
    tlearn's bf16/folded inference copies."""
    tensors = [*classifier.parameters(), *classifier.buffers()]
    if all(
        t.dtype == torch.float32 and t.device.type == "cpu"
        for t in tensors
        if t.is_floating_point()
    ):
        return classifier.eval()
    return copy.deepcopy(classifier).to("cpu", torch.float32).eval()


# ---------------------------------------------------------------- the check images


def check_images(model, check: str | Path | None) -> tuple[torch.Tensor, str]:
    """Up to CHECK_IMAGES real images as one uint8 batch: from `check` (a folder or file of
    images) or else from the held-out part of the data the model was trained on."""
    pre = model.input_preprocessing
    if check is not None:
        paths = find_images([check])
        step = max(1, len(paths) // CHECK_IMAGES)
        images, _ = load_files(paths[::step][:CHECK_IMAGES], pre)
        where = str(check)
    else:
        data, root = trained_on(model.spec)
        if not data:
            raise TlearnError(
                "the model does not say which data it was trained on: pass --check DIR, a folder "
                "of real images to verify the export on"
            )
        try:
            source = load_eval_source(data, data_root=root, classes=model.classes)
        except TlearnError as e:
            raise TlearnError(
                f"the run's data cannot be read here ({e}): pass --check DIR, a folder of real "
                "images to verify the export on"
            ) from e
        transform = uint8_transform(pre)
        picked = np.linspace(0, len(source) - 1, min(len(source), CHECK_IMAGES)).astype(int)
        tensors = []
        for i in dict.fromkeys(picked.tolist()):
            try:
                tensors.append(transform(source.load(i)))
            except TlearnError:
                continue
        images = torch.stack(tensors) if tensors else torch.empty(0)
        where = str(data)
    if len(images) == 0:
        raise TlearnError(f"no image of {where} could be decoded for the check: pass --check DIR")
    return images, where


def trained_on(spec: ModelSpec) -> tuple[str | None, str | None]:
    """The data spec and data root a model was trained on (an ensemble's first member's)."""
    config = spec.config
    if spec.ensemble and not config.get("data"):
        members = spec.ensemble.get("members") or [{}]
        config = members[0].get("config", {})
    return config.get("data"), config.get("data_root")


# ---------------------------------------------------------------- writers and runners


def write_onnx(
    graph: nn.Module, example: torch.Tensor, path: Path, meta: dict, log: Callable[[str], None]
) -> str:
    """torch.onnx's dynamo exporter, or the TorchScript-based one if dynamo fails (said so)."""
    onnx = require("onnx")
    require("onnxscript")
    batch = torch.export.Dim("batch", min=1, max=65536)
    names = {"input_names": ["images"], "output_names": ["probabilities"]}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, (example,), str(path), dynamo=True, external_data=False,
                dynamic_shapes={"images": {0: batch}}, optimize=True, verbose=False, **names,
            )  # fmt: skip
        exporter = "torch.onnx dynamo"
    except Exception as e:  # noqa: BLE001 - any failure of the new exporter: try the old one
        log(f"the dynamo ONNX exporter failed ({type(e).__name__}: {str(e)[:200]}); "
            "using the TorchScript-based exporter instead")  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                graph, (example,), str(path), dynamo=False, opset_version=18,
                dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}}, **names,
            )  # fmt: skip
        exporter = "torch.onnx TorchScript-based (dynamo failed)"
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "tlearn classifier: uint8 NCHW RGB images -> class probabilities"
    proto.producer_name = "tlearn"
    proto.producer_version = meta["tlearn_version"]
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(path))
    return exporter


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda batch: session.run(None, {"images": batch})[0]


def write_pt2(graph: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> str:
    """A torch.export ExportedProgram (.pt2) with the metadata as an extra file."""
    batch = torch.export.Dim("batch", min=1, max=65536)
    program = torch.export.export(graph, (example,), dynamic_shapes={"images": {0: batch}})
    torch.export.save(program, str(path), extra_files={"tlearn.json": json.dumps(meta)})
    return "torch.export"


def pt2_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No complete tensor found in the group": CPU weights
        module = torch.export.load(str(path)).module()

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(batch)).numpy()

    return run
