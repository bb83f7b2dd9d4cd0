"""sd_notify over a datagram socket the test owns: paths, abstract names, the watchdog
variables as sd_watchdog_enabled(3) reads them, and pings that stop when the loop blocks."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from typing import Iterator, List, Tuple

import pytest

from sophon_face.sdnotify import (Notifier, feed_watchdog, socket_address, watchdog_ping_interval_s,
                                  watchdog_usec)


@pytest.fixture()
def path_socket() -> Iterator[Tuple[socket.socket, str]]:
    # Not tmp_path: an AF_UNIX path must stay under 108 bytes.
    folder = tempfile.mkdtemp(prefix="sdn")
    path = os.path.join(folder, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5.0)
    yield sock, path
    sock.close()
    shutil.rmtree(folder)


@pytest.fixture()
def abstract_socket() -> Iterator[Tuple[socket.socket, str]]:
    name = f"sophon-face-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5.0)
    yield sock, "@" + name
    sock.close()


def _received(sock: socket.socket) -> List[str]:
    return sock.recv(4096).decode("utf-8").split("\n")


def test_ready_status_stopping_over_a_path_socket(path_socket) -> None:
    sock, path = path_socket
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    try:
        assert notifier.ready("ready: port 5555,\n128-d features")
        assert _received(sock) == ["READY=1", "STATUS=ready: port 5555, 128-d features"]
        assert notifier.watchdog()
        assert _received(sock) == ["WATCHDOG=1"]
        assert notifier.stopping()
        assert _received(sock) == ["STOPPING=1", "STATUS=stopping"]
    finally:
        notifier.close()


def test_abstract_namespace_address(abstract_socket) -> None:
    sock, name = abstract_socket
    assert socket_address(name) == b"\0" + name[1:].encode()
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": name})
    try:
        assert notifier.ready("up")
        assert _received(sock) == ["READY=1", "STATUS=up"]
    finally:
        notifier.close()


def test_no_op_without_notify_socket() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False
    notifier.close()


@pytest.mark.parametrize("value", ["relative/socket", "@", "vsock:2:1234"])
def test_unusable_address_disables(value: str) -> None:
    assert not Notifier.from_environment({"NOTIFY_SOCKET": value}).enabled


def test_send_failure_is_logged_not_raised(caplog) -> None:
    folder = tempfile.mkdtemp(prefix="sdn")
    try:  # nobody listens at this path
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": os.path.join(folder, "gone")})
        assert notifier.ready("up") is False
        notifier.close()
    finally:
        shutil.rmtree(folder)
    assert "sd_notify READY=1 failed" in caplog.text


@pytest.mark.parametrize("env, expected", [
    ({"WATCHDOG_USEC": "2000000"}, 2000000),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30000000),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # another process's
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "1.5"}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({}, None),
])
def test_watchdog_variables(env, expected) -> None:
    assert watchdog_usec(env, pid=4242) == expected


def test_ping_interval_is_half_the_timeout() -> None:
    assert watchdog_ping_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_ping_interval_s({"WATCHDOG_USEC": "2000000",
                                     "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_ping_interval_s({}) is None


def test_pings_come_from_the_loop_and_stop_while_it_is_blocked(path_socket) -> None:
    sock, path = path_socket
    notifier = Notifier(socket_address(path))
    interval_s, block_s = 0.05, 0.6
    arrivals: List[float] = []
    done = threading.Event()

    def receive() -> None:
        sock.settimeout(0.1)
        while not done.is_set():
            try:
                message = sock.recv(64)
            except socket.timeout:
                continue
            assert message == b"WATCHDOG=1"
            arrivals.append(time.monotonic())

    blocked: List[float] = []

    async def scenario() -> None:
        pinger = asyncio.ensure_future(feed_watchdog(notifier, interval_s))
        await asyncio.sleep(0.3)
        blocked.append(time.monotonic())
        time.sleep(block_s)  # a handler that blocks the event loop
        blocked.append(time.monotonic())
        await asyncio.sleep(0.3)
        pinger.cancel()

    receiver = threading.Thread(target=receive)
    receiver.start()
    try:
        asyncio.run(scenario())
        time.sleep(0.1)
    finally:
        done.set()
        receiver.join()
        notifier.close()
    before = [t for t in arrivals if t < blocked[0]]
    during = [t for t in arrivals if blocked[0] + 0.02 < t < blocked[1]]
    after = [t for t in arrivals if t > blocked[1]]
    assert len(before) >= 3 and len(after) >= 3, (len(before), len(after))
    assert during == [], "a blocked event loop must not ping"
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert max(gaps) >= block_s * 0.9
