"""The RTSP test camera (tests/rtsp_server.py) against OpenCV's FFmpeg client over TCP: it
serves frames, a stop breaks the reader within seconds, and a restart serves again at the
same URL. Video-reader tests build on exactly these three behaviours.

Skips with the reason where Debian's GStreamer RTSP packages are missing (``make test-deps``).
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests import rtsp_server
from tests.rtsp_server import RtspServer, RtspServerError, rtsp_unavailable_reason

WIDTH, HEIGHT, FPS, SECONDS = 320, 240, 25, 2
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 3_000


@pytest.fixture(scope="module")
def rtsp_available() -> None:
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def clip(rtsp_available: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 s of 320x240 MJPEG at 25 fps; frame i is a flat colour with blue = 5 * i."""
    path = tmp_path_factory.mktemp("rtsp") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (WIDTH, HEIGHT))
    assert writer.isOpened()
    for index in range(FPS * SECONDS):
        writer.write(np.full((HEIGHT, WIDTH, 3), (5 * index, 100, 200), dtype=np.uint8))
    writer.release()
    return path


@pytest.fixture(autouse=True)
def rtsp_over_tcp(monkeypatch: pytest.MonkeyPatch) -> None:
    # FFmpeg reads its capture options when a capture opens; UDP would lose packets on a
    # busy CI machine and is not what the daemon uses.
    monkeypatch.setenv("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


def open_capture(url: str) -> Any:
    capture = cv2.VideoCapture(url, cv2.CAP_FFMPEG, [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
        cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS,
    ])
    assert capture.isOpened(), f"cannot open {url}"
    return capture


def read_frames(capture: Any, count: int) -> list:
    frames = []
    for _ in range(count):
        ok, image = capture.read()
        assert ok, f"read failed after {len(frames)} frames"
        frames.append(image)
    return frames


def test_serves_the_clip_in_a_loop_at_its_native_rate(clip: Path) -> None:
    with RtspServer(clip) as server:
        assert server.url == f"rtsp://127.0.0.1:{server.port}/stream"
        capture = open_capture(server.url)
        try:
            assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(FPS)
            # More than the clip holds: the server must wrap around, not end the stream.
            frames = read_frames(capture, FPS * SECONDS + 20)
            started = time.monotonic()
            read_frames(capture, FPS)
            one_second = time.monotonic() - started
        finally:
            capture.release()
    assert all(f.shape == (HEIGHT, WIDTH, 3) and f.dtype == np.uint8 for f in frames)
    # JPEG keeps flat colours within a few levels; the blue channel counts frames.
    blues = [int(f[HEIGHT // 2, WIDTH // 2, 0]) for f in frames]
    assert abs(blues[0] - 0) <= 4, "the stream starts at the clip's first frame"
    assert all(abs(f[HEIGHT // 2, WIDTH // 2, 1:].astype(int) - (100, 200)).max() <= 4 for f in frames)
    wraps = [i for i in range(1, len(blues)) if blues[i] < blues[i - 1] - 50]
    assert wraps == [FPS * SECONDS], blues
    # Paced at the clip's rate (after the burst FFmpeg buffers while probing the stream).
    assert 0.6 <= one_second <= 2.0, one_second


def test_stop_breaks_the_reader_and_restart_serves_the_same_url(clip: Path) -> None:
    server = RtspServer(clip).start()
    try:
        url = server.url
        capture = open_capture(url)
        try:
            assert len(read_frames(capture, 20)) == 20
            server.stop()
            assert not server.running
            started = time.monotonic()
            deadline = started + 10
            while capture.read()[0]:
                assert time.monotonic() < deadline, "frames kept coming after the server stopped"
            assert time.monotonic() - started < READ_TIMEOUT_MS / 1000 + 2
        finally:
            capture.release()

        server.restart()
        assert server.url == url
        capture = open_capture(url)
        try:
            frames = read_frames(capture, 20)
        finally:
            capture.release()
        assert all(f.shape == (HEIGHT, WIDTH, 3) for f in frames)
    finally:
        server.stop()
    server.stop()  # idempotent


def test_a_file_that_is_not_a_video_is_reported_not_hung(rtsp_available: None, tmp_path: Path) -> None:
    bogus = tmp_path / "not-a-video.avi"
    bogus.write_bytes(b"RIFF0000AVI garbage")
    server = RtspServer(bogus, start_timeout_s=20)
    with pytest.raises(RtspServerError, match="exited with status"):
        server.start()
    assert not server.running


def test_the_skip_reason_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    # The project's interpreter has no ``gi``: exactly the situation of a machine without
    # Debian's packages. (Not cached: the cached answer is the real system Python's.)
    if importlib.util.find_spec("gi") is not None:  # a virtualenv with system site-packages
        pytest.skip("this interpreter has gi")
    monkeypatch.setattr(rtsp_server, "SYSTEM_PYTHON", sys.executable)
    reason = rtsp_unavailable_reason.__wrapped__()
    assert reason is not None and "gi" in reason and "make test-deps" in reason

    monkeypatch.setattr(rtsp_server, "SYSTEM_PYTHON", "/nonexistent/python3")
    assert "not found" in rtsp_unavailable_reason.__wrapped__()
