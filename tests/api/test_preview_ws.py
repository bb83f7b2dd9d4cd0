"""The preview WebSocket servers (api/device.md 10) with real clients on loopback: aiohttp
viewers and control clients, a raw-socket viewer that stops reading with a tiny receive
window and one that never answers pings, and the DeviceService driving the control
channel through a real LMDB. Frames are real photos; no models are needed. Timings are
generous sanity bounds only."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Tuple

import aiohttp
import cv2
import numpy as np
import pytest
import pytest_asyncio
from aiohttp import web

from sophon_face.api.preview_ws import start_preview_servers
from sophon_face.push.preview import PreviewHub
from sophon_face.service.devices import DeviceService
from sophon_face.store import Store

pytestmark = pytest.mark.asyncio

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
D1, D2, D3 = ("04f98265-1fad-47e5-9dda-66e191272055", "f9f0768f-497c-45f3-9307-ae80a9d89390",
              "5b1c0e6a-3d2f-4a8e-9c1b-7e6f5d4c3b2a")
LAYOUT = {"selected_device_list": [D1, D2, D3], "preview_device_list": [D2, D1],
          "preview_mode": 4, "last_set_name": "QT"}
FACES = [{"track_id": 3, "detect_box": [120.5, 80.0, 260.0, 250.75], "identity_name": "小明",
          "gender": "male", "mask": "no"},
         {"track_id": 4, "detect_box": [400, 90, 470, 180], "identity_name": "stranger"}]


def photo_bgr(width: int, height: int) -> np.ndarray:
    image = cv2.imread(str(DATA_DIR / "obama_senate.jpg"), cv2.IMREAD_COLOR)
    assert image is not None
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


# ---------------------------------------------------------------- servers and clients

class Servers:
    def __init__(self, hub: PreviewHub, runners: List[web.AppRunner], port: int,
                 control_port: int) -> None:
        self.hub, self.runners = hub, runners
        self.port, self.control_port = port, control_port
        self.frames_url = f"ws://127.0.0.1:{port}/preview"
        self.control_url = f"ws://127.0.0.1:{control_port}/"
        self.stopped = False

    async def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            await self.hub.close()
            for runner in self.runners:
                await runner.cleanup()


@pytest_asyncio.fixture
async def start_servers() -> AsyncIterator[Callable[..., Awaitable[Servers]]]:
    started: List[Servers] = []

    async def start(queue_size: int = 4, heartbeat_s: float = 30.0,
                    layout: Optional[Dict[str, Any]] = None) -> Servers:
        hub = PreviewHub(queue_size=queue_size, jpeg_quality=80)
        hub.set_layout(LAYOUT if layout is None else layout)
        runners, port, control_port = await start_preview_servers(
            hub, "127.0.0.1", 0, 0, heartbeat_s=heartbeat_s)
        assert port > 0 and control_port > 0 and port != control_port
        assert len(runners) == 2
        started.append(Servers(hub, runners, port, control_port))
        return started[-1]

    yield start
    for servers in started:
        await servers.stop()


@pytest_asyncio.fixture
async def servers(start_servers: Callable[..., Awaitable[Servers]]) -> Servers:
    return await start_servers()


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


class Client:
    """An aiohttp WebSocket client that keeps reading: (type, data) per message."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.messages: List[Tuple[aiohttp.WSMsgType, Any]] = []
        self.closed = asyncio.Event()
        self._arrived = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, url: str) -> "Client":
        return cls(await session.ws_connect(url))

    async def _read(self) -> None:
        async for message in self.ws:
            if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                self.messages.append((message.type, message.data))
                self._arrived.set()
        self.closed.set()

    async def wait_for(self, count: int, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.messages) < count and time.monotonic() < deadline:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break

    @property
    def frames(self) -> List[Dict[str, Any]]:
        """10.1: every message binary, its payload UTF-8 JSON."""
        assert all(kind == aiohttp.WSMsgType.BINARY for kind, _ in self.messages)
        return [json.loads(data.decode("utf-8")) for _, data in self.messages]

    @property
    def notices(self) -> List[Dict[str, Any]]:
        """10.2: every message text JSON."""
        assert all(kind == aiohttp.WSMsgType.TEXT for kind, _ in self.messages)
        return [json.loads(data) for _, data in self.messages]

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def quiet(seconds: float = 0.3) -> None:
    """Give a message that should NOT arrive the time to arrive anyway."""
    await asyncio.sleep(seconds)


async def publish_and_wait(hub: PreviewHub, device_id: str, frame_id: int,
                           image_bgr: np.ndarray) -> None:
    """Publish one frame and wait for its encode (the next one is then not skipped)."""
    before = hub.stats()["frames_encoded"]
    hub.publish_frame(device_id, image_bgr, frame_id, 1566016554.0 + frame_id / 25, [], [])
    assert await eventually(lambda: hub.stats()["frames_encoded"] == before + 1)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


class RawClient:
    """A blocking-socket WebSocket client (call it through ``in_thread``): it answers no
    ping and reads only when told to."""

    def __init__(self, port: int, path: str = "/preview",
                 receive_buffer: Optional[int] = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:  # before connect: the window is negotiated then
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(10)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
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

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise EOFError
            self.buffer += chunk
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def read_frame(self) -> Tuple[int, bytes]:
        """(opcode, payload) of the next unfragmented frame; EOFError when the TCP ends."""
        first, second = self._exactly(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._exactly(2))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._exactly(8))[0]
        return first & 0x0F, self._exactly(length)

    def read_frame_ids_until(self, last_frame_id: int, timeout_s: float = 30.0) -> List[int]:
        deadline = time.monotonic() + timeout_s
        out: List[int] = []
        while time.monotonic() < deadline:
            opcode, payload = self.read_frame()
            if opcode == 0x2:
                out.append(json.loads(payload.decode("utf-8"))["frame_id"])
                if out[-1] == last_frame_id:
                    break
        return out

    def wait_closed(self, timeout_s: float = 10.0) -> List[int]:
        """Opcodes read until the server ends the TCP connection."""
        self.sock.settimeout(timeout_s)
        opcodes = []
        try:
            while True:
                opcodes.append(self.read_frame()[0])
        except (EOFError, ConnectionResetError):
            return opcodes


# ---------------------------------------------------------------- protocol

async def test_paths_and_plain_http(servers: Servers, session: aiohttp.ClientSession) -> None:
    viewers = [await Client.connect(session, f"ws://127.0.0.1:{servers.port}{path}")
               for path in ("/preview", "/")]
    controls = [await Client.connect(session, f"ws://127.0.0.1:{servers.control_port}{path}")
                for path in ("/", "/any/path?x=1")]
    assert await eventually(lambda: servers.hub.stats()["viewers"] == 2)
    assert servers.hub.stats()["control_clients"] == 2
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await session.ws_connect(f"ws://127.0.0.1:{servers.port}/elsewhere")
    assert refused.value.status == 404
    for port in (servers.port, servers.control_port):
        async with session.get(f"http://127.0.0.1:{port}/") as response:
            assert response.status == 400
    # Whatever a client sends is ignored, and it stays connected.
    await viewers[0].ws.send_str('{"hello": 1}')
    await controls[0].ws.send_bytes(b"\x00\x01")
    await quiet(0.2)
    assert not viewers[0].ws.closed and not controls[0].ws.closed
    for client in viewers + controls:
        await client.close()
    assert await eventually(lambda: servers.hub.stats()["viewers"] == 0
                            and servers.hub.stats()["control_clients"] == 0)


async def test_viewers_get_binary_utf8_json_frames(servers: Servers,
                                                   session: aiohttp.ClientSession) -> None:
    viewers = [await Client.connect(session, servers.frames_url) for _ in range(2)]
    assert await eventually(lambda: servers.hub.wants_frames(D1))
    assert not servers.hub.wants_frames(D3)  # selected but not displayed
    image = photo_bgr(800, 450)
    servers.hub.publish_frame(D1, image, 1200, 1566016554.125, FACES, [100, 50, 700, 400])
    servers.hub.publish_frame(D2, image, 31, 1566016554.25, [], [])
    servers.hub.publish_frame(D3, image, 5, 1566016554.5, [], [])  # off screen: not sent
    for viewer in viewers:
        await viewer.wait_for(2)
    await quiet(0.2)
    for viewer in viewers:
        frames = sorted(viewer.frames, key=lambda m: m["preview_id"])
        assert len(frames) == 2
        for frame in frames:
            assert set(frame) == {"media_device_id", "preview_id", "frame_id", "timestamp",
                                  "frame_img", "preview_objs", "roi"}
            jpeg = base64.b64decode(frame["frame_img"]["data"], validate=True)
            decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert decoded.shape == (450, 800, 3)
            assert (frame["frame_img"]["width"], frame["frame_img"]["height"]) == (800, 450)
        tile0, tile1 = frames
        assert (tile0["media_device_id"], tile0["preview_id"], tile0["frame_id"]) == (D2, "0", 31)
        assert (tile0["preview_objs"], tile0["roi"], tile0["timestamp"]) == ([], [], 1566016554.25)
        assert (tile1["media_device_id"], tile1["preview_id"], tile1["frame_id"]) == (D1, "1", 1200)
        assert tile1["preview_objs"] == FACES and tile1["preview_objs"][0]["identity_name"] == "小明"
        assert tile1["roi"] == [100, 50, 700, 400] and tile1["timestamp"] == 1566016554.125
    # Encoded once, whatever the number of viewers: both got the same bytes.
    assert sorted(d for _, d in viewers[0].messages) == sorted(d for _, d in viewers[1].messages)
    assert servers.hub.stats()["frames_encoded"] == 2


async def test_control_clients_start_in_sync_and_follow_changes(
        servers: Servers, session: aiohttp.ClientSession) -> None:
    first = await Client.connect(session, servers.control_url)
    await first.wait_for(1)
    assert first.notices == [dict(LAYOUT, modify_media_device={})]

    changed = dict(LAYOUT, preview_device_list=[D3], preview_mode=1, last_set_name="WEBUI")
    servers.hub.on_preview_change(changed)
    device = {"media_device_id": D3, "media_device_name": "bbb", "media_device_type": "photo",
              "media_device_url": "192.168.1.96", "media_device_ip": "192.168.1.96",
              "permission_id": "c732adf3", "net_relay": {}, "do_rtmp_forward": False,
              "rtmp_address": "", "roi_area": []}
    servers.hub.on_device_change("add", device)
    await first.wait_for(3)
    assert first.notices[1:] == [
        dict(changed, modify_media_device={}),
        dict(changed, modify_media_device={"action": "add", "media_device_info": device})]

    # A client arriving later starts from the layout as it is now.
    second = await Client.connect(session, servers.control_url)
    await second.wait_for(1)
    assert second.notices == [dict(changed, modify_media_device={})]
    # ... and frames now follow the new layout.
    viewer = await Client.connect(session, servers.frames_url)
    assert await eventually(lambda: servers.hub.wants_frames(D3))
    assert not servers.hub.wants_frames(D1)
    servers.hub.publish_frame(D3, photo_bgr(320, 240), 1, 1.0, [], [])
    await viewer.wait_for(1)
    assert [(f["media_device_id"], f["preview_id"]) for f in viewer.frames] == [(D3, "0")]


# ---------------------------------------------------------------- load and bad clients

async def test_a_stalled_viewer_loses_its_oldest_frames_and_holds_up_nobody(
        start_servers: Callable[..., Awaitable[Servers]], session: aiohttp.ClientSession) -> None:
    """A raw viewer with a tiny receive window stops reading while frames of a few hundred
    kilobytes flow; its queue stays at 4 and keeps the newest, a reading viewer gets
    every frame promptly, and publish never waits."""
    servers = await start_servers(queue_size=4)
    fast = await Client.connect(session, servers.frames_url)
    stalled = await in_thread(RawClient, servers.port, "/preview", 4096)
    assert await eventually(lambda: servers.hub.stats()["viewers"] == 2)
    # Noise does not compress: ~400 KB of base64 per frame fills every buffer quickly.
    rng = np.random.default_rng(5678)
    image = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    total = 60
    max_queued = 0
    for frame_id in range(total):
        await publish_and_wait(servers.hub, D1, frame_id, image)
        max_queued = max(max_queued, servers.hub.stats()["frames_queued"])
    await fast.wait_for(total, timeout_s=20)
    assert [f["frame_id"] for f in fast.frames] == list(range(total))
    stats = servers.hub.stats()
    assert stats["frames_dropped"] > 0
    assert max_queued <= 4 + 4  # the stalled viewer's 4 plus what the fast one has not sent

    # The stalled viewer reads at last: what the network held, a gap, then the newest 4.
    received = await in_thread(stalled.read_frame_ids_until, total - 1)
    assert received[-4:] == list(range(total - 4, total))
    prefix = received[:-4]
    assert prefix == list(range(len(prefix)))
    assert len(received) + stats["frames_dropped"] == total
    stalled.sock.close()


async def test_a_dead_peer_is_dropped_by_the_heartbeat(
        start_servers: Callable[..., Awaitable[Servers]], session: aiohttp.ClientSession) -> None:
    servers = await start_servers(heartbeat_s=0.4)
    alive = await Client.connect(session, servers.frames_url)  # reads, so it answers pings
    dead = await in_thread(RawClient, servers.port)  # never answers a ping
    assert await eventually(lambda: servers.hub.stats()["viewers"] == 2)
    started = time.monotonic()
    opcodes = await in_thread(dead.wait_closed, 10.0)
    assert 0x9 in opcodes  # pinged, did not answer, cut off
    assert time.monotonic() - started < 5.0
    assert await eventually(lambda: servers.hub.stats()["viewers"] == 1)
    await asyncio.sleep(1.0)  # a few heartbeats later the live viewer is still there
    await publish_and_wait(servers.hub, D2, 1, photo_bgr(160, 120))
    await alive.wait_for(1)
    assert [f["frame_id"] for f in alive.frames] == [1]
    dead.sock.close()


async def test_shutdown_closes_every_socket(start_servers: Callable[..., Awaitable[Servers]],
                                            session: aiohttp.ClientSession) -> None:
    servers = await start_servers()
    clients = [await Client.connect(session, servers.frames_url) for _ in range(2)]
    clients += [await Client.connect(session, servers.control_url) for _ in range(2)]
    stalled = await in_thread(RawClient, servers.port, "/preview", 4096)
    assert await eventually(lambda: servers.hub.stats()["viewers"] == 3)
    image = np.random.default_rng(1).integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    for frame_id in range(20):
        await publish_and_wait(servers.hub, D1, frame_id, image)

    started = time.monotonic()
    servers.stopped = True
    for runner in servers.runners:  # the runners alone: their shutdown closes the hub
        await runner.cleanup()
    assert time.monotonic() - started < 6.0
    assert servers.hub.closed
    for client in clients:
        await asyncio.wait_for(client.closed.wait(), 5)
        assert client.ws.close_code == 1001
    await in_thread(stalled.wait_closed, 10.0)
    stalled.sock.close()
    with pytest.raises(aiohttp.ClientError):
        await session.ws_connect(servers.control_url)


# ---------------------------------------------------------------- driven by the device service

@pytest_asyncio.fixture
async def device_service(tmp_path: Path) -> AsyncIterator[DeviceService]:
    store = Store(tmp_path / "data", min_free_bytes=0)
    await store.open()
    try:
        yield DeviceService(store, max_count=16, image_roots=[tmp_path])
    finally:
        await store.close()


async def test_device_service_changes_reach_the_control_channel(
        device_service: DeviceService, start_servers: Callable[..., Awaitable[Servers]],
        session: aiohttp.ClientSession) -> None:
    """The wiring of app.py: the layout read at start, both subscriptions. Every change is
    exactly one message; a delete's message carries the layout after the delete."""
    devices = device_service
    servers = await start_servers(layout=await devices.get_preview({}))
    devices.subscribe(servers.hub.on_device_change)
    devices.subscribe_preview(servers.hub.on_preview_change)
    client = await Client.connect(session, servers.control_url)
    await client.wait_for(1)
    empty = {"selected_device_list": [], "preview_device_list": [], "preview_mode": 4,
             "last_set_name": ""}
    assert client.notices == [dict(empty, modify_media_device={})]

    await devices.add({"media_device_id": D1, "media_device_type": "rtsp",
                       "media_device_name": "gate", "media_device_url": "rtsp://192.168.1.100/ch2"})
    await devices.add({"media_device_id": D2, "media_device_type": "photo",
                       "media_device_name": "pad", "media_device_url": "192.168.1.63"})
    await client.wait_for(3)
    listed = {d["media_device_id"]: d for d in (await devices.list({}))["devices"]}
    assert client.notices[1:] == [
        dict(empty, modify_media_device={"action": "add", "media_device_info": listed[D1]}),
        dict(empty, modify_media_device={"action": "add", "media_device_info": listed[D2]})]

    layout = await devices.update_preview({"selected_device_list": [D1, D2],
                                           "preview_device_list": [D2, D1],
                                           "preview_mode": "1", "last_set_name": "WEBUI"})
    await client.wait_for(4)
    assert client.notices[3] == dict(layout, modify_media_device={})
    assert layout["preview_mode"] == 1 and servers.hub.layout == layout

    await devices.update({"media_device_id": D1, "media_device_name": "front gate"})
    await client.wait_for(5)
    assert client.notices[4]["modify_media_device"]["action"] == "modify"
    assert client.notices[4]["modify_media_device"]["media_device_info"]["media_device_name"] \
        == "front gate"

    await devices.delete({"media_device_id": D2})
    await client.wait_for(6)
    await quiet()
    after_delete = dict(layout, selected_device_list=[D1], preview_device_list=[D1])
    assert len(client.messages) == 6  # one message for the delete, not two
    assert client.notices[5] == dict(after_delete, modify_media_device={
        "action": "delete", "media_device_info": listed[D2]})
    assert servers.hub.layout == after_delete == await devices.get_preview({})

    await devices.add({"media_device_id": D3, "media_device_type": "photo",
                       "media_device_name": "pad 2", "media_device_url": "192.168.1.64"})
    await devices.delete_all({})
    await client.wait_for(9)
    await quiet()
    assert len(client.messages) == 9  # add, then one delete per device
    emptied = dict(after_delete, selected_device_list=[], preview_device_list=[])
    deletes = client.notices[7:]
    assert [m["modify_media_device"]["action"] for m in deletes] == ["delete", "delete"]
    assert {m["modify_media_device"]["media_device_info"]["media_device_id"] for m in deletes} \
        == {D1, D3}
    assert all({k: v for k, v in m.items() if k != "modify_media_device"} == emptied
               for m in deletes)
    assert not servers.hub.wants_frames(D1)
