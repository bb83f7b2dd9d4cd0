"""The decode thread: native-rate playback, sampling, the one-frame mailbox, reconnection."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import List, Optional

import cv2
import numpy as np
import pytest

from sophon_face.video.frames import Frame, SourceError
from sophon_face.video.frames import redacted_url
from sophon_face.video.opencv_source import OpenCvFrameSource
from sophon_face.video.reader import DecodeThread, FrameMailbox, ReaderOptions, ReaderStats


def small_video(path: Path, frames: int = 50, fps: float = 25.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (160, 120))
    for n in range(frames):
        writer.write(np.full((120, 160, 3), n % 256, np.uint8))
    writer.release()
    return path


async def play(open_source, options: ReaderOptions, consume: bool = True,
               until_s: float = 30.0, stop_after_s: Optional[float] = None):
    loop = asyncio.get_running_loop()
    stats = ReaderStats()
    mailbox = FrameMailbox(stats)
    states: List[str] = []
    thread = DecodeThread("test", open_source, options, mailbox, stats, loop, states.append)
    started = time.monotonic()
    thread.start()
    taken: List[Frame] = []
    if stop_after_s is not None:
        loop.call_later(stop_after_s, thread.stop)
        loop.call_later(stop_after_s, mailbox.end)
    if not consume:
        while thread.join(0) is False and time.monotonic() - started < until_s:
            await asyncio.sleep(0.05)
    while True:
        frame = await asyncio.wait_for(mailbox.take(), until_s)
        if frame is None:
            break
        taken.append(frame)
    elapsed = time.monotonic() - started
    assert thread.join(5)
    return stats, taken, states, elapsed


def test_a_file_plays_once_at_its_native_rate_and_is_sampled(tmp_path: Path) -> None:
    video = small_video(tmp_path / "v.avi", frames=50, fps=25.0)
    stats, taken, states, elapsed = asyncio.run(play(
        lambda: OpenCvFrameSource(str(video)), ReaderOptions(analysis_fps=5.0, is_file=True)))
    assert stats.frames_read == 50 and stats.fps == 25.0
    assert 1.8 <= elapsed < 4.0  # two seconds of video take two seconds
    assert 9 <= stats.frames_sampled <= 11  # 5 per second
    assert len(taken) == stats.frames_sampled - stats.frames_dropped
    ids = [f.frame_id for f in taken]
    assert ids == sorted(ids) and ids[0] == 1
    assert taken[0].shape == [160, 120, 3]
    assert states[0] == "online" and states[-1] == "finished" and stats.state == "finished"


def test_a_busy_analysis_drops_frames_instead_of_queueing(tmp_path: Path) -> None:
    video = small_video(tmp_path / "v.avi", frames=50, fps=25.0)
    stats, taken, _states, _ = asyncio.run(play(
        lambda: OpenCvFrameSource(str(video)), ReaderOptions(analysis_fps=10.0, is_file=True),
        consume=False))
    assert len(taken) == 1  # only the newest frame waited
    assert stats.frames_dropped == stats.frames_sampled - 1 >= 15
    assert taken[0].frame_id >= 45


class FlakySource:
    """A scripted stream: fails to open ``fail_opens`` times, then gives ``frames``
    frames and breaks (as a camera that reboots)."""

    opens = 0

    def __init__(self, fail_opens: int, frames: int) -> None:
        self._fail_opens, self._frames, self._given = fail_opens, frames, 0

    @property
    def fps(self) -> float:
        return 0.0

    def open(self) -> None:
        FlakySource.opens += 1
        if FlakySource.opens <= self._fail_opens:
            raise SourceError("connection refused")

    def read(self) -> Optional[np.ndarray]:
        if self._given >= self._frames:
            raise SourceError("stream ended or timed out")
        self._given += 1
        time.sleep(0.01)
        return np.zeros((8, 8, 3), np.uint8)

    def close(self) -> None:
        pass


def test_a_failing_stream_reconnects_with_backoff_and_reports_its_state() -> None:
    FlakySource.opens = 0
    options = ReaderOptions(analysis_fps=50.0, reconnect_min_s=0.1, reconnect_max_s=0.4)
    stats, taken, states, elapsed = asyncio.run(play(
        lambda: FlakySource(fail_opens=3, frames=20), options, stop_after_s=1.5))
    assert FlakySource.opens >= 4 and stats.reconnects >= 3
    assert stats.frames_read >= 20 and taken
    assert states[:2] == ["offline", "online"] and "offline" in states[2:]
    assert stats.last_error == "stream ended or timed out"
    assert states[-1] == "stopped" and elapsed < 3.0


def test_stop_during_a_long_backoff_is_prompt() -> None:
    FlakySource.opens = 0
    options = ReaderOptions(reconnect_min_s=30.0, reconnect_max_s=30.0)
    stats, taken, states, elapsed = asyncio.run(play(
        lambda: FlakySource(fail_opens=100, frames=0), options, stop_after_s=0.3))
    assert taken == [] and elapsed < 2.0 and stats.state == "stopped"


def test_opencv_source_errors_and_redaction(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        OpenCvFrameSource(str(tmp_path / "missing.avi")).open()
    (tmp_path / "junk.avi").write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceError):
        OpenCvFrameSource(str(tmp_path / "junk.avi")).open()
    source = OpenCvFrameSource(str(tmp_path / "junk.avi"))
    with pytest.raises(SourceError):
        source.read()
    source.close()
    source.close()
    assert redacted_url("rtsp://admin:secret@10.0.0.2:554/ch1") == "rtsp://***@10.0.0.2:554/ch1"
    assert redacted_url("rtsp://10.0.0.2/ch1") == "rtsp://10.0.0.2/ch1"
