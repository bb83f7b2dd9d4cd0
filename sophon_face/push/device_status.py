"""The device status push (api/device.md 9): the state of every media device, POSTed.

When MEDIA_DEVICE_MONITOR_URL is non-empty, a report goes to each of its URLs every
MEDIA_DEVICE_MONITOR_REPORT_PEROID seconds: ``Content-Type: application/json``, a timeout
of ``timeout_s`` (10 s in the daemon) and no retry, because the next report supersedes a
lost one. The body (R46: the list under both names, the same content)::

    {"mq_license_key": MQ_LICENSE_KEY,
     "media_devices": [{"media_device_id", "media_device_name", "media_device_status",
                        "media_device_ip", "permission_id", "media_device_type",
                        "media_device_url"}, ...],
     "sub_devices": <the same list>}

Devices come in creation order from ``devices_snapshot()``; ``status_of(record)`` says
"online" or "offline" (the caller owns the status rule of section 9: stream decoding,
file readability, a photo device's recent activity).

Our additions where the spec is silent:

* Rhythm: a report goes out at ``start()`` (the platform learns at once that the box is
  back, with honest states: a stream not yet decoded is "offline"), then a period after
  the previous report ENDED, whatever triggered it; a failing receiver is never hammered.
* ``notify_change()`` (a device went online or offline, or was added or deleted) sends a
  report soon: ``debounce_s`` (0.2 s) after the first change, so a burst of changes (every
  stream of a restart coming up) makes one report, not one each.
* A change of MEDIA_DEVICE_MONITOR_URL or MEDIA_DEVICE_MONITOR_REPORT_PEROID sends a report
  at once (a newly set URL learns the devices without waiting a period).
* Reports never overlap: one task builds and sends them one after another; a change that
  arrives during a report makes another report right after it (the first one's snapshot
  may predate the change).
* The POSTs of one report to several URLs run concurrently: a slow or dead URL costs the
  others nothing, and the report ends at the latest ``timeout_s`` after it started.
* A 3xx is a failure (redirects are not followed, as in the history push).
* The body bytes follow the HTTP API's rules (README 11): compact, sorted keys, ASCII.
* Failures are logged once per URL and state change (a new reason, or recovery), never
  once per report; ``stats()`` counts them all.
* A ``status_of`` that raises or answers something else reports that device "offline"
  (logged once per device and state): one broken reader must not silence every report.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import (Any, Awaitable, Callable, Dict, List, Mapping, Optional, Protocol, Set)

import aiohttp

from .history import MAX_REPLY_BYTES, payload_bytes
from .history import _shown as shown_url

log = logging.getLogger(__name__)

URL_SETTING = "MEDIA_DEVICE_MONITOR_URL"
PERIOD_SETTING = "MEDIA_DEVICE_MONITOR_REPORT_PEROID"
LICENSE_SETTING = "MQ_LICENSE_KEY"
#: Settings whose change sends a report at once.
WAKE_SETTINGS = frozenset({URL_SETTING, PERIOD_SETTING})
#: Floor of the period, whatever the setting says (config.md bounds it to >= 1 anyway).
MIN_PERIOD_S = 1.0
DEFAULT_PERIOD_S = 60.0
#: How long after the first ``notify_change()`` of a burst its report goes out.
DEFAULT_DEBOUNCE_S = 0.2
#: How long ``stop()`` waits for the cancelled report task before giving up on it.
STOP_TIMEOUT_S = 2.0
ONLINE, OFFLINE = "online", "offline"
STATUSES = frozenset({ONLINE, OFFLINE})

#: The fields of one device entry, in the order of the table of device.md 9.
ENTRY_KEYS = ("media_device_id", "media_device_name", "media_device_status", "media_device_ip",
              "permission_id", "media_device_type", "media_device_url")


class MonitorSettings(Protocol):
    """What the pusher needs of the runtime settings (service/settings.RuntimeSettings)."""

    def value(self, name: str) -> Any: ...

    def urls(self, name: str) -> List[str]: ...

    def subscribe(self, callback: Callable[[Set[str]], None]) -> None: ...


DevicesSnapshot = Callable[[], Awaitable[List[Dict[str, Any]]]]
StatusOf = Callable[[Mapping[str, Any]], str]


def device_entry(record: Mapping[str, Any], status: str) -> Dict[str, Any]:
    """One entry of ``media_devices`` for a device record (store/devices.py)."""
    return {
        "media_device_id": record["media_device_id"],
        "media_device_name": record["media_device_name"],
        "media_device_status": status,
        "media_device_ip": record["media_device_ip"],
        "permission_id": record["permission_id"],
        "media_device_type": record["media_device_type"],
        "media_device_url": record["media_device_url"],
    }


def status_payload(entries: List[Dict[str, Any]], license_key: str) -> Dict[str, Any]:
    """The body of device.md 9; R46: the list under both names."""
    return {"mq_license_key": license_key, "media_devices": entries,
            "sub_devices": [dict(entry) for entry in entries]}


class DeviceStatusPusher:
    def __init__(self, settings: MonitorSettings, devices_snapshot: DevicesSnapshot,
                 status_of: StatusOf, timeout_s: float = 10.0,
                 debounce_s: float = DEFAULT_DEBOUNCE_S) -> None:
        self._settings = settings
        self._devices_snapshot = devices_snapshot
        self._status_of = status_of
        self._timeout_s = timeout_s
        self._debounce_s = debounce_s
        self._subscribed = False
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None
        self._change_timer: Optional[asyncio.TimerHandle] = None
        self._task: Optional[asyncio.Future] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._reports = 0
        self._delivered = 0
        self._failures = 0
        self._last_error = ""
        self._last_report_unix_s: Optional[float] = None
        #: url -> reason of its current failure; a URL is logged when this changes.
        self._failing: Dict[str, str] = {}
        #: device id -> why its status could not be read; logged when this changes.
        self._status_problems: Dict[str, str] = {}
        self._report_error = ""

    # -------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._task is not None:
            raise RuntimeError("device status pusher already started")
        if not self._subscribed:  # settings have no unsubscribe: once, across restarts
            self._settings.subscribe(self._settings_changed)
            self._subscribed = True
        # Created here, on the running loop (Python 3.8 binds an Event to a loop).
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """Cancel the report in flight (it is superseded by the next start's report anyway)
        and close the session; waits at most STOP_TIMEOUT_S for the task."""
        timer, self._change_timer = self._change_timer, None
        if timer is not None:
            timer.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
            if not done:
                log.warning("device status report did not stop within %g s; left behind",
                            STOP_TIMEOUT_S)
        session, self._session = self._session, None
        if session is not None:
            await session.close()
        self._wake = None

    def notify_change(self) -> None:
        """A device went online or offline, or was added or deleted: report soon.

        On the event loop only. The first change of a burst arms one timer; later ones
        ride on it, so a burst makes one report ``debounce_s`` after it began."""
        if self._task is None or self._loop is None or self._change_timer is not None:
            return
        self._change_timer = self._loop.call_later(self._debounce_s, self._change_due)

    def stats(self) -> Dict[str, Any]:
        """For /health. ``failing_urls``: each URL whose last POST failed, with why."""
        return {"reports": self._reports, "delivered": self._delivered,
                "failures": self._failures, "last_error": self._last_error,
                "last_report_unix_s": self._last_report_unix_s,
                "failing_urls": {shown_url(url): reason
                                 for url, reason in sorted(self._failing.items())}}

    def _change_due(self) -> None:
        self._change_timer = None
        if self._wake is not None:
            self._wake.set()

    def _settings_changed(self, names: Set[str]) -> None:
        if names & WAKE_SETTINGS:
            urls = set(self._urls())
            for url in [u for u in self._failing if u not in urls]:
                del self._failing[url]  # no longer configured: nothing to recover from
            if self._wake is not None:
                self._wake.set()

    # -------------------------------------------------------------- reports

    def _urls(self) -> List[str]:
        return list(dict.fromkeys(self._settings.urls(URL_SETTING)))  # once each, in order

    def _period_s(self) -> float:
        try:
            return max(MIN_PERIOD_S, float(self._settings.value(PERIOD_SETTING)))
        except (TypeError, ValueError):
            return DEFAULT_PERIOD_S

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            # Cleared before the report: a change during it makes another one right after.
            self._wake.clear()
            try:
                await self.report()
                if self._report_error:
                    log.info("device status reports work again")
                    self._report_error = ""
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the store closing under the snapshot: next period
                reason = f"{type(exc).__name__}: {exc}"
                if reason != self._report_error:
                    log.exception("device status report failed; trying again every period")
                    self._report_error = reason
                self._last_error = reason
            try:
                await asyncio.wait_for(self._wake.wait(), self._period_s())
            except asyncio.TimeoutError:
                pass

    async def report(self) -> int:
        """Send one report to every configured URL now; returns how many took it (2xx).

        Not for concurrent use: the pusher's own task is its only caller while running."""
        urls = self._urls()
        if not urls or self._session is None:
            return 0
        records = await self._devices_snapshot()
        entries = [device_entry(record, self._status(record)) for record in records]
        body = payload_bytes(status_payload(entries, str(self._settings.value(LICENSE_SETTING))))
        taken = await asyncio.gather(*(self._post(url, body) for url in urls))
        self._reports += 1
        self._last_report_unix_s = time.time()
        return sum(taken)

    def _status(self, record: Mapping[str, Any]) -> str:
        device_id = str(record.get("media_device_id", ""))
        try:
            status = self._status_of(record)
            problem = "" if status in STATUSES else f"unknown status {status!r}"
        except Exception as exc:
            status, problem = OFFLINE, f"{type(exc).__name__}: {exc}"
        if problem:
            if self._status_problems.get(device_id) != problem:
                log.error("device %s reported offline: its status cannot be read (%s)",
                          device_id, problem)
                self._status_problems[device_id] = problem
            return OFFLINE
        if device_id in self._status_problems:
            log.info("device %s status can be read again", device_id)
            del self._status_problems[device_id]
        return status

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
            self._delivered += 1
            if self._failing.pop(url, None) is not None:
                log.info("device status push to %s works again", shown_url(url))
            return True
        self._failures += 1
        self._last_error = f"{shown_url(url)}: {reason}"
        if self._failing.get(url) != reason:
            log.warning("device status push to %s failed (%s); not retried, the next report "
                        "supersedes it", shown_url(url), reason)
            self._failing[url] = reason
        return False
