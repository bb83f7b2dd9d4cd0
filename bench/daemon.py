"""The daemon as an operator runs it, for the benchmarks that measure it from outside:
``python -m sophon_face serve`` in its own process (its RSS, fds and CPU are its own), on a
free loopback port and a fresh data directory; every other port it opens is ephemeral.
(bench/inprocess.py runs the daemon inside the benchmark's process instead.)
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from measure import MODEL_CACHE, PROJECT_DIR, RESULTS_DIR

BASE = "/sophon/v2/face/"
#: Long enough for a createidentity behind a queue of them on a loaded 2-core box.
REQUEST_TIMEOUT_S = 600.0
#: A health check that takes longer than this is a daemon still starting.
HEALTH_TIMEOUT_S = 5.0


def git_snapshot(ref: str, dest: Path) -> Path:
    """The tree of commit ``ref`` extracted into ``dest`` (``git archive``): the code a
    daemon runs when a benchmark compares against a commit, or wants one while other
    changes are half-made in the working tree."""
    dest.mkdir()
    archive = subprocess.run(["git", "archive", ref], cwd=str(PROJECT_DIR),
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def merged_settings(base: Dict[str, Any], extra: Dict[str, Any]) -> Dict[str, Any]:
    """``extra`` over ``base``, section by section (nested dicts merged, the rest replaced)."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged_settings(out[key], value) if isinstance(value, dict) and isinstance(
            out.get(key), dict) else value
    return out


class DaemonProcess:
    """``python -m sophon_face serve`` on a free loopback port with its files under ``work``:
    ``conf.yaml``, ``daemon.log`` and the data directory ``data``.

    ``settings`` are merged over the defaults below (ephemeral side ports, no free-space
    floor, the benchmarks' model cache, WARNING logs); the port and the data directory are
    always this object's. ``src`` is the tree the daemon runs from (bench/load.py's
    ``--tree head``). With ``remove_work`` ``stop`` deletes ``work``; a daemon that never
    became healthy leaves it, with its log, for a look.
    """

    def __init__(self, work: Path, settings: Optional[Dict[str, Any]] = None, *,
                 src: Path = PROJECT_DIR, remove_work: bool = False,
                 start_timeout_s: float = 300.0) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.work = work
        self.data_dir = work / "data"
        self.remove_work = remove_work
        defaults: Dict[str, Any] = {
            "server": {"ws_port": 0},
            "preview": {"port": 0, "control_port": 0},
            "storage": {"min_free_bytes": 0},
            "models": {"cache_dir": str(MODEL_CACHE)},
            "logging": {"level": "WARNING"},
        }
        self.config = merged_settings(merged_settings(defaults, settings or {}), {
            "server": {"host": "127.0.0.1", "port": self.port},
            "storage": {"data_dir": str(self.data_dir)},
        })
        conf = work / "conf.yaml"
        conf.write_text(json.dumps(self.config), encoding="utf-8")  # JSON is YAML
        self.log_path = work / "daemon.log"
        self._log = open(self.log_path, "wb")
        self._local = threading.local()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sophon_face", "serve", "--config", str(conf)],
            cwd=str(src), stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy(start_timeout_s)
        except BaseException:  # no daemon left behind by a failed start or a Ctrl-C
            self._end_process()
            raise

    @classmethod
    def in_temp_dir(cls, prefix: str,
                    settings: Optional[Dict[str, Any]] = None) -> "DaemonProcess":
        """A daemon in a new directory under bench/results (git-ignored); ``stop`` removes it."""
        work = Path(tempfile.mkdtemp(prefix=prefix, dir=RESULTS_DIR))
        return cls(work, settings, remove_work=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            try:
                status, payload = self.request("GET", "/health", fresh=True,
                                               timeout_s=HEALTH_TIMEOUT_S)
                if status == 200 and payload.get("status") == "ok":
                    return
            except (OSError, ValueError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"daemon did not become healthy; see {self.log_path}")

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                fresh: bool = False,
                timeout_s: float = REQUEST_TIMEOUT_S) -> Tuple[int, Dict[str, Any]]:
        """(status, JSON answer) on this thread's keep-alive connection, or with ``fresh``
        on a connection of its own."""
        conn = None if fresh else getattr(self._local, "conn", None)
        reused = conn is not None
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout_s)
        try:
            conn.request(method, path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            self._local.conn = None
            if reused:  # the daemon closed the idle connection (server.keepalive_timeout_s)
                return self.request(method, path, body, fresh, timeout_s)
            raise
        if fresh:
            conn.close()
        else:
            self._local.conn = conn
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            payload = {}
        return response.status, payload if isinstance(payload, dict) else {}

    def post(self, endpoint: str, payload: Dict[str, Any]) -> Dict[str, Any]:
        """The JSON answer of an API call; anything but a 200 raises."""
        status, answer = self.request("POST", BASE + endpoint, json.dumps(payload).encode())
        if status != 200:
            raise RuntimeError(f"{endpoint}: {status} {answer}")
        return answer

    def log_tail(self, lines: int = 20) -> List[str]:
        """The daemon's last log lines (WARNING and up): why a request got a 500."""
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return text.splitlines()[-lines:]

    def _end_process(self) -> None:
        self.process.terminate()  # SIGTERM to this pid only: graceful aiohttp shutdown
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()

    def stop(self) -> None:
        self._end_process()
        if self.remove_work:
            shutil.rmtree(self.work, ignore_errors=True)
