"""The real-time event WebSocket (api/event.md 7) fed by real searches on a real daemon:
a fast client, a slow client that never reads and a client that vanishes. The fast one
still gets every event within a second and search latency does not change."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time
from typing import Any, Dict, List

import aiohttp

from .conftest import photo
from .live import b64_of

MACRON, MACRON_2025, SUNAK = photo("macron_2014.jpg"), photo("macron_2025.jpg"), photo("sunak.jpg")


class Listener:
    """A WebSocket client on its own loop in a thread, recording (arrival time, message)."""

    def __init__(self, port: int, config: Dict[str, Any]) -> None:
        self.port, self.config = port, config
        self.messages: List[Any] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),),
                                       daemon=True)
        self._stop: asyncio.Event

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{self.port}/") as ws:
                await ws.send_str(json.dumps(self.config))
                await asyncio.sleep(0.2)  # the configuration is applied before events flow
                self.ready.set()
                reader = asyncio.ensure_future(self._read(ws))
                await self._stop.wait()
                reader.cancel()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for message in ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.messages.append((time.monotonic(), json.loads(message.data)))

    def start(self) -> "Listener":
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)


def slow_client(port: int) -> socket.socket:
    """A raw WebSocket client that configures itself and then never reads again."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    time.sleep(0.2)
    payload = json.dumps({"with_face_image": True, "with_register_image": True}).encode()
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def test_fast_slow_and_vanishing_clients(fresh_server) -> None:
    server = fresh_server
    gid = server.post("createpermission", {"permission_name": "g"}).json["permission_id"]
    server.post("createidentity", {"register_image": b64_of(MACRON), "identity_id": "m",
                                   "identity_name": "小明", "permission_ids": [gid],
                                   "fiqa_level": "no"})
    device = server.post("addmediadevice", {"media_device_type": "photo", "media_device_name": "gate",
                                            "media_device_url": "10.1.1.1", "permission_id": gid}).json
    server.post("setconfigs", {"config_dict": {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 0}})
    probe = {"rgb_image_base64": b64_of(MACRON_2025), "media_device_ip": "10.1.1.1"}

    def timed_searches(n: int) -> List[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            assert server.post("search", probe).status == 200
            out.append(time.perf_counter() - t0)
        return out

    baseline = timed_searches(6)
    fast = Listener(server.ws_port, {"with_face_image": True, "with_register_image": True,
                                     "media_device_ids": [device["media_device_id"]]}).start()
    only_other = Listener(server.ws_port, {"event_list": ["another-device"]}).start()  # R31 alias
    slow = slow_client(server.ws_port)
    vanishing = Listener(server.ws_port, {}).start()
    vanishing.stop()  # gone without a goodbye, before the events
    sent_at = []
    loaded = []
    for _ in range(6):
        sent_at.append(time.monotonic())
        loaded.extend(timed_searches(1))
    server.post("search", {"rgb_image_base64": b64_of(SUNAK)})  # no device: not for `fast`
    deadline = time.monotonic() + 10
    while len(fast.messages) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    fast.stop()
    only_other.stop()
    slow.close()
    assert len(fast.messages) == 6
    for (arrived, message), sent in zip(fast.messages, sent_at):
        assert arrived - sent < 1.0 + max(loaded)  # within a second of the search returning
        assert message["identity_id"] == "m" and message["identity_name"] == "小明"
        assert message["media_device_id"] == device["media_device_id"]
        assert message["media_device_type"] == "photo"
        assert isinstance(message["timestamp"], int) and message["timestamp"] > 10 ** 12
        assert message["recognize_face_image"].startswith("data:image/jpeg;base64,")
        assert message["register_image"].startswith("data:image/jpeg;base64,")
        assert "feature_binary" not in message["recognize_face_attr"]
    ids = [m["event_id"] for _, m in fast.messages]
    assert ids == sorted(ids)
    assert only_other.messages == []
    # A slow and a vanished client cost the searches nothing measurable.
    assert statistics.median(loaded) < 2.0 * statistics.median(baseline) + 0.05
    health = server.request("GET", "/health").json
    assert health["push"]["realtime"]["port"] == server.ws_port


def test_configuration_messages(fresh_server) -> None:
    """Nothing before a configuration; bad ones are answered and the old one stays."""
    async def scenario() -> List[Any]:
        answers: List[Any] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(f"ws://127.0.0.1:{fresh_server.ws_port}/any/path") as ws:
                for bad in ("not json", "[1]", json.dumps({"with_face_image": "yes"}),
                            json.dumps({"media_device_ids": "d"}),
                            json.dumps({"need_register": 1})):
                    await ws.send_str(bad)
                    answers.append(json.loads((await ws.receive(timeout=5)).data))
                await ws.send_bytes(b"\x00")
                answers.append(json.loads((await ws.receive(timeout=5)).data))
                try:
                    extra = await ws.receive(timeout=0.5)
                    answers.append(extra.data)
                except asyncio.TimeoutError:
                    pass
        return answers

    answers = asyncio.run(scenario())
    assert answers == [
        {"error": {"code": "INVALID_REQUEST_JSON", "message": "request body is not a JSON object"}},
        {"error": {"code": "INVALID_REQUEST_JSON", "message": "request body is not a JSON object"}},
        {"error": {"code": "INVALID_ARGUMENTS", "message": 'with_face_image: "yes"'}},
        {"error": {"code": "INVALID_ARGUMENTS", "message": 'media_device_ids: "d"'}},
        {"error": {"code": "INVALID_ARGUMENTS", "message": "with_register_image: 1"}},
        {"error": {"code": "INVALID_REQUEST_JSON", "message": "request body is not a JSON object"}},
    ]
    plain = fresh_server.request("GET", "/")  # the API port is not the WebSocket port
    assert plain.status == 404


def test_the_hub_drops_the_oldest_for_a_full_queue() -> None:
    from sophon_face.push.realtime import RealtimeHub, SubscriberConfig
    from sophon_face.service.recorded import RecordedEvent

    async def scenario() -> None:
        hub = RealtimeHub(queue_size=3)
        subscriber = hub.add()
        subscriber.config = SubscriberConfig()
        unconfigured = hub.add()
        for i in range(5):
            hub.publish(RecordedEvent(record={
                "event_id": str(i), "timestamp": 1.5, "identity_id": "", "identity_name": "",
                "user_type": "stranger", "score": 1.234, "media_device_info": {
                    "media_device_id": "", "media_device_ip": "", "media_device_name": "",
                    "media_device_type": ""},
                "recognize_face_attr": {"box": [1, 2, 3, 4]}}))
        assert [json.loads(m)["event_id"] for m in subscriber.queue] == ["2", "3", "4"]
        assert json.loads(subscriber.queue[0])["score"] == 1.23
        assert list(unconfigured.queue) == []
        assert hub.stats()["dropped"] == 2
        await hub.close()

    asyncio.run(scenario())
