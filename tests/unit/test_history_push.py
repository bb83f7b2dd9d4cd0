"""The history push (api/event.md 8) against a real aiohttp receiver on loopback and a real
LMDB store: outages, 5xx, timeouts, two URLs of which one fails, batch and order, a URL
set after the events, restarts. The payload of section 8 field by field.

Rounds are started on purpose by announcing a settings change (what setconfigs does), so
the tests do not wait for periods, except where the period itself is under test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set

import numpy as np
import pytest
from aiohttp import web

from sophon_face.push.history import (PAYLOAD_KEYS, HistoryPusher, history_payload,
                                      payload_bytes)
from sophon_face.service.settings_keys import split_urls
from sophon_face.store import event_images, events, images, push_queue
from sophon_face.store.env import Store, Txn
from sophon_face.store.event_images import EventImageFiles

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
REG_JPEG = (DATA_DIR / "ardern_2018.jpg").read_bytes()
SPOT_JPEG = (DATA_DIR / "ardern_2022.jpg").read_bytes()
FACE_JPEG = (DATA_DIR / "macron_2014.jpg").read_bytes()
REG_ID = str(uuid.UUID(int=7))
FIRST_ID = 1_700_000_000_000_000
LOGGER = "sophon_face.push.history"
GATE = {"media_device_id": "gate", "media_device_ip": "192.168.1.243",
        "media_device_name": "前门设备", "media_device_type": "rtsp"}
ATTR = {"age": None, "box": [50.0, 23.0, 173.0, 183.0], "expression": None, "gender": None,
        "glasses": None, "hat": None, "mask": None,
        "point": [81.97, 139.56, 114.69, 92.84, 138.5, 89.39, 85.89, 117.88, 150.75, 146.93]}
FEATURE = np.linspace(-1, 1, 128, dtype="<f4").tobytes()


def record(event_id: int, identity: bool = True, images_stored: bool = True,
           out_s: Optional[float] = None) -> Dict[str, Any]:
    """A record as service/events.py stores it."""
    timestamp = event_id / 1e6
    ext: Dict[str, Any] = {"in_timestamp": timestamp - 1.5, "recognition_timestamp": timestamp}
    if out_s is not None:
        ext["out_timestamp"] = out_s
    eid = str(event_id)
    return {
        "event_id": eid, "timestamp": timestamp,
        "identity_id": "01200002" if identity else "",
        "identity_name": "小明" if identity else "",
        "register_image_id": REG_ID if identity else "",
        "recognize_face_image_id": event_images.image_id("face", eid) if images_stored else "",
        "spot_image_id": event_images.image_id("spot", eid) if images_stored else "",
        "permission_id": "", "permission_name": "",
        "user_type": "employee" if identity else "stranger",
        "score": 94.8 if identity else 27.69, "post_action": "0", "frame_id": 0,
        "media_device_info": dict(GATE), "media_device_url": "rtsp://192.168.1.243:554/ch1",
        "recognize_face_attr": dict(ATTR), "feature": FEATURE, "ext_data": ext,
        "image_bytes": len(FACE_JPEG) + len(SPOT_JPEG) if images_stored else 0,
    }


# ------------------------------------------------------------------------------ the payload

def test_payload_has_exactly_the_fields_of_section_8() -> None:
    rec = record(1629080261881204, out_s=1629080265.454)
    feature = base64.b64encode(FEATURE).decode("ascii")
    payload = history_payload(rec, REG_JPEG, SPOT_JPEG, FACE_JPEG, "NAAXWN000120210813164813")
    assert payload == {
        "api_version": "2.0",
        "event_id": "1629080261881204",
        "identity_id": "01200002",
        "identity_name": "小明",
        "timestamp": 1629080261881,
        "score": 94.8,
        "post_action": "0",
        "user_type": "employee",
        "in_timestamp": 1629080260381,
        "out_timestamp": 1629080265454,
        "media_device_info": dict(GATE, media_device_url="rtsp://192.168.1.243:554/ch1"),
        "mq_license_key": "NAAXWN000120210813164813",
        "reg_image": base64.b64encode(REG_JPEG).decode("ascii"),
        "spot_image": base64.b64encode(SPOT_JPEG).decode("ascii"),
        "ir_image": "",
        "recognize_face_image": base64.b64encode(FACE_JPEG).decode("ascii"),
        "recognize_face_attr": dict(ATTR, feature_binary=feature, feature_base64_str=feature),
    }
    assert tuple(sorted(payload)) == tuple(sorted(PAYLOAD_KEYS))
    assert rec["recognize_face_attr"] == ATTR  # the record is not modified


def test_payload_of_a_photo_stranger_without_images() -> None:
    rec = record(1566016554020311, identity=False, images_stored=False)
    rec["media_device_info"] = {k: "" for k in GATE}
    rec["media_device_url"] = ""
    rec["feature"] = b""
    rec["ext_data"] = {}
    payload = history_payload(rec, None, None, None, "")
    # Photo events: in = out = the event time, all ints in ms (1566016554.020311 * 1000 is
    # not computed naively: 1566016554020.31 -> 1566016554020).
    assert payload["timestamp"] == payload["in_timestamp"] == payload["out_timestamp"] \
        == 1566016554020
    assert all(isinstance(payload[k], int)
               for k in ("timestamp", "in_timestamp", "out_timestamp"))
    assert payload["reg_image"] == payload["spot_image"] == payload["recognize_face_image"] \
        == payload["ir_image"] == payload["mq_license_key"] == ""
    assert payload["media_device_info"] == {
        "media_device_id": "", "media_device_ip": "", "media_device_name": "",
        "media_device_type": "", "media_device_url": ""}
    assert payload["recognize_face_attr"]["feature_binary"] == ""
    assert payload["recognize_face_attr"]["feature_base64_str"] == ""
    assert payload["identity_id"] == payload["identity_name"] == ""
    assert payload["user_type"] == "stranger"


def test_payload_bytes_are_compact_sorted_ascii_json() -> None:
    body = payload_bytes(history_payload(record(FIRST_ID), None, None, None, "k"))
    assert body.isascii() and b"\\u5c0f\\u660e" in body and b": " not in body
    parsed = json.loads(body)
    assert list(parsed) == sorted(parsed) and parsed["identity_name"] == "小明"


# ------------------------------------------------------------------------------ the rig

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Platform:
    """The receiving platform: a real aiohttp server on loopback. Each path has a mode:
    "ok" (200), "500", "slow" (takes the event, answers after ``slow_s``: past the pusher's
    timeout) or "hang" (takes nothing, answers after ``slow_s``)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.modes: Dict[str, str] = {}
        self.slow_s = 1.0
        self.arrivals: Dict[str, List[str]] = defaultdict(list)
        self.attempts: Dict[str, int] = defaultdict(int)
        self.payloads: List[Dict[str, Any]] = []
        self.content_types: Set[str] = set()
        self._runner: Optional[web.AppRunner] = None

    def url(self, path: str = "/a") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.attempts[path] += 1
        body = await request.read()
        self.content_types.add(request.content_type)
        mode = self.modes.get(path, "ok")
        if mode in ("ok", "slow"):
            payload = json.loads(body)
            self.arrivals[path].append(payload["event_id"])
            self.payloads.append(payload)
        if mode in ("slow", "hang"):
            await asyncio.sleep(self.slow_s)
        return web.Response(status=500 if mode == "500" else 200, text="")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class Settings:
    """The runtime settings the pusher reads (duck type of service/settings.py)."""

    def __init__(self, url: str = "", period_s: int = 60) -> None:
        self.values: Dict[str, Any] = {"HISTORY_EVENT_UPLOAD_URL": url,
                                       "HISTORY_REPORT_PEROID": period_s,
                                       "MQ_LICENSE_KEY": "LICENSE-1"}
        self._callbacks: List[Callable[[Set[str]], None]] = []

    def value(self, name: str) -> Any:
        return self.values[name]

    def urls(self, name: str) -> List[str]:
        return split_urls(self.values[name])

    def subscribe(self, callback: Callable[[Set[str]], None]) -> None:
        self._callbacks.append(callback)

    def set(self, **values: Any) -> None:
        """What setconfigs does: commit, then announce the changed names on the loop."""
        self.values.update(values)
        for callback in self._callbacks:
            callback(set(values))

    def poke(self) -> None:
        """Start a round now (a period change wakes the pusher)."""
        self.set(HISTORY_REPORT_PEROID=self.values["HISTORY_REPORT_PEROID"])


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.store = Store(tmp_path / "data", min_free_bytes=0)
        self.files = EventImageFiles((tmp_path / "local", tmp_path / "remote"),
                                     current_dir=lambda: tmp_path / "local")
        self.next_id = FIRST_ID

    async def open(self) -> None:
        self.store = Store(self.tmp_path / "data", min_free_bytes=0)
        await self.store.open()

    async def add_events(self, count: int) -> List[str]:
        """Events as the event service records them: files first, then the record and
        its queue entry in one transaction."""
        added = []
        for _ in range(count):
            rec = record(self.next_id)
            self.next_id += 1000
            assert self.files.write(rec["recognize_face_image_id"], FACE_JPEG)
            assert self.files.write(rec["spot_image_id"], SPOT_JPEG)
            await self.store.write(_put_event, rec)
            added.append(rec["event_id"])
        return added

    async def queued(self) -> List[str]:
        return [event_id for event_id, _ in await self.store.read(push_queue.oldest, 10000)]


def _put_event(txn: Txn, rec: Dict[str, Any]) -> Any:
    if not images.exists(txn, REG_ID):
        images.put(txn, REG_ID, REG_JPEG)
    events.put(txn, rec)
    push_queue.enqueue(txn, rec["event_id"])
    return None, []


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def round_done(pusher: HistoryPusher, settings: Settings, platform: Platform,
                     path: str = "/a") -> None:
    """Poke one round and wait until it has made its first attempt at ``path``."""
    before = platform.attempts[path]
    settings.poke()
    await until(lambda: platform.attempts[path] > before)


def run(tmp_path: Path, scenario: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        rig = Rig(tmp_path)
        await rig.open()
        try:
            await asyncio.wait_for(scenario(rig), 60)
        finally:
            await rig.store.close()
    asyncio.run(main())


def first_arrivals(ids: List[str]) -> List[str]:
    return list(dict.fromkeys(ids))


# ------------------------------------------------------------------------------ delivery

def test_receiver_down_then_up_gets_every_event_once_in_order(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario(rig: Rig) -> None:
        platform = Platform(port=free_port())  # nobody listens yet: connection refused
        settings = Settings(url=platform.url(), period_s=1)  # the real period, 1 s
        ids = await rig.add_events(3)
        pusher = HistoryPusher(rig.store, settings, rig.files, timeout_s=2.0)
        await pusher.start()
        try:
            await until(lambda: pusher.stats()["failures"] >= 3, timeout_s=8)
            assert await rig.queued() == ids
            stats = pusher.stats()
            assert stats["queued"] == 3 and stats["delivered"] == 0
            assert stats["last_error"].startswith(platform.url() + ": ")
            assert stats["failing_urls"] == [platform.url()]
            await platform.start()
            await until(lambda: len(platform.arrivals["/a"]) == 3, timeout_s=5)
            await asyncio.sleep(1.5)  # a later round sends nothing again
        finally:
            await pusher.stop()
            await platform.stop()
        assert platform.arrivals["/a"] == ids
        assert platform.content_types == {"application/json"}
        assert await rig.queued() == []
        stats = pusher.stats()
        assert (stats["queued"], stats["delivered"], stats["failing_urls"]) == (0, 3, [])
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        # Three failed rounds or more, logged once, with the URL and the reason.
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert platform.url() in warnings[0].getMessage()
        assert "Connect" in warnings[0].getMessage()
        assert sum("works again" in r.getMessage() for r in caplog.records) == 1

    run(tmp_path, scenario)


def test_flaky_receiver_5xx_then_timeouts_then_up(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario(rig: Rig) -> None:
        platform = Platform()
        await platform.start()
        platform.modes["/a"] = "500"
        settings = Settings(url=platform.url())
        ids = await rig.add_events(4)
        pusher = HistoryPusher(rig.store, settings, rig.files, timeout_s=0.3)
        await pusher.start()
        try:
            await until(lambda: platform.attempts["/a"] == 1)  # the round at start
            for _ in range(3):
                await round_done(pusher, settings, platform)
            await asyncio.sleep(0.1)
            # A failure ends the round: one attempt per round, always the oldest event.
            assert platform.attempts["/a"] == 4 and await rig.queued() == ids
            platform.modes["/a"] = "slow"  # takes the event, answers past the timeout
            platform.slow_s = 1.0
            for _ in range(2):
                await round_done(pusher, settings, platform)
            await until(lambda: pusher.stats()["failures"] >= 6)
            assert await rig.queued() == ids
            platform.modes["/a"] = "ok"
            settings.poke()
            await until(lambda: not pusher.stats()["queued"] and
                        len(set(platform.arrivals["/a"])) == 4)
        finally:
            await pusher.stop()
            await platform.stop()
        arrived = platform.arrivals["/a"]
        assert first_arrivals(arrived) == ids
        # Only the first event was ever taken without a 2xx (the timed-out ones).
        assert set(a for a in arrived if arrived.count(a) > 1) == {ids[0]}
        assert await rig.queued() == []
        messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(messages) == 2, messages  # one per state: HTTP 500, then timeouts
        assert "HTTP 500" in messages[0] and "no answer within 0.3 s" in messages[1]
        assert all(platform.url() in m for m in messages)

    run(tmp_path, scenario)


def test_two_urls_one_failing_the_other_gets_no_duplicates(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        platform = Platform()
        await platform.start()
        platform.modes["/b"] = "500"
        url_a, url_b = platform.url("/a"), platform.url("/b")
        settings = Settings(url=f"{url_a}, {url_b},")
        ids = await rig.add_events(3)
        pusher = HistoryPusher(rig.store, settings, rig.files)
        await pusher.start()
        try:
            await until(lambda: platform.attempts["/b"] == 1)
            for _ in range(3):
                await round_done(pusher, settings, platform, "/b")
            await asyncio.sleep(0.1)
            # /a took the first event once; the round stops at /b, so /a waits with it.
            assert platform.arrivals["/a"] == ids[:1]
            assert platform.attempts["/a"] == 1 and platform.attempts["/b"] == 4
            assert await rig.store.read(push_queue.oldest, 10) == [
                (ids[0], {url_a}), (ids[1], set()), (ids[2], set())]
            assert pusher.stats()["failing_urls"] == [url_b]
            platform.modes["/b"] = "ok"
            settings.poke()
            await until(lambda: len(platform.arrivals["/b"]) == 3)
            await until(lambda: not pusher.stats()["queued"])
        finally:
            await pusher.stop()
            await platform.stop()
        assert platform.arrivals["/a"] == ids  # exactly once each
        assert platform.arrivals["/b"] == ids
        assert await rig.queued() == []
        assert pusher.stats()["delivered"] == 3

    run(tmp_path, scenario)


def test_at_most_batch_events_per_round_oldest_first(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        platform = Platform()
        await platform.start()
        settings = Settings(url=platform.url())
        ids = await rig.add_events(7)
        pusher = HistoryPusher(rig.store, settings, rig.files, batch=3)
        await pusher.start()
        try:
            await until(lambda: len(platform.arrivals["/a"]) == 3)
            await asyncio.sleep(0.3)
            assert platform.arrivals["/a"] == ids[:3]  # the period is 60 s: no more yet
            assert pusher.stats()["queued"] == 4
            settings.poke()
            await until(lambda: len(platform.arrivals["/a"]) == 6)
            settings.poke()
            await until(lambda: len(platform.arrivals["/a"]) == 7)
            # The receiver has the last one before the pusher has recorded its 2xx.
            await until(lambda: pusher.stats()["queued"] == 0)
        finally:
            await pusher.stop()
            await platform.stop()
        assert platform.arrivals["/a"] == ids
        assert await rig.queued() == []

    run(tmp_path, scenario)


def test_events_created_without_a_url_go_out_once_one_is_set(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        platform = Platform()
        await platform.start()
        settings = Settings(url="")
        ids = await rig.add_events(2)
        pusher = HistoryPusher(rig.store, settings, rig.files)
        await pusher.start()
        try:
            await until(lambda: pusher.stats()["queued"] == 2)
            ids += await rig.add_events(1)
            pusher.wake()
            assert pusher.stats()["queued"] == 3
            await asyncio.sleep(0.2)
            assert platform.attempts["/a"] == 0
            # setconfigs wakes the pusher: no wait for the 60 s period.
            settings.set(HISTORY_EVENT_UPLOAD_URL=platform.url())
            await until(lambda: len(platform.arrivals["/a"]) == 3, timeout_s=5)
            await until(lambda: not pusher.stats()["queued"])
        finally:
            await pusher.stop()
            await platform.stop()
        assert platform.arrivals["/a"] == ids
        payload = platform.payloads[0]
        assert payload["mq_license_key"] == "LICENSE-1"
        assert base64.b64decode(payload["reg_image"]) == REG_JPEG
        assert base64.b64decode(payload["spot_image"]) == SPOT_JPEG
        assert base64.b64decode(payload["recognize_face_image"]) == FACE_JPEG
        assert payload == history_payload(record(int(ids[0])), REG_JPEG, SPOT_JPEG,
                                          FACE_JPEG, "LICENSE-1")

    run(tmp_path, scenario)


def test_a_new_event_waits_for_the_period(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        platform = Platform()
        await platform.start()
        settings = Settings(url=platform.url(), period_s=1)
        pusher = HistoryPusher(rig.store, settings, rig.files)
        await pusher.start()
        try:
            await asyncio.sleep(0.1)  # the round at start found nothing
            ids = await rig.add_events(1)
            added = time.monotonic()
            pusher.wake()  # what the event service calls after the commit
            await asyncio.sleep(0.2)
            assert platform.attempts["/a"] == 0
            await until(lambda: platform.arrivals["/a"] == ids, timeout_s=3)
            assert time.monotonic() - added >= 0.5
        finally:
            await pusher.stop()
            await platform.stop()

    run(tmp_path, scenario)


def test_restart_keeps_the_queue_and_stop_abandons_the_post_in_flight(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        platform = Platform()
        await platform.start()
        platform.modes["/a"] = "slow"  # takes the first event, answers in 30 s
        platform.slow_s = 30.0
        settings = Settings(url=platform.url())
        ids = await rig.add_events(3)
        pusher = HistoryPusher(rig.store, settings, rig.files)
        await pusher.start()
        await until(lambda: platform.attempts["/a"] == 1)
        started = time.monotonic()
        await pusher.stop()
        assert time.monotonic() - started < 2.0
        assert platform.arrivals["/a"] == ids[:1]
        await rig.store.close()  # the daemon is gone; its queue is on disk

        await rig.open()
        assert await rig.queued() == ids
        ids += await rig.add_events(1)
        platform.modes["/a"] = "ok"
        again = HistoryPusher(rig.store, settings, rig.files)
        await again.start()  # a round at start: the backlog goes out without a period
        try:
            await until(lambda: len(platform.arrivals["/a"]) == 5)
            await until(lambda: not again.stats()["queued"])
        finally:
            await again.stop()
            await platform.stop()
        # The event in flight at the stop arrives twice; the rest once, in order.
        assert platform.arrivals["/a"] == ids[:1] + ids
        assert await rig.queued() == []

    run(tmp_path, scenario)


def test_stop_with_a_grace_records_the_post_in_flight_and_starts_no_other(
        tmp_path: Path) -> None:
    """The daemon's shutdown (SIGTERM): the answer of the POST in flight is waited for and
    recorded, so that event is not sent again after the restart; the next is not sent."""
    async def scenario(rig: Rig) -> None:
        platform = Platform()
        await platform.start()
        platform.modes["/a"] = "slow"
        platform.slow_s = 0.5
        settings = Settings(url=platform.url())
        ids = await rig.add_events(3)
        pusher = HistoryPusher(rig.store, settings, rig.files)
        await pusher.start()
        await until(lambda: platform.attempts["/a"] == 1)
        await pusher.stop(grace_s=5.0)
        assert platform.arrivals["/a"] == ids[:1]  # answered 200 during the stop
        assert await rig.queued() == ids[1:]  # ... and recorded; nothing else was sent

        platform.slow_s = 30.0  # a POST past the grace is abandoned as before
        again = HistoryPusher(rig.store, settings, rig.files)
        await again.start()
        await until(lambda: platform.attempts["/a"] == 2)
        started = time.monotonic()
        await again.stop(grace_s=0.3)
        assert time.monotonic() - started < 2.0
        await platform.stop()
        assert platform.arrivals["/a"] == ids[:2] and await rig.queued() == ids[1:]

    run(tmp_path, scenario)


def test_a_queued_event_that_is_gone_is_dropped(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        platform = Platform()
        await platform.start()
        settings = Settings(url=platform.url())
        ghost = str(FIRST_ID - 5)  # queued, but retention removed its record

        def enqueue_only(txn: Txn) -> Any:
            push_queue.enqueue(txn, ghost)
            return None, []

        await rig.store.write(enqueue_only)
        ids = await rig.add_events(2)
        pusher = HistoryPusher(rig.store, settings, rig.files)
        await pusher.start()
        try:
            await until(lambda: len(platform.arrivals["/a"]) == 2)
            await until(lambda: not pusher.stats()["queued"])
        finally:
            await pusher.stop()
            await platform.stop()
        assert platform.arrivals["/a"] == ids
        assert await rig.queued() == []
        assert pusher.stats()["delivered"] == 2

    run(tmp_path, scenario)


def test_a_redirect_is_a_failure_not_a_delivery(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        hits: List[str] = []

        async def moved(request: web.Request) -> web.Response:
            hits.append(request.method)
            raise web.HTTPFound("/elsewhere")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", moved)
        runner = web.AppRunner(app, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/a"
        ids = await rig.add_events(1)
        pusher = HistoryPusher(rig.store, Settings(url=url), rig.files)
        await pusher.start()
        try:
            await until(lambda: pusher.stats()["failures"] == 1)
        finally:
            await pusher.stop()
            await runner.cleanup()
        assert hits == ["POST"]
        assert "HTTP 302" in pusher.stats()["last_error"]
        assert await rig.queued() == ids

    run(tmp_path, scenario)
