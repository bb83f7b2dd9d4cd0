"""systemd integration: the unit file, and the real daemon speaking sd_notify.

The daemon (``python -m sophon_face serve``) is started with ``NOTIFY_SOCKET`` pointing at
a datagram socket this test owns and ``WATCHDOG_USEC`` of 2 s, as systemd would start it
with ``Type=notify`` and ``WatchdogSec=2``. READY=1 must arrive only once the daemon really
serves (the store open, the workers warmed, /health healthy at that very moment), then
WATCHDOG=1 about every second, then STOPPING=1 on SIGTERM and a clean exit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
import yaml

from .crash_harness import REPO_DIR, free_port, write_config

UNIT = REPO_DIR / "systemd" / "sophon-face.service"
WATCHDOG_USEC = 2_000_000
START_TIMEOUT_S = 180.0


def _unit_settings() -> Dict[str, List[str]]:
    settings: Dict[str, List[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_a_hardened_notify_service() -> None:
    unit = _unit_settings()
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30",
        "Restart": "on-failure", "User": "sophon-face", "ProtectSystem": "strict",
        "NoNewPrivileges": "yes", "PrivateTmp": "yes", "ProtectHome": "yes",
        "StandardOutput": "journal", "StandardError": "journal",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert unit["ExecStart"] == [
        "/opt/sophon-face/venv/bin/sophon-face serve --config /etc/sophon-face/conf.yaml"]
    assert "ExecStartPost" not in unit  # readiness is READY=1, not polling
    assert "/data/sophon-face" in unit["ReadWritePaths"][0].split()
    assert any(v.startswith("LD_LIBRARY_PATH=/opt/sophon/") for v in unit["Environment"])
    # The first start loads every bmodel: far longer than the 90 s default is allowed.
    assert int(unit["TimeoutStartSec"][0]) >= 180
    assert int(unit["TimeoutStopSec"][0]) > 10  # above server.shutdown_timeout_s


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    # verify checks that ExecStart= is executable; the venv exists only on a box, so a
    # copy points at an executable that exists here. Everything else is verified as is.
    text = UNIT.read_text(encoding="utf-8")
    assert "/opt/sophon-face/venv/bin/sophon-face" in text
    copy = tmp_path / "sophon-face.service"
    copy.write_text(text.replace("/opt/sophon-face/venv/bin/sophon-face", "/bin/true"),
                    encoding="utf-8")
    result = subprocess.run([analyze, "verify", str(copy)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, universal_newlines=True, timeout=60)
    output = result.stdout.strip()
    if result.returncode != 0 and re.search(r"(?i)bus|pid 1|not booted|offline", output) \
            and "sophon-face.service" not in output:
        pytest.skip(f"systemd-analyze cannot run here: {output}")
    # An unknown or misspelt directive is only a warning (exit 0): any output fails.
    assert result.returncode == 0 and output == "", output


# ------------------------------------------------------------------------ the daemon

@pytest.fixture()
def notify_socket() -> Iterator[Tuple[socket.socket, str]]:
    folder = tempfile.mkdtemp(prefix="sdn")  # AF_UNIX paths stay under 108 bytes
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield sock, path
    sock.close()
    shutil.rmtree(folder)


class _Messages:
    """Datagrams from the daemon, each with its arrival time."""

    def __init__(self, sock: socket.socket, proc: subprocess.Popen, log_path: Path) -> None:
        self.sock, self.proc, self.log_path = sock, proc, log_path
        self.received: List[Tuple[float, List[str]]] = []

    def next(self, timeout_s: float) -> Optional[Tuple[float, List[str]]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.sock.settimeout(min(0.5, max(0.01, deadline - time.monotonic())))
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                if self.proc.poll() is not None:
                    return None
                continue
            message = (time.monotonic(), data.decode("utf-8").split("\n"))
            self.received.append(message)
            return message
        return None

    def until(self, field: str, timeout_s: float) -> Tuple[float, List[str]]:
        """The next message with an assignment starting with ``field``."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.next(max(0.0, deadline - time.monotonic()))
            if message is None:
                pytest.fail(f"no {field} within {timeout_s} s (exit {self.proc.poll()}); "
                            f"received {self.received}; log:\n{self.log()[-3000:]}")
            if any(f.startswith(field) for f in message[1]):
                return message

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


def _start_notifying(config: Path, port: int, sock: socket.socket, path: str,
                     log_path: Path) -> Tuple[subprocess.Popen, _Messages]:
    """The daemon as systemd starts it with Type=notify and WatchdogSec=2."""
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC=str(WATCHDOG_USEC))
    for inherited in ("WATCHDOG_PID", "JOURNAL_STREAM", "LISTEN_FDS"):
        env.pop(inherited, None)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sophon_face", "serve", "--config", str(config),
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_DIR), env=env,
            start_new_session=True)
    return proc, _Messages(sock, proc, log_path)


def _health(port: int) -> Tuple[int, Dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        return response.status, json.loads(response.read().decode("utf-8"))


def test_ready_after_warm_up_then_watchdog_then_stopping(
        tmp_path: Path, prepared_models: Dict[str, Path], notify_socket) -> None:
    sock, path = notify_socket
    # INFO: the store-open and warm-up lines are what READY=1 is checked against.
    config = write_config(tmp_path / "conf.yaml", tmp_path / "data",
                          prepared_models["detector"].parent, log_level="INFO")
    port = free_port()
    proc, messages = _start_notifying(config, port, sock, path, tmp_path / "daemon.log")
    try:
        ready_at, ready = messages.until("READY=1", START_TIMEOUT_S)
        # At READY the daemon already answers, healthy, on the first try: no polling.
        status, health = _health(port)
        assert status == 200 and health["status"] == "ok", health
        assert health["warm_up"]["ok"] and health["store"]["open"], health
        logged = messages.log()
        assert re.search(r"store \S+ open: \d+ faces", logged), logged
        assert "inference worker(s) loaded and warmed" in logged, logged
        assert any(f.startswith("STATUS=ready: port ") for f in ready), ready
        # Before READY=1 only STATUS= lines: no early READY, no pings before the start.
        for _, fields in messages.received[:-1]:
            assert all(f.startswith("STATUS=") for f in fields), messages.received

        # WATCHDOG=1 every WATCHDOG_USEC / 2 = 1 s.
        pings = [ready_at]
        while len(pings) < 5:
            at, fields = messages.until("WATCHDOG=1", 3.0)
            assert fields == ["WATCHDOG=1"]
            pings.append(at)
        gaps = [b - a for a, b in zip(pings[1:], pings[2:])]
        assert all(0.6 <= gap <= 1.6 for gap in gaps), gaps
        assert pings[1] - ready_at <= 0.5, "the first ping follows READY=1 at once"

        proc.send_signal(signal.SIGTERM)
        _, stopping = messages.until("STOPPING=1", 10.0)
        assert "STATUS=stopping" in stopping
        assert proc.wait(timeout=30) == 0, messages.log()[-3000:]
        assert "Traceback" not in messages.log() and " ERROR " not in messages.log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_without_notify_socket_the_daemon_serves_as_before(
        tmp_path: Path, prepared_models: Dict[str, Path]) -> None:
    """No NOTIFY_SOCKET (a terminal, the tests, another supervisor): nothing is sent,
    SIGINT stops it cleanly, as web.run_app did."""
    config = write_config(tmp_path / "conf.yaml", tmp_path / "data",
                          prepared_models["detector"].parent, log_level="INFO")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    port = free_port()
    log_path = tmp_path / "daemon.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sophon_face", "serve", "--config", str(config),
             "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_DIR), env=env,
            start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                status, health = _health(port)
                break
            except OSError:
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
        assert status == 200 and health["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log_path.read_text()
        logged = log_path.read_text()
        assert "serving HTTP on http://127.0.0.1:" in logged and "stopping" in logged
        assert "Traceback" not in logged
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_during_the_start_stops_cleanly(
        tmp_path: Path, prepared_models: Dict[str, Path], notify_socket) -> None:
    """systemctl stop while the models load: the start is abandoned, what it opened is
    closed, STOPPING=1 is sent and the exit is clean (no wait for READY=1)."""
    sock, path = notify_socket
    config = write_config(tmp_path / "conf.yaml", tmp_path / "data",
                          prepared_models["detector"].parent, log_level="INFO")
    proc, messages = _start_notifying(config, free_port(), sock, path, tmp_path / "daemon.log")
    try:
        messages.until("STATUS=starting: ", 60.0)
        proc.send_signal(signal.SIGTERM)  # the start takes ~0.4 s here: this lands inside it
        _, stopping = messages.until("STOPPING=1", 30.0)
        assert proc.wait(timeout=30) == 0, messages.log()[-3000:]
        ready = [m for m in messages.received if "READY=1" in m[1]]
        if not ready:
            assert "STATUS=stopped while starting" in stopping, stopping
        assert "Traceback" not in messages.log(), messages.log()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_failed_start_never_sends_ready(
        tmp_path: Path, prepared_models: Dict[str, Path], notify_socket) -> None:
    """A model that fails its checksum: no READY=1, a STATUS= saying why, exit 1 (systemd
    then restarts it: Restart=on-failure)."""
    sock, path = notify_socket
    manifest = yaml.safe_load((REPO_DIR / "models" / "cpu.yaml").read_text(encoding="utf-8"))
    manifest["models"]["detector"]["source"]["sha256"] = "0" * 64
    (tmp_path / "manifest.yaml").write_text(yaml.safe_dump(manifest), encoding="utf-8")
    config = write_config(tmp_path / "conf.yaml", tmp_path / "data",
                          prepared_models["detector"].parent, log_level="INFO")
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    raw["models"]["manifest"] = str(tmp_path / "manifest.yaml")
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    proc, messages = _start_notifying(config, free_port(), sock, path, tmp_path / "daemon.log")
    try:
        _, failed = messages.until("STATUS=start failed: ", 120.0)
        assert any("checksum" in f or "sha256" in f for f in failed), failed
        assert proc.wait(timeout=30) == 1, messages.log()[-3000:]
        assert not any("READY=1" in m[1] for m in messages.received), messages.received
        assert "start failed" in messages.log()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
