"""The history event push (api/event.md 8): durable, ordered, at-least-once HTTP POSTs.

Every HISTORY_REPORT_PEROID seconds (or at once when the URL setting changes) a round
takes up to ``batch`` queued events, oldest first, and POSTs each to every URL of
HISTORY_EVENT_UPLOAD_URL that has not taken it yet, one event per request. A 2xx is
recorded per URL in the queue entry; when every URL took the event its entry is removed
and it is never sent again. Any failure ends the round; the same event is retried next
round, so first arrivals keep event order. The queue is in LMDB, written with the event
itself: restarts and SIGKILL lose nothing (the POST in flight at a crash may repeat;
receivers de-duplicate by ``event_id``). LMDB access and payload building run off the
event loop.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Protocol, Set, Tuple

import aiohttp

from ..store import events, images, push_queue
from ..store.env import Store, Txn
from ..store.event_images import EventImageFiles
from .realtime import event_ms

log = logging.getLogger(__name__)


class Settings(Protocol):
    def value(self, name: str) -> Any: ...

    def urls(self, name: str) -> List[str]: ...

    def subscribe(self, callback: Callable[[Set[str]], None]) -> None: ...


def _ms(seconds: float) -> int:
    return event_ms(seconds)  # the same milliseconds as the real-time push


def _b64(data: Optional[bytes]) -> str:
    return base64.b64encode(data).decode("ascii") if data else ""


def history_payload(record: Dict[str, Any], reg_jpeg: Optional[bytes], spot_jpeg: Optional[bytes],
                    face_jpeg: Optional[bytes], license_key: str) -> Dict[str, Any]:
    """The body of section 8 (R32: api_version 2.0, both feature keys, int ms, event_id)."""
    ext = record["ext_data"]
    feature = events.feature_base64(record)
    attr = dict(record["recognize_face_attr"], feature_binary=feature, feature_base64_str=feature)
    return {
        "api_version": "2.0",
        "event_id": record["event_id"],
        "identity_id": record["identity_id"],
        "identity_name": record["identity_name"],
        "timestamp": _ms(record["timestamp"]),
        "score": record["score"],
        "post_action": record["post_action"],
        "user_type": record["user_type"],
        "in_timestamp": _ms(ext.get("in_timestamp", record["timestamp"])),
        "out_timestamp": _ms(ext.get("out_timestamp", record["timestamp"])),
        "media_device_info": dict(record["media_device_info"],
                                  media_device_url=record["media_device_url"]),
        "mq_license_key": license_key,
        "reg_image": _b64(reg_jpeg),
        "spot_image": _b64(spot_jpeg),
        "ir_image": "",
        "recognize_face_image": _b64(face_jpeg),
        "recognize_face_attr": attr,
    }


class HistoryPusher:
    def __init__(self, store: Store, settings: Settings, images: EventImageFiles,
                 batch: int = 100, timeout_s: float = 10.0) -> None:
        self._store = store
        self._settings = settings
        self._images = images
        self._batch = batch
        self._timeout_s = timeout_s
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Future] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self.delivered = 0
        self.failures = 0
        self.last_error = ""
        self._failing: Dict[str, str] = {}  # url -> reason, logged once per state change
        settings.subscribe(self._settings_changed)

    def _settings_changed(self, names: Set[str]) -> None:
        if names & {"HISTORY_EVENT_UPLOAD_URL", "HISTORY_REPORT_PEROID"}:
            self._wake.set()

    def wake(self) -> None:
        """A new event: delivered at the next period (the spec's rhythm), not at once."""

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def stats(self) -> Dict[str, Any]:
        return {"delivered": self.delivered, "failures": self.failures,
                "last_error": self.last_error}

    async def _run(self) -> None:
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("history push round failed")
            period = max(1.0, float(self._settings.value("HISTORY_REPORT_PEROID")))
            try:
                await asyncio.wait_for(self._wake.wait(), period)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()

    def _load(self, txn: Txn, event_id: str) -> Optional[Tuple[Dict[str, Any], Optional[bytes]]]:
        record = events.get(txn, event_id)
        if record is None:
            return None
        reg = images.get(txn, record["register_image_id"]) if record["register_image_id"] else None
        return record, reg

    def _body(self, record: Dict[str, Any], reg: Optional[bytes]) -> bytes:
        payload = history_payload(
            record, reg,
            self._images.read(record["spot_image_id"]) if record["spot_image_id"] else None,
            self._images.read(record["recognize_face_image_id"])
            if record["recognize_face_image_id"] else None,
            str(self._settings.value("MQ_LICENSE_KEY")))
        return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode("utf-8")

    async def round(self) -> int:
        """One round; returns the number of events fully delivered."""
        urls = self._settings.urls("HISTORY_EVENT_UPLOAD_URL")
        if not urls or self._session is None:
            return 0
        done = 0
        for event_id, taken in await self._store.read(push_queue.oldest, self._batch):
            loaded = await self._store.read(self._load, event_id)
            if loaded is None:  # deleted meanwhile (retention, wipe)
                await self._store.write(lambda txn: (push_queue.remove(txn, [event_id]), []),
                                        check_free_space=False)
                continue
            body = await self._store.run_in_read_pool(self._body, *loaded)
            for url in urls:
                if url in taken:
                    continue
                if not await self._post(url, body):
                    return done
                await self._store.write(
                    lambda txn, url=url: (push_queue.mark_delivered(txn, event_id, url), []),
                    check_free_space=False)
            await self._store.write(lambda txn: (push_queue.remove(txn, [event_id]), []),
                                    check_free_space=False)
            self.delivered += 1
            done += 1
        return done

    async def _post(self, url: str, body: bytes) -> bool:
        assert self._session is not None
        try:
            async with self._session.post(url, data=body,
                                          headers={"Content-Type": "application/json"}) as reply:
                await reply.read()
                ok, reason = 200 <= reply.status < 300, f"HTTP {reply.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            if url in self._failing:
                log.info("history push to %s works again", url)
                del self._failing[url]
            return True
        self.failures += 1
        self.last_error = f"{url}: {reason}"
        if self._failing.get(url) != reason:
            log.warning("history push to %s failed (%s); retrying every period", url, reason)
            self._failing[url] = reason
        return False
