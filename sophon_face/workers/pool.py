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
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generic, List, Optional, TypeVar

from ..errors import ApiError, InternalError, ServiceBusy

log = logging.getLogger(__name__)

P = TypeVar("P")  # the per-worker pipeline type
R = TypeVar("R")


@dataclass(frozen=True)
class WarmUpReport:
    ok: bool
    ms: float
    error: str = ""


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
        self._idle: Optional[asyncio.Queue] = None
        self._pending = 0  # jobs running or waiting
        self.warm_up_report = WarmUpReport(ok=False, ms=0.0, error="not started")

    @property
    def pending(self) -> int:
        return self._pending

    async def start(self) -> WarmUpReport:
        """Build and warm every worker's pipeline on its own thread; fail loudly."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        self._idle = asyncio.Queue()
        try:
            for worker in self._workers:
                worker.pipeline = await loop.run_in_executor(worker.executor, self._factory)
                await loop.run_in_executor(worker.executor, self._warm_up, worker.pipeline)
                self._idle.put_nowait(worker)
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
        if self._idle is None:
            raise InternalError("inference workers are not running")
        if self._pending >= len(self._workers) + self._queue_size:
            raise ServiceBusy()
        self._pending += 1
        loop = asyncio.get_running_loop()
        worker: Optional[_Worker[P]] = None
        try:
            deadline = loop.time() + self._timeout_s
            worker = await asyncio.wait_for(self._idle.get(), self._timeout_s)
            future = loop.run_in_executor(worker.executor, fn, worker.pipeline, *args)
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                # The thread cannot be interrupted: give the worker back when it finishes.
                idle, busy_worker = self._idle, worker
                future.add_done_callback(lambda _f: idle.put_nowait(busy_worker))
                worker = None
                raise
        except asyncio.TimeoutError:
            log.warning("inference did not finish within %.1f s", self._timeout_s)
            raise InternalError("inference timed out") from None
        except ApiError:
            raise
        finally:
            self._pending -= 1
            if worker is not None:
                self._idle.put_nowait(worker)

    async def close(self) -> None:
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            if worker.pipeline is not None:  # closed on its own thread, like it was used
                await loop.run_in_executor(worker.executor, self._close, worker.pipeline)
            worker.executor.shutdown(wait=True)
        self._idle = None
