"""The history event push (api/event.md 8): durable, ordered, at-least-once HTTP POSTs.

A round takes up to ``batch`` queued events, oldest first, and POSTs each, one event per
request, to every URL of HISTORY_EVENT_UPLOAD_URL that has not taken it yet. A 2xx from a
URL is recorded in the event's queue entry (so that URL never gets it again); when the
last owed URL answered 2xx the entry is removed and the event is never sent again. Any
failure (non-2xx, timeout, connection error) ends the round and the same event is retried
next round, so first arrivals keep event order at every URL.

The queue lives in LMDB and its entry is written in the same transaction as the event
(service/events.py): restarts and SIGKILL lose nothing. Only the POST in flight at a crash
(or at ``stop()``) may reach its URL twice; receivers de-duplicate by ``event_id``.

Choices where the spec is silent:

* Rhythm: a round runs at ``start()`` (the backlog of a restart goes out at once), then
  HISTORY_REPORT_PEROID seconds after the previous round ENDED (a failing receiver is
  never hammered, whatever the round cost), and at once when HISTORY_EVENT_UPLOAD_URL or
  HISTORY_REPORT_PEROID changes (a newly set URL gets the backlog without waiting).
  ``wake()`` (called by the event service after each committed event) does NOT start a
  round: upstream sends "every HISTORY_REPORT_PEROID seconds", and batching events per
  period is the point of the history push. It only keeps ``stats()["queued"]`` current.
* At most ``batch`` events are delivered per round even when more are queued; a backlog
  drains at ``batch`` events per period.
* A 3xx is a failure: redirects are not followed (a POST redirected to a GET would be
  "delivered" without its body).
* An event whose record is gone (retention or wipedata raced the round) is dropped from
  the queue silently; an event whose payload cannot be built (a malformed record) is
  dropped with an ERROR, so one bad record cannot block every later event forever.
* ``stop(grace_s)`` (the daemon's shutdown, with ``server.shutdown_timeout_s``) starts no
  new POST but lets the one in flight finish within ``grace_s`` and records its 2xx, so a
  SIGTERM does not make a receiver get that event again after the restart; a POST still
  running then is abandoned and its event stays queued for the next start.
* The queue is bounded by retention, not by the push: a receiver that stays down keeps at
  most ``events.max_events`` events (and ``events.max_image_bytes`` of their images)
  queued; beyond, the oldest go with their events (logged, service/events.py). A backlog
  drains at ``push.history_batch`` events per HISTORY_REPORT_PEROID, oldest first.
* Failures are logged once per URL and state change (a new reason, or recovery), never
  once per retry.

LMDB access goes through the store's threads; reading the event image files, base64 and
JSON run in the default executor; the event loop only does the HTTP.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Protocol, Set, Tuple

import aiohttp
from yarl import URL

from ..store import events, images, push_queue
from ..store.env import Store, Txn
from ..store.event_images import EventImageFiles
from .realtime import event_ms

log = logging.getLogger(__name__)

URL_SETTING = "HISTORY_EVENT_UPLOAD_URL"
PERIOD_SETTING = "HISTORY_REPORT_PEROID"
LICENSE_SETTING = "MQ_LICENSE_KEY"
#: Settings whose change starts a round at once.
WAKE_SETTINGS = frozenset({URL_SETTING, PERIOD_SETTING})
#: Floor of the period, whatever the setting says (config.md bounds it to >= 1 anyway).
MIN_PERIOD_S = 1.0
DEFAULT_PERIOD_S = 5.0
#: At most this much of a reply body is read (we only need its status).
MAX_REPLY_BYTES = 64 * 1024

#: The keys of a payload, in the order of the table of event.md 8.
PAYLOAD_KEYS = (
    "api_version", "event_id", "identity_id", "identity_name", "timestamp", "score",
    "post_action", "user_type", "in_timestamp", "out_timestamp", "media_device_info",
    "mq_license_key", "reg_image", "spot_image", "ir_image", "recognize_face_image",
    "recognize_face_attr")


class HistorySettings(Protocol):
    """What the pusher needs of the runtime settings (service/settings.RuntimeSettings)."""

    def value(self, name: str) -> Any: ...

    def urls(self, name: str) -> List[str]: ...

    def subscribe(self, callback: Callable[[Set[str]], None]) -> None: ...


# ------------------------------------------------------------------------------ payload

def _b64(data: Optional[bytes]) -> str:
    return base64.b64encode(data).decode("ascii") if data else ""


def history_payload(record: Dict[str, Any], reg_jpeg: Optional[bytes],
                    spot_jpeg: Optional[bytes], face_jpeg: Optional[bytes],
                    license_key: str) -> Dict[str, Any]:
    """The body of event.md 8 for a stored event record (store/events.py).

    R32: api_version "2.0", ``event_id`` added, every time an int in ms, the feature under
    both ``feature_binary`` and ``feature_base64_str``. ``out_timestamp`` is the video
    exit time when there is one, else the event time (photo events)."""
    ext = record["ext_data"]
    timestamp = record["timestamp"]
    feature = events.feature_base64(record)
    attr = dict(record["recognize_face_attr"], feature_binary=feature, feature_base64_str=feature)
    device = dict(record["media_device_info"], media_device_url=record["media_device_url"])
    return {
        "api_version": "2.0",
        "event_id": record["event_id"],
        "identity_id": record["identity_id"],
        "identity_name": record["identity_name"],
        "timestamp": event_ms(timestamp),  # the same milliseconds as the real-time push
        "score": record["score"],
        "post_action": record["post_action"],
        "user_type": record["user_type"],
        "in_timestamp": event_ms(ext.get("in_timestamp", timestamp)),
        "out_timestamp": event_ms(ext.get("out_timestamp", timestamp)),
        "media_device_info": device,
        "mq_license_key": license_key,
        "reg_image": _b64(reg_jpeg),
        "spot_image": _b64(spot_jpeg),
        "ir_image": "",
        "recognize_face_image": _b64(face_jpeg),
        "recognize_face_attr": attr,
    }


def payload_bytes(payload: Dict[str, Any]) -> bytes:
    """Sorted keys, compact, ASCII-escaped: the bytes rules of the HTTP API (README 11)."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=True).encode("ascii")


def _load(txn: Txn, event_id: str) -> Optional[Tuple[Dict[str, Any], Optional[bytes]]]:
    """The event record and its registration photo, in one read transaction."""
    record = events.get(txn, event_id)
    if record is None:
        return None
    reg_id = record["register_image_id"]
    return record, (images.get(txn, reg_id) if reg_id else None)


def _pending(txn: Txn, limit: int) -> Tuple[int, List[Tuple[str, Set[str]]]]:
    return push_queue.count(txn), push_queue.oldest(txn, limit)


def _shown(url: str) -> str:
    """The URL for logs and /health: without a password it may carry."""
    try:
        parsed = URL(url)
        return str(parsed.with_password(None)) if parsed.password is not None else url
    except (ValueError, TypeError):
        return url


# ------------------------------------------------------------------------------ pusher

class HistoryPusher:
    def __init__(self, store: Store, settings: HistorySettings, images: EventImageFiles,
                 batch: int = 100, timeout_s: float = 10.0) -> None:
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self._store = store
        self._settings = settings
        self._images = images
        self._batch = batch
        self._timeout_s = timeout_s
        self._wake: Optional[asyncio.Event] = None
        self._task: Optional[asyncio.Future] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._queued = 0
        self._delivered = 0
        self._failures = 0
        self._last_error = ""
        #: url -> reason of its current failure; a URL is logged when this changes.
        self._failing: Dict[str, str] = {}
        self._round_error = ""
        self._stopping = False
        settings.subscribe(self._settings_changed)

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("history pusher already started")
        # Created here, on the running loop (Python 3.8 binds an Event to a loop).
        self._wake = asyncio.Event()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        self._task = asyncio.ensure_future(self._run())

    async def stop(self, grace_s: float = 0.0) -> None:
        """Start no new POST; let the one in flight finish within ``grace_s`` (its 2xx is
        recorded), then abandon it (its event stays queued) and close the session.

        A queue write already handed to the store's writer thread still commits; the
        store closes after queued writes, so nothing is half-done."""
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            if self._wake is not None:
                self._wake.set()  # a pusher waiting for its next round ends at once
            if grace_s > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(task), grace_s)
                except asyncio.TimeoutError:
                    log.warning("history push: the POST in flight did not finish within "
                                "%g s of the shutdown; its event is sent again at the "
                                "next start", grace_s)
                except Exception:  # already logged by the round
                    pass
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def wake(self) -> None:
        """A new event was committed with its queue entry. It goes out at the next round
        (every HISTORY_REPORT_PEROID seconds, upstream's rhythm), not at once."""
        self._queued += 1

    def stats(self) -> Dict[str, Any]:
        """For /health. ``queued`` is exact as of the last round plus events since."""
        return {"queued": self._queued, "delivered": self._delivered,
                "failures": self._failures, "last_error": self._last_error,
                "failing_urls": sorted(_shown(url) for url in self._failing)}

    def _settings_changed(self, names: Set[str]) -> None:
        if names & WAKE_SETTINGS:
            urls = set(self._urls())
            for url in [u for u in self._failing if u not in urls]:
                del self._failing[url]  # no longer configured: nothing to recover from
            if self._wake is not None:
                self._wake.set()

    # -------------------------------------------------------------- rounds

    def _urls(self) -> List[str]:
        return list(dict.fromkeys(self._settings.urls(URL_SETTING)))  # once each, in order

    def _period_s(self) -> float:
        try:
            return max(MIN_PERIOD_S, float(self._settings.value(PERIOD_SETTING)))
        except (TypeError, ValueError):
            return DEFAULT_PERIOD_S

    async def _run(self) -> None:
        assert self._wake is not None
        while not self._stopping:
            # Cleared before the round: a setting changed during it starts another at once.
            self._wake.clear()
            try:
                await self.round()
                if self._round_error:
                    log.info("history push rounds work again")
                    self._round_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store closing, a full disk: retried next period
                reason = f"{type(exc).__name__}: {exc}"
                if reason != self._round_error:
                    log.exception("history push round failed; retrying every period")
                    self._round_error = reason
                self._last_error = reason
            if self._stopping:
                break
            try:
                await asyncio.wait_for(self._wake.wait(), self._period_s())
            except asyncio.TimeoutError:
                pass

    async def round(self) -> int:
        """One round; returns the number of events fully delivered in it."""
        urls = self._urls()
        queued, entries = await self._store.read(_pending, self._batch if urls else 0)
        self._queued = queued
        if not urls or not entries or self._session is None:
            return 0
        license_key = str(self._settings.value(LICENSE_SETTING))
        done = 0
        for event_id, taken in entries:
            if self._stopping:  # stop(): no new POST
                return done
            owed = [url for url in urls if url not in taken]
            if owed:
                body = await self._body(event_id, license_key)
                if body is None:  # nothing to send: the entry goes (see _body)
                    await self._store.write(_remove, event_id, check_free_space=False)
                    self._queued = max(0, self._queued - 1)
                    continue
                for index, url in enumerate(owed):
                    if (index and self._stopping) or not await self._post(url, body):
                        return done
                    if index < len(owed) - 1:  # the last one removes the entry instead
                        await self._store.write(_mark, event_id, url, check_free_space=False)
            await self._store.write(_remove, event_id, check_free_space=False)
            self._queued = max(0, self._queued - 1)
            self._delivered += 1
            done += 1
        return done

    async def _body(self, event_id: str, license_key: str) -> Optional[bytes]:
        loaded = await self._store.read(_load, event_id)
        if loaded is None:  # retention or wipedata removed it after the queue was read
            return None
        record, reg_jpeg = loaded
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(None, self._build, record, reg_jpeg, license_key)
        except Exception:
            log.exception("history push drops event %s: its payload cannot be built", event_id)
            return None

    def _build(self, record: Dict[str, Any], reg_jpeg: Optional[bytes],
               license_key: str) -> bytes:
        """Off the loop: event image files, base64, JSON."""
        spot_id, face_id = record["spot_image_id"], record["recognize_face_image_id"]
        spot = self._images.read(spot_id) if spot_id else None
        face = self._images.read(face_id) if face_id else None
        return payload_bytes(history_payload(record, reg_jpeg, spot, face, license_key))

    async def _post(self, url: str, body: bytes) -> bool:
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, allow_redirects=False,
                                          headers={"Content-Type": "application/json"}) as reply:
                await reply.content.read(MAX_REPLY_BYTES)
                ok, reason = 200 <= reply.status < 300, f"HTTP {reply.status}"
        except asyncio.TimeoutError:
            ok, reason = False, f"no answer within {self._timeout_s:g} s"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            # ValueError: yarl/aiohttp refusing a URL the settings let through.
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if ok:
            if url in self._failing:
                log.info("history push to %s works again", _shown(url))
                del self._failing[url]
            return True
        self._failures += 1
        self._last_error = f"{_shown(url)}: {reason}"
        if self._failing.get(url) != reason:
            log.warning("history push to %s failed (%s); retrying every %g s",
                        _shown(url), reason, self._period_s())
            self._failing[url] = reason
        return False


def _mark(txn: Txn, event_id: str, url: str) -> Tuple[None, list]:
    push_queue.mark_delivered(txn, event_id, url)
    return None, []


def _remove(txn: Txn, event_id: str) -> Tuple[None, list]:
    push_queue.remove(txn, [event_id])
    return None, []
