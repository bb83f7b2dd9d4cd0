"""Frames through OpenCV's FFmpeg backend: RTSP over TCP and local video files.

RTSP goes over TCP (``rtsp_transport;tcp``): over UDP a lossy LAN smears the picture with
missing slices, which the detector would take for faces or hide faces behind. Open and
read timeouts make a dead camera an error within seconds instead of a thread blocked
forever in ``read``; the reader then reconnects with backoff.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional

import cv2
import numpy as np

from .frames import SourceError, redacted_url

log = logging.getLogger(__name__)

#: FFmpeg reads its capture options from the environment when a capture opens; a value
#: the operator set is kept.
_FFMPEG_OPTIONS_ENV = "OPENCV_FFMPEG_CAPTURE_OPTIONS"
_RTSP_OPTIONS = "rtsp_transport;tcp"


class OpenCvFrameSource:
    """``cv2.VideoCapture`` over one URL; a ``FrameSource`` (video/frames.py)."""

    def __init__(self, url: str, open_timeout_s: float = 10.0, read_timeout_s: float = 10.0) -> None:
        self._url = url
        self._is_stream = url.startswith("rtsp://")
        self._open_timeout_ms = int(open_timeout_s * 1000)
        self._read_timeout_ms = int(read_timeout_s * 1000)
        self._capture: Optional[Any] = None
        self._fps = 0.0

    @property
    def fps(self) -> float:
        return self._fps

    def open(self) -> None:
        if self._is_stream:
            os.environ.setdefault(_FFMPEG_OPTIONS_ENV, _RTSP_OPTIONS)
        elif not os.path.isfile(self._url):
            raise SourceError(f"no such file: {self._url}")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self._open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, self._read_timeout_ms]
        capture = cv2.VideoCapture(self._url, cv2.CAP_FFMPEG, params)
        if not capture.isOpened():
            capture.release()
            raise SourceError(f"cannot open {redacted_url(self._url)}")
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        # FFmpeg reports 90000 or 1000 (the RTP clock) for streams without a rate.
        self._fps = fps if 0.0 < fps <= 120.0 else 0.0
        self._capture = capture

    def read(self) -> Optional[np.ndarray]:
        if self._capture is None:
            raise SourceError("source is not open")
        ok, image = self._capture.read()
        if ok and image is not None:
            return image
        if self._is_stream:
            raise SourceError(f"stream ended or timed out: {redacted_url(self._url)}")
        return None  # end of file

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()
