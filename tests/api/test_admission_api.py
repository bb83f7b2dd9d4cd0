"""Admission by waiting time against the real daemon: bursts of concurrent ``detect``
requests are all served while their expected wait fits the budget, and beyond it the
refusals are prompt 503s with Retry-After (workers/admission.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import aiohttp
import pytest

from sophon_face.workers.models import PreparedModels

from .conftest import make_config, photo
from .live import LiveServer, b64_of

#: The smallest photo with a face (14 KB): the bursts test admission, not the detector.
SMALL_PHOTO = "macron_2014.jpg"


def detect_body() -> bytes:
    return json.dumps({"image_base64_str": b64_of(photo(SMALL_PHOTO))}).encode()


async def _burst(port: int, body: bytes, clients: int) -> List[Tuple[int, Dict[str, str], float]]:
    """``clients`` detect requests started at once: (status, headers, seconds) each."""
    url = f"http://127.0.0.1:{port}/sophon/v2/face/detect"
    connector = aiohttp.TCPConnector(limit=0)  # every request on its own connection
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = asyncio.Event()

        async def one() -> Tuple[int, Dict[str, str], float]:
            await start.wait()
            started = time.perf_counter()
            async with session.post(url, data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                payload = await response.read()
                if response.status == 200:
                    assert json.loads(payload)["faces"], payload[:200]
                return (response.status, dict(response.headers),
                        time.perf_counter() - started)

        tasks = [asyncio.ensure_future(one()) for _ in range(clients)]
        await asyncio.sleep(0)
        start.set()
        return await asyncio.gather(*tasks)


def burst(server: LiveServer, clients: int) -> List[Tuple[int, Dict[str, str], float]]:
    return asyncio.run(_burst(server.port, detect_body(), clients))


def server_with(models: PreparedModels, data_dir: Path, server: Optional[Dict[str, Any]] = None,
                **workers: Any) -> LiveServer:
    """A fresh daemon, the test profile's settings with ``server`` and ``workers`` changed."""
    config = make_config(data_dir)
    config = dataclasses.replace(
        config, server=dataclasses.replace(config.server, **(server or {})),
        workers=dataclasses.replace(config.workers, **workers))
    return LiveServer(config, models).start()


@pytest.fixture()
def default_server(models: PreparedModels, tmp_path: Path) -> Iterator[LiveServer]:
    """A fresh daemon on the default admission settings (the test profile's one worker)."""
    live = server_with(models, tmp_path / "daemon")
    yield live
    live.stop()


@pytest.fixture()
def roomy_server(models: PreparedModels, tmp_path: Path) -> Iterator[LiveServer]:
    """A fresh daemon whose time budget holds 1,000 detections with room to spare: on this
    shared 2-core box they take 10-25 s, and a fresh daemon admits most of a burst on its
    warm-up estimate (30-60 ms here), before the first detection is measured. Every
    client has its own connection: more than ``server.max_connections`` allows by default."""
    live = server_with(models, tmp_path / "daemon", server={"max_connections": 1100},
                       max_wait_s=150.0, timeout_s=300.0)
    yield live
    live.stop()


def assert_all_served(server: LiveServer, clients: int) -> None:
    results = burst(server, clients)
    statuses = Counter(status for status, _headers, _s in results)
    assert statuses == {200: clients}, statuses
    health = server.request("GET", "/health").json["workers"]
    assert health["pending"] == 0 and health["waiting"] == 0 and health["refused"] == 0
    assert health["queued_body_bytes"] == 0
    assert health["service_ms"]["analysis.detect"] > 0


def test_a_burst_of_200_is_served_in_full_on_the_defaults(default_server):
    # The count-bounded queue (32 waiting) answered 159 of 200 with 503.
    assert_all_served(default_server, 200)


def test_a_burst_of_1000_within_the_budget_is_served_in_full(roomy_server):
    assert_all_served(roomy_server, 1000)


def test_beyond_the_budget_refusals_are_prompt_503s_with_retry_after(models, tmp_path):
    # A budget of a few detections: most of a burst of 60 cannot be served in time.
    live = server_with(models, tmp_path / "daemon", max_wait_s=0.2)
    try:
        live.post("detect", {"image_base64_str": b64_of(photo(SMALL_PHOTO))})  # learn it
        results = burst(live, 60)
        metrics = live.request("GET", "/metrics").body.decode()
    finally:
        live.stop()
    statuses = Counter(status for status, _headers, _s in results)
    assert set(statuses) == {200, 503} and statuses[503] >= 30, statuses
    served_s = max(s for status, _h, s in results if status == 200)
    for status, headers, seconds in results:
        if status == 503:
            assert int(headers["Retry-After"]) >= 1
            assert seconds < served_s  # refused before the admitted ones were done
    assert f"sophon_face_worker_refused_requests_total {float(statuses[503])}" in metrics
    assert "sophon_face_worker_expected_wait_seconds" in metrics
    assert 'sophon_face_worker_service_estimate_seconds{job="analysis.detect"}' in metrics


def test_a_503_envelope_is_the_specs_with_retry_after(models, tmp_path):
    live = server_with(models, tmp_path / "daemon", max_wait_s=0.001)
    try:
        results = asyncio.run(_bodies(live.port, 12))
    finally:
        live.stop()
    refused = [(headers, body) for status, headers, body in results if status == 503]
    assert refused, [status for status, _h, _b in results]
    headers, body = refused[0]
    assert json.loads(body) == {"error": {"code": "INTERNAL_ERROR",
                                          "message": "server busy, retry later"}}
    assert headers["Retry-After"].isdigit()


async def _bodies(port: int, clients: int) -> List[Tuple[int, Dict[str, str], bytes]]:
    url = f"http://127.0.0.1:{port}/sophon/v2/face/detect"
    body = detect_body()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one() -> Tuple[int, Dict[str, str], bytes]:
            async with session.post(url, data=body,
                                    headers={"Content-Type": "application/json"}) as response:
                return response.status, dict(response.headers), await response.read()
        return await asyncio.gather(*(one() for _ in range(clients)))
