"""Concurrent requests become batches, run by worker threads off the event loop.

Where a batch of 32 images costs far less than 32 times one image (PyTorch), requests that
arrive together wait up to `max_wait_ms` for each other and run as one batch of at most
`max_batch` images, in one worker whose threads are the machine's cores. Where it does not
(onnxruntime), the engine asks for several workers: one gathers what queued while the others
run their batches, each on a core (`tlearn.deploy.engines.OnnxEngine`).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from tlearn.errors import TlearnError

_STOP = object()


@dataclass
class _Job:
    images: np.ndarray  # uint8 [n, 3, S, S]
    future: Future = field(default_factory=Future)


class Batcher:
    """`submit(images)` -> a Future of their probabilities; `close()` finishes what was queued."""

    def __init__(
        self, engine, max_batch: int = 32, max_wait_ms: float = 5.0, workers: int = 1
    ) -> None:
        if max_batch < 1:
            raise TlearnError(f"--max-batch {max_batch} must be at least 1")
        if max_wait_ms < 0:
            raise TlearnError(f"--max-wait-ms {max_wait_ms} must be zero or more")
        if workers < 1:
            raise ValueError(f"a batcher needs at least one worker, not {workers}")
        self.engine = engine
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.batches = 0
        self.images = 0
        self._queue: queue.Queue = queue.Queue()
        self._carry: _Job | None = None
        self._closed = False
        self._lock = threading.Lock()  # no job may enter the queue after the stop
        self._gathering = threading.Lock()  # one worker gathers while the others run batches
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"tlearn-batcher-{i}", daemon=True)
            for i in range(int(workers))
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, images: np.ndarray) -> Future:
        job = _Job(images)
        with self._lock:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.put(job)
        return job.future

    def close(self, timeout: float | None = None) -> None:
        """Run every job already submitted, then stop the worker."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    @property
    def mean_batch(self) -> float:
        return self.images / self.batches if self.batches else 0.0

    def _next(self, timeout: float | None):
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        return self._queue.get(timeout=timeout) if timeout is not None else self._queue.get()

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        """`first` and whatever arrives within max_wait, up to max_batch images; and whether to
        stop afterwards."""
        jobs, count = [first], len(first.images)
        deadline = time.monotonic() + self.max_wait
        while count < self.max_batch:
            try:
                job = self._next(max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if job is _STOP:
                return jobs, True
            if count + len(job.images) > self.max_batch:
                self._carry = job  # first of the next batch
                break
            jobs.append(job)
            count += len(job.images)
        return jobs, False

    def _loop(self) -> None:
        while True:
            with self._gathering:
                if self._stopping:
                    return
                first = self._next(None)
                if first is _STOP:
                    self._stopping = True
                    return
                jobs, self._stopping = self._gather(first)
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        try:
            batch = np.concatenate([j.images for j in jobs]) if len(jobs) > 1 else jobs[0].images
            probabilities = self.engine(batch)
        except BaseException as e:  # noqa: BLE001 - every waiting request must hear of it
            for job in jobs:
                job.future.set_exception(e)
            return
        with self._lock:
            self.batches += 1
            self.images += len(batch)
        start = 0
        for job in jobs:
            job.future.set_result(probabilities[start : start + len(job.images)])
            start += len(job.images)
