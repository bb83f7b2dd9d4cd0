"""``/metrics``: scrape time with 100k faces and 10k events, beside an empty store, and
what the meters cost the hot paths.

1. A store of 100k faces (100k identities in 10 groups) and 10k events, every event still
   queued for the history push, written straight through the store's repositories like
   bench/events.py does; the daemon runs in this process on it (bench/inprocess.py) with
   8 photo devices, after one request to each of the API's POST endpoints (a malformed
   body: every endpoint gets its series, nothing is changed) and a few valid ones.
2. ``GET /metrics`` over HTTP, call by call alternating with ``GET /health`` (what the
   scrape builds on), then the same on an empty store: the scrape must not grow with
   the library (no LMDB scans; in-memory counts only).
3. Inside the daemon: /health's payload (awaited on the daemon's loop) vs the rendering,
   and how late a 1 ms timer on the daemon's loop fires while scrapes run back to back.
4. The hot-path costs: one request's count + latency observation in the error
   middleware, and one analysed face's four stage observations on a worker.

Run (from the project root):
    .venv/bin/python bench/metrics.py            # 100k faces, 10k events, 300 scrapes
    .venv/bin/python bench/metrics.py --quick    # 20k faces, 2k events, 100 scrapes
Prints markdown; writes bench/results/metrics-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Tuple

import numpy as np

from events import fill
from inprocess import InProcessDaemon
from measure import (PROJECT_DIR, RESULTS_DIR, TEST_DATA_DIR, CpuShare, Stats, describe_machine,
                     machine, markdown_table, save_results)

from sophon_face.api.keys import SERVICES
from sophon_face.api.metrics import METRICS
from sophon_face.api.routes import BASE, ROUTES
from sophon_face.config import config_from_mapping
from sophon_face.store import faces, identities, permissions
from sophon_face.store.env import Store, Txn
from sophon_face.workers.models import prepare_models

DIM = 128  # the CPU profile's recognizer (SFace)
GROUPS = 10
FACES_PER_TXN = 10_000
DEVICES = 8
MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"
MODEL_CACHE = RESULTS_DIR / "models"
log = logging.getLogger("bench.metrics")


# ---------------------------------------------------------------- the store fixture

async def write_fixture(data_dir: Path, face_count: int, event_count: int) -> float:
    """Faces and events straight through the repositories; returns the seconds it took."""
    started = time.perf_counter()
    store = Store(data_dir, gallery=None, min_free_bytes=0,
                  map_size_bytes=int(face_count * (DIM * 4 + 700) * 1.3) + (256 << 20))
    await store.open()
    group_ids = [f"bench-group-{g}" for g in range(GROUPS)]

    def groups(txn: Txn) -> Tuple[None, None]:
        for gid in group_ids:
            permissions.put(txn, {"permission_id": gid, "permission_name": gid,
                                  "description": "benchmark fixture"})
        return None, None

    def batch(txn: Txn, start: int, block: np.ndarray) -> Tuple[None, None]:
        for offset, feature in enumerate(block):
            i = start + offset
            face_id = str(uuid.UUID(bytes=os.urandom(16), version=4))
            image_id = str(uuid.UUID(bytes=os.urandom(16), version=4))
            identity_id = f"bench-{i:08d}"
            faces.put(txn, faces.make_record(face_id, identity_id, image_id, feature))
            identities.put(txn, {
                "identity_id": identity_id, "identity_name": f"person {i}",
                "user_type": "employee", "permission_ids": [group_ids[i % GROUPS]],
                "ext_user_info": {}, "face_ids": [face_id], "register_image_ids": [image_id],
            })
        return None, None

    rng = np.random.default_rng(11)
    try:
        await store.write(groups)
        for start in range(0, face_count, FACES_PER_TXN):
            rows = rng.standard_normal((min(FACES_PER_TXN, face_count - start), DIM))
            rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
            await store.write(batch, start, rows)
        await fill(store, event_count, queue=True)  # every event waits for the history push
    finally:
        await store.close()
    return time.perf_counter() - started


# ---------------------------------------------------------------- the daemon

def start_daemon(data_dir: Path, models: Any) -> InProcessDaemon:
    config = config_from_mapping({
        "server": {"ws_port": 0}, "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR)]}, "workers": {"count": 1},
        "events": {"max_events": 1_000_000}})
    return InProcessDaemon(config).start(models)


def raw_request(daemon: InProcessDaemon, method: str, path: str,
                body: bytes = b"") -> Tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=60)
    try:
        conn.request(method, path, body or None, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def populate_series(daemon: InProcessDaemon) -> None:
    """Every endpoint's request series, like a daemon that has served a while."""
    for i in range(DEVICES):
        daemon.post("addmediadevice", {"media_device_type": "photo", "media_device_name": f"gate {i}",
                                       "media_device_url": f"10.0.0.{i + 10}"})
    for method, path, _handler in ROUTES:
        if method == "POST":  # refused at JSON parsing, before any use case runs
            status, _ = raw_request(daemon, "POST", BASE + path, b"{not json")
            assert status == 400, (path, status)
    for endpoint in ("getpermissions", "getmediadevices", "getconfigs"):
        daemon.post(endpoint, {})
    daemon.post("getidentities", {"page_limit": 10, "page_index": 1})
    daemon.post("getevents", {"page_limit": 10})
    raw_request(daemon, "GET", "/no/such/path")


def timed_gets(targets: Dict[str, Tuple[InProcessDaemon, str]], rounds: int) -> Dict[str, Any]:
    """Median/p90 ms per target (a daemon and a path), alternating call by call, so a
    neighbour's burst of CPU hits every contender alike."""
    samples: Dict[str, List[float]] = {name: [] for name in targets}
    sizes: Dict[str, int] = {}
    names = list(targets)
    for _ in range(5):  # warm the connection handling and the code paths
        for daemon, path in targets.values():
            raw_request(daemon, "GET", path)
    for i in range(rounds):
        for name in (names if i % 2 == 0 else list(reversed(names))):
            daemon, path = targets[name]
            t0 = time.perf_counter()
            status, body = raw_request(daemon, "GET", path)
            samples[name].append((time.perf_counter() - t0) * 1000.0)
            assert status == 200, (name, status)
            sizes[name] = len(body)
    return {name: {"ms": Stats.of(values).as_dict(), "bytes": sizes[name]}
            for name, values in samples.items()}


def series_count(daemon: InProcessDaemon) -> Dict[str, int]:
    _, body = raw_request(daemon, "GET", "/metrics")
    lines = [line for line in body.decode("utf-8").splitlines() if line and line[0] != "#"]
    ours = [line for line in lines if line.startswith("sophon_face_")]
    return {"samples": len(lines), "sophon_face_samples": len(ours)}


def inside(daemons: Dict[str, InProcessDaemon], rounds: int) -> Dict[str, Any]:
    """/health's payload on each daemon's loop vs rendering the exposition from it."""
    samples: Dict[str, Dict[str, List[float]]] = {
        name: {"health_payload_ms": [], "render_ms": []} for name in daemons}
    for _ in range(rounds):
        for name, daemon in daemons.items():
            assert daemon.app is not None
            services, metrics = daemon.app[SERVICES], daemon.app[METRICS]
            t0 = time.perf_counter()
            payload, _ = asyncio.run_coroutine_threadsafe(services.health(),
                                                          daemon.loop).result(30)
            t1 = time.perf_counter()
            metrics.render(payload)
            t2 = time.perf_counter()
            samples[name]["health_payload_ms"].append((t1 - t0) * 1000.0)
            samples[name]["render_ms"].append((t2 - t1) * 1000.0)
    return {name: {key: Stats.of(values).as_dict() for key, values in parts.items()}
            for name, parts in samples.items()}


def loop_lag(daemon: InProcessDaemon, path: str, calls: int) -> Dict[str, float]:
    """How late a 1 ms timer on the daemon's loop fires while ``path`` is fetched back to
    back: what every other request on the loop waits for meanwhile (ms)."""
    lags: List[float] = []
    running = [True]

    async def monitor() -> None:
        loop = asyncio.get_running_loop()
        while running[0]:
            due = loop.time() + 0.001
            await asyncio.sleep(0.001)
            lags.append(max(0.0, loop.time() - due) * 1000.0)

    task = asyncio.run_coroutine_threadsafe(monitor(), daemon.loop)
    try:
        for _ in range(calls):
            raw_request(daemon, "GET", path)
    finally:
        running[0] = False
        task.result(10)
    return {"p99_ms": round(float(np.percentile(lags, 99)), 3), "max_ms": round(max(lags), 3)}


# ---------------------------------------------------------------- hot-path costs

def hot_path_costs(daemon: InProcessDaemon, calls: int) -> Dict[str, float]:
    """Microseconds per request observation and per analysed face's stage observations."""
    assert daemon.app is not None
    metrics = daemon.app[METRICS]
    # What observe_request reads from a request: its method and its route's resource.
    resource = SimpleNamespace(canonical=f"{BASE}/search")
    request: Any = SimpleNamespace(method="POST",
                                   match_info=SimpleNamespace(route=SimpleNamespace(resource=resource)))
    t0 = time.perf_counter()
    for _ in range(calls):
        metrics.observe_request(request, 200, "OK", 0.012)
    request_us = (time.perf_counter() - t0) / calls * 1e6
    times = {"detect": 9.0, "align": 0.3, "quality": 1.1, "embed": 4.2}
    t0 = time.perf_counter()
    for _ in range(calls):
        metrics.stages.observe_ms(times)
    face_us = (time.perf_counter() - t0) / calls * 1e6
    return {"request_observation_us": round(request_us, 2),
            "face_stage_observations_us": round(face_us, 2)}


# ---------------------------------------------------------------- main

def measure(daemons: Dict[str, InProcessDaemon], rounds: int) -> Dict[str, Any]:
    for daemon in daemons.values():
        populate_series(daemon)
    stores = {name: daemon.request("GET", "/health") for name, daemon in daemons.items()}
    cpu = CpuShare().start()
    http_times = timed_gets({f"{name} {path}": (daemon, path) for name, daemon in daemons.items()
                             for path in ("/metrics", "/health")}, rounds)
    result: Dict[str, Any] = {
        "stores": {name: {"faces": h["store"]["faces"], "events": h["store"]["events"],
                          "history_pending": h["push"]["history"]["queued"]}
                   for name, h in stores.items()},
        "http": http_times, "inside": inside(daemons, rounds),
        "series": {name: series_count(daemon) for name, daemon in daemons.items()},
        "loop_lag": {f"{name} {path}": loop_lag(daemon, path, rounds // 2)
                     for name, daemon in daemons.items() for path in ("/metrics", "/health")},
        "cpu": cpu.stop()}
    result["hot_path"] = hot_path_costs(daemons["library"], 20_000)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--faces", type=int, default=None)
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    face_count = args.faces or (20_000 if args.quick else 100_000)
    event_count = args.events or (2_000 if args.quick else 10_000)
    rounds = args.rounds or (100 if args.quick else 300)
    work = Path(tempfile.mkdtemp(prefix="bench-metrics-"))
    facts = machine()
    daemons: Dict[str, InProcessDaemon] = {}
    try:
        models = prepare_models(MANIFEST, MODEL_CACHE)
        log.info("writing %d faces and %d events", face_count, event_count)
        fixture_s = asyncio.run(write_fixture(work / "library", face_count, event_count))
        start_s: Dict[str, float] = {}
        for name in ("library", "empty"):  # both run at once, measured call by call
            t0 = time.perf_counter()
            daemons[name] = start_daemon(work / name, models)
            start_s[name] = round(time.perf_counter() - t0, 2)
        result = measure(daemons, rounds)
    finally:
        for daemon in daemons.values():
            daemon.stop()
        shutil.rmtree(str(work), ignore_errors=True)

    stores = result["stores"]
    label = {name: f"{s['faces']} faces, {s['events']} events" for name, s in stores.items()}
    print(f"\n{describe_machine(facts)}\n")
    print(f"GET over HTTP, the two daemons and two paths alternating call by call, {rounds} calls "
          f"each (ms); the fixture was written in {fixture_s:.1f} s\n")
    print(markdown_table(["store", "GET", "median", "p90", "max", "bytes"], [
        [label[name], path, t["ms"]["median"], t["ms"]["p90"], t["ms"]["maximum"], t["bytes"]]
        for name in daemons for path in ("/metrics", "/health")
        for t in [result["http"][f"{name} {path}"]]]))
    print("\ninside the daemon (ms, median / p90)\n")
    print(markdown_table(["store", "/health payload", "render", "samples (ours)"], [
        [label[name], f"{parts['health_payload_ms']['median']:.3f} / "
         f"{parts['health_payload_ms']['p90']:.3f}",
         f"{parts['render_ms']['median']:.3f} / {parts['render_ms']['p90']:.3f}",
         f"{result['series'][name]['samples']} ({result['series'][name]['sophon_face_samples']})"]
        for name, parts in result["inside"].items()]))
    print("\nlateness of a 1 ms timer on the daemon's loop while fetching back to back (ms)\n")
    print(markdown_table(["store", "GET", "p99", "max"], [
        [label[name], path, lag["p99_ms"], lag["max_ms"]]
        for name in daemons for path in ("/metrics", "/health")
        for lag in [result["loop_lag"][f"{name} {path}"]]]))
    hot = result["hot_path"]
    print(f"\nhot paths: {hot['request_observation_us']} us per request (count + latency), "
          f"{hot['face_stage_observations_us']} us per analysed face (4 stage observations)")
    print(f"daemon start: {start_s['library']} s with the library, {start_s['empty']} s empty; "
          f"history push pending: {stores['library']['history_pending']}; "
          f"other processes took {result['cpu'].get('others_cores')} of {facts['cores']} cores")
    path = save_results("metrics", dict(result, machine=facts, fixture_s=fixture_s,
                                        daemon_start_s=start_s))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
