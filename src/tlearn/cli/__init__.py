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
import multiprocessing
import os
import sys
import warnings
from collections.abc import Sequence

from tlearn import api
from tlearn.cli.parser import build_parser
from tlearn.compare import compare, format_table
from tlearn.config import read_config_file
from tlearn.ensemble import ensemble
from tlearn.errors import TlearnError
from tlearn.progress import QUIET_ENV, quiet

__all__ = ["build_parser", "main", "run"]


def train_options(args: argparse.Namespace, *own: str) -> tuple[dict, dict]:
    """`train`'s options from `--config` and the flags (flags win), and this command's own flags."""
    options = vars(args).copy()
    options.pop("command")
    config_path = options.pop("config", None)
    extras = {k: options.pop(k, None) for k in own}
    values = read_config_file(config_path) if config_path else {}
    values.update({k: v for k, v in options.items() if v is not None or k not in values})
    return values, extras


def _silent(line: str) -> None:
    """`--quiet`'s log: the lines are dropped; errors and the final line still print."""


def run_train(args: argparse.Namespace) -> int:
    api.count_process_start()  # `--budget` is this command's whole wall time

    values, own = train_options(args, "resume")
    resume = own["resume"]
    if quiet():
        values["log"] = _silent
    if resume:
        values = {k: v for k, v in values.items() if v is not None}
        model = api.train(resume=resume, **values)
        if _speaks():
            print(f"done: best model {model.run_dir / 'best.safetensors'}")
        return 0
    if not values.get("data"):
        raise TlearnError(
            "no dataset given: `tlearn train DATA` (a folder, a CSV, or fashion-mnist)"
        )
    model = api.train(**values)
    best = model.run_dir / "best.safetensors"
    if _speaks():
        print(f"done: best model {best}; evaluate with `tlearn evaluate {model.run_dir} DATA`")
    return 0


def _speaks() -> bool:
    """Whether this process says a run is done: not ranks of a job (`--nproc` says it once;
    under torchrun, rank 0 does)."""
    return api.is_main() and not os.environ.get("TLEARN_LAUNCHED")


def run_evaluate(args: argparse.Namespace) -> int:
    model = api.load(args.model)
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
        page = api.write_report(args.report, model, report, model.run_dir)
        print(f"report {page}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_predict(args: argparse.Namespace) -> int:
    if args.onnx:
        if args.tta:
            raise TlearnError("--tta runs on the PyTorch model: drop --onnx or --tta")
        images = [args.model, *args.paths]
        predictions = api.predict_onnx(args.onnx, images, args.topk, args.batch_size)
    elif not args.paths:
        raise TlearnError("no images given: `tlearn predict RUN FILES|DIRS`")
    else:
        model = api.load(args.model)
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
    values, sweep = train_options(args, "steps", "start_lr", "end_lr")
    if sweep["steps"] < 10 or not 0 < sweep["start_lr"] < sweep["end_lr"]:
        raise TlearnError("--steps must be at least 10 and 0 < --start-lr < --end-lr")
    if not values.get("data"):
        raise TlearnError("no dataset given: `tlearn lr-find DATA` (a folder, a CSV, or cifar10)")
    result = api.lr_find(
        start=sweep["start_lr"], end=sweep["end_lr"], steps=sweep["steps"], **values
    )
    print(f"suggested lr: {result.suggestion:.3g}  ({result.method}; plot {result.files[-1]})")
    return 0


def run_backbones(args: argparse.Namespace) -> int:
    rows = api.list_backbones(offline=args.offline, pattern=args.pattern)
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
    for name, where in api.list_datasets(args.data_root):
        print(f"{name:<14} {where or 'not found: downloads when online, or pass --data-root DIR'}")
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
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
    values, own = train_options(args, "test_limit")
    test_limit = own["test_limit"]
    data = values.pop("data", None)
    if not data:
        raise TlearnError("no dataset given: `tlearn compare DATA --backbone A --backbone B`")
    backbones = values.pop("backbone", None) or []
    print(format_table(compare(data, backbone=backbones, test_limit=test_limit, **values)))
    return 0


def run_export(args: argparse.Namespace) -> int:
    result = api.export(args.model, args.out, format=args.format, check=args.check)
    print(result.summary())
    print(f"done: {result.path} ({result.format}, {result.exporter})")
    return 0


def run_serve(args: argparse.Namespace) -> int:
    api.serve(
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
    options = vars(args).copy()
    options.pop("command")
    if options["folds"] < 0 or options["folds"] == 1:
        raise TlearnError("--folds must be 0 (skip the label check) or at least 2")
    if quiet():
        options["log"] = _silent
    result = api.doctor(options.pop("data"), **options)
    print(result.summary())
    return 0


def run_report(args: argparse.Namespace) -> int:
    if api.run_report(args.run, data=args.data) is None:
        raise TlearnError(f"no report for {args.run}: see the line above")
    return 0


def run_explain(args: argparse.Namespace) -> int:
    model = api.load(args.model)
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
    warnings.showwarning = _one_line_warning
    args = build_parser().parse_args(argv)
    if vars(args).pop("quiet", False):
        os.environ[QUIET_ENV] = "1"  # progress bars, here and in data workers
    api.tune_allocator()  # every command runs networks on batches: see its docstring
    try:
        return COMMANDS[args.command](args)
    except TlearnError as e:
        if api.reports_errors(e):
            print(f"tlearn: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `tlearn predict ... | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0
    except api.Interrupted as e:  # SIGINT/SIGTERM during training: a checkpoint was written
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
    if multiprocessing.active_children():
        sys.exit(code)
    os._exit(code)
