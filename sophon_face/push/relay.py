"""Door relays (api/device.md 1, ``net_relay``): one open pulse per admitted event.

After each committed event, ``RelayController.on_event`` decides with GATE_PASS_MODE
(config.md 4.3) whether the gate opens: "normal" only when the event recognised someone
(``identity_id`` non-empty), "allpass" for every event including strangers,
"allforbidden" never. When it opens and the event's device has a relay, the driver sends
that relay one pulse. The spec names the relay's address, channel and ``delay_time`` but
no wire protocol; the seam is ``RelayDriver``, one method.

``TcpRelayDriver`` is OUR chosen wire format: one TCP connection per pulse to the relay's
``ip:port``, carrying ONE line of JSON terminated by ``"\\n"``, then closed::

    {"action": "open", "channel": 2, "delay_time": 5,
     "media_device_id": "gate-1", "event_id": "1700000000000000", "identity_id": "0120"}

``channel`` and ``delay_time`` are integers (``delay_time`` in seconds: how long the relay
stays closed). The line is UTF-8 and in practice ASCII: non-ASCII characters are
``\\u``-escaped, so a minimal board parser never sees a multi-byte sequence, and JSON
escapes line breaks inside strings, so the line is always one line. ``identity_id`` is
"" for a stranger admitted by "allpass". Nothing is read back. A board with another
protocol (Modbus TCP, a vendor's HTTP API) is another ``RelayDriver``, not a flag here.

Choices where the spec is silent:

* The pass mode is read when the event is handed over (its moment decides), the relay
  when the pulse is sent (a relay removed meanwhile gets nothing).
* An unknown GATE_PASS_MODE keeps the gate shut (a door fails closed); config.md's rule
  makes it impossible through ``setconfigs``.
* Pulses run concurrently, each on its own connection, even to one relay: queueing them
  here would send the later ones late, and a board that serves one client at a time
  finds the others waiting in its TCP listen backlog anyway.
* Nothing is retried: a pulse that arrives seconds late would open a door for someone
  who has gone. Failures are counted and logged once per relay address and state
  change (a new reason, or recovery), never once per pulse.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Protocol, Set

from ..service.recorded import RecordedEvent

log = logging.getLogger(__name__)

PASS_MODE_SETTING = "GATE_PASS_MODE"
NORMAL, ALLPASS, ALLFORBIDDEN = "normal", "allpass", "allforbidden"
#: How long ``close()`` waits for the cancelled pulses before giving up on them.
CLOSE_TIMEOUT_S = 2.0


class RelayDriver(Protocol):
    """Sends one open pulse. ``relay`` is a device's ``net_relay``
    (``{"ip", "port", "channel", "delay_time"}``), ``event`` the stored event record
    (store/events.py). Raises on failure; the controller counts and logs it."""

    async def pulse(self, relay: Dict[str, Any], event: Dict[str, Any]) -> None: ...


class GateSettings(Protocol):
    """What the controller needs of the runtime settings (service/settings.RuntimeSettings)."""

    def value(self, name: str) -> Any: ...


RelayOf = Callable[[str], Awaitable[Optional[Dict[str, Any]]]]


def relay_line(relay: Mapping[str, Any], event: Mapping[str, Any]) -> bytes:
    """The one line TcpRelayDriver sends (see the module docstring)."""
    device = event.get("media_device_info") or {}
    message = {
        "action": "open",
        "channel": int(relay["channel"]),
        "delay_time": int(relay["delay_time"]),
        "media_device_id": str(device.get("media_device_id", "")),
        "event_id": str(event.get("event_id", "")),
        "identity_id": str(event.get("identity_id", "")),
    }
    return (json.dumps(message, ensure_ascii=True, separators=(",", ":")) + "\n").encode("utf-8")


def relay_address(relay: Mapping[str, Any]) -> str:
    """``ip:port`` for logs, stats and the per-relay order (IPv6 in brackets)."""
    ip = str(relay.get("ip", ""))
    return f"[{ip}]:{relay.get('port')}" if ":" in ip else f"{ip}:{relay.get('port')}"


class TcpRelayDriver:
    """Our line-of-JSON-over-TCP protocol; ``timeout_s`` bounds the whole pulse
    (connect, write, close)."""

    def __init__(self, timeout_s: float = 3.0) -> None:
        self._timeout_s = timeout_s

    async def pulse(self, relay: Dict[str, Any], event: Dict[str, Any]) -> None:
        line = relay_line(relay, event)
        try:
            await asyncio.wait_for(self._send(str(relay["ip"]), int(relay["port"]), line),
                                   self._timeout_s)
        except asyncio.TimeoutError:
            # The bare TimeoutError says nothing; the controller logs this message.
            raise asyncio.TimeoutError(
                f"no connection or write within {self._timeout_s:g} s") from None

    async def _send(self, ip: str, port: int, line: bytes) -> None:
        _, writer = await asyncio.open_connection(ip, port)
        try:
            writer.write(line)
            await writer.drain()
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass  # the line is out; a board that resets instead of closing is fine


class RelayController:
    def __init__(self, settings: GateSettings, relay_of: RelayOf, driver: RelayDriver) -> None:
        self._settings = settings
        self._relay_of = relay_of
        self._driver = driver
        self._closed = False
        self._tasks: Set[asyncio.Future] = set()
        self._pulses = 0
        self._failures = 0
        self._suppressed = 0
        self._no_relay = 0
        self._last_error = ""
        #: address -> reason of its current failure; logged when this changes.
        self._failing: Dict[str, str] = {}
        self._bad_mode = ""

    def on_event(self, event: RecordedEvent) -> None:
        """Event-service subscriber: on the event loop, after each committed event.

        Decides at once and schedules the pulse; never raises into the event service."""
        if self._closed:
            return
        try:
            record = event.record
            device_id = record["media_device_info"]["media_device_id"]
            if not device_id:  # a search without a device: no gate to open
                return
            if not self._admits(record):
                self._suppressed += 1
                return
            task = asyncio.ensure_future(self._actuate(device_id, record))
        except Exception:
            log.exception("relay: event not handled")
            self._failures += 1
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _admits(self, record: Mapping[str, Any]) -> bool:
        mode = self._settings.value(PASS_MODE_SETTING)
        if mode == ALLPASS:
            return True
        if mode == NORMAL:
            return bool(record.get("identity_id"))
        if mode != ALLFORBIDDEN and mode != self._bad_mode:
            log.error("relay: unknown %s %r; the gate stays shut", PASS_MODE_SETTING, mode)
            self._bad_mode = mode
        return False

    async def _actuate(self, device_id: str, record: Dict[str, Any]) -> None:
        lookup = f"(device {device_id})"  # failures before the relay's address is known
        try:
            relay = await self._relay_of(device_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the store closing: this event's pulse is lost
            self._failed(lookup, f"lookup {type(exc).__name__}: {exc}")
            return
        self._recovered(lookup)
        if not relay:
            self._no_relay += 1
            return
        address = relay_address(relay)
        try:
            await self._driver.pulse(relay, record)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._failed(address, f"{type(exc).__name__}: {exc}")
            return
        self._pulses += 1
        self._recovered(address)

    def _recovered(self, address: str) -> None:
        if self._failing.pop(address, None) is not None:
            log.info("relay %s works again", address)

    def _failed(self, address: str, reason: str) -> None:
        self._failures += 1
        self._last_error = f"{address}: {reason}"
        if self._failing.get(address) != reason:
            log.warning("relay %s: open pulse failed (%s); not retried", address, reason)
            self._failing[address] = reason

    async def close(self) -> None:
        """Cancel the pulses in flight; waits at most CLOSE_TIMEOUT_S for them."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            if pending:
                log.warning("relay: %d pulse(s) did not stop within %g s; left behind",
                            len(pending), CLOSE_TIMEOUT_S)

    def stats(self) -> Dict[str, Any]:
        """For /health. ``suppressed``: events GATE_PASS_MODE kept the gate shut for;
        ``no_relay``: admitted events on a device without a relay."""
        return {"pulses": self._pulses, "failures": self._failures,
                "suppressed": self._suppressed, "no_relay": self._no_relay,
                "pending": len(self._tasks), "last_error": self._last_error,
                "failing_relays": dict(sorted(self._failing.items()))}
