"""Worker failure recovery: what the pool does with a worker whose job broke or never returned.

A worker is one thread with its own pipeline (workers/pool.py). Two faults take it out:

* **A job raises something that is not an ApiError** (ONNX Runtime or SAIL failing a run, a
  bug). The request fails alone, with INTERNAL_ERROR. The worker does not go straight back
  to work: on its own thread it first runs the warm-up inference again (one run of the
  detector and the recognizer). A pipeline that still answers was failed by its input and
  goes back to work at once; one that does not is closed, rebuilt from the factory and
  warmed again (new runtime sessions, as at start), retried with a backoff doubling from
  ``retry_min_s`` to ``retry_max_s`` until it answers, like Frigate's detector watchdog. Each
  step is logged. A probe, not an unconditional rebuild: a hostile input that trips a bug
  must not make every request pay for reloading the models.
* **A job does not return within ``workers.timeout_s``** (a runtime call hung). A thread
  cannot be interrupted, so the worker is retired: a new worker (new thread, new pipeline)
  takes its place at once, and the retired one's pipeline is closed on its own thread if
  and when its job ever returns. The pool keeps its size; requests never queue behind a
  thread that may never come back.

Meanwhile the other workers serve; with one worker, requests wait for the recovery like
they wait for a busy worker (admission and ``workers.timeout_s`` still bound them).

Limits: with batching (the SAIL default) the models run on shared batching threads
(backends/batching.py); rebuilding a worker re-attaches it to the same shared backends, so
an engine that is broken for good, or a batching thread that hung, is not replaced here. A
hung thread also still counts for the interpreter at exit (systemd's ``TimeoutStopSec``
ends such a process).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable, Dict, Generic, Optional, Set, TypeVar

log = logging.getLogger(__name__)

P = TypeVar("P")  # the per-worker pipeline type
W = Any  # workers/pool._Worker: ``index``, ``executor`` (one thread), ``pipeline``

RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0


class WorkerRecovery(Generic[P]):
    """Heals and replaces the pool's workers; every method is called on the event loop,
    except the ``_on_thread`` ones, which run on the worker's own thread."""

    def __init__(self, factory: Callable[[], P], warm_up: Callable[[P], Any],
                 close: Callable[[P], Any], retry_min_s: float = RETRY_MIN_S,
                 retry_max_s: float = RETRY_MAX_S) -> None:
        self._factory = factory
        self._warm_up = warm_up
        self._close = close
        self._retry_min_s = retry_min_s
        self._retry_max_s = retry_max_s
        self._closing = threading.Event()
        self._tasks: Set[asyncio.Future] = set()
        self._lock = threading.Lock()
        self._failed_jobs = 0  # jobs that raised something other than an ApiError
        self._rebuilt = 0  # pipelines built in place of a broken or a stuck one
        self._replaced = 0  # workers retired after a job that did not return
        self._recovering = 0  # workers out of service right now

    def stats(self) -> Dict[str, int]:
        """For /health (``workers``)."""
        with self._lock:
            return {"failed_jobs": self._failed_jobs, "rebuilt": self._rebuilt,
                    "replaced": self._replaced, "recovering": self._recovering}

    # -------------------------------------------------------------- on the event loop

    def after_failure(self, worker: W, exc: BaseException, put: Callable[[W], None]) -> None:
        """The job on ``worker`` raised ``exc``: probe (and if need be rebuild) its
        pipeline on its thread, then give it back with ``put``."""
        log.error("worker %d: inference failed (%s: %s); checking its pipeline",
                  worker.index, type(exc).__name__, exc, exc_info=exc)
        with self._lock:
            self._failed_jobs += 1
            self._recovering += 1
        self._spawn(self._heal(worker, put))

    def after_timeout(self, worker: W, job: "asyncio.Future[Any]", timeout_s: float,
                      replace: Callable[[W], W], put: Callable[[W], None]) -> None:
        """A request gave up on the job running on ``worker``. If the job is still running,
        ``replace(worker)`` (the pool swaps in a new worker and returns it) gets a pipeline
        and joins via ``put``; the old worker is closed when its job returns."""
        if job.done():
            put(worker)
            return
        fresh = replace(worker)
        log.error("worker %d: a job did not return within %.1f s; replaced by worker %d "
                  "(the old thread's pipeline is closed if it ever returns)",
                  worker.index, timeout_s, fresh.index)
        with self._lock:
            self._replaced += 1
            self._recovering += 1
        self._spawn(self._start(fresh, put))
        job.add_done_callback(lambda _job: self._spawn(self._retire(worker)))

    async def close(self) -> None:
        """Stop rebuilding (a retry loop ends at its next wait) and wait for the healing
        in progress; call before the pool closes its workers."""
        self._closing.set()
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _heal(self, worker: W, put: Callable[[W], None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            healthy = await loop.run_in_executor(worker.executor, self._heal_on_thread, worker)
        except Exception:  # the executor itself is gone (the pool is closing)
            log.exception("worker %d: recovery failed", worker.index)
            healthy = False
        finally:
            with self._lock:
                self._recovering -= 1
        if healthy and not self._closing.is_set():
            put(worker)

    async def _start(self, worker: W, put: Callable[[W], None]) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(worker.executor, self._build_on_thread, worker)
        except Exception:
            log.exception("worker %d: start failed", worker.index)
        finally:
            with self._lock:
                self._recovering -= 1
        if worker.pipeline is not None and not self._closing.is_set():
            put(worker)

    async def _retire(self, worker: W) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(worker.executor, self._close_on_thread, worker)
            log.warning("worker %d: its late job returned; the retired worker is closed",
                        worker.index)
        finally:
            worker.executor.shutdown(wait=False)

    # -------------------------------------------------------------- on the worker's thread

    def _heal_on_thread(self, worker: W) -> bool:
        try:
            self._warm_up(worker.pipeline)
        except Exception as exc:
            log.error("worker %d: its pipeline no longer answers (%s: %s); rebuilding it",
                      worker.index, type(exc).__name__, exc)
        else:
            log.warning("worker %d: its pipeline still answers; back to work", worker.index)
            return True
        self._close_on_thread(worker)
        return self._build_on_thread(worker)

    def _build_on_thread(self, worker: W) -> bool:
        """Build and warm a pipeline for ``worker``, retrying with a backoff until it
        answers or the pool closes. Set on the worker here, on its own thread, so a close
        queued behind this finds it."""
        delay_s = self._retry_min_s
        attempt = 0
        while not self._closing.is_set():
            attempt += 1
            pipeline: Optional[P] = None
            try:
                pipeline = self._factory()
                self._warm_up(pipeline)
            except Exception as exc:
                if pipeline is not None:
                    self._close_quietly(pipeline)
                log.error("worker %d: building its pipeline failed (attempt %d: %s: %s); "
                          "retrying in %.1f s", worker.index, attempt, type(exc).__name__,
                          exc, delay_s)
                if self._closing.wait(delay_s):
                    break
                delay_s = min(2.0 * delay_s, self._retry_max_s)
                continue
            worker.pipeline = pipeline
            with self._lock:
                self._rebuilt += 1
            log.warning("worker %d: new pipeline built and warmed (attempt %d); back to work",
                        worker.index, attempt)
            return True
        return False

    def _close_on_thread(self, worker: W) -> None:
        pipeline, worker.pipeline = worker.pipeline, None
        if pipeline is not None:
            self._close_quietly(pipeline)

    def _close_quietly(self, pipeline: P) -> None:
        try:
            self._close(pipeline)
        except Exception:
            log.exception("closing a failed pipeline failed")
