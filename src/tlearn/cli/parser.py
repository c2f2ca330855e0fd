"""The `tlearn` command's parser: `train`'s flags are generated from `TrainConfig`, so they always
match the API and config files; every other command's flags are declared here once.
"""

from __future__ import annotations

import argparse
import types
import typing

from tlearn.config import TrainConfig, default_of, option_fields


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value_type(annotation: str) -> type:
    hints = typing.get_type_hints(TrainConfig)
    return hints[annotation]


def _scalar_type(tp: object) -> type:
    """`int | None` -> int; `list[str]` -> str."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return _scalar_type(args[0]) if len(args) == 1 else _first_that_parses(args)
    if origin is list:
        return args[0]  # type: ignore[return-value]
    return tp  # type: ignore[return-value]


def _first_that_parses(choices: list) -> type:
    """`float | str` -> a parser trying each type in order: `--lr 1e-3` is a number, `--lr auto`
    stays text (the config validates which words are allowed)."""

    def parse(text: str) -> object:
        for tp in choices:
            try:
                return tp(text)
            except ValueError:
                continue
        raise argparse.ArgumentTypeError(f"invalid value {text!r}")

    parse.__name__ = " or ".join(getattr(t, "__name__", str(t)) for t in choices)
    return parse  # type: ignore[return-value]


BATCH_HELP = "images per batch (default: what runs fastest on this device)"
NO_CALIBRATION_HELP = "raw probabilities: ignore the temperature fitted after training"
TTA_HELP = (
    "test-time augmentation: average the views training made the model robust to (mirror; "
    "with --augment light and up also 5 crops: 12x the compute)"
)


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are suppressed so the config file can fill them."""
    parser.add_argument(
        "data", nargs="?", help=TrainConfig.__dataclass_fields__["data"].metadata["help"]
    )
    parser.add_argument("--config", help="YAML or JSON file of options; flags override it")
    for f in option_fields():
        tp = _value_type(f.name)
        help_text = f"{f.metadata['help']} (default: {default_of(f)})"
        if tp is bool:
            on_by_default = bool(default_of(f))
            parser.add_argument(
                f"--no-{f.name.replace('_', '-')}" if on_by_default else _flag(f.name),
                dest=f.name,
                action="store_false" if on_by_default else "store_true",
                default=argparse.SUPPRESS,
                help=f"turn off: {f.metadata['help']}" if on_by_default else f.metadata["help"],
            )
            continue
        kwargs: dict = {"default": argparse.SUPPRESS, "help": help_text}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if typing.get_origin(tp) is list:
            kwargs["action"] = "append"
        kwargs["type"] = _scalar_type(tp)
        parser.add_argument(_flag(f.name), **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tlearn", description="Transfer learning for image classification."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a classifier on a dataset")
    add_train_options(train)
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue an interrupted run from its last checkpoint, with its own options "
        "(other options must repeat them; only --workers and --device may change)",
    )

    add_inference_commands(sub)

    lr_find = sub.add_parser(
        "lr-find",
        help="sweep the learning rate on DATA with train's options; suggest one, plot it in --out",
    )
    add_train_options(lr_find)
    lr_find.add_argument("--steps", type=int, default=100, help="sweep length in batches")
    lr_find.add_argument("--start-lr", type=float, default=1e-7, help="first rate of the sweep")
    lr_find.add_argument("--end-lr", type=float, default=10.0, help="last rate of the sweep")

    backbones = sub.add_parser("backbones", help="list usable backbones and their weights")
    backbones.add_argument("--offline", action="store_true", help="only those usable offline now")
    backbones.add_argument("pattern", nargs="?", help="search all names with this wildcard")

    datasets = sub.add_parser("datasets", help="list the built-in datasets found on this machine")
    datasets.add_argument("--data-root", default=None, help="also look in this folder")

    ens = sub.add_parser("ensemble", help="average trained models into one model file")
    ens.add_argument("models", nargs="+", help="run folders or .safetensors model files")
    ens.add_argument("--out", required=True, help="the ensemble's .safetensors file")
    ens.add_argument("--weights", default=None, help="one weight per model, e.g. 0.6,0.4")
    ens.add_argument(
        "--fit-weights", metavar="DATA", default=None, help="choose weights on DATA's val split"
    )
    ens.add_argument("--data-root", default=None)
    ens.add_argument("--eval-limit", type=int, default=None, help="fit on N validation images")
    ens.add_argument("--batch-size", type=int, default=None, help=BATCH_HELP)
    ens.add_argument("--device", default="auto")
    ens.add_argument("--workers", type=int, default=None)

    comp = sub.add_parser(
        "compare", help="train each --backbone alone and fused; print accuracy, speed, size"
    )
    add_train_options(comp)
    comp.add_argument("--test-limit", type=int, default=None, help="score on N test images")
    add_ship_commands(sub)
    add_report_commands(sub)

    add_doctor_command(sub)
    for name in ("train", "lr-find", "compare", "evaluate", "predict", "doctor", "export"):
        sub.choices[name].add_argument(
            "--quiet", action="store_true", help="no progress bars or log lines: errors only"
        )
    return parser


def add_inference_commands(sub: argparse._SubParsersAction) -> None:
    """`evaluate` and `predict`: a trained model on labelled data, or on images."""
    evaluate = sub.add_parser("evaluate", help="score a model on labelled data")
    evaluate.add_argument("model", help="run folder or .safetensors model file")
    evaluate.add_argument("data", help="dataset spec (built-in sets use their test split)")
    evaluate.add_argument("--data-root", default=None)
    evaluate.add_argument("--eval-limit", type=int, default=None)
    evaluate.add_argument("--batch-size", type=int, default=None, help=BATCH_HELP)
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    evaluate.add_argument("--workers", type=int, default=None)
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument("--tta", action="store_true", help=TTA_HELP)
    evaluate.add_argument("--no-calibration", action="store_true", help=NO_CALIBRATION_HELP)
    evaluate.add_argument(
        "--report", metavar="DIR", default=None, help="also write report.html and its figures here"
    )

    predict = sub.add_parser("predict", help="top-k labels for image files or folders")
    predict.add_argument("model", help="run folder or .safetensors model file")
    predict.add_argument("paths", nargs="*", help="image files or folders")
    predict.add_argument(
        "--onnx", metavar="FILE", default=None,
        help="run this exported .onnx file (onnxruntime) instead; every positional is an image",
    )  # fmt: skip
    predict.add_argument("--topk", type=int, default=3)
    predict.add_argument("--batch-size", type=int, default=64)
    predict.add_argument("--tta", action="store_true", help=TTA_HELP)
    predict.add_argument("--no-calibration", action="store_true", help=NO_CALIBRATION_HELP)
    fmt = predict.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="JSON lines output")
    fmt.add_argument("--csv", action="store_true", help="CSV output")


def add_doctor_command(sub: argparse._SubParsersAction) -> None:
    """`doctor`: what is wrong with a dataset, before training on it."""
    doc = sub.add_parser(
        "doctor", help="find bad files, copies, train/test leakage, label errors and imbalance"
    )
    doc.add_argument("data", help="dataset spec, as for train (every split is checked)")
    doc.add_argument("--backbone", default="tf_efficientnet_lite0", help="frozen feature network")
    doc.add_argument("--weights", default="auto", help="as for train")
    doc.add_argument("--image-size", type=int, default=None, help="input resolution")
    doc.add_argument("--out", default=None, help="folder for issues.csv and doctor.html")
    doc.add_argument("--data-root", default=None)
    doc.add_argument(
        "--folds", type=int, default=5, help="cross-validation folds of the label probe (0: skip)"
    )
    doc.add_argument("--seed", type=int, default=0)
    doc.add_argument("--device", default="auto")
    doc.add_argument("--workers", type=int, default=None)
    doc.add_argument("--cache-dir", default=None)
    doc.add_argument("--no-cache", dest="cache", action="store_false")


def add_ship_commands(sub) -> None:
    """`export` and `serve`: a model out of Python, verified, and over HTTP."""
    exp = sub.add_parser("export", help="write the model as ONNX or .pt2, verified on real images")
    exp.add_argument("model", help="run folder or .safetensors model file")
    exp.add_argument("--format", default="onnx", choices=("onnx", "pt2"))
    exp.add_argument("--out", default=None, help="the file to write (default: RUN/model.FORMAT)")
    exp.add_argument(
        "--check", metavar="DIR", default=None,
        help="verify on these images (default: the held-out images of the run's data)",
    )  # fmt: skip
    srv = sub.add_parser("serve", help="a JSON API and a web page to try the model, over HTTP")
    srv.add_argument("model", help="run folder, .safetensors model file or exported .onnx file")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8000)
    srv.add_argument(
        "--engine", default="auto", choices=("auto", "torch", "onnx"),
        help="auto: onnxruntime (faster here) from a verified export cached once, PyTorch "
        "when that cannot be; onnx: the run's verified model.onnx, exported once if missing",
    )  # fmt: skip
    srv.add_argument("--max-batch", type=int, default=32, help="images per batch at most")
    srv.add_argument(
        "--max-wait-ms", type=float, default=None,
        help="how long a request waits for others to join its batch (default: 5 for PyTorch, "
        "0 for onnxruntime, whose cost per image does not fall with the batch)",
    )  # fmt: skip
    srv.add_argument("--max-upload-mb", type=float, default=10.0, help="larger requests get 413")


def add_report_commands(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser("report", help="(re)build a run folder's report.html")
    report.add_argument("run", help="run folder")
    report.add_argument("--data", default=None, help="held-out data (default: the run's own)")
    explain = sub.add_parser("explain", help="top-k labels and a Grad-CAM heat map per image")
    explain.add_argument("model", help="run folder or .safetensors model file")
    explain.add_argument("paths", nargs="+", help="image files or folders")
    explain.add_argument("--out", required=True, help="folder for one PNG per image")
    explain.add_argument("--topk", type=int, default=3)
    explain.add_argument("--no-calibration", action="store_true", help=NO_CALIBRATION_HELP)
    explain.add_argument("--json", action="store_true", help="JSON lines output")
