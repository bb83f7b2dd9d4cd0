"""Real-time event fan-out (api/event.md 7): every subscriber has a bounded queue.

``publish`` runs on the event loop, never awaits and costs O(subscribers): each message
variant (with/without the face crop, with/without the registration photo) is rendered at
most once per event. A subscriber that cannot keep up loses its OLDEST queued messages
(at most ``queue_size`` wait); a slow or dead client never holds up recognition or other
clients, because only its own sender task ever waits on its socket.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, Optional, Sequence, Set, Tuple

from ..service.recorded import RecordedEvent

DATA_URL = "data:image/jpeg;base64,"


@dataclass
class SubscriberConfig:
    with_face_image: bool = False
    with_register_image: bool = False
    media_device_ids: Sequence[str] = ()  # empty: every event, with or without a device (R31)


def realtime_message(event: RecordedEvent, with_face_image: bool,
                     with_register_image: bool) -> Dict[str, Any]:
    record = event.record
    device = record["media_device_info"]
    message: Dict[str, Any] = {
        "event_id": record["event_id"],
        "timestamp": int(float(record["timestamp"]) * 1000),
        "identity_id": record["identity_id"],
        "identity_name": record["identity_name"],
        "user_type": record["user_type"],
        "score": round(float(record["score"]), 2),
        "media_device_ip": device["media_device_ip"],
        "media_device_id": device["media_device_id"],
        "media_device_type": device["media_device_type"],
        "recognize_face_attr": {k: v for k, v in record["recognize_face_attr"].items()
                                if k != "feature_binary"},
    }
    if with_face_image and event.face_jpeg:
        message["recognize_face_image"] = DATA_URL + base64.b64encode(event.face_jpeg).decode()
    if with_register_image and event.register_jpeg:
        message["register_image"] = DATA_URL + base64.b64encode(event.register_jpeg).decode()
    return message


@dataclass(eq=False)
class Subscriber:
    queue_size: int
    config: Optional[SubscriberConfig] = None  # None until the client configured itself
    queue: Deque[str] = field(default_factory=collections.deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: int = 0

    def offer(self, text: str) -> None:
        if len(self.queue) >= self.queue_size:
            self.queue.popleft()
            self.dropped += 1
        self.queue.append(text)
        self.ready.set()


class RealtimeHub:
    def __init__(self, queue_size: int = 100) -> None:
        self._queue_size = queue_size
        self._subscribers: Set[Subscriber] = set()
        self.sent = 0
        self.dropped = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def add(self) -> Subscriber:
        subscriber = Subscriber(self._queue_size)
        self._subscribers.add(subscriber)
        return subscriber

    def remove(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        self.dropped += subscriber.dropped

    def publish(self, event: RecordedEvent) -> None:
        device_id = event.record["media_device_info"]["media_device_id"]
        rendered: Dict[Tuple[bool, bool], str] = {}
        for subscriber in list(self._subscribers):
            config = subscriber.config
            if config is None or (config.media_device_ids
                                  and device_id not in config.media_device_ids):
                continue
            variant = (config.with_face_image, config.with_register_image)
            if variant not in rendered:
                rendered[variant] = json.dumps(realtime_message(event, *variant), sort_keys=True,
                                               separators=(",", ":"), ensure_ascii=True)
            subscriber.offer(rendered[variant])

    def stats(self) -> Dict[str, int]:
        return {"subscribers": len(self._subscribers), "sent": self.sent,
                "dropped": self.dropped + sum(s.dropped for s in self._subscribers)}

    async def close(self) -> None:
        for subscriber in list(self._subscribers):
            subscriber.ready.set()
        self._subscribers.clear()


def parse_config(text: Any) -> SubscriberConfig:
    """A client's configuration message (R31 aliases); ValueError-like ApiErrors if bad."""
    from ..errors import InvalidRequestJson, invalid_argument

    if not isinstance(text, str):
        raise InvalidRequestJson()
    try:
        body = json.loads(text)
    except ValueError:
        raise InvalidRequestJson() from None
    if not isinstance(body, dict):
        raise InvalidRequestJson()
    aliases = {"need_face": "with_face_image", "need_register": "with_register_image",
               "event_list": "media_device_ids"}
    for old, new in aliases.items():
        if body.get(new) is None and body.get(old) is not None:
            body[new] = body[old]
    config = SubscriberConfig()
    for name in ("with_face_image", "with_register_image"):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, bool):
                raise invalid_argument(name, value)
            setattr(config, name, value)
    devices = body.get("media_device_ids")
    if devices is not None:
        if not isinstance(devices, list):
            raise invalid_argument("media_device_ids", devices)
        for i, item in enumerate(devices):
            if not isinstance(item, str):
                raise invalid_argument(f"media_device_ids[{i}]", item)
        config.media_device_ids = frozenset(devices)
    return config


__all__ = ["RealtimeHub", "Subscriber", "SubscriberConfig", "parse_config", "realtime_message"]
