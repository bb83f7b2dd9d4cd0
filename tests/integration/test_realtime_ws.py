"""The real-time event WebSocket (api/event.md 7) with real clients on loopback: aiohttp
clients, and raw-socket clients for the peers aiohttp will not imitate (one that stops
reading with a tiny receive window, one that never answers pings, one that vanishes with
a TCP reset). The server is the real one on an ephemeral port, fed synthetic events built
from realistic records. Timings are generous sanity bounds only."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from sophon_face.api.realtime_ws import start_realtime_server
from sophon_face.push.realtime import RealtimeHub
from sophon_face.service.recorded import RecordedEvent

pytestmark = pytest.mark.asyncio

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
FACE_JPEG = (DATA_DIR / "macron_2014.jpg").read_bytes()
REGISTER_JPEG = (DATA_DIR / "astronaut_collins.jpg").read_bytes()
D1, D2, D3 = ("04f98265-1fad-47e5-9dda-66e191272055", "f9f0768f-497c-45f3-9307-ae80a9d89390",
              "5b1c0e6a-3d2f-4a8e-9c1b-7e6f5d4c3b2a")
DEVICES = {D1: ("192.168.1.243", "rtsp"), D2: ("192.168.1.244", "photo"),
           D3: ("192.168.1.245", "gb28181")}
DATA_URL = "data:image/jpeg;base64,"
INVALID_JSON = {"error": {"code": "INVALID_REQUEST_JSON",
                          "message": "request body is not a JSON object"}}
_next_id = [1566016554020311]


def make_event(device: Optional[str] = None, identity: bool = True, face: bool = True,
               register: bool = True, face_jpeg: bytes = FACE_JPEG) -> RecordedEvent:
    """A committed event as the event service hands it over (store/events.py's record)."""
    _next_id[0] += 1
    event_id = str(_next_id[0])
    timestamp = int(event_id) / 1e6
    ip, kind = DEVICES.get(device or "", ("", ""))
    record = {
        "event_id": event_id, "timestamp": timestamp,
        "identity_id": "666666" if identity else "", "identity_name": "小明" if identity else "",
        "register_image_id": "r" + event_id if identity else "",
        "recognize_face_image_id": "00" + event_id, "spot_image_id": "01" + event_id,
        "permission_id": "270ec5e6" if identity else "", "permission_name": "staff" if identity else "",
        "user_type": "employee" if identity else "stranger",
        "score": 94.8 if identity else 27.69, "post_action": "0",
        "frame_id": 812 if device else 0,
        "media_device_info": {"media_device_id": device or "", "media_device_ip": ip,
                              "media_device_name": "gate" if device else "",
                              "media_device_type": kind},
        "media_device_url": f"rtsp://{ip}/live" if device else "",
        "recognize_face_attr": {"age": None, "box": [50.5, 23.0, 173.25, 183.0],
                                "expression": None, "gender": "female", "glasses": "no",
                                "hat": None, "mask": None, "point": []},
        "feature": bytes(2048),
        "ext_data": {"in_timestamp": timestamp - 1.0, "recognition_timestamp": timestamp,
                     "track_id": 7},
        "image_bytes": len(face_jpeg) + 90000,
    }
    return RecordedEvent(record=record, face_jpeg=face_jpeg if face else None,
                         spot_jpeg=b"\xff\xd8scene\xff\xd9",
                         register_jpeg=REGISTER_JPEG if register and identity else None)


# ---------------------------------------------------------------- server and clients

class Server:
    def __init__(self, hub: RealtimeHub, runner: web.AppRunner, port: int) -> None:
        self.hub, self.runner, self.port = hub, runner, port
        self.url = f"ws://127.0.0.1:{port}/"
        self.stopped = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.hub.close()
            await self.runner.cleanup()


@pytest_asyncio.fixture
async def start_server() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: List[Server] = []

    async def start(queue_size: int = 100, heartbeat_s: float = 30.0) -> Server:
        hub = RealtimeHub(queue_size=queue_size)
        runner, port = await start_realtime_server(hub, "127.0.0.1", 0, heartbeat_s=heartbeat_s)
        assert port > 0
        servers.append(Server(hub, runner, port))
        return servers[-1]

    yield start
    for server in servers:
        await server.stop()


@pytest_asyncio.fixture
async def server(start_server: Callable[..., Awaitable[Server]]) -> Server:
    return await start_server()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


class Client:
    """An aiohttp WebSocket client that keeps reading: (arrival time, raw text) per message."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.texts: List[Tuple[float, str]] = []
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, url: str) -> "Client":
        return cls(await session.ws_connect(url))

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type == aiohttp.WSMsgType.TEXT:
                self.texts.append((time.monotonic(), message.data))
                self._arrived.set()
        self.closed.set()

    @property
    def messages(self) -> List[Dict[str, Any]]:
        return [json.loads(text) for _, text in self.texts]

    @property
    def events(self) -> List[Dict[str, Any]]:
        return [m for m in self.messages if "error" not in m]

    async def wait_for(self, count: int, timeout: float = 5.0) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.texts) < count and time.monotonic() < deadline:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        return self.messages

    async def configure(self, config: Any) -> None:
        """Send a configuration, then a bad one as a barrier: once its answer is back the
        server has applied the first (messages are handled in order)."""
        await self.ws.send_str(config if isinstance(config, str) else json.dumps(config))
        await self.barrier()

    async def barrier(self) -> None:
        before = len(self.texts)
        await self.ws.send_str("barrier")
        await self.wait_for(before + 1)
        assert json.loads(self.texts[-1][1]) == INVALID_JSON
        del self.texts[before:]

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def quiet(seconds: float = 0.3) -> None:
    """Give a message that should NOT arrive the time to arrive anyway."""
    await asyncio.sleep(seconds)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class RawClient:
    """A blocking-socket WebSocket client (call it through ``in_thread``): it answers no
    ping, reads only when told to, and can leave with a TCP reset."""

    def __init__(self, port: int, receive_buffer: Optional[int] = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connect: the window is negotiated then
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.sock.sendall((f"GET /raw HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode("ascii"))
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            assert chunk, "closed during the handshake"
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_text(self, text: str) -> None:
        payload = text.encode("utf-8")
        mask = os.urandom(4)
        if len(payload) < 126:
            header = bytes([0x81, 0x80 | len(payload)])
        else:
            header = bytes([0x81, 0x80 | 126]) + struct.pack("!H", len(payload))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def read_frame(self) -> Tuple[int, bytes]:
        """(opcode, payload) of the next frame; EOFError when the server closed the TCP."""
        first, second = self._exactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._exactly(8))[0]
        return first & 0x0F, self._exactly(length)

    def read_texts_until(self, last_event_id: str, timeout: float = 20.0) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout
        out: List[Dict[str, Any]] = []
        while time.monotonic() < deadline:
            opcode, payload = self.read_frame()
            if opcode == 0x1:
                out.append(json.loads(payload))
                if out[-1].get("event_id") == last_event_id:
                    break
        return out

    def wait_closed(self, timeout: float = 10.0) -> List[int]:
        """Opcodes read until the server ends the TCP connection."""
        self.sock.settimeout(timeout)
        opcodes = []
        try:
            while True:
                opcodes.append(self.read_frame()[0])
        except (EOFError, ConnectionResetError):
            return opcodes

    def reset(self) -> None:
        """Vanish: SO_LINGER 0 makes close() send a RST instead of a FIN."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def configure(self, config: Dict[str, Any]) -> None:
        self.send_text(json.dumps(config))
        self.send_text("barrier")
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x1:
                assert json.loads(payload) == INVALID_JSON
                return


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# ---------------------------------------------------------------- protocol

async def test_any_path_upgrades_and_plain_http_is_refused(server: Server,
                                                           session: aiohttp.ClientSession) -> None:
    for path in ("/", "/ws", "/any/deep/path?x=1"):
        client = await Client.connect(session, f"ws://127.0.0.1:{server.port}{path}")
        await client.configure({})
        await client.close()
    async with session.get(f"http://127.0.0.1:{server.port}/") as response:
        assert response.status == 400
    assert await eventually(lambda: server.hub.subscriber_count == 0)


async def test_nothing_is_sent_before_a_configuration(server: Server,
                                                      session: aiohttp.ClientSession) -> None:
    client = await Client.connect(session, server.url)
    assert await eventually(lambda: server.hub.subscriber_count == 1)
    server.hub.publish(make_event(D1))
    server.hub.publish(make_event(None, identity=False))
    await quiet()
    assert client.texts == []
    await client.configure({"with_face_image": True})
    after = make_event(D2)
    server.hub.publish(after)
    # No backlog: the first message is the first event after the configuration.
    assert [m["event_id"] for m in await client.wait_for(1)] == [after.record["event_id"]]
    await quiet()
    assert len(client.texts) == 1


async def test_device_filters_empty_absent_and_aliases(server: Server,
                                                       session: aiohttp.ClientSession) -> None:
    configs = {
        "empty": {"media_device_ids": []},
        "absent": {},
        "null": {"media_device_ids": None},
        "d1": {"media_device_ids": [D1]},
        "d1d2": {"media_device_ids": [D1, D2]},
        "alias": {"event_list": [D2], "need_face": True},
    }
    clients = {name: await Client.connect(session, server.url) for name in configs}
    for name, config in configs.items():
        await clients[name].configure(config)
    published = {"d1": make_event(D1), "d2": make_event(D2), "none": make_event(None),
                 "d3": make_event(D3, identity=False)}
    for ev in published.values():
        server.hub.publish(ev)
    expected = {
        "empty": ["d1", "d2", "none", "d3"], "absent": ["d1", "d2", "none", "d3"],
        "null": ["d1", "d2", "none", "d3"], "d1": ["d1"], "d1d2": ["d1", "d2"], "alias": ["d2"],
    }
    for name, keys in expected.items():
        await clients[name].wait_for(len(keys))
    await quiet()
    for name, keys in expected.items():
        got = [m["event_id"] for m in clients[name].messages]
        assert got == [published[k].record["event_id"] for k in keys], name
    alias_message = clients["alias"].messages[0]
    assert alias_message["recognize_face_image"].startswith(DATA_URL)  # need_face
    assert "register_image" not in alias_message
    assert "recognize_face_image" not in clients["empty"].messages[0]


async def test_a_new_configuration_replaces_the_old(server: Server,
                                                    session: aiohttp.ClientSession) -> None:
    client = await Client.connect(session, server.url)
    await client.configure({"with_face_image": True, "with_register_image": True,
                            "media_device_ids": [D1]})
    first = make_event(D1)
    server.hub.publish(first)
    server.hub.publish(make_event(D2))
    message = (await client.wait_for(1))[0]
    assert message["event_id"] == first.record["event_id"]
    assert "recognize_face_image" in message and "register_image" in message
    # Replaced wholesale: absent keys fall back to their defaults, nothing is merged.
    await client.configure({"media_device_ids": [D2]})
    server.hub.publish(make_event(D1))
    second = make_event(D2)
    server.hub.publish(second)
    messages = await client.wait_for(2)
    await quiet()
    assert [m["event_id"] for m in client.messages] == [first.record["event_id"],
                                                       second.record["event_id"]]
    assert {"recognize_face_image", "register_image"}.isdisjoint(messages[1])


async def test_invalid_configurations_are_answered_and_the_previous_one_stays(
        server: Server, session: aiohttp.ClientSession) -> None:
    client = await Client.connect(session, server.url)
    await client.configure({"with_face_image": True, "media_device_ids": [D1]})
    bad = [
        ("not json", INVALID_JSON),
        ("", INVALID_JSON),
        ("[1]", INVALID_JSON),
        ("null", INVALID_JSON),
        ('{"with_face_image": "yes"}',
         {"error": {"code": "INVALID_ARGUMENTS", "message": 'with_face_image: "yes"'}}),
        ('{"need_register": 1}',
         {"error": {"code": "INVALID_ARGUMENTS", "message": "with_register_image: 1"}}),
        ('{"media_device_ids": "%s"}' % D2,
         {"error": {"code": "INVALID_ARGUMENTS", "message": 'media_device_ids: "%s"' % D2}}),
        ('{"media_device_ids": ["%s", 5]}' % D2,
         {"error": {"code": "INVALID_ARGUMENTS", "message": "media_device_ids[1]: 5"}}),
    ]
    for text, answer in bad:
        await client.ws.send_str(text)
        messages = await client.wait_for(len(client.texts) + 1)
        assert messages[-1] == answer, text
    await client.ws.send_bytes(b'{"media_device_ids": []}')  # binary: not a configuration
    assert (await client.wait_for(len(bad) + 1))[-1] == INVALID_JSON
    # Every answer is the HTTP envelope's exact bytes (sorted, compact).
    assert client.texts[0][1] == ('{"error":{"code":"INVALID_REQUEST_JSON",'
                                  '"message":"request body is not a JSON object"}}')
    del client.texts[:]
    # Still configured as before: D1 only, with the face crop.
    mine = make_event(D1)
    server.hub.publish(make_event(D2))
    server.hub.publish(mine)
    await client.wait_for(1)
    await quiet()
    assert [m["event_id"] for m in client.messages] == [mine.record["event_id"]]
    assert client.messages[0]["recognize_face_image"].startswith(DATA_URL)
    assert not client.ws.closed


async def test_message_fields_and_image_rules(server: Server,
                                              session: aiohttp.ClientSession) -> None:
    both = await Client.connect(session, server.url)
    await both.configure({"with_face_image": True, "with_register_image": True})
    neither = await Client.connect(session, server.url)
    await neither.configure({"with_face_image": False})
    face_only = await Client.connect(session, server.url)
    await face_only.configure({"with_face_image": True})
    recognised = make_event(D1)
    stranger = make_event(None, identity=False)  # no registration photo exists
    bare = make_event(D2, face=False, register=False)  # nothing stored at all
    for ev in (recognised, stranger, bare):
        server.hub.publish(ev)
    for client in (both, neither, face_only):
        assert len(await client.wait_for(3)) == 3

    always = {"event_id", "timestamp", "identity_id", "identity_name", "user_type", "score",
              "media_device_ip", "media_device_id", "media_device_type", "recognize_face_attr"}
    first = both.messages[0]
    assert first == {
        "event_id": recognised.record["event_id"],
        "timestamp": int(recognised.record["event_id"]) // 1000,
        "identity_id": "666666", "identity_name": "小明", "user_type": "employee",
        "score": 94.8, "media_device_ip": "192.168.1.243", "media_device_id": D1,
        "media_device_type": "rtsp",
        "recognize_face_attr": {"age": None, "box": [50.5, 23.0, 173.25, 183.0],
                                "expression": None, "gender": "female", "glasses": "no",
                                "hat": None, "mask": None, "point": []},
        "recognize_face_image": DATA_URL + base64.b64encode(FACE_JPEG).decode(),
        "register_image": DATA_URL + base64.b64encode(REGISTER_JPEG).decode(),
    }
    raw = both.texts[0][1]
    assert raw == json.dumps(first, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert base64.b64decode(first["recognize_face_image"][len(DATA_URL):]) == FACE_JPEG

    assert set(both.messages[1]) == always | {"recognize_face_image"}  # stranger: no photo
    assert both.messages[1]["media_device_id"] == "" and both.messages[1]["user_type"] == "stranger"
    assert set(both.messages[2]) == always  # nothing stored
    assert all(set(m) == always for m in neither.messages)
    assert [set(m) - always for m in face_only.messages] == [{"recognize_face_image"}] * 2 + [set()]
    for client in (both, neither, face_only):
        for message in client.messages:
            assert isinstance(message["timestamp"], int)
            assert "feature_binary" not in message["recognize_face_attr"]


# ---------------------------------------------------------------- load and bad clients

async def test_slow_client_never_holds_up_publish_or_a_fast_client(
        server: Server, session: aiohttp.ClientSession) -> None:
    """1000 events published quickly; a client with a tiny receive window that stops
    reading gets a bounded queue that drops its oldest; the fast client gets everything."""
    fast = await Client.connect(session, server.url)
    await fast.configure({})  # small messages
    slow = await in_thread(RawClient, server.port, 4096)
    await in_thread(slow.configure, {"with_face_image": True, "with_register_image": True})
    assert server.hub.subscriber_count == 2

    total = 1000
    published_at: Dict[str, float] = {}
    ids: List[str] = []
    publish_s: List[float] = []
    max_queued = 0
    started = time.monotonic()
    for i in range(total):
        ev = make_event(D1 if i % 2 else None)  # ~90 KB for the slow client, ~400 B for the fast
        ids.append(ev.record["event_id"])
        t0 = time.perf_counter()
        server.hub.publish(ev)
        publish_s.append(time.perf_counter() - t0)
        published_at[ids[-1]] = time.monotonic()
        max_queued = max(max_queued, server.hub.stats()["queued"])
        if i % 10 == 9:
            await asyncio.sleep(0.001)  # bursts of 10: let the senders and readers run
    publishing_s = time.monotonic() - started
    await fast.wait_for(total, timeout=15)

    # Never waits on a socket: a publish that did would block until the slow client read
    # (it never does here). Generous bounds: a loaded CI machine pauses any thread for
    # tens of milliseconds; speed itself is measured in bench/events.py.
    assert max(publish_s) < 0.5, max(publish_s)
    assert publishing_s < 30.0
    assert [m["event_id"] for m in fast.messages] == ids
    latencies = [arrived - published_at[json.loads(text)["event_id"]]
                 for arrived, text in fast.texts]
    assert max(latencies) < 5.0, max(latencies)  # not held up behind the slow client
    stats = server.hub.stats()
    assert max_queued <= 100 + 10  # the slow client's 100 plus the fast one's burst
    assert stats["dropped"] > 0 and stats["subscribers"] == 2

    # The slow client finally reads: what the network held, then a gap, then exactly the
    # newest 100 — the oldest queued messages were the ones dropped.
    received = [m["event_id"] for m in await in_thread(slow.read_texts_until, ids[-1])]
    assert received[-100:] == ids[-100:]
    assert len(received) < total
    prefix = received[:-100]
    assert prefix == ids[:len(prefix)]
    assert len(prefix) + 100 + stats["dropped"] == total
    assert server.hub.stats()["dropped"] == stats["dropped"]
    slow.sock.close()


async def test_clients_that_vanish(server: Server, session: aiohttp.ClientSession,
                                   caplog: pytest.LogCaptureFixture) -> None:
    """A reset idle client, a reset client stuck mid-send, an aborted aiohttp client:
    each is removed, nothing is logged as an error, the others carry on."""
    caplog.set_level(logging.DEBUG)
    fast = await Client.connect(session, server.url)
    await fast.configure({"with_face_image": True})
    idle = await in_thread(RawClient, server.port)
    await in_thread(idle.configure, {})
    stuck = await in_thread(RawClient, server.port, 4096)
    await in_thread(stuck.configure, {"with_face_image": True, "with_register_image": True})
    aborted = await Client.connect(session, server.url)
    await aborted.configure({})
    assert server.hub.subscriber_count == 4

    for _ in range(30):  # enough to leave `stuck` blocked in a send
        server.hub.publish(make_event(D1))
    await fast.wait_for(30)
    await asyncio.sleep(0.2)
    idle.reset()
    stuck.reset()
    transport = aborted.ws._response.connection.transport  # type: ignore[union-attr]
    transport.abort()
    assert await eventually(lambda: server.hub.subscriber_count == 1), server.hub.stats()

    later = [make_event(D2) for _ in range(20)]
    for ev in later:
        server.hub.publish(ev)
    messages = await fast.wait_for(50)
    assert [m["event_id"] for m in messages[30:]] == [ev.record["event_id"] for ev in later]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
    assert not fast.ws.closed


async def test_a_dead_peer_is_dropped_by_the_heartbeat(
        start_server: Callable[..., Awaitable[Server]], session: aiohttp.ClientSession) -> None:
    server = await start_server(heartbeat_s=0.4)
    alive = await Client.connect(session, server.url)  # keeps reading, so it answers pings
    await alive.configure({})
    dead = await in_thread(RawClient, server.port)  # never answers a ping
    await in_thread(dead.configure, {})
    assert server.hub.subscriber_count == 2
    started = time.monotonic()
    opcodes = await in_thread(dead.wait_closed, 10.0)
    assert 0x9 in opcodes  # it was pinged, did not answer, and was cut off
    assert time.monotonic() - started < 5.0
    assert await eventually(lambda: server.hub.subscriber_count == 1)
    await asyncio.sleep(1.0)  # a few heartbeats later the live client is still there
    ev = make_event(D1)
    server.hub.publish(ev)
    assert [m["event_id"] for m in await alive.wait_for(1)] == [ev.record["event_id"]]
    dead.sock.close()


@pytest.mark.parametrize("close_hub_first", [True, False])
async def test_shutdown_closes_every_socket(start_server: Callable[..., Awaitable[Server]],
                                            session: aiohttp.ClientSession,
                                            close_hub_first: bool) -> None:
    """The lead's order (hub.close() then runner.cleanup()) and the runner alone (its
    on_shutdown closes the hub): reading clients get a going-away close, a stuck client
    is cut off, and shutdown does not wait on anybody for long."""
    server = await start_server()
    reading = [await Client.connect(session, server.url) for _ in range(3)]
    for client in reading:
        await client.configure({})
    unconfigured = await Client.connect(session, server.url)
    stuck = await in_thread(RawClient, server.port, 4096)
    await in_thread(stuck.configure, {"with_face_image": True, "with_register_image": True})
    for _ in range(30):
        server.hub.publish(make_event(D1))
    await reading[0].wait_for(30)
    assert server.hub.subscriber_count == 5

    started = time.monotonic()
    server.stopped = True
    if close_hub_first:
        await server.hub.close()
    await server.runner.cleanup()
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, elapsed
    assert server.hub.closed and server.hub.subscriber_count == 0
    for client in reading + [unconfigured]:
        await asyncio.wait_for(client.closed.wait(), 5)
        assert client.ws.close_code == 1001
    await in_thread(stuck.wait_closed, 10.0)
    stuck.sock.close()
    with pytest.raises(aiohttp.ClientError):
        await session.ws_connect(server.url)
