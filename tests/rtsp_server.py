"""A real RTSP camera for tests: ``tests/rtsp_serve.py`` (GStreamer) in a child process.

The server runs under the system Python (``/usr/bin/python3``), which has GStreamer's
bindings from Debian's packages (``make test-deps`` installs them best-effort); the
project's virtualenv cannot import ``gi``. Tests call ``rtsp_unavailable_reason()`` and
skip with its answer where the packages are missing::

    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    with RtspServer(clip_path) as server:   # an MJPEG AVI, looped at its native rate
        capture = cv2.VideoCapture(server.url, cv2.CAP_FFMPEG)
        server.restart()                    # the camera drops and comes back, same URL

``stop()`` terminates the process, so connected clients see the TCP connection close.
"""

from __future__ import annotations

import functools
import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import IO, Any, List, Optional, Union

#: The interpreter with ``gi``: Debian's python3, not the project's virtualenv.
SYSTEM_PYTHON = "/usr/bin/python3"
SERVE_SCRIPT = Path(__file__).resolve().with_name("rtsp_serve.py")
HOST = "127.0.0.1"
MOUNT = "/stream"


class RtspServerError(RuntimeError):
    """The server did not come up; ``str()`` carries its output."""


@functools.lru_cache(maxsize=None)
def rtsp_unavailable_reason() -> Optional[str]:
    """None when the system Python can serve RTSP (gi + GstRtspServer 1.0 + the elements
    the server uses), else the reason, for ``pytest.skip``."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} not found (the RTSP test server runs on Debian's python3)"
    try:
        result = subprocess.run([SYSTEM_PYTHON, str(SERVE_SCRIPT), "--check"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                universal_newlines=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {SYSTEM_PYTHON} {SERVE_SCRIPT.name} --check: {exc}"
    if result.returncode != 0:
        output = result.stdout.strip() or f"exit status {result.returncode}"
        return f"RTSP test server unavailable: {output} (make test-deps installs it)"
    return None


class RtspServer:
    """Serves ``video_path`` (an MJPEG AVI) at ``rtsp://127.0.0.1:<port>/stream``.

    ``port=None`` takes a free port at the first ``start()``; ``restart()`` keeps it, so
    the URL stays valid across a restart.
    """

    def __init__(self, video_path: Union[str, Path], port: Optional[int] = None,
                 start_timeout_s: float = 20.0) -> None:
        self._video_path = str(video_path)
        self._port = port
        self._start_timeout_s = start_timeout_s
        self._process: Optional[subprocess.Popen] = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RtspServerError("the server has not been started yet")
        return self._port

    @property
    def url(self) -> str:
        return f"rtsp://{HOST}:{self.port}{MOUNT}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> "RtspServer":
        """Spawn the server and wait for its ``READY <port>`` line; RtspServerError if it
        exits first or stays silent past the timeout."""
        if self.running:
            raise RtspServerError(f"already serving {self.url}")
        process = subprocess.Popen(
            [SYSTEM_PYTHON, str(SERVE_SCRIPT), self._video_path, "--port", str(self._port or 0)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            universal_newlines=True)
        # Both pipes are drained on threads: a chatty GStreamer must never block on a full
        # pipe, and the READY wait needs a timeout that a blocking readline cannot give.
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        errors: List[str] = []
        _drain(process.stdout, lines.put)
        stderr_pump = _drain(process.stderr, lambda line: errors.append(line or ""))
        try:
            port = self._wait_ready(process, lines)
        except RtspServerError as exc:
            _terminate(process)
            stderr_pump.join(timeout=5)
            raise RtspServerError(f"{exc}; stderr: {''.join(errors).strip()!r}") from None
        except BaseException:
            _terminate(process)
            raise
        self._process = process
        self._port = port
        return self

    def _wait_ready(self, process: subprocess.Popen, lines: "queue.Queue[Optional[str]]") -> int:
        while True:
            try:
                line = lines.get(timeout=self._start_timeout_s)
            except queue.Empty:
                raise RtspServerError(
                    f"no READY from {SERVE_SCRIPT.name} within {self._start_timeout_s} s") from None
            if line is None:  # stdout closed: the server exited
                raise RtspServerError(
                    f"{SERVE_SCRIPT.name} exited with status {process.wait(timeout=5)}")
            fields = line.split()
            if len(fields) == 2 and fields[0] == "READY":
                return int(fields[1])

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL) and wait; idempotent."""
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)

    def restart(self) -> "RtspServer":
        """Stop, then serve the same file on the same port."""
        self.stop()
        return self.start()

    def __enter__(self) -> "RtspServer":
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


def _drain(pipe: Optional[IO[str]], sink: Any) -> threading.Thread:
    """Feed each line of ``pipe`` to ``sink`` on a daemon thread, then None at its end."""

    def pump() -> None:
        assert pipe is not None
        with pipe:
            for line in pipe:
                sink(line)
        sink(None)

    thread = threading.Thread(target=pump, name="rtsp-server-pipe", daemon=True)
    thread.start()
    return thread


def _terminate(process: subprocess.Popen, timeout_s: float = 5.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
