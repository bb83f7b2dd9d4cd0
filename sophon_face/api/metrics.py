"""``GET /metrics``: the daemon's numbers in Prometheus text format (``prometheus-client``).

Two kinds of numbers, kept apart on purpose:

* Recorded as they happen, because nothing else keeps them: each HTTP request (counted by
  endpoint, method, HTTP status and the spec's error code, timed by endpoint and method;
  the error middleware calls ``observe_request``) and each pipeline stage on a worker
  (``service/metrics.py``).
* Read at scrape time from the payload ``/health`` builds, by ``StatusSnapshot``: worker
  queue depth, batching counters, gallery and event counts, the pushes' counters, each
  video device's reader and analysis counters. These already exist as in-memory counts
  (the gallery's and the event index's sizes, the pushers' and readers' counters), so the
  hot paths do no extra bookkeeping and a scrape touches no LMDB beyond the small device
  table /health reads anyway; and /metrics reports exactly what /health reports.

The instruments live in the app's own ``CollectorRegistry`` (never the process-wide
default: tests run many apps in one process), with the client's process, platform and GC
collectors beside them; the current values are one throwaway collector per scrape.
The text is rendered on a thread (some 8 us per sample). Names follow Prometheus conventions: the ``sophon_face_`` prefix,
base units in the name (seconds, bytes), ``_total`` on counters.

Labels: ``endpoint`` is the route's path pattern (``/sophon/v2/face/getregisterimage/
{image_id}``, the trailing-slash variant folded in), or ``unmatched`` for 404/405 so a
scanner cannot create a series per path it tries; ``code`` is the error envelope's code,
or ``OK`` when the handler answered itself.
"""

from __future__ import annotations

import asyncio
from typing import Any, Dict, Iterable, Iterator, Mapping, Optional

from aiohttp import hdrs, web
from prometheus_client import (CollectorRegistry, Counter, GCCollector, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, Metric,
                                    SummaryMetricFamily)
from prometheus_client.registry import Collector

from ..service.metrics import StageTimes
from .keys import SERVICES

#: The text exposition format every Prometheus understands; fixed here rather than the
#: client's CONTENT_TYPE_LATEST, whose version differs between client releases (the box
#: and a workstation may run different ones) while the bytes we produce do not.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Requests that matched no route (404) or no method of their route (405).
UNMATCHED = "unmatched"
#: The ``code`` label of an answer that is not an error envelope.
NO_ERROR = "OK"
#: 2.5 ms (a GET of /health) to 60 s (the workers' default timeout); 12 buckets, as every
#: endpoint served gets its own.
REQUEST_BUCKETS_S = (0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0)

PREFIX = "sophon_face_"


class Metrics:
    """One app's registry and the instruments recorded into it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            PREFIX + "http_requests_total",
            "HTTP requests answered, by endpoint, method, HTTP status and the spec's error "
            "code (OK when the answer is not an error envelope).",
            ["endpoint", "method", "status", "code"], registry=self.registry)
        self._latency = Histogram(
            PREFIX + "http_request_duration_seconds",
            "Time from a request reaching the error middleware to its response being ready.",
            ["endpoint", "method"], buckets=REQUEST_BUCKETS_S, registry=self.registry)
        self.stages = StageTimes(self.registry)
        ProcessCollector(registry=self.registry)  # process_*: CPU, memory, fds (Linux)
        PlatformCollector(registry=self.registry)  # python_info
        GCCollector(registry=self.registry)  # python_gc_*

    def observe_request(self, request: web.Request, status: int, code: str,
                        seconds: float) -> None:
        endpoint = endpoint_of(request)
        self._requests.labels(endpoint, request.method, str(status), code).inc()
        self._latency.labels(endpoint, request.method).observe(seconds)

    def render(self, health: Mapping[str, Any]) -> bytes:
        """The exposition text: the registry's instruments, then the current values taken
        from ``health`` (/health's payload). Thread-safe: each call has its own snapshot."""
        return generate_latest(self.registry) + generate_latest(StatusSnapshot(health))


METRICS = web.AppKey("metrics", Metrics)


def endpoint_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    if resource is None:  # aiohttp's system route: 404 or 405
        return UNMATCHED
    path = resource.canonical
    return path[:-1] if len(path) > 1 and path.endswith("/") else path


async def metrics(request: web.Request) -> web.Response:
    payload, _healthy = await request.app[SERVICES].health()
    # About 8 us per sample, 7 ms once every endpoint has its latency histogram: on a
    # thread, so the loop keeps serving in between (bench/README.md, "Metrics").
    body = await asyncio.get_running_loop().run_in_executor(
        None, request.app[METRICS].render, payload)
    return web.Response(body=body, headers={hdrs.CONTENT_TYPE: CONTENT_TYPE})


# --------------------------------------------------------------------------- scrape time

def _number(mapping: Mapping[str, Any], key: str) -> Optional[float]:
    """A numeric field of the payload, or None when it is missing or not a number (a
    renamed /health field loses its metric, it does not fail the whole scrape)."""
    value = mapping.get(key)
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _section(mapping: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = mapping.get(key)
    return value if isinstance(value, Mapping) else {}


class _Families:
    """Families built for one scrape; ``gauge``/``counter`` skip a missing value."""

    def __init__(self) -> None:
        self._families: Dict[str, Metric] = {}

    def _family(self, kind: type, name: str, help_text: str, labels: Iterable[str]) -> Metric:
        family = self._families.get(name)
        if family is None:
            family = kind(PREFIX + name, help_text, labels=list(labels))
            self._families[name] = family
        return family

    def gauge(self, name: str, help_text: str, value: Optional[float],
              **labels: str) -> None:
        if value is not None:
            self._family(GaugeMetricFamily, name, help_text, labels).add_metric(
                list(labels.values()), value)

    def counter(self, name: str, help_text: str, value: Optional[float],
                **labels: str) -> None:
        """``name`` without ``_total``: the client's family appends it."""
        if value is not None:
            self._family(CounterMetricFamily, name, help_text, labels).add_metric(
                list(labels.values()), value)

    def summary(self, name: str, help_text: str, count: Optional[float],
                total: Optional[float], **labels: str) -> None:
        if count is not None and total is not None:
            self._family(SummaryMetricFamily, name, help_text, labels).add_metric(
                list(labels.values()), count, total)

    def __iter__(self) -> Iterator[Metric]:
        return iter(self._families.values())


class StatusSnapshot(Collector):
    """The current values of one scrape, from /health's payload (rendered by itself with
    ``generate_latest``; never registered, so scrapes share no state)."""

    def __init__(self, payload: Mapping[str, Any]) -> None:
        self._payload = payload

    def collect(self) -> Iterable[Metric]:
        payload = self._payload
        out = _Families()
        _daemon(out, payload)
        _workers(out, _section(payload, "workers"))
        _store(out, _section(payload, "store"))
        _pushes(out, _section(payload, "push"))
        _devices(out, _section(payload, "devices"))
        return out


def _daemon(out: _Families, payload: Mapping[str, Any]) -> None:
    out.gauge("healthy", "1 when the store is open and the models answered their warm-up.",
              float(payload.get("status") == "ok"))
    models = _section(payload, "models")
    out.gauge("model_info", "The running profile and models (always 1).", 1.0,
              backend=str(payload.get("backend", "")), profile=str(payload.get("profile", "")),
              detector=str(_section(models, "detector").get("file", "")),
              recognizer=str(_section(models, "recognizer").get("file", "")),
              feature_dim=str(payload.get("feature_dim", "")))
    out.gauge("uptime_seconds", "Seconds since the daemon started serving.",
              _number(payload, "uptime_s"))
    warm = _section(payload, "warm_up")
    ms = _number(warm, "ms")
    out.gauge("worker_warm_up_seconds", "Time the workers took to load and warm their models.",
              None if ms is None else ms / 1000.0)


def _workers(out: _Families, workers: Mapping[str, Any]) -> None:
    out.gauge("workers", "Inference workers.", _number(workers, "count"))
    help_text = ("Jobs running or waiting for an inference worker: api (requests, admitted "
                 "by expected wait, workers.max_wait_s) and video (frames, one per device).")
    out.gauge("worker_queue_jobs", help_text, _number(workers, "pending"), kind="api")
    out.gauge("worker_queue_jobs", help_text, _number(workers, "video_pending"), kind="video")
    out.gauge("worker_expected_wait_seconds",
              "Expected wait for a worker of an API request arriving now (learnt service "
              "times of the API jobs ahead / workers).", _number(workers, "expected_wait_s"))
    out.gauge("worker_queued_body_bytes", "Bytes of request bodies waiting for a worker.",
              _number(workers, "queued_body_bytes"))
    out.counter("worker_refused_requests",
                "API requests refused with 503 because they would not fit the time or bytes "
                "budget.", _number(workers, "refused"))
    recovery = _section(workers, "recovery")
    out.counter("worker_failed_jobs", "Jobs whose inference raised (their worker was checked).",
                _number(recovery, "failed_jobs"))
    out.counter("worker_rebuilt_pipelines",
                "Worker pipelines rebuilt with new runtime sessions after a failure.",
                _number(recovery, "rebuilt"))
    out.counter("worker_replaced", "Workers replaced because a job never returned.",
                _number(recovery, "replaced"))
    out.gauge("worker_recovering", "Workers being checked or rebuilt now.",
              _number(recovery, "recovering"))
    for job, ms in sorted(_section(workers, "service_ms").items()):
        if isinstance(ms, (int, float)):
            out.gauge("worker_service_estimate_seconds",
                      "Learnt worker time of one job, by job kind (endpoint).", ms / 1000.0,
                      job=str(job))
    batching = _section(workers, "batching")
    out.gauge("inference_batching_enabled", "1 when models are micro-batched across workers.",
              _number(batching, "enabled"))
    for model, stats in sorted(batching.items()):
        if not isinstance(stats, Mapping):
            continue  # "enabled", "max_wait_ms"
        out.summary("inference_batch_samples",
                    "Samples per inner inference run of a micro-batching model (count: runs, "
                    "sum: samples; their ratio is the mean batch size).",
                    _number(stats, "batches"), _number(stats, "samples"), model=model)
        out.counter("inference_batch_requests", "Worker requests carried by batched runs.",
                    _number(stats, "requests"), model=model)
        out.counter("inference_batch_failed_requests",
                    "Worker requests answered with the inner backend's error.",
                    _number(stats, "failed_requests"), model=model)
        out.gauge("inference_batch_largest_samples", "The most samples one run carried.",
                  _number(stats, "largest_batch"), model=model)
        out.gauge("inference_batch_max_samples", "The configured batch size limit.",
                  _number(stats, "max_batch"), model=model)
        out.gauge("inference_batch_waiting_requests", "Requests queued for the next batch.",
                  _number(stats, "waiting"), model=model)


def _store(out: _Families, store: Mapping[str, Any]) -> None:
    out.gauge("store_open", "1 while the LMDB store is open.", _number(store, "open"))
    out.gauge("gallery_faces", "Faces in the gallery (registered, searchable).",
              _number(store, "faces"))
    out.gauge("store_events", "Events stored (after retention).", _number(store, "events"))
    out.counter("store_events_not_recorded",
                "Events dropped because the store was full (INSUFFICIENT_SPACE_LEFT).",
                _number(store, "events_not_recorded"))


def _pushes(out: _Families, push: Mapping[str, Any]) -> None:
    history = _section(push, "history")
    status = _section(push, "device_status")
    relay = _section(push, "relay")
    realtime = _section(push, "realtime")
    preview = _section(push, "preview")
    failures = ("Failed deliveries: history and device_status POSTs that got no 2xx, "
                "relay pulses that could not be sent.")
    for name, section in (("history", history), ("device_status", status), ("relay", relay)):
        out.counter("push_failures", failures, _number(section, "failures"), push=name)
    out.gauge("history_push_pending_events",
              "Events waiting for the history push (queued in the store, not yet delivered).",
              _number(history, "queued"))
    out.counter("history_push_delivered_events", "Events every history URL accepted.",
                _number(history, "delivered"))
    out.counter("device_status_reports", "Device status reports made.",
                _number(status, "reports"))
    out.counter("device_status_delivered_posts", "Device status POSTs answered with 2xx.",
                _number(status, "delivered"))
    out.counter("relay_pulses", "Relay pulses sent.", _number(relay, "pulses"))
    out.counter("relay_suppressed_events", "Events GATE_PASS_MODE kept the gate shut for.",
                _number(relay, "suppressed"))
    out.gauge("relay_pending_pulses", "Relay pulses in progress.", _number(relay, "pending"))
    out.gauge("realtime_subscribers", "Real-time WebSocket clients connected.",
              _number(realtime, "subscribers"))
    out.counter("realtime_published_events", "Events offered to the real-time clients.",
                _number(realtime, "published"))
    out.counter("realtime_sent_messages", "Real-time messages sent to clients.",
                _number(realtime, "sent"))
    out.counter("realtime_dropped_messages",
                "Real-time messages dropped because a client's queue was full.",
                _number(realtime, "dropped"))
    out.gauge("realtime_queued_messages", "Real-time messages queued for clients.",
              _number(realtime, "queued"))
    out.gauge("preview_viewers", "Preview stream clients connected.",
              _number(preview, "viewers"))
    out.counter("preview_encoded_frames", "Preview frames encoded.",
                _number(preview, "frames_encoded"))
    out.counter("preview_sent_frames", "Preview frames sent to viewers.",
                _number(preview, "frames_sent"))
    out.counter("preview_dropped_frames",
                "Preview frames dropped (encoder busy or a viewer's queue full).",
                _number(preview, "frames_dropped"))


#: (payload key, metric name without _total, help) of each watched device's counters.
_DEVICE_COUNTERS = (
    ("frames_read", "video_frames_read", "Frames decoded from the device's stream."),
    ("frames_analysed", "video_frames_analysed", "Frames the workers analysed."),
    ("frames_dropped", "video_frames_dropped",
     "Frames dropped because analysis was behind (the newest frame wins)."),
    ("frames_skipped", "video_frames_skipped", "Frames skipped by the analysis rate."),
    ("reconnects", "video_reconnects", "Times the stream was reopened."),
    ("faces", "video_faces", "Faces found in analysed frames."),
    ("tracks", "video_tracks", "Face tracks started."),
    ("events", "video_events", "Events recorded from the device."),
)


def _devices(out: _Families, devices: Mapping[str, Any]) -> None:
    for device_id, device in sorted(devices.items()):
        if not isinstance(device, Mapping):
            continue
        out.gauge("video_device_online", "1 when the device is online (device.md 9).",
                  float(device.get("status") == "online"), device_id=device_id,
                  type=str(device.get("type", "")))
        for key, name, help_text in _DEVICE_COUNTERS:  # a watched device's reader only
            out.counter(name, help_text, _number(device, key), device_id=device_id)
        out.gauge("video_source_fps", "The stream's own frame rate.",
                  _number(device, "native_fps"), device_id=device_id)
        for stage, ms in sorted(_section(device, "stage_ms").items()):
            if isinstance(ms, (int, float)):
                out.counter("video_stage_seconds",
                            "Worker time per pipeline stage spent on the device's frames.",
                            ms / 1000.0, device_id=device_id, stage=stage)
