"""The public face: `tlearn.train`, `tlearn.load` and the `Model` they return."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import numpy as np

from tlearn.checkpoint import ModelSpec, read_model_file, resolve_model_path, save_model
from tlearn.config import TrainConfig, read_config_file
from tlearn.data import (
    BUILTIN_DATASETS,
    default_workers,
    has_held_out_part,
    image_loader,
    load_eval_source,
    locate_builtin,
)
from tlearn.deploy.auto import cached_onnx_engine
from tlearn.deploy.engines import OnnxEngine, TorchEngine
from tlearn.deploy.export import export_model
from tlearn.deploy.onnx_runtime import OnnxModel
from tlearn.deploy.predict import Prediction, predict_paths
from tlearn.deploy.serve.app import create_app
from tlearn.deploy.serve.server import run_server
from tlearn.deploy.tta import model_tta
from tlearn.doctor import DoctorResult, run_doctor
from tlearn.errors import TlearnError
from tlearn.evaluation import Report, calibration_summary, compute_report
from tlearn.models import Classifier, list_backbones
from tlearn.models.assemble import build_from_spec
from tlearn.models.calibration import temperature_off
from tlearn.preprocessing import Preprocessing, model_input
from tlearn.training import distributed, loop
from tlearn.training.budget import count_process_start
from tlearn.training.frozen import FrozenFeatures
from tlearn.training.interrupt import Interrupted
from tlearn.training.launch import launch, should_launch
from tlearn.training.lr_find import lr_find as run_lr_find
from tlearn.training.resolve import load_run_splits
from tlearn.training.runtime import (
    inference_batch_size,
    inference_module,
    pick_device,
    pick_precision,
    tlearn_cache_dir,
    tune_allocator,
)
from tlearn.training.state import resume_config
from tlearn.training.trainer import fit

# What the CLI needs from below the API, named here so that it talks to the API alone.
__all__ = [
    "Interrupted",
    "Model",
    "Prediction",
    "build_from_spec",
    "count_process_start",
    "list_backbones",
    "list_datasets",
    "load",
    "lr_find",
    "train",
    "tune_allocator",
    "write_report",
]


class Model:
    """A trained classifier with its class names and preprocessing: evaluate, predict, save."""

    def __init__(self, classifier: Classifier, spec: ModelSpec, run_dir: Path | None = None):
        self.classifier = classifier.eval()
        self.spec = spec
        self.run_dir = run_dir

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def input_preprocessing(self) -> Preprocessing:
        """Resize to this and scale to [0, 1]; the model normalises per backbone itself."""
        return model_input(self.spec.preprocessing)

    def __repr__(self) -> str:
        names = "+".join(b["name"] for b in self.spec.backbones)
        return f"Model({names}, head={self.spec.head['kind']}, classes={len(self.classes)})"

    def evaluate(
        self,
        data: str,
        *,
        data_root: str | None = None,
        eval_limit: int | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        precision: str = "auto",
        workers: int | None = None,
        seed: int = 0,
        tta: bool = False,
        calibration: bool = True,
        source: Any = None,
    ) -> Report:
        """Score on data: built-in sets use the official test split, folders their test part.

        `tta`: average flipped and multi-crop views of each image (`tlearn.deploy.tta`).
        `calibration=False`: the raw logits, without the temperature fitted after training.
        The report's `.predictions` and `.source` keep each image's logits, for `tlearn.report`.
        `source`: an `ImageSource` to score instead of `data`'s held-out set (`data` names it).
        """
        tune_allocator()
        if source is None:
            source = load_eval_source(
                data, data_root=data_root, eval_limit=eval_limit, seed=seed, classes=self.classes
            )
        dev = pick_device(device)
        chosen = pick_precision(dev, precision)
        classifier, pre = self.classifier, self.input_preprocessing
        batch_size = inference_batch_size(dev, pre.input_size, batch_size)
        if tta:
            classifier, pre = model_tta(classifier, pre, self.spec.config)
        loader = image_loader(source, pre, train=False, batch_size=batch_size, workers=workers)
        with temperature_off(self.classifier, not calibration):
            runner, dtype, autocast = inference_module(classifier, dev, chosen, pre.input_size)
            pred = loop.predict_all(runner, loader, dev, autocast, "evaluate", dtype=dtype)
        self.classifier.cpu()
        if len(pred.labels) == 0:
            raise TlearnError(f"no image of {data} could be decoded: check the files")
        report = compute_report(
            pred.logits,
            pred.labels,
            self.classes,
            data,
            skipped=len(source) - len(pred.labels),
            seconds=pred.seconds,
        )
        if tta:
            report.extra["tta_views"] = classifier.num_views
        t = self.spec.temperature
        applied = calibration and t != 1.0 and not tta  # TTA averages log-probabilities
        raw = pred.logits * t if applied else pred.logits
        report.calibration = calibration_summary(raw, pred.labels, t, applied)
        report.predictions, report.source = pred, source  # type: ignore[attr-defined]
        return report

    def predict(
        self,
        inputs: str | Path | list[str | Path],
        topk: int = 5,
        batch_size: int = 64,
        *,
        tta: bool = False,
        calibration: bool = True,
    ) -> list[Prediction]:
        """Top-k labels for image files and folders; files that fail to decode are skipped.

        `tta`: average flipped and multi-crop views of each image (`tlearn.deploy.tta`).
        `calibration=False`: probabilities without the temperature fitted after training.
        """
        paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
        with temperature_off(self.classifier, not calibration):
            return predict_paths(self, paths, topk=topk, batch_size=batch_size, tta=tta)

    def save(self, path: str | Path) -> Path:
        return save_model(path, self.classifier, self.spec)

    def report(self, data: str, out: str | Path | None = None, **evaluate: Any) -> Path:
        """Evaluate on `data` and write report.html with its figures to `out` (default: the run
        folder); `evaluate` takes `evaluate`'s options. Returns the page's path."""
        from tlearn.report import write_report  # matplotlib: only for commands that draw

        if out is None and self.run_dir is None:
            raise TlearnError("this model has no run folder: say where the report goes (--report)")
        result = self.evaluate(data, **evaluate)
        counts = split_counts(self.spec.config) if self.run_dir is not None else {}
        return write_report(out or self.run_dir, self, result, self.run_dir, split_counts=counts)

    def explain(self, images: str | Path | list[str | Path], out: str | Path, topk: int = 3,
                calibration: bool = True) -> list[Any]:  # fmt: skip
        """Top-k labels and a Grad-CAM heat map per image, one PNG each in `out`."""
        from tlearn.report.explain import explain_images

        paths = [images] if isinstance(images, (str, Path)) else list(images)
        with temperature_off(self.classifier, not calibration):
            return explain_images(self, paths, Path(out), topk=topk)


def is_main() -> bool:
    """Whether this process speaks for the run: the only one, or rank 0 of a torchrun job."""
    return distributed.is_main()


def reports_errors(error: TlearnError) -> bool:
    """Whether this process prints `error` (one rank of a job: see `distributed.reports`)."""
    return distributed.reports(error)


def train(
    data: str | None = None,
    *,
    config: str | Path | None = None,
    resume: str | Path | None = None,
    **options: Any,
) -> Model:
    """Train a classifier; options are those of `tlearn train` (underscores for dashes).

    `resume=RUN` continues an interrupted run from its last checkpoint with the run's own
    options; options given with it must repeat them (only `workers` and `device` may change).
    """
    values = read_config_file(config) if config else {}
    values.update(options)
    if data is not None:
        values["data"] = data
    log = values.pop("log", print)
    cfg = resume_config(resume, values) if resume is not None else TrainConfig.from_dict(values)
    if should_launch(cfg):  # `nproc=N`: N processes through torchrun's launcher
        run_dir = launch(cfg, resume=resume is not None)
        last = load(run_dir / "last.safetensors")  # what one process returns: the final model
        return Model(last.classifier, last.spec, run_dir)
    result = fit(cfg, log=log, resume=resume is not None)
    model = Model(result.model, result.spec, result.run_dir)
    if distributed.is_main():  # one rank of several: rank 0 writes the report
        run_report(result.run_dir, log)
    return model


def run_report(run: str | Path, log: Any = print, data: str | None = None) -> Path | None:
    """report.html for a run folder: its best model on the held-out part of its data.

    A run that trained but cannot be scored (no held-out images) says why and keeps its files.
    """
    started = time.perf_counter()
    model = load(run)
    cfg = model.spec.config
    try:
        source = None if data else validation_source(cfg)
        path = model.report(
            data or cfg["data"] + (" (validation split)" if source is not None else ""),
            source=source,
            data_root=cfg.get("data_root"),
            eval_limit=cfg.get("eval_limit"),
            batch_size=cfg.get("batch_size"),
            device=cfg.get("device", "auto"),
            workers=cfg.get("workers"),
            seed=int(cfg.get("seed", 0)),
            calibration=bool(cfg.get("calibration", True)),
        )
    except TlearnError as e:
        log(f"report not written: {e}")
        return None
    log(f"report {path} ({time.perf_counter() - started:.0f}s)")
    if cfg.get("tensorboard"):
        from tlearn.report.tensorboard import log_report

        log_report(Path(run) / "tb", path.parent)
    return path


def validation_source(config: dict[str, Any]) -> Any:
    """A run's validation split where its data has no held-out part of its own, else None.

    A folder of class folders, or a CSV, is split by training; evaluating "it" would score the
    training images too, so a run's report scores the images training held out.
    """
    if has_held_out_part(str(config.get("data", ""))):
        return None
    return load_run_splits(TrainConfig.from_dict(dict(config))).val


def split_counts(config: dict[str, Any]) -> dict[str, list[int]]:
    """Images per class in the run's train and val splits, as training drew them ({} if the
    data is not where it was)."""
    try:
        splits = load_run_splits(TrainConfig.from_dict(dict(config)))
    except (TlearnError, TypeError, ValueError, KeyError):
        return {}
    n = len(splits.classes)
    counts = {"train": np.bincount(splits.train.targets, minlength=n).tolist()}
    if splits.val is not None:
        counts["val"] = np.bincount(splits.val.targets, minlength=n).tolist()
    return counts


def lr_find(
    data: str | None = None,
    *,
    config: str | Path | None = None,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    **options: Any,
) -> Any:
    """The learning-rate range test for the run these options describe (those of `train`).

    Writes lr_find.csv and lr_find.png to `out` and returns the sweep with its `.suggestion`.
    """
    values = read_config_file(config) if config else {}
    values.update(options)
    if data is not None:
        values["data"] = data
    log = values.pop("log", print)
    cfg = TrainConfig.from_dict(values)
    return run_lr_find(cfg, log=log, start=start, end=end, steps=steps)


def load(path: str | Path) -> Model:
    """Rebuild a model from a run folder or a `.safetensors` model file, with no network."""
    spec, tensors = read_model_file(path)
    classifier = build_from_spec(spec)
    expected = classifier.state_dict()
    problem = next(
        (
            f"tensor {k} is missing" if k not in tensors else f"tensor {k} has the wrong shape"
            for k in expected
            if k not in tensors or tensors[k].shape != expected[k].shape
        ),
        None,
    ) or next((f"tensor {k} is unexpected" for k in tensors if k not in expected), None)
    if problem:
        raise TlearnError(
            f"{path} does not match its own description ({problem}): the file was altered or "
            "written by an incompatible tlearn, use another copy"
        )
    classifier.load_state_dict(tensors)
    run_dir = Path(path) if Path(path).is_dir() else None
    return Model(classifier, spec, run_dir)


# ---------------------------------------------------------------- ship: export and serve


def export(
    model: Model | str | Path,
    out: str | Path | None = None,
    *,
    format: str = "onnx",
    check: str | Path | None = None,
    log=print,
) -> Any:
    """Write `model` (a Model, run folder or model file) as ONNX or a torch.export `.pt2`,
    verified against the fp32 PyTorch model on real images (`check`, or the run's data).

    Returns the check's `ExportResult`; a file that disagrees is removed and TlearnError raised.
    """
    loaded = model if isinstance(model, Model) else load(model)
    if out is None:
        if isinstance(model, Model):
            raise TlearnError("give out=FILE: where to write the exported model")
        source = Path(model)
        out = (source / "model" if source.is_dir() else source).with_suffix(f".{format}")
    return export_model(loaded, out, format, check=check, log=log)


def predict_onnx(
    path: str | Path, inputs: str | Path | list[str | Path], topk: int = 5, batch_size: int = 64
) -> list[Prediction]:
    """Top-k labels from an exported ONNX file, with tlearn's own decoding in front of it."""
    paths = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    rows = OnnxModel(path).predict_paths(paths, topk=topk, batch_size=batch_size)
    return [Prediction(path=p, labels=labels, probabilities=probs) for p, labels, probs in rows]


def serving_engine(
    model: Model | str | Path, engine: str = "auto", precision: str = "auto", log=print
):
    """What `serve` runs: an `.onnx` file in onnxruntime, or a model in tlearn's inference path.

    `auto` serves a model with onnxruntime from a verified export cached by `tlearn.deploy.auto`
    (faster here at every batch size and concurrency, benchmarks/serve.py), and says in one line
    why PyTorch serves instead when it cannot. `onnx` serves it from its exported `.onnx` beside
    it (RUN/model.onnx, or MODEL.onnx), exported and verified first when missing or older.
    """
    if engine not in ("auto", "torch", "onnx"):
        raise TlearnError(f"unknown engine {engine!r}: pass --engine auto, torch or onnx")
    if isinstance(model, (str, Path)) and Path(model).suffix == ".onnx":
        if engine == "torch":
            raise TlearnError("an .onnx file runs in onnxruntime: pass --engine onnx or auto")
        return OnnxEngine(OnnxModel(model, serving=True))
    if engine == "onnx":
        if not isinstance(model, (str, Path)):
            raise TlearnError("engine onnx needs a run folder, a model file or an .onnx file")
        return OnnxEngine(OnnxModel(exported_beside(model), serving=True))
    if engine == "auto":
        file = None if isinstance(model, Model) else resolve_model_path(model)
        get = functools.cache(lambda: model if isinstance(model, Model) else load(model))
        onnx, why = cached_onnx_engine(file, get, tlearn_cache_dir(), log)
        if onnx is not None:
            return onnx
        log(f"engine: PyTorch, as onnxruntime cannot serve this model: {why}")
        model = get()
    loaded = model if isinstance(model, Model) else load(model)
    device = pick_device("cpu")
    chosen = pick_precision(device, precision)
    size = loaded.input_preprocessing.input_size
    runner, dtype, autocast = inference_module(loaded.classifier, device, chosen, size)
    return TorchEngine(loaded, runner, dtype, autocast)


def exported_beside(model: str | Path) -> Path:
    """RUN/model.onnx or MODEL.onnx, exported (and verified) now unless newer than the model."""
    source = resolve_model_path(model)
    target = Path(model) / "model.onnx" if Path(model).is_dir() else source.with_suffix(".onnx")
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    print(f"tlearn: exporting {source} to {target} for onnxruntime (once)")
    result = export(model, target)
    print(result.summary())
    return result.path


def serve(
    model: Model | str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    engine: str = "auto",
    max_batch: int = 32,
    max_wait_ms: float | None = None,
    max_upload_mb: float = 10.0,
    log=print,
) -> None:
    """Serve a Model, run folder, model file or exported `.onnx` over HTTP until Ctrl-C:
    POST /predict, the web page at /, /health, /model and /docs. `max_wait_ms` None: the
    engine's own (`tlearn.deploy.engines`)."""
    tune_allocator()
    chosen = serving_engine(model, engine, log=log)
    app = create_app(
        chosen, max_batch=max_batch, max_wait_ms=max_wait_ms, max_upload_mb=max_upload_mb
    )
    log(f"model: {len(chosen.classes)} classes, engine {chosen.name}")
    run_server(app, host, port, log=log)


def doctor(
    data: str,
    *,
    backbone: str = "tf_efficientnet_lite0",
    weights: str = "auto",
    image_size: int | None = None,
    out: str | Path | None = None,
    data_root: str | None = None,
    folds: int = 5,
    seed: int = 0,
    device: str = "auto",
    workers: int | None = None,
    cache_dir: str | None = None,
    cache: bool = True,
    log: Any = print,
) -> DoctorResult:
    """Check a dataset (any spec `train` accepts) for bad files, copies, leakage, label errors,
    outliers and imbalance; writes `out/issues.csv` and `out/doctor.html`, changes no data.

    `folds=0` skips the label and outlier checks (no cleanlab needed). The package
    `tlearn.doctor` holds the checks; importing this function after it keeps the name
    `tlearn.doctor` bound to the function (`tlearn/__init__.py` imports the API last).
    """
    extractor = FrozenFeatures(
        backbone, weights=weights, image_size=image_size, device=device, workers=workers,
        cache_dir=cache_dir, cache=cache, log=log,
    )  # fmt: skip
    return run_doctor(
        data, extractor, out=out, data_root=data_root, folds=folds, seed=seed, log=log,
        workers=default_workers() if workers is None else workers,
    )  # fmt: skip


def list_datasets(data_root: str | None = None) -> list[tuple[str, str | None]]:
    """Each built-in dataset's name and where it was found on this machine (None: not found)."""
    return [(name, locate_builtin(name, data_root)) for name in BUILTIN_DATASETS]


def write_report(out: str | Path, model: Model, result: Report, run_dir: Path | None = None,
                 **options: Any) -> Path:  # fmt: skip
    """report.html and its figures in `out` for an evaluation already made."""
    from tlearn.report import write_report as write  # matplotlib: only for commands that draw

    return write(out, model, result, run_dir, **options)
