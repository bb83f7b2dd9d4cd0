"""Cross-request micro-batching: many worker threads, one inference thread, one backend.

BM1684 has one TPU core, and an int8 batch-4 run costs little more than a batch-1 run
(3-4x the throughput per image, reference/sail.md section 5), so TPU throughput comes from
filling batches, not from more threads; and a SAIL Engine may only be used by the thread
that created it. A
``BatchingBackend`` therefore owns one dedicated thread that opens the inner backend and
runs every inference on it, while any number of worker threads call ``run`` at once:
their samples are queued, concatenated along axis 0, run in one inner call (the inner
backend pads to its compiled batches) and handed back to each caller.

The deadline. The batcher takes the first waiting request plus every compatible request
already queued, up to ``max_batch`` samples. It then waits for late-comers, at most until
``max_wait_s`` after the first request *arrived* (time spent queued behind a running batch
counts, so a loaded batcher adds no wait at all), and only while it is *armed*:

* armed when a request arrives while another is still in flight (queued or running):
  proof that callers overlap, so a short wait is likely to fill the batch;
* disarmed when a wait runs to its deadline without anyone joining: the overlap is over.

A single caller alone never overlaps with itself, so it never waits; after a burst of
concurrency a lone caller pays the deadline at most once. The wait also ends early when
the batch is full or when every attached client (``attach``: one per worker) already has
a request in it, since each client has at most one request outstanding and nobody else
can come; with one attached client the batcher never waits.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from .base import Backend, BackendError, TensorSpec, checked_feeds

log = logging.getLogger(__name__)

#: How long ``close`` waits for the batch in progress and the inner backend's close.
CLOSE_TIMEOUT_S = 30.0

_Key = Tuple[Tuple[str, Tuple[int, ...]], ...]


@dataclass(frozen=True)
class BatchingStats:
    """Counters since start: inner runs, the requests and samples they carried."""

    batches: int = 0
    requests: int = 0
    samples: int = 0
    #: The most samples one inner run received.
    largest_batch: int = 0
    #: Requests answered with an error from the inner backend.
    failed_requests: int = 0
    #: Attached clients (one per worker pipeline).
    clients: int = 0
    #: Requests queued now, not yet in a batch.
    waiting: int = 0


class _Request:
    __slots__ = ("feeds", "samples", "key", "arrived_s", "done", "outputs", "error")

    def __init__(self, feeds: Dict[str, np.ndarray], samples: int, key: _Key) -> None:
        self.feeds = feeds
        self.samples = samples
        self.key = key
        self.arrived_s = 0.0
        self.done = threading.Event()
        self.outputs: Optional[Dict[str, np.ndarray]] = None
        self.error: Optional[BaseException] = None


def _caller_error(exc: BaseException) -> BackendError:
    # One exception object per caller: raising the same object from several threads at
    # once would race on its __traceback__.
    if isinstance(exc, BackendError):
        error = BackendError(str(exc))
    else:
        error = BackendError(f"inference failed: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error


class BatchingBackend:
    """A ``Backend`` whose ``run`` may be called from many threads at once.

    ``open_inner`` is called on the batching thread, so a thread-bound inner backend
    (SAIL) is created, run and closed on that one thread. The constructor returns once
    the inner backend is open, or raises its error.
    """

    def __init__(self, open_inner: Callable[[], Backend], max_batch: int = 4,
                 max_wait_s: float = 0.003, name: str = "model") -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0, got {max_wait_s}")
        self._max_batch = int(max_batch)
        self._max_wait_s = float(max_wait_s)
        self._name = name
        self._cond = threading.Condition()
        self._queue: Deque[_Request] = collections.deque()
        self._closed = False
        self._in_flight = 0  # requests queued or in the running batch
        self._armed = False
        self._clients = 0
        self._stats = BatchingStats()
        self._input_specs: List[TensorSpec] = []
        self._output_names: List[str] = []
        self.runtime = ""
        self._opened = threading.Event()
        self._open_error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._serve, args=(open_inner,),
                                        name=f"batcher-{name}", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            error = self._open_error
            if isinstance(error, BackendError):
                raise error
            raise BackendError(f"cannot open {name}: {type(error).__name__}: {error}") from error
        log.info("%s: micro-batching up to %d samples, waiting at most %.1f ms, on thread %s",
                 name, self._max_batch, self._max_wait_s * 1000.0, self._thread.name)

    # -- the Backend protocol -------------------------------------------------------------

    @property
    def max_batch(self) -> int:
        return self._max_batch

    @property
    def max_wait_s(self) -> float:
        return self._max_wait_s

    def input_specs(self) -> List[TensorSpec]:
        return list(self._input_specs)

    def output_names(self) -> List[str]:
        return list(self._output_names)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Queue ``feeds`` with other callers' and block until this call's outputs are in."""
        if threading.current_thread() is self._thread:
            # The inner backend calling back into its batcher would wait on itself forever.
            raise BackendError(f"{self._name}: run() called from its own batching thread")
        request = self._request(feeds)
        with self._cond:
            if self._closed:
                raise BackendError(f"{self._name}: backend is closed")
            if self._in_flight:
                self._armed = True
            self._in_flight += 1
            request.arrived_s = time.monotonic()
            self._queue.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.outputs is not None
        return request.outputs

    def close(self) -> None:
        """Fail queued requests, let the running batch finish, close the inner backend on
        the batching thread and stop it. Idempotent."""
        with self._cond:
            self._closed = True
            self._fail_queued_locked("backend is closed")
            self._cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._thread.join(CLOSE_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("%s: batching thread still busy %.0f s after close",
                            self._name, CLOSE_TIMEOUT_S)

    # -- sharing between workers ------------------------------------------------------------

    def attach(self) -> "BatchingClient":
        """A per-worker view of this backend.

        Counting the views tells the batcher how many callers can possibly join a batch;
        closing a view detaches it and leaves the shared backend open (its owner closes it).
        """
        with self._cond:
            if self._closed:
                raise BackendError(f"{self._name}: backend is closed")
            self._clients += 1
        return BatchingClient(self)

    def _detach(self) -> None:
        with self._cond:
            self._clients = max(0, self._clients - 1)

    def stats(self) -> BatchingStats:
        with self._cond:
            return dataclasses.replace(self._stats, clients=self._clients,
                                       waiting=len(self._queue))

    # -- callers' side ----------------------------------------------------------------------

    def _request(self, feeds: Dict[str, np.ndarray]) -> _Request:
        """Check one caller's feeds before they join a batch: a malformed request must
        fail alone, not take the other callers of its batch down with it."""
        arrays, samples = checked_feeds(self._input_specs, feeds, self._name)
        # Only requests with equal per-sample shapes can be concatenated (a model with free
        # spatial dimensions may get differently sized inputs).
        key = tuple((name, tuple(array.shape[1:])) for name, array in arrays.items())
        return _Request(arrays, samples, key)

    # -- the batching thread ------------------------------------------------------------------

    def _serve(self, open_inner: Callable[[], Backend]) -> None:
        try:
            inner = open_inner()
        except BaseException as exc:  # reported to the constructor, which re-raises it
            self._open_error = exc
            self._opened.set()
            return
        try:
            self.runtime = inner.runtime
            self._input_specs = list(inner.input_specs())
            self._output_names = list(inner.output_names())
        except BaseException as exc:
            self._open_error = exc
            self._close_inner(inner)
            self._opened.set()
            return
        self._opened.set()
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                self._run_batch(inner, batch)
        except BaseException:
            log.exception("%s: batching thread failed", self._name)
            raise
        finally:
            # Whatever stopped the loop, no caller may be left waiting on a dead thread.
            with self._cond:
                self._closed = True
                self._fail_queued_locked("backend is closed")
            self._close_inner(inner)

    def _close_inner(self, inner: Backend) -> None:
        try:
            inner.close()
        except Exception:
            log.exception("%s: closing the inner backend failed", self._name)

    def _fail_queued_locked(self, message: str) -> None:
        while self._queue:
            request = self._queue.popleft()
            self._in_flight -= 1
            request.error = BackendError(f"{self._name}: {message}")
            request.done.set()

    def _next_batch(self) -> Optional[List[_Request]]:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            first = self._queue.popleft()
            batch = [first]
            samples = self._take_locked(batch, first.samples, first.key)
            deadline_s = first.arrived_s + self._max_wait_s
            waited = joined = False
            while self._armed and self._max_wait_s > 0 and not self._full(batch, samples):
                remaining_s = deadline_s - time.monotonic()
                if remaining_s <= 0:
                    if waited and not joined:
                        # A whole deadline and nobody came: the callers no longer overlap.
                        self._armed = False
                    break
                self._cond.wait(remaining_s)
                waited = True
                if self._closed:
                    # close() failed the queue; the requests taken already fail the same way.
                    self._in_flight -= len(batch)
                    for request in batch:
                        request.error = BackendError(f"{self._name}: backend is closed")
                        request.done.set()
                    return None
                before = len(batch)
                samples = self._take_locked(batch, samples, first.key)
                joined = joined or len(batch) > before
            return batch

    def _full(self, batch: List[_Request], samples: int) -> bool:
        # Each client blocks in run(), so it has at most one request outstanding: once
        # every client is in the batch, waiting longer cannot add anything.
        return samples >= self._max_batch or (self._clients > 0 and len(batch) >= self._clients)

    def _take_locked(self, batch: List[_Request], samples: int, key: _Key) -> int:
        """Move queued requests that fit into ``batch``; the rest keep their order."""
        kept: Deque[_Request] = collections.deque()
        for request in self._queue:
            if (request.key == key and samples < self._max_batch
                    and samples + request.samples <= self._max_batch):
                batch.append(request)
                samples += request.samples
            else:
                kept.append(request)
        self._queue = kept
        return samples

    def _run_batch(self, inner: Backend, batch: List[_Request]) -> None:
        total = sum(request.samples for request in batch)
        parts: List[Dict[str, np.ndarray]] = []
        error: Optional[BaseException] = None
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {name: np.concatenate([r.feeds[name] for r in batch], axis=0)
                         for name in batch[0].feeds}
            outputs = inner.run(feeds)
            for name in self._output_names:
                out = outputs.get(name)
                if out is None or np.ndim(out) < 1 or len(out) != total:
                    raise BackendError(
                        f"{self._name}: output {name!r} does not have the batch's {total} rows")
            if len(batch) == 1:
                parts = [outputs]
            else:
                start = 0
                for request in batch:
                    stop = start + request.samples
                    # Copies, so no caller's result keeps the whole batch alive or
                    # shares memory with another caller's.
                    parts.append({name: np.array(outputs[name][start:stop], dtype=np.float32,
                                                 copy=True) for name in self._output_names})
                    start = stop
        except Exception as exc:
            error = exc
            log.warning("%s: inference of a batch of %d samples (%d requests) failed: %s",
                        self._name, total, len(batch), exc)
        with self._cond:
            s = self._stats
            self._stats = dataclasses.replace(
                s, batches=s.batches + 1, requests=s.requests + len(batch),
                samples=s.samples + total, largest_batch=max(s.largest_batch, total),
                failed_requests=s.failed_requests + (len(batch) if error is not None else 0))
            # Out of flight before anyone wakes: a caller's next request must not count
            # its own previous one as an overlapping caller.
            self._in_flight -= len(batch)
            for i, request in enumerate(batch):
                if error is not None:
                    request.error = _caller_error(error)
                else:
                    request.outputs = parts[i]
                request.feeds = {}
                request.done.set()


class BatchingClient:
    """One worker's handle on a shared ``BatchingBackend``; ``close`` only detaches."""

    def __init__(self, shared: BatchingBackend) -> None:
        self._shared: Optional[BatchingBackend] = shared
        self.runtime = shared.runtime

    @property
    def shared(self) -> BatchingBackend:
        if self._shared is None:
            raise BackendError("batching client is closed")
        return self._shared

    def input_specs(self) -> List[TensorSpec]:
        return self.shared.input_specs()

    def output_names(self) -> List[str]:
        return self.shared.output_names()

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return self.shared.run(feeds)

    def close(self) -> None:
        shared, self._shared = self._shared, None
        if shared is not None:
            shared._detach()
