"""Recognition events (api/event.md): recording, reading, listing, event images.

Recording (section 9): one write transaction puts the event record AND its history-push
queue entry, and applies retention; the event's image files are written and fsynced on the
writer thread just before, so a committed event never names a missing file (a crash in
between leaves an orphan file, swept at start). After the commit the subscribers (the
real-time push, the history pusher) get the event on the event loop.

Recording never fails the call that produced it (event.md 9, README 12.4: a full disk is
never an error of ``search``): a failure is logged and the event is lost, loudly, and
counted (``not_recorded``, /health ``store.events_not_recorded``).

Choices where the spec is silent:
- Retention (``events.max_events``, ``events.max_image_bytes`` in conf.yaml): beyond either
  limit the oldest events go, in the same transaction as the new one, with their queue
  entries; an undelivered event dropped that way is logged. Image files follow the commit.
- Duplicate suppression compares the new event's time with the newest stored event of the
  same device for the same identity; a suppressed call stores and pushes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import ApiError, IdNotFound
from ..store import event_images, events, push_queue
from ..store.env import Store, Txn
from ..store.event_images import EventImageFiles
from ..store.event_index import AddEvent, EventFilter, EventIndex, RemoveEvents
from .paging import MAX_PAGE_LIMIT
from .recorded import RecordedEvent
from .settings import RuntimeSettings

log = logging.getLogger(__name__)

#: Values above this are milliseconds (R27).
MS_THRESHOLD = 1e11
NO_DEVICE = {"media_device_id": "", "media_device_ip": "", "media_device_name": "",
             "media_device_type": ""}
STRANGER = "stranger"


def seconds(value: float) -> float:
    """A time parameter in seconds; values above 10^11 are taken as milliseconds (R27)."""
    return value / 1000.0 if value > MS_THRESHOLD else float(value)


@dataclass
class EventDraft:
    """Everything an event needs, gathered by the caller (search, later the video readers)."""

    timestamp: float
    score: float
    feature: np.ndarray
    box: List[float]
    point: List[float]
    identity: Optional[Dict[str, Any]] = None  # the recognised identity record
    register_image_id: str = ""
    group: Optional[Dict[str, Any]] = None  # the permission group searched
    device: Optional[Dict[str, Any]] = None  # the capturing device record
    attributes: Dict[str, Optional[str]] = field(default_factory=lambda: {
        "age": None, "gender": None, "glasses": None, "mask": None})
    face_jpeg: Optional[bytes] = None
    spot_jpeg: Optional[bytes] = None
    register_jpeg: Optional[bytes] = None
    frame_id: int = 0
    ext_data: Dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Retention:
    max_events: int
    max_image_bytes: int


class EventService:
    def __init__(self, store: Store, index: EventIndex, images: EventImageFiles,
                 settings: RuntimeSettings, retention: Retention) -> None:
        self._store = store
        self._index = index
        self._images = images
        self._settings = settings
        self._retention = retention
        self._subscribers: List[Callable[[RecordedEvent], None]] = []
        self._not_recorded = 0

    @property
    def index(self) -> EventIndex:
        return self._index

    @property
    def images(self) -> EventImageFiles:
        return self._images

    @property
    def not_recorded(self) -> int:
        """Events lost since start because storing them failed (a full disk or map)."""
        return self._not_recorded

    def subscribe(self, callback: Callable[[RecordedEvent], None]) -> None:
        """``callback(event)`` on the event loop after each committed event."""
        self._subscribers.append(callback)

    # ------------------------------------------------------------------ recording

    def _suppressed(self, draft: EventDraft) -> bool:
        if draft.device is None or draft.identity is None:
            return False  # strangers and device-less calls are never suppressed
        last = self._index.last_seen(draft.device["media_device_id"],
                                     draft.identity["identity_id"])
        timeout = float(self._settings.value("GATE_DUPLICATE_REMOVAL_TIMEOUT"))
        return last is not None and draft.timestamp - last < timeout

    async def record(self, draft: EventDraft) -> Optional[RecordedEvent]:
        """Store and publish one event; None when suppressed or when storing failed."""
        if self._suppressed(draft):
            return None
        written: List[str] = []
        try:
            outcome = await self._store.write(self._write, draft, written)
        except Exception as exc:  # the recognition answer stands; the event is lost, loudly
            self._not_recorded += 1
            level = logging.WARNING if isinstance(exc, ApiError) else logging.ERROR
            log.log(level, "event not recorded: %s", exc, exc_info=not isinstance(exc, ApiError))
            if written:
                await self._store.run_in_read_pool(self._images.delete, written)
            return None
        if outcome is None:
            return None
        record, expired_images = outcome
        if expired_images:
            await self._store.run_in_read_pool(self._images.delete, expired_images)
        recorded = RecordedEvent(record=record, face_jpeg=draft.face_jpeg,
                                 spot_jpeg=draft.spot_jpeg, register_jpeg=draft.register_jpeg)
        for callback in self._subscribers:
            try:
                callback(recorded)
            except Exception:
                log.exception("event subscriber failed")
        return recorded

    def _write(self, txn: Txn, draft: EventDraft, written: List[str]) -> Tuple[Any, list]:
        if self._suppressed(draft):  # again, serialised with every other event write
            return None, []
        event_id = str(max(int(draft.timestamp * 1e6), events.last_id(txn) + 1))
        image_type = self._settings.value("REGN_IMAGE_TYPE")
        face_id = self._store_image(event_images.FACE, event_id, draft.face_jpeg,
                                    image_type in ("recognize_face", "all"), written)
        spot_id = self._store_image(event_images.SPOT, event_id, draft.spot_jpeg,
                                    image_type in ("spot_image", "all"), written)
        record = self._record(draft, event_id, face_id, spot_id)
        events.put(txn, record)
        push_queue.enqueue(txn, event_id)
        expired, expired_images = self._apply_retention(txn)
        changes: list = [AddEvent(record)]
        if expired:
            changes.append(RemoveEvents(tuple(expired)))
        return (record, expired_images), changes

    def _store_image(self, kind: str, event_id: str, jpeg: Optional[bytes], wanted: bool,
                     written: List[str]) -> str:
        if not wanted or not jpeg:
            return ""
        image_id = event_images.image_id(kind, event_id)
        if image_id in written or self._images.write(image_id, jpeg):
            if image_id not in written:
                written.append(image_id)
            return image_id
        return ""

    def _record(self, draft: EventDraft, event_id: str, face_id: str,
                spot_id: str) -> Dict[str, Any]:
        identity, group, device = draft.identity, draft.group, draft.device
        ext_data = {"in_timestamp": draft.timestamp, "recognition_timestamp": draft.timestamp}
        ext_data.update(draft.ext_data)
        face_bytes = len(draft.face_jpeg or b"") if face_id else 0
        spot_bytes = len(draft.spot_jpeg or b"") if spot_id else 0
        return {
            "event_id": event_id,
            "timestamp": draft.timestamp,
            "identity_id": identity["identity_id"] if identity else "",
            "identity_name": identity["identity_name"] if identity else "",
            "user_type": identity["user_type"] if identity else STRANGER,
            "register_image_id": draft.register_image_id if identity else "",
            "recognize_face_image_id": face_id,
            "spot_image_id": spot_id,
            "permission_id": group["permission_id"] if group else "",
            "permission_name": group["permission_name"] if group else "",
            "score": round(float(draft.score), 2),
            "post_action": "0",
            "frame_id": int(draft.frame_id),
            "media_device_info": ({key: device[key] for key in NO_DEVICE} if device
                                  else dict(NO_DEVICE)),
            "media_device_url": device["media_device_url"] if device else "",
            "recognize_face_attr": {
                "age": draft.attributes.get("age"), "box": list(draft.box),
                "expression": None, "gender": draft.attributes.get("gender"),
                "glasses": draft.attributes.get("glasses"), "hat": None,
                "mask": draft.attributes.get("mask"), "point": list(draft.point),
            },
            "feature": np.ascontiguousarray(draft.feature, dtype="<f4").tobytes(),
            "ext_data": ext_data,
            "image_bytes": face_bytes + spot_bytes,
        }

    def _apply_retention(self, txn: Txn) -> Tuple[List[int], List[str]]:
        expired: List[int] = []
        expired_images: List[str] = []
        undelivered = 0
        limit = self._retention
        while (events.count(txn) > limit.max_events
               or events.image_bytes(txn) > limit.max_image_bytes) and events.count(txn) > 1:
            old = events.pop_oldest(txn)
            if old is None:
                break
            if push_queue.contains(txn, old["event_id"]):
                undelivered += 1
                push_queue.remove(txn, [old["event_id"]])
            expired.append(int(old["event_id"]))
            expired_images.extend(events.image_ids(old))
        if undelivered:
            log.warning("retention removed %d event(s) the history push had not delivered "
                        "yet (events.max_events / events.max_image_bytes)", undelivered)
        return expired, expired_images

    # ------------------------------------------------------------------ reading

    async def get(self, event_id: str) -> Dict[str, Any]:
        record = await self._store.read(events.get, event_id)
        if record is None:
            raise IdNotFound(event_id)
        return events.render(record)

    async def list(self, filters: Dict[str, Any], page_limit: int,
                   page_index: int) -> Dict[str, Any]:
        limit = min(page_limit, MAX_PAGE_LIMIT)
        gte, lte = filters["datetime_gte"], filters["datetime_lte"]
        flt = EventFilter(
            datetime_gte=None if gte is None else seconds(gte),
            datetime_lte=None if lte is None else seconds(lte),
            identity_name=filters["identity_name"], identity_id=filters["identity_id"],
            score_min=filters["score_min"], score_max=filters["score_max"],
            user_type=filters["user_type"], media_device_ids=filters["media_device_ids"])
        total, ids = await self._store.run_in_read_pool(
            self._index.query, flt, page_index * limit, limit)
        records = await self._store.read(events.get_many, ids) if ids else []
        return {"events": [events.render(r) for r in records],
                "pagination": {"page_index": page_index, "page_limit": limit,
                               "total_count": total}}

    async def image(self, image_id: str) -> bytes:
        """An event's face crop or scene image (getspotimage); ID_NOT_FOUND otherwise."""
        loop = asyncio.get_running_loop()
        data = await loop.run_in_executor(None, self._images.read, image_id)
        if data is None:
            raise IdNotFound(image_id)
        return data
