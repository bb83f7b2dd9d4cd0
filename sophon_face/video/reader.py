"""One device's decode thread: open, read, pace, sample, hand over; reconnect on failure.

The thread owns the frame source (decoders are thread-bound). It reads every frame the
source gives (an RTSP decoder must be drained or the camera's buffer overflows), keeps one
every ``1 / analysis_fps`` seconds, and hands it to the event loop through a one-frame
mailbox: a frame still waiting when the next sampled one arrives is replaced and counted
as dropped. Inference falling behind therefore costs frames, never memory.

A file plays at its native frame rate (the container's, else 25 fps) so that its events
carry real-time timestamps like a camera's; at its end it stops (``finished``), or starts
over when ``loop`` is set. A stream that fails to open, errors, or delivers nothing for
``read_timeout_s`` is closed and reopened after a backoff that doubles from
``reconnect_min_s`` up to ``reconnect_max_s`` and resets once frames flow again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

from .frames import Frame, FrameSource, SourceError

log = logging.getLogger(__name__)

#: Playback rate of a file whose container gives none.
DEFAULT_FILE_FPS = 25.0


@dataclass(frozen=True)
class ReaderOptions:
    analysis_fps: float = 8.0
    is_file: bool = False
    loop: bool = False
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0


class ReaderStats:
    """Counters and state, written by the decode thread, read by /health (plain ints and
    strings: a torn read is impossible, a slightly stale one harmless)."""

    def __init__(self) -> None:
        self.state = "starting"  # starting | online | offline | finished | stopped
        self.frames_read = 0
        self.frames_sampled = 0
        self.frames_dropped = 0  # sampled but replaced before analysis
        self.reconnects = 0
        self.last_error = ""
        self.last_frame_at = 0.0
        self.fps = 0.0


class FrameMailbox:
    """The newest sampled frame, waiting for the analysis task (event-loop side only)."""

    def __init__(self, stats: ReaderStats) -> None:
        self._frame: Optional[Frame] = None
        self._ended = False
        self._event = asyncio.Event()
        self._stats = stats

    def offer(self, frame: Frame) -> None:
        if self._frame is not None:
            self._stats.frames_dropped += 1
        self._frame = frame
        self._event.set()

    def end(self) -> None:
        self._ended = True
        self._event.set()

    async def take(self) -> Optional[Frame]:
        """The next frame; None once the source has ended and nothing is left."""
        while True:
            if self._frame is not None:
                frame, self._frame = self._frame, None
                return frame
            if self._ended:
                return None
            self._event.clear()
            await self._event.wait()


class DecodeThread:
    """Runs ``source`` on its own thread and feeds ``mailbox`` on ``loop``."""

    def __init__(self, name: str, open_source: Callable[[], FrameSource], options: ReaderOptions,
                 mailbox: FrameMailbox, stats: ReaderStats, loop: asyncio.AbstractEventLoop,
                 on_state: Callable[[str], None]) -> None:
        self._name = name
        self._open_source = open_source
        self._options = options
        self._mailbox = mailbox
        self._stats = stats
        self._loop = loop
        self._on_state = on_state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"video-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout_s: float) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _set_state(self, state: str, error: str = "") -> None:
        if error:
            self._stats.last_error = error
        if state != self._stats.state:
            self._stats.state = state
            self._call_loop(self._on_state, state)

    def _call_loop(self, fn: Callable, *args: object) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop closed under us: the daemon is shutting down
            self._stop.set()

    def _run(self) -> None:
        backoff = self._options.reconnect_min_s
        try:
            while not self._stop.is_set():
                source = self._open_source()
                try:
                    source.open()
                    ended = self._play(source)
                except SourceError as exc:
                    ended = False
                    self._set_state("offline", str(exc))
                    log.warning("video device %s: %s", self._name, exc)
                except Exception as exc:  # a decoder bug must not kill the device for good
                    ended = False
                    self._set_state("offline", f"{type(exc).__name__}: {exc}")
                    log.exception("video device %s: decoder failed", self._name)
                finally:
                    source.close()
                if ended:
                    if not self._options.loop:
                        self._set_state("finished")
                        return
                    backoff = self._options.reconnect_min_s
                    continue
                if self._stats.last_frame_at and time.time() - self._stats.last_frame_at < backoff * 2:
                    backoff = self._options.reconnect_min_s  # it was flowing: start over
                if self._stop.wait(backoff):
                    return
                self._stats.reconnects += 1
                backoff = min(backoff * 2.0, self._options.reconnect_max_s)
        finally:
            if self._stats.state != "finished":
                self._set_state("stopped" if self._stop.is_set() else "offline")
            self._call_loop(self._mailbox.end)

    def _play(self, source: FrameSource) -> bool:
        """Read until the file ends (True), the stream fails (SourceError) or stop."""
        stats, options = self._stats, self._options
        native_fps = source.fps or (DEFAULT_FILE_FPS if options.is_file else 0.0)
        stats.fps = native_fps
        sample_every_s = 1.0 / options.analysis_fps
        started = time.monotonic()
        next_sample = started
        played = 0
        while not self._stop.is_set():
            image = source.read()
            if image is None:
                return True
            played += 1
            stats.frames_read += 1
            now_wall = time.time()
            stats.last_frame_at = now_wall
            if stats.state != "online":
                self._set_state("online")
            if options.is_file:  # play at the native rate: sleep until this frame is due
                due = started + played / native_fps
                delay = due - time.monotonic()
                if delay > 0 and self._stop.wait(delay):
                    return False
            now = time.monotonic()
            if now < next_sample:
                continue
            next_sample = max(next_sample + sample_every_s, now - sample_every_s)
            stats.frames_sampled += 1
            self._call_loop(self._mailbox.offer, Frame(image, stats.frames_read, now_wall))
        return False
