"""The `tlearn` command: argument parsing only; the work happens in `tlearn.api`.

`train`'s flags are generated from `TrainConfig`, so they always match the API and config files.
A `TlearnError` (something the user can fix) prints one sentence and exits 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import sys
import types
import typing
from collections.abc import Sequence

from tlearn.config import TrainConfig, default_of, option_fields, read_config_file
from tlearn.errors import TlearnError
from tlearn.training.interrupt import Interrupted


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
    return parser


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
        help="auto: onnxruntime for an .onnx file, else tlearn's PyTorch inference (faster "
        "here); onnx: the run's verified model.onnx, exported once if missing",
    )  # fmt: skip
    srv.add_argument("--max-batch", type=int, default=32, help="images per batch at most")
    srv.add_argument(
        "--max-wait-ms", type=float, default=5.0,
        help="how long a request waits for others to join its batch",
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


def train_options(args: argparse.Namespace, *own: str) -> tuple[dict, dict]:
    """`train`'s options from `--config` and the flags (flags win), and this command's own flags."""
    options = vars(args).copy()
    options.pop("command")
    config_path = options.pop("config", None)
    extras = {k: options.pop(k, None) for k in own}
    values = read_config_file(config_path) if config_path else {}
    values.update({k: v for k, v in options.items() if v is not None or k not in values})
    return values, extras


def run_train(args: argparse.Namespace) -> int:
    import tlearn
    from tlearn.training.planner import count_process_start

    count_process_start()  # `--budget` is this command's whole wall time

    values, own = train_options(args, "resume")
    resume = own["resume"]
    if resume:
        values = {k: v for k, v in values.items() if v is not None}
        model = tlearn.train(resume=resume, **values)
        print(f"done: best model {model.run_dir / 'best.safetensors'}")
        return 0
    if not values.get("data"):
        raise TlearnError(
            "no dataset given: `tlearn train DATA` (a folder, a CSV, or fashion-mnist)"
        )
    model = tlearn.train(**values)
    best = model.run_dir / "best.safetensors"
    print(f"done: best model {best}; evaluate with `tlearn evaluate {model.run_dir} DATA`")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    import tlearn

    model = tlearn.load(args.model)
    report = model.evaluate(
        args.data,
        data_root=args.data_root,
        eval_limit=args.eval_limit,
        batch_size=args.batch_size,
        device=args.device,
        precision=args.precision,
        workers=args.workers,
        tta=args.tta,
        calibration=not args.no_calibration,
    )
    print(report.to_json() if args.json else report.summary())
    if args.report:
        from tlearn.report import write_report

        page = write_report(args.report, model, report, model.run_dir)
        print(f"report {page}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    import tlearn

    if args.onnx:
        if args.tta:
            raise TlearnError("--tta runs on the PyTorch model: drop --onnx or --tta")
        images = [args.model, *args.paths]
        predictions = tlearn.predict_onnx(args.onnx, images, args.topk, args.batch_size)
    elif not args.paths:
        raise TlearnError("no images given: `tlearn predict RUN FILES|DIRS`")
    else:
        model = tlearn.load(args.model)
        predictions = model.predict(
            args.paths,
            topk=args.topk,
            batch_size=args.batch_size,
            tta=args.tta,
            calibration=not args.no_calibration,
        )
    if args.json:
        for p in predictions:
            print(json.dumps(p.to_dict()))
    elif args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["path", "rank", "label", "probability"])
        for p in predictions:
            for rank, (label, prob) in enumerate(zip(p.labels, p.probabilities, strict=True), 1):
                writer.writerow([p.path, rank, label, f"{prob:.6f}"])
    else:
        width = max(len(p.path) for p in predictions)
        for p in predictions:
            tops = "  ".join(
                f"{lab} {prob:.3f}" for lab, prob in zip(p.labels, p.probabilities, strict=True)
            )
            print(f"{p.path:<{width}}  {tops}")
    return 0


def run_lr_find(args: argparse.Namespace) -> int:
    import tlearn.api

    values, sweep = train_options(args, "steps", "start_lr", "end_lr")
    if sweep["steps"] < 10 or not 0 < sweep["start_lr"] < sweep["end_lr"]:
        raise TlearnError("--steps must be at least 10 and 0 < --start-lr < --end-lr")
    if not values.get("data"):
        raise TlearnError("no dataset given: `tlearn lr-find DATA` (a folder, a CSV, or cifar10)")
    result = tlearn.api.lr_find(
        start=sweep["start_lr"], end=sweep["end_lr"], steps=sweep["steps"], **values
    )
    print(f"suggested lr: {result.suggestion:.3g}  ({result.method}; plot {result.files[-1]})")
    return 0


def run_backbones(args: argparse.Namespace) -> int:
    from tlearn.models import list_backbones

    rows = list_backbones(offline=args.offline, pattern=args.pattern)
    if not rows:
        print("no backbone matches" + (" with weights on this machine" if args.offline else ""))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'library':<11}  features  input  weights")
    for r in rows:
        print(
            f"{r['name']:<{width}}  {r['library']:<11}  {str(r['num_features'] or '?'):>8}  "
            f"{str(r['input_size'] or '?'):>5}  {r['weights'] or '-'}"
        )
    return 0


def run_datasets(args: argparse.Namespace) -> int:
    from tlearn.data import BUILTIN_DATASETS, locate_builtin

    for name in BUILTIN_DATASETS:
        where = locate_builtin(name, args.data_root)
        print(f"{name:<14} {where or 'not found: downloads when online, or pass --data-root DIR'}")
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    from tlearn.ensemble import ensemble

    model = ensemble(
        args.models,
        out=args.out,
        weights=args.weights,
        fit_weights=args.fit_weights,
        data_root=args.data_root,
        eval_limit=args.eval_limit,
        batch_size=args.batch_size,
        device=args.device,
        workers=args.workers,
    )
    weights = ", ".join(f"{w:.3f}" for w in model.spec.ensemble["weights"])
    print(f"done: ensemble of {len(args.models)} models (weights {weights}) in {args.out}")
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from tlearn.compare import compare, format_table

    values, own = train_options(args, "test_limit")
    test_limit = own["test_limit"]
    data = values.pop("data", None)
    if not data:
        raise TlearnError("no dataset given: `tlearn compare DATA --backbone A --backbone B`")
    backbones = values.pop("backbone", None) or []
    print(format_table(compare(data, backbone=backbones, test_limit=test_limit, **values)))
    return 0


def run_export(args: argparse.Namespace) -> int:
    import tlearn

    result = tlearn.export(args.model, args.out, format=args.format, check=args.check)
    print(result.summary())
    print(f"done: {result.path} ({result.format}, {result.exporter})")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import tlearn

    tlearn.serve(
        args.model,
        host=args.host,
        port=args.port,
        engine=args.engine,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_upload_mb=args.max_upload_mb,
    )
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    import tlearn.api

    options = vars(args).copy()
    options.pop("command")
    if options["folds"] < 0 or options["folds"] == 1:
        raise TlearnError("--folds must be 0 (skip the label check) or at least 2")
    result = tlearn.api.doctor(options.pop("data"), **options)
    print(result.summary())
    return 0


def run_report(args: argparse.Namespace) -> int:
    import tlearn.api

    if tlearn.api.run_report(args.run, data=args.data) is None:
        raise TlearnError(f"no report for {args.run}: see the line above")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    import tlearn

    model = tlearn.load(args.model)
    results = model.explain(
        args.paths, args.out, topk=args.topk, calibration=not args.no_calibration
    )
    for r in results:
        tops = "  ".join(f"{lab} {p:.3f}" for lab, p in zip(r.labels, r.probabilities, strict=True))
        print(json.dumps(r.to_dict()) if args.json else f"{r.path}  {tops}  -> {r.figure}")
    return 0


COMMANDS = {
    "train": run_train,
    "evaluate": run_evaluate,
    "predict": run_predict,
    "lr-find": run_lr_find,
    "backbones": run_backbones,
    "datasets": run_datasets,
    "ensemble": run_ensemble,
    "compare": run_compare,
    "export": run_export,
    "serve": run_serve,
    "doctor": run_doctor,
    "report": run_report,
    "explain": run_explain,
}


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Data warnings (an empty class folder, a skipped file) as one line, not a code excerpt."""
    print(f"tlearn: warning: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    warnings.showwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    from tlearn.training.runtime import tune_allocator

    tune_allocator()  # every command runs networks on batches: see its docstring
    try:
        return COMMANDS[args.command](args)
    except TlearnError as e:
        print(f"tlearn: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tlearn predict ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except Interrupted as e:  # SIGINT/SIGTERM during training: a checkpoint was written
        print(f"tlearn: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tlearn: interrupted; finished epochs are saved in the run folder", file=sys.stderr)
        return 130


def run() -> None:
    """The `tlearn` command: `main`, then an exit that skips tearing the interpreter down.

    Freeing the modules of torch, timm and torchvision one by one takes about a second on a
    2-core machine, as long as a warm head training. Nothing is lost by skipping it: every file
    tlearn writes is closed by then (written to a temporary name and renamed). Output streams
    are flushed first; a command that left child processes alive exits the usual way.
    """
    code = main()
    with contextlib.suppress(OSError, ValueError):  # a reader that left (`| head`)
        sys.stdout.flush()
        sys.stderr.flush()
    import multiprocessing

    if multiprocessing.active_children():
        sys.exit(code)
    os._exit(code)


if __name__ == "__main__":
    run()
