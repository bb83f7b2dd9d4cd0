"""The inference worker pool: warmed model pipelines on their own threads.

Each worker is one thread that builds, warms and exclusively uses its own pipeline.
On the CPU profile a pipeline has its own backend sessions: ONNX Runtime and OpenCV
release the GIL, so threads give real parallelism without a copy of the models per
process. With batching (the SAIL default) every pipeline runs its models through shared
``BatchingBackend``s instead, whose own thread owns the thread-bound SAIL Engine and joins
the workers' inputs into TPU batches (workers/models.py). The event loop only awaits
results.

Back-pressure: at most ``count`` jobs run and ``queue_size`` wait; a job beyond that is
refused at once with ServiceBusy (HTTP 503) instead of queueing without bound.

Fairness with the video readers: their frames come through ``run_background``, which
waits for a worker like a request does, but a freed worker always goes to a waiting API
request first. A camera therefore never makes ``search`` queue behind frames (at most the
frame already running), and background jobs do not count against ``queue_size``: each
reader has at most one frame in flight, so they are bounded by the number of devices.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Deque, Generic, List, Optional, TypeVar

from ..errors import ApiError, InternalError, ServiceBusy

log = logging.getLogger(__name__)

P = TypeVar("P")  # the per-worker pipeline type
R = TypeVar("R")


@dataclass(frozen=True)
class WarmUpReport:
    ok: bool
    ms: float
    error: str = ""


class _Dispatcher(Generic[P]):
    """Idle workers and the jobs waiting for one: API waiters are served before
    background waiters, each group in arrival order."""

    def __init__(self) -> None:
        self._idle: List[Any] = []
        self._api: Deque[asyncio.Future] = deque()
        self._background: Deque[asyncio.Future] = deque()

    def put(self, worker: Any) -> None:
        for waiters in (self._api, self._background):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(worker)
                    return
        self._idle.append(worker)

    async def get(self, background: bool = False) -> Any:
        if self._idle:  # an idle worker means nobody is waiting (``put`` serves waiters)
            return self._idle.pop()
        waiter = asyncio.get_running_loop().create_future()
        (self._background if background else self._api).append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.put(waiter.result())  # handed over just as we gave up: pass it on
            raise


class _Worker(Generic[P]):
    def __init__(self, index: int) -> None:
        self.index = index
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"face-worker-{index}")
        self.pipeline: Optional[P] = None


class WorkerPool(Generic[P]):
    """``await pool.run(fn, *args)`` runs ``fn(pipeline, *args)`` on an idle worker."""

    def __init__(self, pipeline_factory: Callable[[], P], warm_up: Callable[[P], Any],
                 close: Callable[[P], Any], count: int = 1, queue_size: int = 32,
                 timeout_s: float = 60.0) -> None:
        self._factory = pipeline_factory
        self._warm_up = warm_up
        self._close = close
        self._workers: List[_Worker[P]] = [_Worker(i) for i in range(count)]
        self._queue_size = queue_size
        self._timeout_s = timeout_s
        self._idle: Optional[_Dispatcher[P]] = None
        self._pending = 0  # API jobs running or waiting
        self._background = 0  # background (video) jobs running or waiting
        self.warm_up_report = WarmUpReport(ok=False, ms=0.0, error="not started")

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def background_pending(self) -> int:
        return self._background

    async def start(self) -> WarmUpReport:
        """Build and warm every worker's pipeline on its own thread; fail loudly."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._idle = _Dispatcher()
        try:
            for worker in self._workers:
                worker.pipeline = await loop.run_in_executor(worker.executor, self._factory)
                await loop.run_in_executor(worker.executor, self._warm_up, worker.pipeline)
                self._idle.put(worker)
        except Exception as exc:
            self.warm_up_report = WarmUpReport(False, 0.0, f"{type(exc).__name__}: {exc}")
            raise
        ms = (time.perf_counter() - started) * 1000.0
        self.warm_up_report = WarmUpReport(True, round(ms, 1))
        log.info("%d inference worker(s) loaded and warmed in %.0f ms", len(self._workers), ms)
        return self.warm_up_report

    def first_pipeline(self) -> P:
        """For read-only facts (feature dimension); never for running inference."""
        pipeline = self._workers[0].pipeline
        if pipeline is None:
            raise RuntimeError("worker pool not started")
        return pipeline

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        """An API job: refused with ServiceBusy when the queue is full; first in line."""
        if self._idle is None:
            raise InternalError("inference workers are not running")
        if self._pending >= len(self._workers) + self._queue_size:
            raise ServiceBusy()
        self._pending += 1
        try:
            return await self._run(False, fn, *args)
        finally:
            self._pending -= 1

    async def run_background(self, fn: Callable[..., R], *args: Any) -> R:
        """A video frame: waits behind every API job; the caller bounds how many it sends."""
        if self._idle is None:
            raise InternalError("inference workers are not running")
        self._background += 1
        try:
            return await self._run(True, fn, *args)
        finally:
            self._background -= 1

    async def _run(self, background: bool, fn: Callable[..., R], *args: Any) -> R:
        dispatcher = self._idle
        assert dispatcher is not None
        loop = asyncio.get_running_loop()
        worker: Optional[_Worker[P]] = None
        try:
            deadline = loop.time() + self._timeout_s
            worker = await asyncio.wait_for(dispatcher.get(background), self._timeout_s)
            future = loop.run_in_executor(worker.executor, fn, worker.pipeline, *args)
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                # The thread cannot be interrupted: give the worker back when it finishes.
                busy_worker = worker
                future.add_done_callback(lambda _f: dispatcher.put(busy_worker))
                worker = None
                raise
        except asyncio.TimeoutError:
            log.warning("inference did not finish within %.1f s", self._timeout_s)
            raise InternalError("inference timed out") from None
        except ApiError:
            raise
        finally:
            if worker is not None:
                dispatcher.put(worker)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            if worker.pipeline is not None:  # closed on its own thread, like it was used
                await loop.run_in_executor(worker.executor, self._close, worker.pipeline)
            worker.executor.shutdown(wait=True)
        self._idle = None
