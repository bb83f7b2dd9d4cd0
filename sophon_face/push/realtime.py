"""Real-time event fan-out (api/event.md 7): every subscriber has a bounded queue.

``publish`` runs on the event loop, never awaits and costs O(subscribers): each message
variant (with/without the face crop, with/without the registration photo) is rendered
and serialised at most once per event, whatever the number of subscribers. A subscriber
that cannot keep up loses its OLDEST queued messages (at most ``queue_size`` wait); a
slow or dead client never holds up recognition or other clients, because only its own
sender task ever waits on its socket.

The hub knows its clients only through ``Connection`` (``send_str`` and ``close``); the
WebSocket server, ``api/realtime_ws.py``, adapts each aiohttp socket to it.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
from dataclasses import dataclass
from typing import Any, Deque, Dict, FrozenSet, List, Mapping, Optional, Protocol, Set, Tuple

from ..service.recorded import RecordedEvent

log = logging.getLogger(__name__)

DATA_URL_PREFIX = "data:image/jpeg;base64,"
#: RFC 6455 close code sent to every client when the daemon shuts down.
CLOSE_GOING_AWAY = 1001
#: How long a shutdown waits for one client's closing handshake before dropping the socket.
CLOSE_TIMEOUT_S = 2.0

#: The attribute keys a real-time message never carries (event.md 7: no feature).
_HIDDEN_ATTRS = frozenset(("feature_binary", "feature_base64_str", "feature"))


class Connection(Protocol):
    """What the hub needs of a client socket (aiohttp's WebSocketResponse fits)."""

    async def send_str(self, data: str) -> None: ...

    async def close(self, *, code: int = ..., message: bytes = ...) -> Any: ...


@dataclass(frozen=True)
class SubscriberConfig:
    """A client's configuration message, validated (api/realtime_ws.py parses it)."""

    with_face_image: bool = False
    with_register_image: bool = False
    #: Empty: every event, with or without a device (R31).
    media_device_ids: FrozenSet[str] = frozenset()

    def wants(self, media_device_id: str) -> bool:
        return not self.media_device_ids or media_device_id in self.media_device_ids

    @property
    def variant(self) -> Tuple[bool, bool]:
        return self.with_face_image, self.with_register_image


def event_ms(seconds: float) -> int:
    """Event time in integer milliseconds (R27), truncated like the event id's digits.

    Rounding to whole microseconds first keeps binary noise from costing a millisecond
    (1566016554.020 * 1000 is 1566016554019.9998)."""
    return int(round(float(seconds) * 1e6)) // 1000


def _data_url(jpeg: Optional[bytes]) -> str:
    return DATA_URL_PREFIX + base64.b64encode(jpeg or b"").decode("ascii")


def realtime_message(event: RecordedEvent, with_face_image: bool,
                     with_register_image: bool) -> Dict[str, Any]:
    """The message of event.md 7 for one event: images only when asked for AND stored."""
    record = event.record
    device: Mapping[str, Any] = record.get("media_device_info") or {}
    attr: Mapping[str, Any] = record.get("recognize_face_attr") or {}
    message: Dict[str, Any] = {
        "event_id": record["event_id"],
        "timestamp": event_ms(record["timestamp"]),
        "identity_id": record.get("identity_id", ""),
        "identity_name": record.get("identity_name", ""),
        "user_type": record.get("user_type", "stranger"),
        "score": round(float(record.get("score", 0.0)), 2),
        "media_device_ip": device.get("media_device_ip", ""),
        "media_device_id": device.get("media_device_id", ""),
        "media_device_type": device.get("media_device_type", ""),
        "recognize_face_attr": {k: v for k, v in attr.items() if k not in _HIDDEN_ATTRS},
    }
    if with_face_image and event.face_jpeg:
        message["recognize_face_image"] = _data_url(event.face_jpeg)
    if with_register_image and event.register_jpeg:
        message["register_image"] = _data_url(event.register_jpeg)
    return message


def message_text(message: Mapping[str, Any]) -> str:
    """Sorted keys, compact, ASCII-escaped: the same bytes rules as the HTTP API (README 11)."""
    return json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class Subscriber:
    """One client: its configuration (None until it sent one), its queue, its sender."""

    def __init__(self, queue_size: int, connection: Optional[Connection] = None,
                 name: str = "") -> None:
        self.name = name
        self.config: Optional[SubscriberConfig] = None
        self.queue: Deque[str] = collections.deque()
        self.sent = 0
        self.dropped = 0
        self._queue_size = queue_size
        self._connection = connection
        self._wakeup = asyncio.Event()
        self._sender: Optional[asyncio.Task] = None

    def offer(self, text: str) -> bool:
        """Queue ``text``; True when the oldest queued message had to go to make room."""
        dropped = len(self.queue) >= self._queue_size
        if dropped:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(text)
        self._wakeup.set()
        return dropped


class RealtimeHub:
    """The subscribers of the real-time push and the one way events reach them."""

    def __init__(self, queue_size: int = 100) -> None:
        if queue_size < 1:
            raise ValueError("queue_size must be at least 1")
        self._queue_size = queue_size
        self._subscribers: Set[Subscriber] = set()
        self._closed = False
        self._published = 0
        self._sent = 0
        self._dropped = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, connection: Optional[Connection] = None, name: str = "") -> Subscriber:
        """A new subscriber. With a ``connection``, its sender task starts now; without
        one its messages just stay queued (what a test of the queueing rules needs)."""
        if self._closed:
            raise RuntimeError("the real-time hub is closed")
        subscriber = Subscriber(self._queue_size, connection, name)
        if connection is not None:
            subscriber._sender = asyncio.get_running_loop().create_task(
                self._send_loop(subscriber, connection))
        self._subscribers.add(subscriber)
        return subscriber

    async def remove(self, subscriber: Subscriber) -> None:
        """Forget ``subscriber`` and stop its sender (its queued messages are lost)."""
        self._subscribers.discard(subscriber)
        await _stop_sender(subscriber)

    def publish(self, event: RecordedEvent) -> None:
        """Queue ``event`` for every configured subscriber that wants its device."""
        if self._closed:
            return
        self._published += 1
        device_id = (event.record.get("media_device_info") or {}).get("media_device_id", "")
        targets: List[Tuple[Subscriber, Tuple[bool, bool]]] = [
            (subscriber, subscriber.config.variant) for subscriber in self._subscribers
            if subscriber.config is not None and subscriber.config.wants(device_id)]
        if not targets:
            return
        # Render every needed variant before queueing anything: a record that cannot be
        # rendered reaches nobody rather than some.
        texts = {variant: message_text(realtime_message(event, *variant))
                 for variant in {variant for _, variant in targets}}
        for subscriber, variant in targets:
            if subscriber.offer(texts[variant]):
                self._dropped += 1
                if subscriber.dropped == 1:  # once per connection, not once per message
                    log.warning("real-time client %s cannot keep up: dropping its oldest "
                                "queued events (queue of %d)", subscriber.name or "?",
                                self._queue_size)

    def stats(self) -> Dict[str, int]:
        return {
            "subscribers": len(self._subscribers),
            "configured": sum(1 for s in self._subscribers if s.config is not None),
            "published": self._published,
            "sent": self._sent,
            "dropped": self._dropped,
            "queued": sum(len(s.queue) for s in self._subscribers),
        }

    async def close(self) -> None:
        """Stop every sender and close every client socket (going away); idempotent."""
        self._closed = True
        subscribers = list(self._subscribers)
        self._subscribers.clear()
        await asyncio.gather(*(_stop_sender(s) for s in subscribers))
        await asyncio.gather(*(_close(s._connection, s.name, b"server shutdown")
                               for s in subscribers if s._connection is not None))

    async def _send_loop(self, subscriber: Subscriber, connection: Connection) -> None:
        """The only code that waits on this client's socket."""
        try:
            while True:
                await subscriber._wakeup.wait()
                subscriber._wakeup.clear()
                while subscriber.queue:
                    await connection.send_str(subscriber.queue.popleft())
                    subscriber.sent += 1
                    self._sent += 1
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the peer went away mid-send: nothing to recover
            log.debug("real-time client %s: send failed: %r", subscriber.name or "?", error)
            await _close(connection, subscriber.name, b"")


async def _stop_sender(subscriber: Subscriber) -> None:
    sender = subscriber._sender
    if sender is not None and not sender.done():
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)


async def _close(connection: Connection, name: str, reason: bytes) -> None:
    """Close a client socket within CLOSE_TIMEOUT_S, whatever state it is in.

    The close runs as its own task and only its outcome is inspected: a sender cancelled
    while it waited for the socket to drain can leave aiohttp's shared drain waiter
    cancelled, and the close then ends with a CancelledError that is not ours to obey.
    Dropping the socket whatever happens is the connection's job (api/realtime_ws.py)."""
    closing = asyncio.ensure_future(connection.close(code=CLOSE_GOING_AWAY, message=reason))
    try:
        await asyncio.wait({closing}, timeout=CLOSE_TIMEOUT_S)
    finally:
        if not closing.done():  # stuck: cancelling makes aiohttp abort the transport
            closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)
    if not closing.cancelled() and closing.exception() is not None:
        log.debug("real-time client %s: close failed: %r", name or "?", closing.exception())


__all__ = ["CLOSE_GOING_AWAY", "Connection", "DATA_URL_PREFIX", "RealtimeHub", "Subscriber",
           "SubscriberConfig", "event_ms", "message_text", "realtime_message"]
