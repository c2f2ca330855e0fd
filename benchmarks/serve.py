"""`tlearn serve` under load, and onnxruntime against tlearn's PyTorch inference.

Loopback only, bounded in requests and seconds. For a run (tf_efficientnet_lite0 at 224 px):
  1. engines: images/s and CPU ms/image of the exported ONNX file in onnxruntime (its thread
     team spanning the cores, and one thread: what each server worker runs while another is
     busy) and of tlearn's own PyTorch inference path (what `serve` and `evaluate` run: folded
     batch norms, bf16 where the probe says so, prepacked weights), at batch 1 and 32, timed in
     alternating rounds, medians; and the CPU time of decoding an upload;
  2. load: a real `tlearn serve` process, a single-threaded asyncio client sending real JPEGs
     (the run's test images) one per request: requests/s and p50/p99 latency at concurrency 1, 8
     and 32 with batching (--max-batch 32, the engine's own --max-wait-ms), and at concurrency
     32 one image at a time (--max-batch 1 --max-wait-ms 0); with the server's CPU time per
     request (and of its event loop, and the client's), and the load average, since other work
     on the machine moves every wall time. Server + client CPU per request bound the
     requests/s the cores allow, in each mode.
The client shares the machine's cores with the server, as a real client on the same host would.

    python benchmarks/serve.py --model RUN [--engine torch|onnx] [--seconds 30] [--name serve]
        -> benchmarks/results/serve.{json,md} (auto: what `tlearn serve RUN` serves)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

import tlearn
from tlearn.api import serving_engine
from tlearn.deploy.engines import OnnxEngine
from tlearn.deploy.inputs import decode_upload
from tlearn.deploy.onnx_runtime import OnnxModel
from tlearn.training.runtime import tune_allocator

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from serving import tlearn_serve  # noqa: E402

RESULTS = Path(__file__).parent / "results"
ONE_THREAD = "onnxruntime, 1 thread"


def _engine_worker(kind: str, path: str, requests, answers) -> None:
    """One engine in a process of its own (thread pools and allocators are process-wide), built
    in the main thread and run from another, exactly as `tlearn serve` builds and runs it. (On
    this shared machine, where that happens mattered: PyTorch at batch 1 ran 0.3-2.6 images/s
    when run from the main thread and 60-75 from a second thread, a 2-thread OpenMP team
    waiting on a descheduled partner, it seems.) `onnxruntime, 1 thread` is the session each
    of the server's workers runs while another worker is busy."""
    tune_allocator()
    if kind == "pytorch":
        engine = serving_engine(path, "torch")
    else:
        threads = 1 if kind == ONE_THREAD else None
        engine = OnnxEngine(OnnxModel(path, threads=threads, serving=True))  # alone: this session
    answers.put(engine.name if kind != ONE_THREAD else ONE_THREAD)
    worker = threading.Thread(target=_engine_loop, args=(engine, requests, answers))
    worker.start()
    worker.join()


def _engine_loop(engine, requests, answers) -> None:
    rng = np.random.default_rng(0)
    size = engine.input_preprocessing.input_size
    while (job := requests.get()) is not None:
        batch, seconds = job
        images = rng.integers(0, 256, (batch, 3, size, size), dtype=np.uint8)
        engine(images)  # warm-up for this shape
        count, start, cpu = 0, time.perf_counter(), time.process_time()
        while time.perf_counter() - start < seconds:
            engine(images)
            count += batch
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        answers.put((count / wall, 1000 * cpu / count))


def engine_rates(run: Path, onnx_path: Path, rounds: int, seconds: float) -> dict:
    """Images/s per engine and batch size: each engine in its own process, timed in
    alternation (one at a time, so they never share the cores), median of `rounds`."""
    context = multiprocessing.get_context("spawn")
    workers = {}
    for kind, path in (("onnxruntime", onnx_path), (ONE_THREAD, onnx_path), ("pytorch", run)):
        requests, answers = context.Queue(), context.Queue()
        process = context.Process(target=_engine_worker, args=(kind, str(path), requests, answers))
        process.start()
        workers[kind] = (process, requests, answers, answers.get(timeout=600))
    out: dict = {kind: {"engine": w[3]} for kind, w in workers.items()}
    for batch in (1, 32):
        samples: dict[str, list[tuple[float, float]]] = {kind: [] for kind in workers}
        for _ in range(rounds):
            for kind, (_, requests, answers, _) in workers.items():
                requests.put((batch, seconds))
                samples[kind].append(answers.get(timeout=600))
        for kind, values in samples.items():
            out[kind][f"batch {batch}"] = {
                "images_per_s": round(statistics.median(v[0] for v in values), 1),
                "cpu_ms_per_image": round(statistics.median(v[1] for v in values), 2),
                "rounds": [round(v[0], 1) for v in values],
            }
    for process, requests, _, _ in workers.values():
        requests.put(None)
        process.join(60)
    return out


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process (or of one of its threads) so far (Linux), which a
    loaded machine inflates far less than it does wall time."""
    stat = Path(f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat")
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def load(
    url: str, images: list[bytes], concurrency: int, requests: int, seconds: float, pid: int
) -> dict:
    latencies: list[float] = []
    failures = 0
    next_index, requests_wanted = 0, requests
    requests, stop_at = 3 * 4, time.perf_counter() + seconds  # warm-up: 4 requests a connection

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal next_index, failures
        while next_index < requests and time.perf_counter() < stop_at:
            i = next_index
            next_index += 1
            files = {"file": (f"{i}.jpg", images[i % len(images)], "image/jpeg")}
            start = time.perf_counter()
            r = await client.post(f"{url}/predict", files=files)
            latencies.append(time.perf_counter() - start)
            failures += r.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await asyncio.gather(*[worker(client) for _ in range(3)])  # warm-up connections
        latencies.clear()
        requests, next_index, stop_at = requests_wanted, 0, time.perf_counter() + seconds
        cpu, loop_cpu, start = cpu_seconds(pid), cpu_seconds(pid, pid), time.perf_counter()
        client_cpu = time.process_time()
        await asyncio.gather(*[worker(client) for _ in range(concurrency)])
        wall, cpu = time.perf_counter() - start, cpu_seconds(pid) - cpu
        loop_cpu, client_cpu = cpu_seconds(pid, pid) - loop_cpu, time.process_time() - client_cpu
        health = (await client.get(f"{url}/health")).json()
    ms = np.array(latencies) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "failures": failures,
        "requests_per_s": round(len(latencies) / wall, 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "mean_batch": health["mean_batch"],
        "server_cpu_ms_per_request": round(1000 * cpu / max(1, len(latencies)), 1),
        # the server's main thread: its event loop (HTTP, multipart, JSON answers)
        "event_loop_cpu_ms_per_request": round(1000 * loop_cpu / max(1, len(latencies)), 2),
        "client_cpu_ms_per_request": round(1000 * client_cpu / max(1, len(latencies)), 2),
        "load_average": round(os.getloadavg()[0], 2),
        "engine": health["engine"],
    }


def decode_cpu_ms(images: list[bytes], pre) -> float:
    """CPU ms an upload costs to decode the server's way (JPEG, resize, crop), in one thread:
    the median of three passes over up to 64 of the images."""
    passes = []
    for _ in range(3):
        start = time.thread_time()
        for i, data in enumerate(images[:64]):
            decode_upload(data, f"{i}.jpg", pre, None)
        passes.append(1000 * (time.thread_time() - start) / len(images[:64]))
    return round(statistics.median(passes), 2)


def load_tests(
    run: Path, engine_args: list[str], images: list[bytes], seconds: float
) -> list[dict]:
    rows = []
    plans = [  # batched: the engine's own --max-wait-ms (5 ms PyTorch, 0 onnxruntime)
        ("batched", ["--max-batch", "32"], (1, 8, 32)),
        ("one at a time", ["--max-batch", "1", "--max-wait-ms", "0"], (32,)),
    ]
    for mode, flags, levels in plans:
        with tlearn_serve(run, *engine_args, *flags) as (url, process):
            for c in levels:
                n = max(48, 8 * c)
                row = asyncio.run(load(url, images, c, n, seconds=seconds, pid=process.pid))
                rows.append({"mode": mode, **row})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def write(result: dict, name: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    e = result["engines"]
    lines = [
        f"# tlearn serve: {result['model']}",
        "",
        f"{result['machine']}; {result['note']}",
        "",
        f"load average (1 min) {result['load_average']['start']} at the start, "
        f"{result['load_average']['engines']} after the engine timings",
        "",
        "| engine | batch 1 images/s | batch 32 images/s | CPU ms/image, batch 1 | batch 32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind in ("onnxruntime", ONE_THREAD, "pytorch"):
        if kind not in e:
            continue
        label = (
            f"tlearn PyTorch inference ({e['pytorch']['engine']})" if kind == "pytorch" else kind
        )
        one, many = (e[kind][f"batch {b}"] for b in (1, 32))
        lines.append(
            f"| {label} | {one['images_per_s']:,} | {many['images_per_s']:,} | "
            f"{one['cpu_ms_per_image']} | {many['cpu_ms_per_image']} |"
        )
    lines += ["", f"served engine: {result['served_engine']}", "",
              "| mode | concurrency | requests | requests/s | p50 ms | p99 ms | mean batch "
              "| server CPU ms/request | of which event loop | client CPU ms/request "
              "| load average |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["load"]:
        lines.append(
            f"| {r['mode']} | {r['concurrency']} | {r['requests']} | {r['requests_per_s']} | "
            f"{r['p50_ms']:,} | {r['p99_ms']:,} | {r['mean_batch']} | "
            f"{r['server_cpu_ms_per_request']} | {r['event_loop_cpu_ms_per_request']} | "
            f"{r['client_cpu_ms_per_request']} | {r['load_average']} |"
        )
    c = result["cpu_at_32"]
    lines += [
        "",
        f"decoding an upload (tlearn's decode_upload, one thread): {result['decode_cpu_ms']} ms "
        "CPU an image",
        "",
        f"batching / one at a time at concurrency 32: {result['batching_ratio']}x requests/s; "
        f"server + client CPU ms/request {c['batched']} batched, {c['one at a time']} one at a "
        f"time ({c['ratio']}x), so {c['ceiling_batched']} and {c['ceiling_one']} requests/s at "
        f"most on {c['cores']} cores",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run folder (tf_efficientnet_lite0, 224 px)")
    parser.add_argument("--engine", default="auto", choices=("auto", "torch", "onnx"))
    parser.add_argument("--seconds", type=float, default=30, help="bound per load level")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per engine")
    parser.add_argument("--images", default=None, help="JPEGs to send (default: the run's test/)")
    parser.add_argument("--name", default="serve", help="results file name (without suffix)")
    args = parser.parse_args()
    tune_allocator()
    loads = {"start": round(os.getloadavg()[0], 2)}
    run = Path(args.model)
    onnx_path = run / "model.onnx"
    if not onnx_path.exists():
        print(tlearn.export(run, onnx_path, log=print).summary())
    model = tlearn.load(run)
    data = Path(args.images or Path(model.spec.config["data"]) / "test")
    images = [p.read_bytes() for p in sorted(data.rglob("*.jpg"))[:256]]
    engines = engine_rates(run, onnx_path, args.rounds, seconds=3.0)
    loads["engines"] = round(os.getloadavg()[0], 2)
    print(json.dumps(engines, indent=1), flush=True)
    # auto serves the run as `tlearn serve RUN` does (its cached, verified export when it can)
    target = onnx_path if args.engine == "onnx" else run
    rows = load_tests(target, ["--engine", args.engine], images, args.seconds)
    served = f"{rows[0]['engine']} (--engine {args.engine})"
    batched = next(r for r in rows if r["mode"] == "batched" and r["concurrency"] == 32)
    single = next(r for r in rows if r["mode"] == "one at a time")
    cpu = {m: r["server_cpu_ms_per_request"] + r["client_cpu_ms_per_request"]
           for m, r in (("batched", batched), ("one at a time", single))}  # fmt: skip
    cores = os.cpu_count() or 1
    cpu_at_32 = {
        **{m: round(v, 1) for m, v in cpu.items()},
        "ratio": round(cpu["one at a time"] / cpu["batched"], 2),
        "cores": cores,
        "ceiling_batched": round(1000 * cores / cpu["batched"], 1),
        "ceiling_one": round(1000 * cores / cpu["one at a time"], 1),
    }
    names = "+".join(b["name"] for b in model.spec.backbones)
    size, classes = model.input_preprocessing.input_size, len(model.classes)
    write({
        "model": f"{names} at {size} px, {classes} classes ({run})",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "note": "a shared machine (other work ran at the same time): figures are noisy",
        "load_average": loads,
        "engines": engines,
        "served_engine": served,
        "load": rows,
        "batching_ratio": round(batched["requests_per_s"] / single["requests_per_s"], 2),
        "cpu_at_32": cpu_at_32,
        "decode_cpu_ms": decode_cpu_ms(images, model.input_preprocessing),
        "images_sent": f"{len(images)} JPEGs from {data}",
    }, args.name)  # fmt: skip


if __name__ == "__main__":
    main()
