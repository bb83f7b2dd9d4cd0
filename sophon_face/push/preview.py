"""Live preview fan-out (api/device.md 10): analysed frames for viewers, layout changes for
control clients.

Frames (10.1). ``publish_frame`` runs on the event loop and returns at once: the JPEG
encode, its base64 and the JSON are made once per frame on the loop's default executor,
and the same bytes are then queued for every viewer. At most one frame per device is
being encoded at a time; a frame arriving meanwhile is skipped (counted as dropped), so a
device producing faster than its frames can be encoded never piles up work or memory.
Each viewer has a bounded queue that loses its OLDEST frame when full, and its own sender
task is the only code that waits on its socket: a slow viewer sees a jerkier picture,
recognition and the other viewers never notice.

Control (10.2). Every layout or device change is one small text message to every control
client; a control client's queue is bounded too (CONTROL_QUEUE_SIZE), though only a client
that stops reading ever fills it. A new control client is sent the current layout at once
(``modify_media_device: {}``) so that a UI starts in sync.

The hub knows its clients only through ``Connection``; the WebSocket servers,
``api/preview_ws.py``, adapt each aiohttp socket to it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import functools
import json
import logging
from typing import Any, Deque, Dict, Mapping, Optional, Protocol, Sequence, Set, Union

import cv2
import numpy as np

from ..store import devices as stored_devices
from .realtime import CLOSE_GOING_AWAY, CLOSE_TIMEOUT_S, message_text

log = logging.getLogger(__name__)

#: Layout and device notices a control client may have waiting. They are tiny and rare:
#: only a client that stopped reading ever reaches this.
CONTROL_QUEUE_SIZE = 64
#: The layout fields of getpreview / the control message, and their defaults (device.md 7).
LAYOUT_DEFAULTS: Mapping[str, Any] = stored_devices.DEFAULT_PREVIEW
DEVICE_ACTIONS = ("add", "delete", "modify")

Message = Union[bytes, str]


class Connection(Protocol):
    """What the hub needs of a client socket (aiohttp's WebSocketResponse fits)."""

    async def send_bytes(self, data: bytes) -> None: ...

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> Any: ...


class Client:
    """One viewer or control client: its bounded queue and its sender task."""

    def __init__(self, queue_size: int, connection: Optional[Connection] = None,
                 name: str = "") -> None:
        self.name = name
        self.queue: Deque[Message] = collections.deque()
        self.sent = 0
        self.dropped = 0
        self._queue_size = queue_size
        self._connection = connection
        self._wakeup = asyncio.Event()
        self._sender: Optional[asyncio.Task] = None

    def offer(self, message: Message) -> bool:
        """Queue ``message``; True when the oldest queued one had to go to make room."""
        dropped = len(self.queue) >= self._queue_size
        if dropped:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(message)
        self._wakeup.set()
        return dropped


def normalized_layout(preview: Mapping[str, Any]) -> Dict[str, Any]:
    """The four layout fields of ``preview`` (defaults for absent ones), as fresh lists."""
    return {
        "selected_device_list": [str(d) for d in preview.get(
            "selected_device_list", LAYOUT_DEFAULTS["selected_device_list"])],
        "preview_device_list": [str(d) for d in preview.get(
            "preview_device_list", LAYOUT_DEFAULTS["preview_device_list"])],
        "preview_mode": int(preview.get("preview_mode", LAYOUT_DEFAULTS["preview_mode"])),
        "last_set_name": str(preview.get("last_set_name", LAYOUT_DEFAULTS["last_set_name"])),
    }


def control_message(layout: Mapping[str, Any], modify: Mapping[str, Any]) -> Dict[str, Any]:
    """The message of device.md 10.2: the layout plus ``modify_media_device``."""
    return dict(normalized_layout(layout), modify_media_device=dict(modify))


def _plain(value: Any) -> Any:
    """json.dumps fallback: boxes straight from the detector are numpy values."""
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def encode_frame_message(head: Mapping[str, Any], image_bgr: np.ndarray,
                         jpeg_quality: int) -> Optional[bytes]:
    """The UTF-8 JSON payload of one frame message (10.1), or None when OpenCV cannot
    encode the image. CPU work: runs on an executor thread, never on the loop."""
    ok, jpeg = cv2.imencode(".jpg", image_bgr, [int(cv2.IMWRITE_JPEG_QUALITY), jpeg_quality])
    if not ok:
        return None
    height, width = image_bgr.shape[:2]
    message = dict(head, frame_img={"width": int(width), "height": int(height),
                                    "data": base64.b64encode(jpeg.tobytes()).decode("ascii")})
    # The HTTP API's byte rules (sorted, compact, ASCII escapes: valid UTF-8 as it is).
    return json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      default=_plain).encode("utf-8")


class PreviewHub:
    """The preview viewers (port 5678), the control clients (54547) and the layout."""

    def __init__(self, queue_size: int = 4, jpeg_quality: int = 80) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        if not 1 <= jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be within 1..100")
        self._queue_size = queue_size
        self._jpeg_quality = jpeg_quality
        self._layout = normalized_layout({})
        # Replaced whole, never edited in place: wants_frames reads it without a lock.
        self._tile_of: Dict[str, int] = {}
        self._viewers: Set[Client] = set()
        self._controls: Set[Client] = set()
        self._encoding: Dict[str, asyncio.Future] = {}  # device id -> its frame's encode
        self._closed = False
        self._frames_encoded = 0
        self._frames_sent = 0
        self._frames_dropped = 0
        self._control_sent = 0

    # ------------------------------------------------------------------ layout

    @property
    def layout(self) -> Dict[str, Any]:
        """A copy of the current layout (the four fields of getpreview)."""
        return normalized_layout(self._layout)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def viewer_count(self) -> int:
        return len(self._viewers)

    @property
    def control_count(self) -> int:
        return len(self._controls)

    def set_layout(self, preview: Mapping[str, Any]) -> None:
        """Adopt ``preview`` as the current layout without telling anybody."""
        layout = normalized_layout(preview)
        tiles: Dict[str, int] = {}
        for index, device_id in enumerate(layout["preview_device_list"]):
            tiles.setdefault(device_id, index)
        self._layout = layout
        self._tile_of = tiles

    # ------------------------------------------------------------------ frames (10.1)

    def add_viewer(self, connection: Optional[Connection] = None, name: str = "") -> Client:
        """A new frame viewer. With a ``connection`` its sender starts now; without one
        its frames just stay queued (what a test of the queueing rules needs)."""
        return self._add(self._viewers, self._queue_size, connection, name, binary=True)

    async def remove_viewer(self, client: Client) -> None:
        """Forget ``client`` and stop its sender (its queued frames are lost)."""
        self._viewers.discard(client)
        await _stop_sender(client)

    def wants_frames(self, device_id: str) -> bool:
        """Whether a frame of ``device_id`` would reach anybody: a viewer is connected and
        the device is on screen. Cheap and lock-free: a video reader asks per frame."""
        return bool(self._viewers) and device_id in self._tile_of

    def publish_frame(self, device_id: str, image_bgr: np.ndarray, frame_id: int,
                      timestamp: float, objs: Sequence[Mapping[str, Any]],
                      roi: Sequence[float]) -> None:
        """Queue one analysed frame for every viewer; returns at once (on the loop).

        ``image_bgr`` (HxWx3 uint8) is read later, on an executor thread: the caller must
        not write into it afterwards. ``objs`` are the faces of 10.1 as they should appear
        (track_id, detect_box, identity_name, attributes only when computed)."""
        if self._closed or not self.wants_frames(device_id):
            return
        if device_id in self._encoding:
            # The previous frame of this device is still being encoded: skipping this one
            # keeps at most one encode per device in flight.
            self._frames_dropped += 1
            return
        # Copied now: the caller may reuse its lists once this returns.
        head = {
            "media_device_id": device_id,
            "preview_id": str(self._tile_of[device_id]),
            "frame_id": int(frame_id),
            "timestamp": float(timestamp),
            "preview_objs": [dict(obj) for obj in objs],
            "roi": list(roi),
        }
        loop = asyncio.get_running_loop()
        encoding = loop.run_in_executor(None, encode_frame_message, head, image_bgr,
                                        self._jpeg_quality)
        self._encoding[device_id] = encoding
        encoding.add_done_callback(functools.partial(self._encoded, device_id))

    def _encoded(self, device_id: str, done: asyncio.Future) -> None:
        """Hand a finished frame to the viewers (a done callback, on the loop)."""
        if self._encoding.get(device_id) is done:
            del self._encoding[device_id]
        if done.cancelled() or self._closed:
            return
        error = done.exception()
        if error is not None:
            log.warning("preview frame of device %s not encoded: %r", device_id, error)
            return
        payload = done.result()
        if payload is None:
            log.warning("preview frame of device %s: OpenCV could not encode it", device_id)
            return
        self._frames_encoded += 1
        # Taken off screen while it was being encoded: nobody should see it any more.
        if not self.wants_frames(device_id):
            return
        for client in self._viewers:
            if client.offer(payload):
                self._frames_dropped += 1
                if client.dropped == 1:  # once per connection, not once per frame
                    log.info("preview viewer %s cannot keep up: dropping its oldest frames "
                             "(queue of %d)", client.name or "?", self._queue_size)

    # ------------------------------------------------------------------ control (10.2)

    def add_control(self, connection: Optional[Connection] = None, name: str = "") -> Client:
        """A new control client, sent the current layout first (``modify_media_device``
        ``{}``): queued here, on the loop, so no broadcast can overtake it."""
        client = self._add(self._controls, CONTROL_QUEUE_SIZE, connection, name, binary=False)
        client.offer(message_text(control_message(self._layout, {})))
        return client

    async def remove_control(self, client: Client) -> None:
        self._controls.discard(client)
        await _stop_sender(client)

    def publish_control(self, preview: Mapping[str, Any], modify: Mapping[str, Any]) -> None:
        """Adopt ``preview`` and tell every control client: ``modify`` is ``{}`` for a
        layout change, else ``{"action": ..., "media_device_info": <device>}``."""
        self.set_layout(preview)
        if self._closed or not self._controls:
            return
        text = message_text(control_message(self._layout, modify))
        for client in self._controls:
            if client.offer(text) and client.dropped == 1:
                log.warning("preview control client %s stopped reading: dropping its oldest "
                            "notices (queue of %d)", client.name or "?", CONTROL_QUEUE_SIZE)

    def on_device_change(self, action: str, device: Mapping[str, Any]) -> None:
        """DeviceService.subscribe callback: a device was added, modified or deleted. The
        layout is the hub's own, already updated by on_preview_change for a delete."""
        if action not in DEVICE_ACTIONS:
            log.warning("preview: unknown device action %r ignored", action)
            return
        self.publish_control(self._layout, {"action": action,
                                            "media_device_info": stored_devices.render(device)})

    def on_preview_change(self, preview: Mapping[str, Any], broadcast: bool = True) -> None:
        """DeviceService.subscribe_preview callback. ``broadcast`` False: the change is a
        device delete's side effect, whose own notice follows and carries this layout."""
        if broadcast:
            self.publish_control(preview, {})
        else:
            self.set_layout(preview)

    # ------------------------------------------------------------------ lifecycle

    def stats(self) -> Dict[str, int]:
        return {
            "viewers": len(self._viewers),
            "control_clients": len(self._controls),
            "frames_encoded": self._frames_encoded,
            "frames_sent": self._frames_sent,
            "frames_dropped": self._frames_dropped,
            "frames_queued": sum(len(c.queue) for c in self._viewers),
            "control_sent": self._control_sent,
        }

    async def close(self) -> None:
        """Stop every sender and close every client socket (going away); idempotent.
        Frames still being encoded are waited for (briefly) and thrown away."""
        self._closed = True
        self._tile_of = {}
        encoding = list(self._encoding.values())
        if encoding:  # so that no executor job outlives the hub's owner
            await asyncio.wait(encoding, timeout=CLOSE_TIMEOUT_S)
        clients = list(self._viewers) + list(self._controls)
        self._viewers.clear()
        self._controls.clear()
        await asyncio.gather(*(_stop_sender(c) for c in clients))
        await asyncio.gather(*(_close(c._connection, c.name, b"server shutdown")
                               for c in clients if c._connection is not None))

    def _add(self, clients: Set[Client], queue_size: int, connection: Optional[Connection],
             name: str, binary: bool) -> Client:
        if self._closed:
            raise RuntimeError("the preview hub is closed")
        client = Client(queue_size, connection, name)
        if connection is not None:
            client._sender = asyncio.get_running_loop().create_task(
                self._send_loop(client, connection, binary))
        clients.add(client)
        return client

    async def _send_loop(self, client: Client, connection: Connection, binary: bool) -> None:
        """The only code that waits on this client's socket."""
        try:
            while True:
                await client._wakeup.wait()
                client._wakeup.clear()
                while client.queue:
                    message = client.queue.popleft()
                    if binary:  # 10.1: binary frames whose payload is UTF-8 JSON
                        await connection.send_bytes(message)  # type: ignore[arg-type]
                        self._frames_sent += 1
                    else:
                        await connection.send_str(message)  # type: ignore[arg-type]
                        self._control_sent += 1
                    client.sent += 1
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the peer went away mid-send: nothing to recover
            log.debug("preview client %s: send failed: %r", client.name or "?", error)
            await _close(connection, client.name, b"")


async def _stop_sender(client: Client) -> None:
    sender = client._sender
    if sender is not None and not sender.done():
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def _close(connection: Connection, name: str, reason: bytes) -> None:
    """Close a client socket within CLOSE_TIMEOUT_S, whatever state it is in (the same
    reasoning as push/realtime.py: the close runs as its own task, only its outcome is
    inspected, and a stuck close is cancelled so that aiohttp aborts the transport)."""
    closing = asyncio.ensure_future(connection.close(code=CLOSE_GOING_AWAY, message=reason))
    try:
        await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT_S)
    finally:
        if not closing.done():
            closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
    if not closing.cancelled() and closing.exception() is not None:
        log.debug("preview client %s: close failed: %r", name or "?", closing.exception())


__all__ = ["CONTROL_QUEUE_SIZE", "Client", "Connection", "PreviewHub", "control_message",
           "encode_frame_message", "normalized_layout"]
