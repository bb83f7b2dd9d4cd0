"""The device status push (api/device.md 9) against a real aiohttp receiver on loopback and
the real runtime settings over a real LMDB in tmp_path: the body of section 9 (both list
names, the licence key), the period, ``notify_change`` and settings changes as triggers,
no retry, a dead URL and a slow URL beside a good one, reports that never overlap, a
prompt ``stop()``.

Reports are triggered on purpose (a settings change or ``notify_change``), so the tests do
not wait for periods, except where the period itself is under test.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Mapping, Optional, Set, Tuple

import pytest
from aiohttp import web

from sophon_face.push.device_status import ENTRY_KEYS, DeviceStatusPusher
from sophon_face.service.settings import RuntimeSettings
from sophon_face.store import Store

LOGGER = "sophon_face.push.device_status"
LICENSE = "AFVKQF000120210604151110"
GATE = {"media_device_id": "2c1a6a12-ecf4-4490-a2fc-8d7a5023bfcd",
        "media_device_name": "前门设备", "media_device_type": "rtsp",
        "media_device_url": "rtsp://192.168.1.100:554/ch2", "media_device_ip": "192.168.1.100",
        "permission_id": "820737ae-a6d3-4322-bf7c-46f48066fb64",
        "net_relay": {"ip": "192.168.1.50", "port": 5000, "channel": 1, "delay_time": 3},
        "do_rtmp_forward": False, "rtmp_address": "", "roi_area": [], "seq": 1,
        "created_at": 1700000000.0}
TABLET = {"media_device_id": "tablet-1", "media_device_name": "side door",
          "media_device_type": "photo", "media_device_url": "192.168.1.22",
          "media_device_ip": "192.168.1.22", "permission_id": "", "net_relay": {},
          "do_rtmp_forward": False, "rtmp_address": "", "roi_area": [], "seq": 2,
          "created_at": 1700000001.0}
FILE = {"media_device_id": "file-1", "media_device_name": "replay",
        "media_device_type": "file", "media_device_url": "/data/test.mp4",
        "media_device_ip": "", "permission_id": "", "net_relay": {},
        "do_rtmp_forward": False, "rtmp_address": "", "roi_area": [], "seq": 3,
        "created_at": 1700000002.0}


def free_port() -> int:
    """A port nobody listens on (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Platform:
    """The monitoring platform: a real aiohttp server on loopback. Each path has a mode:
    "ok" (200), "500", or "slow" (takes the report, answers 200 after ``slow_s``)."""

    def __init__(self) -> None:
        self.port = 0
        self.modes: Dict[str, str] = {}
        self.slow_s = 1.0
        #: path -> (arrival time.monotonic(), parsed body) of every POST.
        self.arrivals: Dict[str, List[Tuple[float, Dict[str, Any]]]] = defaultdict(list)
        self.raw_bodies: List[bytes] = []
        self.content_types: Set[str] = set()
        #: (start, end) monotonic times of each handled POST, to see overlaps.
        self.spans: List[Tuple[float, float]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._runner: Optional[web.AppRunner] = None

    def url(self, path: str = "/a") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def count(self, path: str = "/a") -> int:
        return len(self.arrivals[path])

    def bodies(self, path: str = "/a") -> List[Dict[str, Any]]:
        return [body for _, body in self.arrivals[path]]

    async def _handle(self, request: web.Request) -> web.Response:
        began = time.monotonic()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            raw = await request.read()
            self.raw_bodies.append(raw)
            self.content_types.add(request.content_type)
            self.arrivals[request.path].append((began, json.loads(raw)))
            mode = self.modes.get(request.path, "ok")
            if mode == "slow":
                await asyncio.sleep(self.slow_s)
            return web.Response(status=500 if mode == "500" else 200, text="")
        finally:
            self.in_flight -= 1
            self.spans.append((began, time.monotonic()))

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Rig:
    """The real settings over a real store, the device list the daemon would snapshot, and
    the status each device has (what the video readers would say)."""

    def __init__(self, store: Store, settings: RuntimeSettings, platform: Platform) -> None:
        self.store = store
        self.settings = settings
        self.platform = platform
        self.devices: List[Dict[str, Any]] = [dict(GATE), dict(TABLET)]
        self.statuses: Dict[str, str] = {GATE["media_device_id"]: "online"}
        self.snapshots = 0

    async def snapshot(self) -> List[Dict[str, Any]]:
        self.snapshots += 1
        return [dict(device) for device in self.devices]

    def status_of(self, record: Mapping[str, Any]) -> str:
        return self.statuses.get(record["media_device_id"], "offline")

    async def set(self, **values: Any) -> None:
        """What a setconfigs call does: commit, then announce on the loop."""
        await self.settings.set_configs({"config_dict": values})

    def pusher(self, timeout_s: float = 10.0) -> DeviceStatusPusher:
        return DeviceStatusPusher(self.settings, self.snapshot, self.status_of,
                                  timeout_s=timeout_s)


def run(tmp_path: Path, scenario: Callable[[Rig], Awaitable[None]], **settings: Any) -> None:
    async def main() -> None:
        store = Store(tmp_path / "data", min_free_bytes=0)
        await store.open()
        platform = Platform()
        await platform.start()
        try:
            runtime = RuntimeSettings(store)
            await runtime.load()
            rig = Rig(store, runtime, platform)
            values = {"MQ_LICENSE_KEY": LICENSE}
            values.update(settings)
            await rig.set(**values)
            await asyncio.wait_for(scenario(rig), 60)
        finally:
            await platform.stop()
            await store.close()
    asyncio.run(main())


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def entry(device: Mapping[str, Any], status: str) -> Dict[str, Any]:
    return {"media_device_id": device["media_device_id"],
            "media_device_name": device["media_device_name"],
            "media_device_status": status,
            "media_device_ip": device["media_device_ip"],
            "permission_id": device["permission_id"],
            "media_device_type": device["media_device_type"],
            "media_device_url": device["media_device_url"]}


def statuses(body: Mapping[str, Any]) -> Dict[str, str]:
    return {e["media_device_id"]: e["media_device_status"] for e in body["media_devices"]}


# ------------------------------------------------------------------------------ the body

def test_report_is_exactly_the_body_of_section_9(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        rig.devices.append(dict(FILE))
        rig.statuses[FILE["media_device_id"]] = "online"
        await rig.set(MEDIA_DEVICE_MONITOR_URL=rig.platform.url())
        pusher = rig.pusher()
        await pusher.start()  # a report goes out at start
        try:
            await until(lambda: rig.platform.count() == 1)
        finally:
            await pusher.stop()
        expected = [entry(GATE, "online"), entry(TABLET, "offline"), entry(FILE, "online")]
        assert rig.platform.bodies() == [
            {"mq_license_key": LICENSE, "media_devices": expected, "sub_devices": expected}]
        body = rig.platform.bodies()[0]
        assert all(tuple(sorted(e)) == tuple(sorted(ENTRY_KEYS)) for e in body["media_devices"])
        # Creation order, as the snapshot gave it.
        assert [e["media_device_id"] for e in body["media_devices"]] == [
            "2c1a6a12-ecf4-4490-a2fc-8d7a5023bfcd", "tablet-1", "file-1"]
        assert rig.platform.content_types == {"application/json"}
        raw = rig.platform.raw_bodies[0]  # README 11 bytes: compact, sorted, ASCII
        assert raw.isascii() and b": " not in raw and b"\\u524d\\u95e8" in raw
        assert list(json.loads(raw)) == ["media_devices", "mq_license_key", "sub_devices"]
        stats = pusher.stats()
        assert (stats["reports"], stats["delivered"], stats["failures"]) == (1, 1, 0)
        assert stats["failing_urls"] == {} and stats["last_error"] == ""
        assert abs(stats["last_report_unix_s"] - time.time()) < 5

    run(tmp_path, scenario)


def test_report_with_no_devices_and_no_licence_key(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        rig.devices.clear()
        await rig.set(MQ_LICENSE_KEY="", MEDIA_DEVICE_MONITOR_URL=rig.platform.url())
        pusher = rig.pusher()
        await pusher.start()
        try:
            await until(lambda: rig.platform.count() == 1)
        finally:
            await pusher.stop()
        assert rig.platform.bodies() == [
            {"mq_license_key": "", "media_devices": [], "sub_devices": []}]

    run(tmp_path, scenario)


# ------------------------------------------------------------------------------ rhythm

def test_no_url_no_report_and_a_url_change_wakes_at_once(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        pusher = rig.pusher()
        await pusher.start()
        try:
            await asyncio.sleep(0.4)
            assert rig.platform.count("/a") == 0 and rig.snapshots == 0  # no URL: no work
            began = time.monotonic()
            await rig.set(MEDIA_DEVICE_MONITOR_URL=rig.platform.url("/a"))
            await until(lambda: rig.platform.count("/a") == 1, timeout_s=2)
            assert time.monotonic() - began < 1.0  # the period is 60 s
            began = time.monotonic()
            await rig.set(MEDIA_DEVICE_MONITOR_URL=f" {rig.platform.url('/b')} ,")
            await until(lambda: rig.platform.count("/b") == 1, timeout_s=2)
            assert time.monotonic() - began < 1.0
            began = time.monotonic()
            await rig.set(MEDIA_DEVICE_MONITOR_REPORT_PEROID=30)  # the period wakes it too
            await until(lambda: rig.platform.count("/b") == 2, timeout_s=2)
            assert time.monotonic() - began < 1.0
            await rig.set(MQ_LICENSE_KEY="OTHER")  # not a trigger: waits for the period
            await asyncio.sleep(0.4)
            assert rig.platform.count("/b") == 2
        finally:
            await pusher.stop()
        assert rig.platform.count("/a") == 1  # the old URL gets nothing more
        assert rig.platform.bodies("/b")[0]["mq_license_key"] == LICENSE

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=60)


def test_a_report_every_period(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.set(MEDIA_DEVICE_MONITOR_URL=rig.platform.url())
        pusher = rig.pusher()
        await pusher.start()
        try:
            await until(lambda: rig.platform.count() == 4, timeout_s=8)
        finally:
            await pusher.stop()
        times = [at for at, _ in rig.platform.arrivals["/a"]]
        gaps = [later - earlier for earlier, later in zip(times, times[1:])]
        assert all(0.9 <= gap <= 1.6 for gap in gaps), gaps
        assert pusher.stats()["reports"] == 4

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=1)


def test_notify_change_sends_one_report_soon(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.set(MEDIA_DEVICE_MONITOR_URL=rig.platform.url())
        pusher = rig.pusher()
        await pusher.start()
        try:
            await until(lambda: rig.platform.count() == 1)
            # A burst: the gate's stream drops, the tablet shows up, a device is added.
            rig.statuses[GATE["media_device_id"]] = "offline"
            began = time.monotonic()
            pusher.notify_change()
            rig.statuses[TABLET["media_device_id"]] = "online"
            pusher.notify_change()
            await asyncio.sleep(0.05)
            rig.devices.append(dict(FILE))
            pusher.notify_change()
            await until(lambda: rig.platform.count() == 2, timeout_s=2)
            delay_s = rig.platform.arrivals["/a"][1][0] - began
            assert 0.15 <= delay_s < 1.0, delay_s  # debounced, and far from the 60 s period
            await asyncio.sleep(0.5)
            assert rig.platform.count() == 2  # the burst made ONE report
        finally:
            await pusher.stop()
        first, second = rig.platform.bodies()
        assert statuses(first) == {GATE["media_device_id"]: "online", "tablet-1": "offline"}
        assert statuses(second) == {GATE["media_device_id"]: "offline", "tablet-1": "online",
                                    "file-1": "offline"}
        assert second["sub_devices"] == second["media_devices"]

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=60)


def test_reports_never_overlap(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        rig.platform.modes["/a"] = "slow"
        rig.platform.slow_s = 0.5
        await rig.set(MEDIA_DEVICE_MONITOR_URL=rig.platform.url())
        pusher = rig.pusher(timeout_s=3.0)
        await pusher.start()
        try:
            await until(lambda: rig.platform.count() == 1)
            rig.statuses[GATE["media_device_id"]] = "offline"
            pusher.notify_change()  # during the first report
            await rig.set(MEDIA_DEVICE_MONITOR_REPORT_PEROID=30)  # also during it
            await until(lambda: rig.platform.count() == 2, timeout_s=3)
            await until(lambda: len(rig.platform.spans) == 2, timeout_s=3)
            await asyncio.sleep(0.3)
        finally:
            await pusher.stop()
        assert rig.platform.max_in_flight == 1
        (_, first_end), (second_start, _) = sorted(rig.platform.spans)
        assert second_start >= first_end
        # Both triggers during the first report made one report after it, with the news.
        assert rig.platform.count() == 2
        assert statuses(rig.platform.bodies()[1])[GATE["media_device_id"]] == "offline"

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=60)


# ------------------------------------------------------------------------------ failures

def test_no_retry_after_a_500_and_recovery_is_logged(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario(rig: Rig) -> None:
        rig.platform.modes["/a"] = "500"
        url = rig.platform.url()
        await rig.set(MEDIA_DEVICE_MONITOR_URL=url)
        pusher = rig.pusher()
        await pusher.start()
        try:
            await until(lambda: rig.platform.count() == 1)
            await asyncio.sleep(0.6)
            assert rig.platform.count() == 1  # not retried: the next report supersedes it
            stats = pusher.stats()
            assert (stats["reports"], stats["delivered"], stats["failures"]) == (1, 0, 1)
            assert stats["failing_urls"] == {url: "HTTP 500"}
            assert stats["last_error"] == f"{url}: HTTP 500"
            pusher.notify_change()
            await until(lambda: pusher.stats()["failures"] == 2)
            rig.platform.modes["/a"] = "ok"
            pusher.notify_change()
            await until(lambda: pusher.stats()["delivered"] == 1)
        finally:
            await pusher.stop()
        assert rig.platform.count() == 3
        assert pusher.stats()["failing_urls"] == {}
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, warnings  # two failed reports, one state
        assert url in warnings[0] and "HTTP 500" in warnings[0]
        assert sum("works again" in r.getMessage() for r in caplog.records) == 1

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=60)


def test_an_unreachable_url_does_not_break_the_next_reports(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario(rig: Rig) -> None:
        dead = f"http://127.0.0.1:{free_port()}/status"  # connection refused
        await rig.set(MEDIA_DEVICE_MONITOR_URL=f"{dead},{rig.platform.url()}")
        pusher = rig.pusher()
        await pusher.start()
        try:
            for reports in (1, 2, 3):
                await until(lambda: rig.platform.count() == reports
                            and pusher.stats()["reports"] == reports)
                pusher.notify_change()
            await until(lambda: rig.platform.count() == 4)
        finally:
            await pusher.stop()
        stats = pusher.stats()
        assert stats["delivered"] == 4 and stats["failures"] >= 3
        assert list(stats["failing_urls"]) == [dead]
        assert "Connect" in stats["failing_urls"][dead]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and dead in warnings[0], warnings

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=60)


def test_a_slow_url_times_out_without_delaying_the_others(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario(rig: Rig) -> None:
        rig.platform.modes["/slow"] = "slow"
        rig.platform.slow_s = 3.0
        slow = rig.platform.url("/slow")
        await rig.set(MEDIA_DEVICE_MONITOR_URL=f"{slow},{rig.platform.url('/fast')}")
        pusher = rig.pusher(timeout_s=1.0)
        began = time.monotonic()
        await pusher.start()
        try:
            # The slow URL is listed first, yet the fast one has its report at once.
            await until(lambda: rig.platform.count("/fast") == 1, timeout_s=2)
            # (One after the other, it would come after the slow one's 1 s timeout.)
            assert rig.platform.arrivals["/fast"][0][0] - began < 0.8
            await until(lambda: pusher.stats()["failures"] == 1, timeout_s=3)
            assert time.monotonic() - began < 2.5  # the 1 s timeout, not the 3 s reply
            # The next report is not held up by the slow receiver still sleeping.
            notified = time.monotonic()
            pusher.notify_change()
            await until(lambda: rig.platform.count("/fast") == 2, timeout_s=2)
            assert rig.platform.arrivals["/fast"][1][0] - notified < 1.0
        finally:
            await pusher.stop()
        assert pusher.stats()["failing_urls"] == {slow: "no answer within 1 s"}
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "no answer within 1 s" in warnings[0], warnings

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=60)


def test_a_status_that_cannot_be_read_is_offline(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario(rig: Rig) -> None:
        def status_of(record: Mapping[str, Any]) -> str:
            if record["media_device_id"] == "tablet-1":
                raise RuntimeError("reader gone")
            return "online"

        await rig.set(MEDIA_DEVICE_MONITOR_URL=rig.platform.url())
        pusher = DeviceStatusPusher(rig.settings, rig.snapshot, status_of)
        await pusher.start()
        try:
            await until(lambda: rig.platform.count() == 1)
            pusher.notify_change()
            await until(lambda: rig.platform.count() == 2)
        finally:
            await pusher.stop()
        for body in rig.platform.bodies():
            assert statuses(body) == {GATE["media_device_id"]: "online", "tablet-1": "offline"}
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "tablet-1" in errors[0] and "reader gone" in errors[0]

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=60)


# ------------------------------------------------------------------------------ lifecycle

def test_stop_is_prompt_with_a_post_in_flight_and_start_again_works(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        rig.platform.modes["/a"] = "slow"
        rig.platform.slow_s = 5.0
        await rig.set(MEDIA_DEVICE_MONITOR_URL=rig.platform.url())
        pusher = rig.pusher(timeout_s=10.0)
        await pusher.start()
        await until(lambda: rig.platform.count() == 1)
        began = time.monotonic()
        await pusher.stop()
        assert time.monotonic() - began < 1.0
        pusher.notify_change()  # after stop: nothing, no error
        await asyncio.sleep(0.3)
        assert rig.platform.count() == 1
        stats = pusher.stats()
        assert stats["reports"] == 0 and stats["failures"] == 0  # abandoned, not failed
        # Started again: one subscription (a settings change makes ONE report).
        rig.platform.modes["/a"] = "ok"
        await pusher.start()
        try:
            await until(lambda: rig.platform.count() == 2)
            await rig.set(MEDIA_DEVICE_MONITOR_REPORT_PEROID=45)
            await until(lambda: rig.platform.count() == 3)
            await asyncio.sleep(0.3)
            assert rig.platform.count() == 3
        finally:
            await pusher.stop()

    run(tmp_path, scenario, MEDIA_DEVICE_MONITOR_REPORT_PEROID=60)


def test_start_twice_is_refused(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        pusher = rig.pusher()
        await pusher.start()
        try:
            with pytest.raises(RuntimeError):
                await pusher.start()
        finally:
            await pusher.stop()

    run(tmp_path, scenario)
