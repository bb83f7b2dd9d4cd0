"""``GET /metrics`` on a real daemon: requests counted by endpoint and error code, latency
and pipeline stage histograms, the gauges /health's numbers feed, Prometheus naming."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sophon_face.config import config_from_mapping

from ..video_media import Passage, write_video
from .conftest import TEST_DATA_DIR, photo
from .live import LiveServer, Reply, b64_of
from .video_support import health, ok, wait_for

BASE = "/sophon/v2/face"
#: Families we do not name: the client's process, platform and GC collectors.
CLIENT_PREFIXES = ("process_", "python_")
#: Base units only: seconds and bytes, never ms, minutes, kilobytes...
FOREIGN_UNITS = re.compile(r"_(ms|msec|milliseconds|us|microseconds|minutes|hours|kb|mb|"
                           r"kilobytes|megabytes|percent)(_|$)")
NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


class Scrape:
    """One parsed ``/metrics`` answer."""

    def __init__(self, reply: Reply) -> None:
        assert reply.status == 200, reply
        self.content_type = reply.headers["content-type"]
        self.families = {f.name: f for f in text_string_to_metric_families(
            reply.body.decode("utf-8"))}
        self.samples: Samples = {}
        for family in self.families.values():
            for sample in family.samples:
                self.samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when the series does not exist (yet)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def series(self, name: str) -> List[Dict[str, str]]:
        return [dict(labels) for (sample, labels) in self.samples if sample == name]


def scrape(server: LiveServer) -> Scrape:
    return Scrape(server.request("GET", "/metrics"))


def requests_total(scrape_: Scrape, endpoint: str, method: str, status: int, code: str) -> float:
    return scrape_.value("sophon_face_http_requests_total", endpoint=endpoint, method=method,
                         status=str(status), code=code)


def test_requests_latency_and_stages_are_counted(fresh_server: LiveServer) -> None:
    server = fresh_server
    before = scrape(server)
    assert before.value("sophon_face_gallery_faces") == 0
    assert before.value("sophon_face_store_events") == 0

    ok(server.post("getpermissions", {}))
    ok(server.request("POST", f"{BASE}/getpermissions/", b"{}",  # the trailing-slash variant
                      {"Content-Type": "application/json"}))
    bad = server.request("POST", f"{BASE}/createpermission", b"{not json",
                         {"Content-Type": "application/json"})
    assert bad.status == 400 and bad.error[0] == "INVALID_REQUEST_JSON"
    assert server.post("detect", {"image_base64_str": b64_of(photo("no_face_coffee.jpg"))}
                       ).error[0] == "NO_FACE_ERROR"
    ok(server.post("detect", {"image_base64_str": b64_of(photo("macron_2014.jpg")),
                              "with_feature": True}))
    ok(server.post("fiqa", {"image_base64_str": b64_of(photo("obama_senate.jpg"))}))
    ok(server.post("createidentity", {"register_image": b64_of(photo("ardern_2018.jpg")),
                                      "fiqa_level": "no"}))
    missing = server.request("GET", f"{BASE}/getregisterimage/no-such-image")
    assert missing.status == 404
    assert server.request("GET", "/no/such/path").status == 404
    assert server.request("GET", f"{BASE}/detect").status == 405
    ok(server.request("GET", "/health"))

    after = scrape(server)
    assert after.content_type.startswith("text/plain")
    assert "version=0.0.4" in after.content_type

    def moved(endpoint: str, method: str, status: int, code: str) -> float:
        return (requests_total(after, endpoint, method, status, code)
                - requests_total(before, endpoint, method, status, code))

    assert moved(f"{BASE}/getpermissions", "POST", 200, "OK") == 2  # both variants, one endpoint
    assert moved(f"{BASE}/createpermission", "POST", 400, "INVALID_REQUEST_JSON") == 1
    assert moved(f"{BASE}/detect", "POST", 400, "NO_FACE_ERROR") == 1
    assert moved(f"{BASE}/detect", "POST", 200, "OK") == 1
    assert moved(f"{BASE}/fiqa", "POST", 200, "OK") == 1
    assert moved(f"{BASE}/createidentity", "POST", 200, "OK") == 1
    # An unknown image is the handler's own empty 404 (R4), not an error envelope.
    assert moved(f"{BASE}/getregisterimage/{{image_id}}", "GET", 404, "OK") == 1
    assert moved("unmatched", "GET", 404, "NOT_FOUND") == 1
    assert moved("unmatched", "GET", 405, "METHOD_NOT_ALLOWED") == 1
    assert moved("/health", "GET", 200, "OK") == 1
    # The first scrape counted itself once it was answered.
    assert requests_total(after, "/metrics", "GET", 200, "OK") == 1
    # No raw path (a scanner's or an image id) ever becomes a label value.
    endpoints = {labels["endpoint"] for labels in after.series("sophon_face_http_requests_total")}
    assert not any("no-such" in e or e.endswith("/") for e in endpoints), endpoints

    # Latency: one observation per request, cumulative buckets ending at +Inf == count.
    latency = "sophon_face_http_request_duration_seconds"
    detect = {"endpoint": f"{BASE}/detect", "method": "POST"}
    assert after.value(latency + "_count", **detect) == 2
    assert after.value(latency + "_sum", **detect) > 0
    buckets = sorted((float(labels["le"]), after.value(latency + "_bucket", **labels))
                     for labels in after.series(latency + "_bucket")
                     if labels["endpoint"] == detect["endpoint"])
    assert [count for _, count in buckets] == sorted(count for _, count in buckets)
    assert buckets[-1] == (float("inf"), 2)

    # Pipeline stages on the worker: detect (3 detections, the no-face one included),
    # align and quality (fiqa, createidentity), embed (detect with_feature, createidentity).
    stage = "sophon_face_pipeline_stage_duration_seconds_count"
    assert after.value(stage, stage="detect") - before.value(stage, stage="detect") >= 3
    for name in ("align", "quality", "embed"):
        assert after.value(stage, stage=name) - before.value(stage, stage=name) >= 2, name

    # Gauges read from /health's numbers at scrape time.
    assert after.value("sophon_face_gallery_faces") == 1
    assert after.value("sophon_face_healthy") == 1
    assert after.value("sophon_face_store_open") == 1
    assert after.value("sophon_face_workers") == 1
    assert after.value("sophon_face_worker_queue_jobs", kind="api") == 0
    assert after.value("sophon_face_worker_queue_jobs", kind="video") == 0
    assert after.value("sophon_face_history_push_pending_events") == 0
    for push in ("history", "device_status", "relay"):
        assert ("sophon_face_push_failures_total", (("push", push),)) in after.samples
    assert after.value("sophon_face_realtime_dropped_messages_total") == 0
    info = after.series("sophon_face_model_info")
    assert len(info) == 1 and info[0]["backend"] == "onnx", info
    assert after.value("sophon_face_inference_batching_enabled") == 0  # auto: SAIL only
    assert after.value("process_resident_memory_bytes") > 0


def test_names_follow_prometheus_conventions(server: LiveServer) -> None:
    ok(server.request("GET", "/health"))
    result = scrape(server)
    for name, family in result.families.items():
        assert NAME.match(name), name
        assert name.startswith("sophon_face_") or name.startswith(CLIENT_PREFIXES), name
        assert not FOREIGN_UNITS.search(name), f"{name}: base units only (seconds, bytes)"
        assert family.documentation, f"{name} has no help text"
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), name
        else:
            assert not name.endswith("_total"), f"{name} is a {family.type}, not a counter"
        if family.type == "histogram":
            assert name.endswith("_seconds"), name
    for must in ("sophon_face_http_requests", "sophon_face_http_request_duration_seconds",
                 "sophon_face_pipeline_stage_duration_seconds", "sophon_face_gallery_faces",
                 "sophon_face_store_events", "sophon_face_history_push_pending_events",
                 "sophon_face_worker_queue_jobs", "sophon_face_push_failures",
                 "sophon_face_worker_failed_jobs", "sophon_face_worker_replaced",
                 "sophon_face_store_events_not_recorded", "sophon_face_worker_refused_requests"):
        assert must in result.families, must
    assert result.families["sophon_face_http_requests"].type == "counter"
    assert result.families["sophon_face_http_request_duration_seconds"].type == "histogram"


def test_each_app_has_its_own_registry(server: LiveServer, fresh_server: LiveServer) -> None:
    """Two daemons in one process: a request to one is not counted by the other."""
    ok(server.request("GET", "/health"))
    first = scrape(fresh_server)
    assert requests_total(first, "/health", "GET", 200, "OK") == 0
    assert requests_total(first, "/metrics", "GET", 200, "OK") == 0


@pytest.fixture()
def batching_video_server(models, tmp_path: Path) -> Iterator[Tuple[LiveServer, Path]]:
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    live = LiveServer(config_from_mapping({
        "server": {"ws_port": 0},
        "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(tmp_path / "daemon"), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR), str(video_dir)]},
        "workers": {"count": 2, "intra_op_threads": 1, "batching": "on"},
        "video": {"analysis_fps": 8.0},
    }), models).start()
    yield live, video_dir
    live.stop()


def test_batches_and_video_devices(batching_video_server: Tuple[LiveServer, Path],
                                   heads) -> None:
    """With batching on and a file device: batch sizes per model and the device's frame
    counters, the same numbers /health shows."""
    server, video_dir = batching_video_server
    ok(server.post("detect", {"image_base64_str": b64_of(photo("macron_2014.jpg")),
                              "with_feature": True}))
    video = write_video(video_dir / "walk.avi", [Passage("obama_senate.jpg", 0.2, 1.6)], 2.0,
                        {"obama_senate.jpg": heads("obama_senate.jpg")})
    device = ok(server.post("addmediadevice", {
        "media_device_type": "file", "media_device_name": "corridor",
        "media_device_url": str(video)}))["media_device_id"]
    wait_for(lambda: health(server)["devices"][device].get("state") == "finished", 60,
             "the file to finish")
    time.sleep(0.5)  # the stranger's event is recorded when its track ends
    state = health(server)["devices"][device]
    result = scrape(server)

    for model in ("detector", "recognizer"):
        runs = result.value("sophon_face_inference_batch_samples_count", model=model)
        samples = result.value("sophon_face_inference_batch_samples_sum", model=model)
        assert runs >= 1 and samples >= runs, (model, runs, samples)
        assert result.value("sophon_face_inference_batch_max_samples", model=model) >= 1
        assert result.value("sophon_face_inference_batch_requests_total", model=model) >= runs
    assert result.families["sophon_face_inference_batch_samples"].type == "summary"
    assert result.value("sophon_face_inference_batching_enabled") == 1

    labels = {"device_id": device}
    assert result.value("sophon_face_video_frames_read_total", **labels) == state["frames_read"]
    assert result.value("sophon_face_video_frames_analysed_total",
                        **labels) == state["frames_analysed"] > 0
    assert result.value("sophon_face_video_frames_dropped_total",
                        **labels) == state["frames_dropped"]
    assert result.value("sophon_face_video_device_online", device_id=device, type="file") in (0, 1)
    detect_s = result.value("sophon_face_video_stage_seconds_total", device_id=device,
                            stage="detect")
    assert detect_s == pytest.approx(state["stage_ms"]["detect"] / 1000.0, abs=1e-3)
    assert detect_s > 0
    assert result.value("sophon_face_store_events") == health(server)["store"]["events"]
