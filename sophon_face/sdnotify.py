"""systemd's readiness and watchdog protocol, sd_notify(3), in stdlib socket code.

The service manager passes ``NOTIFY_SOCKET`` (a ``AF_UNIX`` datagram socket: a path, or an
abstract-namespace name written with a leading '@') and, with ``WatchdogSec=``,
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``). One datagram carries newline-separated
``KEY=VALUE`` assignments: ``READY=1``, ``STATUS=...``, ``WATCHDOG=1``, ``STOPPING=1``.
Without ``NOTIFY_SOCKET`` (started by hand, by tests, under another supervisor) every call
is a no-op. A failed send is logged, never raised: notification must not take the daemon
down (systemd then acts on the missing message: a start time-out, a watchdog restart).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from typing import Mapping, Optional, Union

log = logging.getLogger(__name__)

#: sd_watchdog_enabled(3): "send WATCHDOG=1 ... at least every half the time" of WATCHDOG_USEC.
WATCHDOG_PING_FRACTION = 0.5
#: A send never blocks the event loop longer than this (the manager's queue is full).
SEND_TIMEOUT_S = 1.0

Address = Union[str, bytes]


def socket_address(value: str) -> Optional[Address]:
    """``NOTIFY_SOCKET`` as an ``AF_UNIX`` address: an absolute path, or '@name' for the
    abstract namespace (a leading NUL byte). Anything else is not ours to speak to."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode("utf-8")
    if value.startswith("/"):
        return value
    return None


def watchdog_usec(environ: Optional[Mapping[str, str]] = None,
                  pid: Optional[int] = None) -> Optional[int]:
    """sd_watchdog_enabled(3): the watchdog time-out in microseconds, or None when this
    process has no watchdog (unset, not a positive integer, or ``WATCHDOG_PID`` names
    another process: the variables were inherited, not meant for us)."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    if not raw.isdigit() or int(raw) <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        if not owner.isdigit() or int(owner) != (os.getpid() if pid is None else pid):
            return None
    return int(raw)


def watchdog_ping_interval_s(environ: Optional[Mapping[str, str]] = None,
                             pid: Optional[int] = None) -> Optional[float]:
    """How often to send WATCHDOG=1: half the time-out, or None without a watchdog."""
    usec = watchdog_usec(environ, pid)
    return None if usec is None else usec / 1e6 * WATCHDOG_PING_FRACTION


class Notifier:
    """Sends notifications to one ``NOTIFY_SOCKET``; disabled (no-op) without one."""

    def __init__(self, address: Optional[Address]) -> None:
        self.address = address
        self._sock: Optional[socket.socket] = None

    @classmethod
    def from_environment(cls, environ: Optional[Mapping[str, str]] = None) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        address = socket_address(value) if value else None
        if value and address is None:
            log.warning("NOTIFY_SOCKET=%r is not a unix socket address: not notifying", value)
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` assignments in one datagram; True when sent."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode("utf-8")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._sock.settimeout(SEND_TIMEOUT_S)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", assignments[0] if assignments else "", exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.notify("READY=1", _status(status))

    def status(self, status: str) -> bool:
        return self.notify(_status(status))

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", _status(status))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status(text: str) -> str:
    # One assignment per line: a newline inside STATUS would start a bogus assignment.
    return "STATUS=" + " ".join(text.split())


async def feed_watchdog(notifier: Notifier, interval_s: float) -> None:
    """Send WATCHDOG=1 every ``interval_s`` until cancelled. It runs on the event loop on
    purpose: a loop blocked by a stuck handler or a GIL-holding call stops the pings, and
    systemd restarts the daemon (WatchdogSec=)."""
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval_s)
