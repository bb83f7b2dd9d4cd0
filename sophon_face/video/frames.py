"""The frame-source seam: what a video reader needs from a decoder, and nothing more.

A ``FrameSource`` opens one device's URL (an ``rtsp://`` stream or a local file), hands out
decoded BGR frames one at a time, and is closed by the thread that opened it. Two
implementations: ``video/opencv_source.py`` (OpenCV's FFmpeg backend, any machine) and
``video/sail_source.py`` (SAIL's hardware decoder on the SE5). Both are used only from the
reader's decode thread, so neither needs to be thread-safe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np


class SourceError(RuntimeError):
    """The source cannot be opened, or its stream broke; ``str()`` says why (for /health)."""


@dataclass(frozen=True)
class Frame:
    """One decoded picture: BGR pixels, its number in the stream (from 1) and when it was
    read (wall-clock seconds; a file played at its native rate gets real-time stamps)."""

    image_bgr: np.ndarray  # H x W x 3 uint8
    frame_id: int
    timestamp: float

    @property
    def shape(self) -> list:
        """``[width, height, channels]``, as event.md's ``video_shape``."""
        height, width = self.image_bgr.shape[:2]
        channels = self.image_bgr.shape[2] if self.image_bgr.ndim == 3 else 1
        return [int(width), int(height), int(channels)]


class FrameSource(Protocol):
    """A decoder for one URL, used from one thread."""

    def open(self) -> None:
        """Connect / open the file; ``SourceError`` when that fails."""

    @property
    def fps(self) -> float:
        """The stream's native frame rate (0.0 when the container does not say)."""

    def read(self) -> Optional[np.ndarray]:
        """The next decoded BGR frame; None at the end of a file; ``SourceError`` when a
        stream breaks (the reader then closes, backs off and opens again)."""

    def close(self) -> None:
        """Release the decoder; safe to call twice and after a failed ``open``."""


def redacted_url(url: str) -> str:
    """The URL without a ``user:password@`` part, for logs, errors and /health."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    return f"{scheme}://***@{rest.split('@', 1)[1]}"
