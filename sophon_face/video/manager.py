"""Every video device's reader and analysis, started and stopped with the device table.

At start the manager runs one reader (decode thread + analysis task, video/reader.py and
video/session.py) per ``rtsp`` / ``file`` device; afterwards it follows the device
service's committed changes: add starts a reader, delete stops it, modify restarts it
(the group, ROI or relay may have changed). Changes are applied one at a time, in order.
``gb28181`` devices are stored only: they report ``offline`` with the reason.

Device status (device.md 9, the status push and /health): rtsp — online while frames
arrive; file — online while the file is readable (upstream's rule; a file that has played
to its end is still online); photo — online when the device called ``search`` within the
last MEDIA_DEVICE_MONITOR_REPORT_PEROID seconds; gb28181 — offline.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from ..config import VideoConfig
from ..service.settings import RuntimeSettings
from ..service.video_recognition import VideoRecognition
from .frames import FrameSource
from .reader import DecodeThread, FrameMailbox, ReaderOptions, ReaderStats
from .session import DeviceSession, PreviewSink

log = logging.getLogger(__name__)

STREAM_TYPES = ("rtsp", "file")
#: How long stopping a device may wait for its decode thread (a blocked FFmpeg read
#: returns within its read timeout; the thread is a daemon thread either way).
STOP_JOIN_S = 5.0

SourceFactory = Callable[[str, bool], FrameSource]


@dataclass
class _Running:
    device: Dict[str, Any]
    stats: ReaderStats
    mailbox: FrameMailbox
    thread: DecodeThread
    session: DeviceSession
    task: "asyncio.Task[None]"


class VideoManager:
    def __init__(self, pool: Any, recognition: VideoRecognition, settings: RuntimeSettings,
                 config: VideoConfig, make_source: SourceFactory, image_roots: Sequence[Any] = (),
                 preview: Optional[PreviewSink] = None,
                 on_status_change: Optional[Callable[[], None]] = None) -> None:
        self._pool = pool
        self._recognition = recognition
        self._settings = settings
        self._config = config
        self._make_source = make_source
        self._roots = [os.path.realpath(str(r)) for r in image_roots]
        self._preview = preview
        self._on_status_change = on_status_change
        self._running: Dict[str, _Running] = {}
        self._errors: Dict[str, str] = {}  # devices that could not start, and why
        self._photo_seen: Dict[str, float] = {}
        self._changes: "asyncio.Queue[tuple]" = asyncio.Queue()
        self._worker: Optional["asyncio.Task[None]"] = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self, devices: List[Dict[str, Any]]) -> None:
        for device in devices:
            self._start(device)
        self._worker = asyncio.ensure_future(self._apply_changes())

    async def close(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        await asyncio.gather(*(self._stop(device_id) for device_id in list(self._running)))

    def on_device_change(self, action: str, device: Dict[str, Any]) -> None:
        """DeviceService subscriber (event loop, after the commit)."""
        self._changes.put_nowait((action, dict(device)))

    def photo_seen(self, device_id: str) -> None:
        """A photo device called ``search`` (its status: online)."""
        first = device_id not in self._photo_seen
        self._photo_seen[device_id] = time.monotonic()
        if first:
            self._status_changed()

    async def _apply_changes(self) -> None:
        while True:
            action, device = await self._changes.get()
            device_id = device["media_device_id"]
            try:
                if action in ("delete", "modify"):
                    await self._stop(device_id)
                    self._errors.pop(device_id, None)
                    self._photo_seen.pop(device_id, None)
                if action in ("add", "modify"):
                    self._start(device)
            except Exception:
                log.exception("video device %s: %s failed", device_id, action)
            self._status_changed()

    # ------------------------------------------------------------------ one device

    def _start(self, device: Dict[str, Any]) -> None:
        kind, device_id = device["media_device_type"], device["media_device_id"]
        if kind == "gb28181":
            self._errors[device_id] = "gb28181 streams are not supported (stored only)"
            return
        if kind not in STREAM_TYPES:
            return
        url = device["media_device_url"]
        is_file = kind == "file"
        if is_file and not self._inside_roots(url):
            self._errors[device_id] = "file is outside images.roots"
            log.warning("video device %s: %s is outside images.roots", device_id, url)
            return
        loop = asyncio.get_running_loop()
        stats = ReaderStats()
        mailbox = FrameMailbox(stats)
        options = ReaderOptions(analysis_fps=self._config.analysis_fps, is_file=is_file,
                                loop=self._config.loop_files,
                                reconnect_min_s=self._config.reconnect_min_s,
                                reconnect_max_s=self._config.reconnect_max_s)
        thread = DecodeThread(device_id, lambda: self._make_source(url, is_file), options,
                              mailbox, stats, loop, lambda _state: self._status_changed())
        session = DeviceSession(device, self._pool, self._recognition, self._settings,
                                self._config.track_timeout_s, self._config.max_faces_per_frame,
                                self._preview)
        task = asyncio.ensure_future(session.run(mailbox))
        self._running[device_id] = _Running(device, stats, mailbox, thread, session, task)
        thread.start()
        log.info("video device %s (%s) started", device_id, kind)

    async def _stop(self, device_id: str) -> None:
        running = self._running.pop(device_id, None)
        if running is None:
            return
        running.session.abandon()
        running.thread.stop()
        running.mailbox.end()
        try:
            await asyncio.wait_for(asyncio.shield(running.task), STOP_JOIN_S)
        except asyncio.TimeoutError:
            running.task.cancel()
            await asyncio.gather(running.task, return_exceptions=True)
        except Exception:
            log.exception("video device %s: analysis ended with an error", device_id)
        loop = asyncio.get_running_loop()
        if not await loop.run_in_executor(None, running.thread.join, STOP_JOIN_S):
            log.warning("video device %s: decoder still busy after %.0f s; left to finish",
                        device_id, STOP_JOIN_S)
        log.info("video device %s stopped", device_id)

    def _inside_roots(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == root or real.startswith(root.rstrip(os.sep) + os.sep)
                   for root in self._roots)

    def _status_changed(self) -> None:
        if self._on_status_change is not None:
            self._on_status_change()

    # ------------------------------------------------------------------ status

    def status_of(self, device: Dict[str, Any]) -> str:
        kind, device_id = device["media_device_type"], device["media_device_id"]
        if kind == "photo":
            seen = self._photo_seen.get(device_id)
            period = float(self._settings.value("MEDIA_DEVICE_MONITOR_REPORT_PEROID"))
            return "online" if seen is not None and time.monotonic() - seen <= period else "offline"
        running = self._running.get(device_id)
        if running is None:
            return "offline"
        if kind == "file":
            url = device["media_device_url"]
            return "online" if os.access(url, os.R_OK) and running.stats.state != "offline" \
                else "offline"
        return "online" if running.stats.state == "online" else "offline"

    def stats(self, devices: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
        """Each device of ``devices`` (the table, in order) for /health: its status and,
        for a watched one, its reader's and analysis' counters."""
        out: Dict[str, Any] = {}
        for device in devices:
            device_id = device["media_device_id"]
            entry: Dict[str, Any] = {"type": device["media_device_type"],
                                     "status": self.status_of(device)}
            running = self._running.get(device_id)
            if running is not None:
                reader, session = running.stats, running.session.stats
                entry.update({
                    "state": reader.state,
                    "frames_read": reader.frames_read,
                    "frames_analysed": session.frames_analysed,
                    "frames_dropped": reader.frames_dropped,
                    "frames_skipped": reader.frames_read - reader.frames_sampled,
                    "reconnects": reader.reconnects,
                    "native_fps": round(reader.fps, 2),
                    "faces": session.faces,
                    "tracks": session.tracks,
                    "events": session.events,
                    "stage_ms": {k: round(v, 1) for k, v in session.stage_ms.items()},
                    "last_error": reader.last_error or session.last_error,
                })
            elif device_id in self._errors:
                entry.update({"state": "offline", "last_error": self._errors[device_id]})
            out[device_id] = entry
        return out
