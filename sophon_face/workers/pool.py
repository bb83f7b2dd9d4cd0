"""The inference worker pool: warmed model pipelines on their own threads.

Each worker is one thread that builds, warms and exclusively uses its own pipeline.
On the CPU profile a pipeline has its own backend sessions: ONNX Runtime and OpenCV
release the GIL, so threads give real parallelism without a copy of the models per
process. With batching (the SAIL default) every pipeline runs its models through shared
``BatchingBackend``s instead, whose own thread owns the thread-bound SAIL Engine and joins
the workers' inputs into TPU batches (workers/models.py). The event loop only awaits
results.

Back-pressure (workers/admission.py): an API job is admitted while its expected wait for a
worker plus its own service time fit the time budget (``workers.max_wait_s``) and the
bodies waiting fit ``workers.max_queued_body_bytes``; beyond that it is refused at once
with ServiceBusy (HTTP 503, ``Retry-After``) instead of queueing without bound. The pool
times every job on its worker thread, so the estimates follow what the workers really
cost; the warm-up inference gives the estimate before the first job.

Fairness with the video readers: their frames come through ``run_background``, which
waits for a worker like a request does, but a freed worker always goes to a waiting API
request first. A camera therefore never makes ``search`` queue behind frames (at most the
frame already running), and background jobs never count against API admission: each
reader has at most one frame in flight, so they are bounded by the number of devices.

A job that raises something other than an ApiError, or does not return within
``timeout_s``, fails its request with INTERNAL_ERROR; its worker is then probed and rebuilt,
or replaced, before it works again (workers/recovery.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Deque, Dict, Generic, List, Optional, TypeVar

from ..errors import ApiError, InternalError
from .admission import (REQUEST_BODY_BYTES, Admission, AdmissionLimits, ServiceTimes, Ticket,
                        job_kind)
from .recovery import WorkerRecovery

log = logging.getLogger(__name__)

#: Timed warm-up runs after the first, for the service-time prior (workers/admission.py).
PRIOR_RUNS = 3

P = TypeVar("P")  # the per-worker pipeline type
R = TypeVar("R")


@dataclass(frozen=True)
class WarmUpReport:
    ok: bool
    ms: float
    error: str = ""


def _timed(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds ``fn(*args)`` took (on a worker thread)."""
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def _measured(ran_s: List[float], fn: Callable[..., R], *args: Any) -> R:
    """``fn(*args)`` on a worker thread, its duration left in ``ran_s[0]`` even if it raises."""
    started = time.perf_counter()
    try:
        return fn(*args)
    finally:
        ran_s[0] = time.perf_counter() - started


class _Dispatcher(Generic[P]):
    """Idle workers and the jobs waiting for one: API waiters are served before
    background waiters, each group in arrival order."""

    def __init__(self) -> None:
        self._idle: List[Any] = []
        self._api: Deque[asyncio.Future] = deque()
        self._background: Deque[asyncio.Future] = deque()

    @property
    def idle(self) -> int:
        """Idle workers; more than none means nobody is waiting (``put`` serves waiters)."""
        return len(self._idle)

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
                 timeout_s: float = 60.0, max_wait_s: float = 30.0,
                 max_queued_body_bytes: int = 256 * 1024 * 1024,
                 admission: str = "time") -> None:
        self._factory = pipeline_factory
        self._warm_up = warm_up
        self._close = close
        self._workers: List[_Worker[P]] = [_Worker(i) for i in range(count)]
        self._timeout_s = timeout_s
        self._idle: Optional[_Dispatcher[P]] = None
        self.service_times = ServiceTimes()
        self.admission = Admission(
            AdmissionLimits(mode=admission, max_wait_s=max_wait_s,
                            max_queued_body_bytes=max_queued_body_bytes, queue_size=queue_size),
            count, self.service_times, timeout_s=timeout_s)
        self._background = 0  # background (video) jobs running or waiting
        self._recovery: WorkerRecovery[P] = WorkerRecovery(pipeline_factory, warm_up, close)
        self.warm_up_report = WarmUpReport(ok=False, ms=0.0, error="not started")

    @property
    def pending(self) -> int:
        """API jobs running or waiting."""
        return self.admission.pending

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
            # The prior of every job kind until jobs of that kind are measured: a warm-up
            # runs each model once on a photo-sized image, like a request on a small
            # photo. Timed on later runs, because a session's first pays one-off set-up
            # (CPU profile: 170 ms, against 11 ms for the detect job it predicts); the
            # fastest of a few, as a neighbour's burst of CPU would inflate one.
            first = self._workers[0]
            self.service_times.set_prior(min([await loop.run_in_executor(
                first.executor, _timed, self._warm_up, first.pipeline)
                for _ in range(PRIOR_RUNS)]))
        except Exception as exc:
            self.warm_up_report = WarmUpReport(False, 0.0, f"{type(exc).__name__}: {exc}")
            raise
        for worker in self._workers:
            self._idle.put(worker)
        ms = (time.perf_counter() - started) * 1000.0
        self.warm_up_report = WarmUpReport(True, round(ms, 1))
        log.info("%d inference worker(s) loaded and warmed in %.0f ms", len(self._workers), ms)
        return self.warm_up_report

    def first_pipeline(self) -> P:
        """For read-only facts (feature dimension); never for running inference."""
        for worker in self._workers:  # one may be rebuilding its pipeline (recovery.py)
            if worker.pipeline is not None:
                return worker.pipeline
        raise RuntimeError("worker pool not started")

    async def run(self, fn: Callable[..., R], *args: Any) -> R:
        """An API job, first in line; refused at once with ServiceBusy (Retry-After) when
        it would not start within the time budget or its body would not fit the queue's."""
        if self._idle is None:
            raise InternalError("inference workers are not running")
        # An idle worker not yet claimed by an admitted job (it takes its worker a loop
        # step later) means this one starts at once.
        starts_now = self._idle.idle > self.admission.waiting
        ticket = self.admission.admit(job_kind(fn), REQUEST_BODY_BYTES.get(), starts_now)
        return await self._run(ticket, fn, *args)  # it closes the ticket

    async def run_background(self, fn: Callable[..., R], *args: Any) -> R:
        """A video frame: waits behind every API job; the caller bounds how many it sends."""
        if self._idle is None:
            raise InternalError("inference workers are not running")
        self._background += 1
        try:
            return await self._run(None, fn, *args)
        finally:
            self._background -= 1

    def stats(self) -> Dict[str, Any]:
        """What /health reports about the queue (``pending``: API jobs waiting or running;
        ``video_pending``: frames) and its admission."""
        return dict(self.admission.stats(), pending=self.pending,
                    video_pending=self.background_pending, recovery=self._recovery.stats())

    async def _run(self, ticket: Optional[Ticket], fn: Callable[..., R], *args: Any) -> R:
        """``ticket``: the API job's admission, closed here; None for a background job."""
        dispatcher = self._idle
        assert dispatcher is not None
        loop = asyncio.get_running_loop()
        worker: Optional[_Worker[P]] = None
        try:
            deadline = loop.time() + self._timeout_s
            worker = await asyncio.wait_for(dispatcher.get(ticket is None), self._timeout_s)
            if ticket is not None:
                ticket.started()
                if self.service_times.estimate(ticket.kind) > deadline - loop.time():
                    # Admitted on an estimate that proved low: it would time out on the
                    # worker. Busy now (not a 500 later), and the worker serves the next.
                    raise self.admission.shed(ticket.kind)
            kind = job_kind(fn) if ticket is None else ticket.kind
            ran_s = [0.0]
            future = loop.run_in_executor(worker.executor, _measured, ran_s, fn,
                                          worker.pipeline, *args)
            # On the loop, when the thread is done (also after a timeout gave up on it).
            future.add_done_callback(lambda _f: self.service_times.observe(kind, ran_s[0]))
            try:
                return await asyncio.wait_for(asyncio.shield(future), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                # The thread cannot be interrupted: a new worker takes its place
                # (recovery.py), this one is closed when its job returns.
                self._recovery.after_timeout(worker, future, self._timeout_s, self._replace,
                                             dispatcher.put)
                worker = None
                raise
        except asyncio.TimeoutError:
            log.warning("inference did not finish within %.1f s", self._timeout_s)
            raise InternalError("inference timed out") from None
        except ApiError:
            raise
        except Exception as exc:  # the job broke: its worker is checked first (recovery.py)
            if worker is not None:
                self._recovery.after_failure(worker, exc, dispatcher.put)
                worker = None
            raise InternalError("inference failed") from exc
        finally:
            if worker is not None:
                dispatcher.put(worker)
            if ticket is not None:
                ticket.close()

    def _replace(self, stuck: _Worker[P]) -> _Worker[P]:
        fresh: _Worker[P] = _Worker(max(w.index for w in self._workers) + 1)
        self._workers[self._workers.index(stuck)] = fresh
        return fresh

    async def close(self) -> None:
        await self._recovery.close()  # first: a worker being rebuilt settles its pipeline
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            if worker.pipeline is not None:  # closed on its own thread, like it was used
                await loop.run_in_executor(worker.executor, self._close, worker.pipeline)
            worker.executor.shutdown(wait=True)
        self._idle = None
