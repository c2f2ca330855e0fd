"""Throughput of tlearn's compute path against a plain fp32 eager PyTorch loop, side by side.

For each backbone and image size: training (every parameter trains) and inference images/s of
  - plain: the textbook loop — fp32, NCHW, eager, `torch.no_grad` for inference;
  - tlearn: what `tlearn train` runs — channels-last, the precision its probe picks (bf16 on CPUs
    with native bf16) and, in bf16, each convolution's kernels measured fastest for its shape
    (`tlearn.training.conv_tuning`); for inference, what `evaluate` runs (`inference_module`:
    batch norms folded into the convolutions, a bf16 copy of the weights, `inference_mode`), and
    glibc's allocator keeping freed memory (`tune_allocator`), as every tlearn command does;
on the same model, batch and data, in one run: each path in a worker process of its own (tlearn's
allocator settings are process-wide), timed round by round in alternation, so machine noise
hits both.
Also the machine's peak (a large bf16 and fp32 matmul) and each model's FLOPs, to report what
fraction of the hardware each path uses.

    python benchmarks/throughput.py [--quick]   -> benchmarks/results/throughput.{json,md}
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from tlearn.models import build_head, create_backbone
from tlearn.models.classifier import Classifier
from tlearn.models.normalize import NormalizedBackbone
from tlearn.training import conv_tuning
from tlearn.training.runtime import (
    inference_module,
    pick_precision,
    probe_training_precision,
    tlearn_cache_dir,
    tune_allocator,
)

RESULTS = Path(__file__).parent / "results"


def peak_flops(dtype: torch.dtype, n: int = 2048, reps: int = 8) -> float:
    """The fastest of `reps` large matmuls: a peak is a best case, and the machine drifts."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def model_flops(model: torch.nn.Module, x: torch.Tensor, train: bool = False) -> float:
    """FLOPs of one forward pass on the batch."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def build(name: str, size: int) -> torch.nn.Module:
    b = create_backbone(name, "none", size)
    head = build_head("linear", b.num_features, 10)
    return Classifier([NormalizedBackbone(b.module, b.preprocessing)], head)


def time_steps(step, reps: int) -> float:
    step()  # warm-up: kernel selection, allocations
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_step_fn(model, x, y, tlearn_path: bool, autocast_dtype):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    if tlearn_path:  # what `tlearn train` runs: channels-last, measured kernels under bf16
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        if autocast_dtype == torch.bfloat16:
            conv_tuning.install(model, tlearn_cache_dir() / "conv-tuning.json")
    model.train()

    def step():
        enabled = autocast_dtype is not None
        with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=enabled):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def infer_fn(model, x, tlearn_path: bool, precision: str):
    model = model.eval()
    if not tlearn_path:

        def step():
            with torch.no_grad():
                model(x)

        return step
    # what `tlearn evaluate` and feature extraction run: batch norms folded, a bf16 copy
    runner, dtype, autocast = inference_module(model, torch.device("cpu"), precision, x.shape[-1])
    x = x.to(dtype).contiguous(memory_format=torch.channels_last)

    def step():
        with torch.inference_mode(), autocast():
            runner(x)

    return step


def path_worker(conn, path: str, name: str, size: int, batch: int, precisions: dict) -> None:
    """One path in its own process: builds its model once, then times rounds when asked."""
    if path == "tlearn":
        tune_allocator()  # what every tlearn command does (see its docstring); a plain loop doesn't
    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    tlearn = path == "tlearn"
    autocast_dtype = torch.bfloat16 if tlearn and precisions["train"] == "bf16" else None
    steps = {
        "train": train_step_fn(build(name, size), x, y, tlearn, autocast_dtype),
        "infer": infer_fn(build(name, size), x, tlearn, precisions["infer"] if tlearn else "fp32"),
    }
    for step in steps.values():
        step()  # the first training call measures its kernels (`conv_tuning`)
    conn.send("ready")
    while (request := conn.recv()) is not None:
        kind, reps = request
        conn.send(time_steps(steps[kind], reps))


def bench(name: str, size: int, batch: int, reps: int, rounds: int) -> dict:
    """Both paths, each in a worker process of its own, timed in alternation.

    Separate processes, because part of what tlearn does is process-wide (the allocator's
    settings) and would speed a plain loop sharing its process. They never run at once: each
    round times plain then tlearn, so the machine's drift hits both.
    """
    device = torch.device("cpu")
    precision = pick_precision(device, "auto")
    train_precision = probe_training_precision(build(name, size), size, device, precision)
    precisions = {"train": train_precision, "infer": precision}
    context = multiprocessing.get_context("spawn")
    workers = {}
    for path in ("plain", "tlearn"):
        mine, theirs = context.Pipe()
        process = context.Process(
            target=path_worker, args=(theirs, path, name, size, batch, precisions)
        )
        process.start()
        workers[path] = (process, mine)
    for _, conn in workers.values():
        assert conn.recv() == "ready"
    t = {f"{path}_{kind}": [] for path in workers for kind in ("train", "infer")}
    for _ in range(rounds):
        for kind in ("train", "infer"):
            for path, (_, conn) in workers.items():
                conn.send((kind, reps))
                t[f"{path}_{kind}"].append(conn.recv())
    for process, conn in workers.values():
        conn.send(None)
        process.join()
    rows = {k + "_img_s": round(batch / statistics.median(v), 1) for k, v in t.items()}
    # the machine's speed drifts by 10-25% over minutes: the ratio of each round, side by side,
    # is steadier than a ratio of overall figures
    for kind in ("train", "infer"):
        ratios = [p / q for p, q in zip(t[f"plain_{kind}"], t[f"tlearn_{kind}"], strict=True)]
        rows[f"{kind}_speedup"] = round(statistics.median(ratios), 2)
        rows[f"{kind}_speedup_range"] = [round(min(ratios), 2), round(max(ratios), 2)]
    torch.manual_seed(0)
    x = torch.rand(8, 3, size, size)
    rows["infer_flops_per_img"] = model_flops(build(name, size).eval(), x) / 8
    # forward + backward = 3x forward, the usual estimate (torch's counter mis-sizes the
    # backward of grouped convolutions, which depthwise-heavy nets are made of)
    rows["train_flops_per_img"] = 3 * rows["infer_flops_per_img"]
    rows["train_precision"] = train_precision
    rows["infer_precision"] = precision
    return {"backbone": name, "size": size, "batch": batch, **rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="64 px only, fewer repetitions")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    sizes = [64] if args.quick else [64, 224]
    reps = 2 if args.quick else 3
    rounds = 2 if args.quick else 6
    peaks = [(peak_flops(torch.float32), peak_flops(torch.bfloat16))]
    results = []
    for name in ("tf_efficientnet_lite0", "resnet18"):
        for size in sizes:
            batch = 64 if size == 64 else 32
            results.append(bench(name, size, batch, reps, rounds))
            print(json.dumps(results[-1]), flush=True)
    peaks.append((peak_flops(torch.float32), peak_flops(torch.bfloat16)))  # at both ends
    peak32, peak16 = max(p[0] for p in peaks), max(p[1] for p in peaks)
    for row in results:
        peak = {"bf16": peak16, "fp32": peak32}
        row["tlearn_infer_peak_fraction"] = round(
            row["tlearn_infer_img_s"] * row["infer_flops_per_img"] / peak[row["infer_precision"]], 4
        )
        row["plain_infer_peak_fraction"] = round(
            row["plain_infer_img_s"] * row["infer_flops_per_img"] / peak32, 4
        )
        row["tlearn_train_peak_fraction"] = round(
            row["tlearn_train_img_s"] * row["train_flops_per_img"] / peak[row["train_precision"]], 4
        )
    meta = {
        "machine": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "peak_fp32_gflops": round(peak32 / 1e9, 1),
        "peak_bf16_gflops": round(peak16 / 1e9, 1),
        "command": " ".join(["python", *sys.argv]),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "throughput.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    lines = [
        f"Peak: fp32 {meta['peak_fp32_gflops']} GFLOP/s, bf16 {meta['peak_bf16_gflops']} GFLOP/s "
        f"({meta['threads']} threads, torch {meta['torch']})",
        "",
        "x: the median over rounds of plain time / tlearn time, measured side by side (the "
        "rounds' lowest and highest in brackets).",
        "",
        "| backbone | px | batch | train img/s plain | train img/s tlearn | x | infer img/s plain "
        "| infer img/s tlearn | x | tlearn infer % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        spread = {k: "{}-{}".format(*r[f"{k}_speedup_range"]) for k in ("train", "infer")}
        lines.append(
            f"| {r['backbone']} | {r['size']} | {r['batch']} | {r['plain_train_img_s']} | "
            f"{r['tlearn_train_img_s']} ({r['train_precision']}) | "
            f"{r['train_speedup']} ({spread['train']}) | "
            f"{r['plain_infer_img_s']} | {r['tlearn_infer_img_s']} ({r['infer_precision']}) | "
            f"{r['infer_speedup']} ({spread['infer']}) | "
            f"{100 * r['tlearn_infer_peak_fraction']:.1f}% |"
        )
    (RESULTS / "throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
