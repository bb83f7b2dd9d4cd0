"""The preview hub without sockets (api/device.md 10): which frames are wanted, the frame
message of 10.1 (binary, UTF-8 JSON, a real JPEG), the one-encode-per-device rule, bounded
viewer queues that drop the oldest, the control messages of 10.2 and shutdown. Clients are
either queue-only (no connection) or small Connection fakes whose sends can be held, to play
a viewer that reads slowly. The WebSocket servers are tested with real clients in
tests/api/test_preview_ws.py."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import cv2
import numpy as np
import pytest

from sophon_face.push import preview
from sophon_face.push.preview import CONTROL_QUEUE_SIZE, Client, PreviewHub

pytestmark = pytest.mark.asyncio

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
D1, D2, D3 = ("04f98265-1fad-47e5-9dda-66e191272055", "f9f0768f-497c-45f3-9307-ae80a9d89390",
              "5b1c0e6a-3d2f-4a8e-9c1b-7e6f5d4c3b2a")
LAYOUT = {"selected_device_list": [D1, D2, D3], "preview_device_list": [D2, D1],
          "preview_mode": 4, "last_set_name": "WEBUI"}
#: A device as store/devices.py keeps it: the object of device.md 1 plus bookkeeping.
STORED_DEVICE = {"media_device_id": D3, "media_device_name": "前门设备",
                 "media_device_type": "rtsp", "media_device_url": "rtsp://192.168.1.96:554/ch1",
                 "media_device_ip": "192.168.1.96", "permission_id": "c732adf3",
                 "net_relay": {"ip": "192.168.1.50", "port": 50000, "channel": 1,
                               "delay_time": 5},
                 "do_rtmp_forward": False, "rtmp_address": "", "roi_area": [0, 0, 1280, 720],
                 "seq": 17, "created_at": 1566016554.5}
DEVICE_OBJECT = {k: v for k, v in STORED_DEVICE.items() if k not in ("seq", "created_at")}


def photo_bgr(width: int = 641, height: int = 359) -> np.ndarray:
    """A real photo at an odd size, so that width and height cannot be confused."""
    image = cv2.imread(str(DATA_DIR / "macron_2014.jpg"), cv2.IMREAD_COLOR)
    assert image is not None
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


def faces() -> List[Dict[str, Any]]:
    """One recognised face with attributes and numpy values as the tracker hands them over,
    one stranger without attributes."""
    return [
        {"track_id": 7, "detect_box": np.array([50.5, 23.0, 173.25, 183.0], np.float32),
         "identity_name": "小明", "mask": "no", "age": "20-30", "gender": "male",
         "glasses": "yes"},
        {"track_id": np.int64(8), "detect_box": [300, 40, 380, 150],
         "identity_name": "stranger"},
    ]


PLAIN_FACES = [
    {"track_id": 7, "detect_box": [50.5, 23.0, 173.25, 183.0], "identity_name": "小明",
     "mask": "no", "age": "20-30", "gender": "male", "glasses": "yes"},
    {"track_id": 8, "detect_box": [300, 40, 380, 150], "identity_name": "stranger"},
]


class HeldConnection:
    """A Connection whose sends wait while ``held`` is set: a viewer that reads slowly."""

    def __init__(self, held: bool = False) -> None:
        self.released = asyncio.Event()
        if not held:
            self.released.set()
        self.binary: List[bytes] = []
        self.texts: List[str] = []
        self.close_code: Optional[int] = None

    async def send_bytes(self, data: bytes) -> None:
        await self.released.wait()
        self.binary.append(data)

    async def send_str(self, data: str) -> None:
        await self.released.wait()
        self.texts.append(data)

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        self.close_code = code
        return True


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.005)
    return True


def frame_message(payload: Any) -> Dict[str, Any]:
    assert isinstance(payload, bytes)  # 10.1: binary frames ...
    return json.loads(payload.decode("utf-8"))  # ... whose payload is UTF-8 JSON


def ids_of(payloads: Any) -> List[int]:
    return [frame_message(p)["frame_id"] for p in payloads]


async def publish_and_wait(hub: PreviewHub, device_id: str, frame_id: int,
                           image_bgr: np.ndarray) -> None:
    """Publish one frame and wait until its encode is done (so the next is not skipped)."""
    before = hub.stats()["frames_encoded"]
    hub.publish_frame(device_id, image_bgr, frame_id, 1566016554.0 + frame_id / 25, [], [])
    assert await eventually(lambda: hub.stats()["frames_encoded"] == before + 1)


def layout_hub(**kwargs: Any) -> PreviewHub:
    hub = PreviewHub(**kwargs)
    hub.set_layout(LAYOUT)
    return hub


# ---------------------------------------------------------------- which frames are wanted

async def test_wants_frames_needs_a_viewer_and_an_on_screen_device() -> None:
    hub = PreviewHub()
    assert not hub.wants_frames(D1)  # nothing at all
    viewer = hub.add_viewer()
    assert not hub.wants_frames(D1)  # a viewer, but D1 is not on screen
    hub.set_layout(LAYOUT)
    assert hub.wants_frames(D1) and hub.wants_frames(D2)
    assert not hub.wants_frames(D3)  # selected is not displayed
    assert not hub.wants_frames("")
    await hub.remove_viewer(viewer)
    assert not hub.wants_frames(D1)  # on screen, but nobody watching
    hub.add_control()
    assert not hub.wants_frames(D1)  # a control client is no viewer
    hub.add_viewer()
    hub.set_layout(dict(LAYOUT, preview_device_list=[D1]))
    assert hub.wants_frames(D1) and not hub.wants_frames(D2)
    await hub.close()
    assert not hub.wants_frames(D1)


async def test_nothing_is_encoded_for_nobody() -> None:
    hub = layout_hub()
    hub.publish_frame(D1, photo_bgr(), 1, 1.0, [], [])  # no viewer
    hub.add_viewer()
    hub.publish_frame(D3, photo_bgr(), 2, 2.0, [], [])  # not on screen
    await asyncio.sleep(0.2)
    assert hub.stats()["frames_encoded"] == 0 and hub.stats()["frames_queued"] == 0


# ---------------------------------------------------------------- the frame message (10.1)

async def test_frame_message_has_exactly_the_fields_of_10_1() -> None:
    hub = layout_hub(jpeg_quality=90)
    viewer = hub.add_viewer()
    image = photo_bgr()
    hub.publish_frame(D1, image, 812, 1566016554.02, faces(), [10, 20, 630, 350])
    assert await eventually(lambda: len(viewer.queue) == 1)
    message = frame_message(viewer.queue[0])
    frame_img = message.pop("frame_img")
    assert message == {"media_device_id": D1, "preview_id": "1", "frame_id": 812,
                       "timestamp": 1566016554.02, "preview_objs": PLAIN_FACES,
                       "roi": [10, 20, 630, 350]}
    assert (frame_img["width"], frame_img["height"]) == (641, 359)
    assert set(frame_img) == {"width", "height", "data"}
    jpeg = base64.b64decode(frame_img["data"], validate=True)
    assert jpeg[:2] == b"\xff\xd8"
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (359, 641, 3)
    # The same picture, not just any JPEG of that size.
    assert float(np.mean(cv2.absdiff(decoded, image))) < 6.0

    # preview_id is the tile: D2 is first in preview_device_list; no faces, whole frame.
    hub.publish_frame(D2, image, 813, 1566016554.06, [], [])
    assert await eventually(lambda: len(viewer.queue) == 2)
    second = frame_message(viewer.queue[1])
    assert (second["preview_id"], second["preview_objs"], second["roi"]) == ("0", [], [])


async def test_publish_returns_at_once_and_encodes_off_the_loop(
        monkeypatch: pytest.MonkeyPatch) -> None:
    encoder_threads: List[int] = []
    real_imencode = cv2.imencode

    def recording_imencode(*args: Any) -> Any:
        encoder_threads.append(threading.get_ident())
        return real_imencode(*args)

    monkeypatch.setattr(preview.cv2, "imencode", recording_imencode)
    hub = layout_hub()
    viewer = hub.add_viewer()
    image = photo_bgr(1920, 1080)
    started = time.perf_counter()
    hub.publish_frame(D1, image, 1, 1.0, faces(), [])
    publish_s = time.perf_counter() - started
    assert len(viewer.queue) == 0  # the frame reaches viewers only once encoded elsewhere
    assert publish_s < 0.05, publish_s
    assert await eventually(lambda: len(viewer.queue) == 1)
    assert len(encoder_threads) == 1 and encoder_threads[0] != threading.get_ident()


async def test_one_encode_per_device_in_flight() -> None:
    hub = layout_hub()
    viewer = hub.add_viewer()
    image = photo_bgr()
    hub.publish_frame(D1, image, 1, 1.0, [], [])
    hub.publish_frame(D1, image, 2, 1.04, [], [])  # D1 still encoding: skipped
    hub.publish_frame(D2, image, 1, 1.0, [], [])  # another device is not held up
    assert hub.stats()["frames_dropped"] == 1
    assert await eventually(lambda: hub.stats()["frames_encoded"] == 2)
    await asyncio.sleep(0.05)
    sent = sorted((m["media_device_id"], m["frame_id"]) for m in map(frame_message, viewer.queue))
    assert sent == sorted([(D1, 1), (D2, 1)])
    await publish_and_wait(hub, D1, 3, image)  # once done, the device's frames flow again
    assert frame_message(viewer.queue[-1])["frame_id"] == 3
    assert hub.stats()["frames_dropped"] == 1


async def test_a_frame_taken_off_screen_while_encoding_is_not_sent() -> None:
    hub = layout_hub()
    viewer = hub.add_viewer()
    hub.publish_frame(D1, photo_bgr(), 1, 1.0, [], [])
    hub.set_layout(dict(LAYOUT, preview_device_list=[D2]))
    assert await eventually(lambda: hub.stats()["frames_encoded"] == 1)
    await asyncio.sleep(0.05)
    assert len(viewer.queue) == 0


# ---------------------------------------------------------------- bounded viewer queues

async def test_a_full_viewer_queue_drops_its_oldest() -> None:
    hub = layout_hub(queue_size=4)
    never_reads = hub.add_viewer()
    image = photo_bgr(320, 240)
    for frame_id in range(10):
        await publish_and_wait(hub, D1, frame_id, image)
        assert len(never_reads.queue) <= 4
    assert ids_of(never_reads.queue) == [6, 7, 8, 9]  # the newest stay
    assert never_reads.dropped == 6
    stats = hub.stats()
    assert (stats["frames_dropped"], stats["frames_queued"], stats["frames_encoded"]) == (6, 4, 10)


async def test_a_slow_viewer_is_bounded_and_never_holds_up_a_fast_one() -> None:
    hub = layout_hub(queue_size=4)
    slow_socket, fast_socket = HeldConnection(held=True), HeldConnection()
    slow = hub.add_viewer(slow_socket, name="slow")
    hub.add_viewer(fast_socket, name="fast")
    image = photo_bgr(320, 240)
    for frame_id in range(10):
        await publish_and_wait(hub, D1, frame_id, image)
        assert len(slow.queue) <= 4
    assert await eventually(lambda: len(fast_socket.binary) == 10)
    assert ids_of(fast_socket.binary) == list(range(10))
    assert slow_socket.binary == []
    # Frame 0 was already being sent when the slow viewer stalled; of the rest, the
    # newest four were kept.
    slow_socket.released.set()
    assert await eventually(lambda: len(slow_socket.binary) == 5)
    assert ids_of(slow_socket.binary) == [0, 6, 7, 8, 9]
    assert fast_socket.binary[9] == slow_socket.binary[4]  # encoded once, the same bytes
    stats = hub.stats()
    assert (stats["frames_sent"], stats["frames_dropped"], stats["frames_queued"]) == (15, 5, 0)


# ---------------------------------------------------------------- control messages (10.2)

def control(text: Any) -> Dict[str, Any]:
    assert isinstance(text, str)  # 10.2: text messages
    return json.loads(text)


async def test_a_control_client_first_gets_the_current_layout() -> None:
    hub = layout_hub()
    client = hub.add_control()
    assert [control(t) for t in client.queue] == [dict(LAYOUT, modify_media_device={})]


async def test_control_message_shapes() -> None:
    hub = PreviewHub()
    client = hub.add_control()
    assert control(client.queue.popleft()) == {
        "selected_device_list": [], "preview_device_list": [], "preview_mode": 4,
        "last_set_name": "", "modify_media_device": {}}

    hub.on_preview_change(LAYOUT)  # updatepreview: broadcast, modify_media_device {}
    assert control(client.queue.popleft()) == dict(LAYOUT, modify_media_device={})
    assert hub.layout == LAYOUT

    hub.on_device_change("add", STORED_DEVICE)
    assert control(client.queue.popleft()) == dict(LAYOUT, modify_media_device={
        "action": "add", "media_device_info": DEVICE_OBJECT})  # no seq / created_at
    hub.on_device_change("modify", dict(STORED_DEVICE, media_device_name="后门"))
    modified = control(client.queue.popleft())["modify_media_device"]
    assert modified["action"] == "modify"
    assert modified["media_device_info"]["media_device_name"] == "后门"

    hub.publish_control(dict(LAYOUT, preview_mode=16), {})
    assert control(client.queue.popleft())["preview_mode"] == 16
    assert hub.layout["preview_mode"] == 16

    hub.on_device_change("explode", STORED_DEVICE)  # not an action of 10.2
    assert len(client.queue) == 0


async def test_a_delete_carries_the_layout_after_the_delete() -> None:
    """What DeviceService does for a delete: the preview subscribers first, without a
    broadcast, then the device subscribers; one message, with the new layout."""
    hub = layout_hub()
    client = hub.add_control()
    client.queue.clear()
    after = dict(LAYOUT, selected_device_list=[D2, D3], preview_device_list=[D2])
    hub.on_preview_change(after, False)
    assert len(client.queue) == 0 and hub.layout == after
    assert not hub.wants_frames(D1)
    hub.on_device_change("delete", dict(STORED_DEVICE, media_device_id=D1))
    assert [control(t) for t in client.queue] == [dict(after, modify_media_device={
        "action": "delete", "media_device_info": dict(DEVICE_OBJECT, media_device_id=D1)})]


async def test_a_control_queue_is_bounded_too() -> None:
    hub = PreviewHub()
    stalled = hub.add_control()
    for i in range(CONTROL_QUEUE_SIZE * 2):
        hub.on_preview_change(dict(LAYOUT, last_set_name=f"set {i}"))
    assert len(stalled.queue) == CONTROL_QUEUE_SIZE
    assert control(stalled.queue[-1])["last_set_name"] == f"set {CONTROL_QUEUE_SIZE * 2 - 1}"
    assert stalled.dropped == CONTROL_QUEUE_SIZE + 1  # the greeting went first


async def test_control_clients_get_every_message_in_order() -> None:
    hub = PreviewHub()
    sockets = [HeldConnection(), HeldConnection()]
    for socket in sockets:
        hub.add_control(socket)
    for i in range(5):
        hub.on_preview_change(dict(LAYOUT, last_set_name=str(i)))
    for socket in sockets:
        assert await eventually(lambda: len(socket.texts) == 6)
        assert [control(t)["last_set_name"] for t in socket.texts] == ["", "0", "1", "2", "3", "4"]
    assert hub.stats()["control_sent"] == 12 and hub.stats()["control_clients"] == 2


# ---------------------------------------------------------------- lifecycle

async def test_close_ends_senders_and_closes_every_socket() -> None:
    hub = layout_hub(queue_size=2)
    stuck, reading, controller = HeldConnection(held=True), HeldConnection(), HeldConnection()
    clients: List[Client] = [hub.add_viewer(stuck), hub.add_viewer(reading),
                             hub.add_control(controller)]
    for frame_id in range(3):
        await publish_and_wait(hub, D1, frame_id, photo_bgr(160, 120))
    assert await eventually(lambda: len(reading.binary) == 3)
    senders = [client._sender for client in clients]
    assert all(s is not None and not s.done() for s in senders)  # stuck one is mid-send

    started = time.monotonic()
    await hub.close()
    assert time.monotonic() - started < 2.0
    assert all(s is not None and s.done() for s in senders)
    assert [c.close_code for c in (stuck, reading, controller)] == [1001, 1001, 1001]
    assert hub.closed and hub.stats()["viewers"] == 0 and hub.stats()["control_clients"] == 0
    assert not hub.wants_frames(D1)
    hub.publish_frame(D1, photo_bgr(), 9, 9.0, [], [])  # a late reader: ignored
    hub.on_preview_change(LAYOUT)
    with pytest.raises(RuntimeError):
        hub.add_viewer()
    with pytest.raises(RuntimeError):
        hub.add_control()
    await hub.close()  # idempotent


async def test_close_throws_away_frames_being_encoded() -> None:
    hub = layout_hub()
    viewer_socket = HeldConnection()
    hub.add_viewer(viewer_socket)
    hub.publish_frame(D1, photo_bgr(1920, 1080), 1, 1.0, [], [])
    await hub.close()
    await asyncio.sleep(0.1)
    assert viewer_socket.binary == [] and hub.stats()["frames_sent"] == 0


async def test_queue_size_and_jpeg_quality_are_checked() -> None:
    with pytest.raises(ValueError):
        PreviewHub(queue_size=0)
    with pytest.raises(ValueError):
        PreviewHub(jpeg_quality=0)
    with pytest.raises(ValueError):
        PreviewHub(jpeg_quality=101)
