"""Admission of API jobs to the worker pool: by expected waiting time and queued body bytes.

A queue bounded by a count (the former rule: ``workers.queue_size`` waiting requests, 32)
refuses a burst that the workers would clear in seconds: 200 concurrent ``detect`` calls
got 159 answers of 503 although all of them fitted well inside the 60 s request timeout
(bench/README.md, "Admission by waiting time"). What a client cares about is how long it
will wait, and what the daemon must bound is how long requests wait and how much memory
their bodies hold meanwhile. So a request is admitted when

* it starts at once (a worker is idle and no admitted job is about to take it), or
* expected wait + its own service time <= the time budget (``workers.max_wait_s``, capped
  at ``workers.timeout_s``), and the bodies of requests waiting for a worker plus its own
  fit ``workers.max_queued_body_bytes`` (a lone waiting body always fits: the HTTP layer's
  ``server.max_body_bytes`` bounds it);

otherwise it is refused at once with ServiceBusy (HTTP 503) whose ``Retry-After`` is the
time the queue needs, by the same estimate, to drain far enough to admit it, staggered
over the refused (each is promised the room after the one refused before it). An admitted
job whose worker comes too late for its estimate to end before the pool's hard timeout
(``workers.timeout_s``; the estimates were low) is refused then too, instead of running
into a timeout (INTERNAL_ERROR, HTTP 500) and keeping the worker from the next job.

The estimate: ``ServiceTimes`` learns each job kind's worker time (the time the job's
function ran on its worker thread): a plain mean of the first few, then an exponentially
weighted mean, each new sample capped at a multiple of the estimate so that one huge photo
does not make a whole queue of small ones look slow (a lasting change still shows after a
handful of jobs). Before any sample a kind is assumed to cost the prior, measured by the
pool from its warm-up inference. Expected wait = the sum of the estimates of the API jobs
waiting or running, divided by the worker count; estimates are read at decision time, so a
queue admitted on the prior is re-valued as soon as the first jobs are measured.

Video frames (``run_background``) never enter this accounting: they wait behind every API
request (workers/pool.py) and are bounded by the number of devices.

``admission: count`` keeps the former rule (``queue_size`` waiting requests, whatever they
cost), for comparison (bench/burst.py runs it beside the time rule) and as a fallback.

The size of a job's body comes from the HTTP layer, which knows it once it has read the
body: it sets ``REQUEST_BODY_BYTES`` in the request's task, and the pool reads it when a job
of that task is submitted, so the use cases between them need not carry it. Jobs submitted
outside a request (the in-process bulk importer) count 0 bytes. Everything here runs on the
event loop only.
"""

from __future__ import annotations

import logging
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from ..config import ADMISSION_MODES
from ..errors import ServiceBusy

log = logging.getLogger(__name__)

#: Bytes of the HTTP request body the current task serves (0 outside a request). Set by
#: api/http.py after reading a body; read by the pool when that task submits a job.
REQUEST_BODY_BYTES: "ContextVar[int]" = ContextVar("sophon_face_request_body_bytes", default=0)

#: Weight of a new sample once a kind has 1 / EWMA_ALPHA of them (before: a plain mean).
EWMA_ALPHA = 0.2
#: A sample raises the estimate by at most this factor (see the module doc).
MAX_SAMPLE_FACTOR = 4.0
#: Service time assumed before the warm-up measured one (seconds).
DEFAULT_PRIOR_S = 0.1
#: Floor of an estimate: a job is never assumed to be free.
MIN_SERVICE_S = 0.0005
#: The shortest Retry-After we send (HTTP delta-seconds are whole seconds).
MIN_RETRY_AFTER_S = 1


def job_kind(fn: Callable[..., Any]) -> str:
    """The kind a job is estimated by: its function's module and name without ``_job``
    (``analysis.detect`` for ``service.analysis._detect_job``). Each endpoint submits its
    own job function, so a kind is an endpoint (search and searchbyimage: their probes)."""
    name = (getattr(fn, "__name__", None) or type(fn).__name__).strip("_")
    if name.endswith("_job"):
        name = name[:-len("_job")]
    module = (getattr(fn, "__module__", None) or "").rsplit(".", 1)[-1]
    return f"{module}.{name}" if module else name


class ServiceTimes:
    """Estimated worker seconds per job kind (see the module doc)."""

    def __init__(self, prior_s: float = DEFAULT_PRIOR_S) -> None:
        self._prior_s = max(MIN_SERVICE_S, prior_s)
        self._mean_s: Dict[str, float] = {}
        self._samples: Dict[str, int] = {}

    @property
    def prior_s(self) -> float:
        return self._prior_s

    def set_prior(self, seconds: float) -> None:
        """The estimate of every kind not yet measured (the pool's warm-up time)."""
        self._prior_s = max(MIN_SERVICE_S, seconds)

    def estimate(self, kind: str) -> float:
        return self._mean_s.get(kind, self._prior_s)

    def samples(self, kind: str) -> int:
        return self._samples.get(kind, 0)

    def observe(self, kind: str, seconds: float) -> None:
        seconds = max(MIN_SERVICE_S, seconds)
        n = self._samples.get(kind, 0) + 1
        self._samples[kind] = n
        mean = self._mean_s.get(kind)
        if mean is None:  # the first sample replaces the prior
            self._mean_s[kind] = seconds
            return
        seconds = min(seconds, mean * MAX_SAMPLE_FACTOR)
        self._mean_s[kind] = mean + max(1.0 / n, EWMA_ALPHA) * (seconds - mean)

    def snapshot_ms(self) -> Dict[str, float]:
        return {kind: round(mean * 1000.0, 3) for kind, mean in sorted(self._mean_s.items())}


@dataclass(frozen=True)
class AdmissionLimits:
    """The ``workers`` settings admission uses (config.py documents each)."""

    mode: str = "time"
    max_wait_s: float = 30.0
    max_queued_body_bytes: int = 256 * 1024 * 1024
    queue_size: int = 32  # mode "count" only

    def __post_init__(self) -> None:
        if self.mode not in ADMISSION_MODES:
            raise ValueError(f"admission must be one of {ADMISSION_MODES}, got {self.mode!r}")


class Ticket:
    """One admitted API job: waiting (its body counted), then running, then gone."""

    __slots__ = ("_admission", "kind", "body_bytes", "_state")

    def __init__(self, admission: "Admission", kind: str, body_bytes: int) -> None:
        self._admission = admission
        self.kind = kind
        self.body_bytes = body_bytes
        self._state = "waiting"

    def started(self) -> None:
        """It got a worker: its body no longer waits."""
        if self._state == "waiting":
            self._state = "running"
            self._admission._started(self.body_bytes)

    def close(self) -> None:
        """It finished, failed or gave up; idempotent."""
        if self._state == "closed":
            return
        self.started()
        self._state = "closed"
        self._admission._leave(self.kind)


class Admission:
    """Admits API jobs (``admit``) and keeps the counts the decision needs."""

    def __init__(self, limits: AdmissionLimits, workers: int, times: ServiceTimes,
                 timeout_s: float = math.inf,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.times = times
        self._clock = clock
        self._workers = max(1, workers)
        #: The time budget: max_wait_s, never beyond the pool's hard timeout.
        self.budget_s = min(limits.max_wait_s, timeout_s)
        self._jobs: Dict[str, int] = {}  # API jobs waiting or running, by kind
        self.pending = 0
        self.waiting = 0  # admitted, no worker yet
        self.queued_body_bytes = 0
        self.refused = 0
        #: Up to when the queue's future room is promised to refused jobs (clock time).
        self._retry_horizon = -math.inf

    def expected_wait_s(self) -> float:
        """Seconds a job submitted now should wait for a worker (API jobs only)."""
        total = sum(n * self.times.estimate(kind) for kind, n in self._jobs.items())
        return total / self._workers

    def admit(self, kind: str, body_bytes: int = 0, starts_now: bool = False) -> Ticket:
        """A ticket for the job, or ServiceBusy with Retry-After (see the module doc)."""
        if not starts_now:
            fits_after_s = self.refusal(kind, body_bytes)
            if fits_after_s is not None:
                busy = self._refuse(kind, fits_after_s)
                log.debug("refused a %s job: expected wait %.2f s, %d bytes waiting; "
                          "retry after %.1f s", kind, self.expected_wait_s(),
                          self.queued_body_bytes, busy.retry_after_s)
                raise busy
        self._jobs[kind] = self._jobs.get(kind, 0) + 1
        self.pending += 1
        self.waiting += 1
        self.queued_body_bytes += body_bytes
        return Ticket(self, kind, body_bytes)

    def refusal(self, kind: str, body_bytes: int) -> Optional[float]:
        """None to admit the job, else the seconds after which it should fit (if nobody
        else came meanwhile)."""
        wait_s = self.expected_wait_s()
        own_s = self.times.estimate(kind)
        if self.limits.mode == "count":
            excess = self.pending - (self._workers + self.limits.queue_size) + 1
            if excess <= 0:
                return None
            return excess * wait_s / max(1, self.pending)
        over_time_s = wait_s + own_s - self.budget_s
        over_bytes = self.queued_body_bytes + body_bytes - self.limits.max_queued_body_bytes
        if over_time_s <= 0 and (over_bytes <= 0 or self.queued_body_bytes == 0):
            return None
        # Bodies leave the queue about evenly over the expected wait.
        bytes_drain_s = (wait_s * min(1.0, over_bytes / self.queued_body_bytes)
                         if over_bytes > 0 and self.queued_body_bytes else 0.0)
        return max(0.0, over_time_s, bytes_drain_s)

    def shed(self, kind: str) -> ServiceBusy:
        """The answer for an admitted job whose worker came too late for it to finish
        before the pool's timeout (its estimate was low): counted as refused."""
        log.debug("a %s job got its worker too late to finish in time: refused", kind)
        over_s = self.expected_wait_s() + self.times.estimate(kind) - self.budget_s
        return self._refuse(kind, max(0.0, over_s))

    def _refuse(self, kind: str, fits_after_s: float) -> ServiceBusy:
        """Count a refusal and stagger its Retry-After: the queue's room as it drains is
        promised to the refused in turn, each taking its own estimate of it, so that a
        burst told to come back does not all come back at once (and get refused again,
        bar a few). The promise reaches at most one budget beyond the fit."""
        self.refused += 1
        now = self._clock()
        fits_at = now + fits_after_s
        slot = min(max(fits_at, self._retry_horizon), fits_at + self.budget_s)
        self._retry_horizon = slot + self.times.estimate(kind) / self._workers
        return ServiceBusy(retry_after_s=max(float(MIN_RETRY_AFTER_S), slot - now))

    def stats(self) -> Dict[str, Any]:
        return {"mode": self.limits.mode, "budget_s": self.budget_s,
                "max_queued_body_bytes": self.limits.max_queued_body_bytes,
                "expected_wait_s": round(self.expected_wait_s(), 3),
                "waiting": self.waiting, "queued_body_bytes": self.queued_body_bytes,
                "refused": self.refused,
                "prior_ms": round(self.times.prior_s * 1000.0, 3),
                "service_ms": self.times.snapshot_ms()}

    def _started(self, body_bytes: int) -> None:
        self.waiting -= 1
        self.queued_body_bytes -= body_bytes

    def _leave(self, kind: str) -> None:
        left = self._jobs[kind] - 1
        if left:
            self._jobs[kind] = left
        else:
            del self._jobs[kind]
        self.pending -= 1
