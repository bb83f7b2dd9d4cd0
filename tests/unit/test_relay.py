"""Door relays (api/device.md 1, config.md 4.3 GATE_PASS_MODE) against a real TCP relay
board on loopback (``asyncio.start_server`` reading lines) and the real runtime settings
over a real LMDB in tmp_path: the wire line, the three pass modes, strangers, devices
without a relay, refused and hanging connections counted without raising, ``close()``."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest

from sophon_face.push.relay import (RelayController, TcpRelayDriver, relay_address,
                                    relay_line)
from sophon_face.service.recorded import RecordedEvent
from sophon_face.service.settings import RuntimeSettings
from sophon_face.store import Store

LOGGER = "sophon_face.push.relay"
GATE_ID = "04f98265-1fad-47e5-9dda-66e191272055"
NO_DEVICE = {"media_device_id": "", "media_device_ip": "", "media_device_name": "",
             "media_device_type": ""}


def free_port() -> int:
    """A port nobody listens on (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def record(event_id: str = "1700000000000000", device_id: str = GATE_ID,
           identity: bool = True) -> Dict[str, Any]:
    """The fields of a stored event record (service/events.py) the relay looks at, and
    the others around them."""
    device = dict(NO_DEVICE)
    if device_id:
        device.update(media_device_id=device_id, media_device_ip="192.168.1.243",
                      media_device_name="front gate", media_device_type="rtsp")
    return {"event_id": event_id, "timestamp": int(event_id) / 1e6,
            "identity_id": "0120" if identity else "",
            "identity_name": "小明" if identity else "",
            "user_type": "employee" if identity else "stranger",
            "score": 94.8 if identity else 27.69, "post_action": "0",
            "media_device_info": device, "media_device_url": "rtsp://192.168.1.243/ch1",
            "feature": b"\x00" * 16, "ext_data": {}}


def event(**kwargs: Any) -> RecordedEvent:
    return RecordedEvent(record=record(**kwargs))


class RelayBoard:
    """A relay board: a real TCP server on loopback that records each line of each
    connection (JSON-decoded)."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.connections: List[List[Dict[str, Any]]] = []
        self._server: Optional[asyncio.AbstractServer] = None

    @property
    def lines(self) -> List[Dict[str, Any]]:
        return [line for lines in self.connections for line in lines]

    def relay(self, channel: int = 2, delay_time: int = 5) -> Dict[str, Any]:
        return {"ip": "127.0.0.1", "port": self.port, "channel": channel,
                "delay_time": delay_time}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lines: List[Dict[str, Any]] = []
        self.connections.append(lines)
        try:
            while True:
                raw = await reader.readline()
                if not raw:
                    break
                assert raw.endswith(b"\n")
                lines.append(json.loads(raw.decode("utf-8")))
        finally:
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


class Rig:
    def __init__(self, settings: RuntimeSettings, board: RelayBoard) -> None:
        self.settings = settings
        self.board = board
        #: device id -> its current net_relay ({} = none; a missing device: None).
        self.relays: Dict[str, Optional[Dict[str, Any]]] = {GATE_ID: board.relay()}
        self.lookups: List[str] = []

    async def relay_of(self, device_id: str) -> Optional[Dict[str, Any]]:
        self.lookups.append(device_id)
        return self.relays.get(device_id)

    def controller(self, timeout_s: float = 3.0) -> RelayController:
        return RelayController(self.settings, self.relay_of, TcpRelayDriver(timeout_s))

    async def set_mode(self, mode: str) -> None:
        """What setconfigs does."""
        await self.settings.set_configs({"config_dict": {"GATE_PASS_MODE": mode}})


def run(tmp_path: Path, scenario: Callable[[Rig], Awaitable[None]]) -> None:
    async def main() -> None:
        store = Store(tmp_path / "data", min_free_bytes=0)
        await store.open()
        board = RelayBoard()
        await board.start()
        try:
            settings = RuntimeSettings(store)
            await settings.load()
            await asyncio.wait_for(scenario(Rig(settings, board)), 60)
        finally:
            await board.stop()
            await store.close()
    asyncio.run(main())


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def settled(controller: RelayController) -> None:
    """Every scheduled pulse has finished, and the board had time to read its lines."""
    await until(lambda: controller.stats()["pending"] == 0)
    await asyncio.sleep(0.1)


# ------------------------------------------------------------------------------ the line

def test_the_line_is_one_json_object_with_ints() -> None:
    relay = {"ip": "10.0.0.9", "port": 5000, "channel": 2, "delay_time": 5}
    assert relay_line(relay, record()) == (
        b'{"action":"open","channel":2,"delay_time":5,'
        b'"media_device_id":"04f98265-1fad-47e5-9dda-66e191272055",'
        b'"event_id":"1700000000000000","identity_id":"0120"}\n')
    stranger = relay_line(relay, record(identity=False))
    assert json.loads(stranger)["identity_id"] == ""


def test_the_line_stays_one_ascii_line_whatever_the_ids() -> None:
    rec = record(device_id="门\n1")
    line = relay_line({"ip": "h", "port": 1, "channel": "3", "delay_time": 1}, rec)
    assert line.isascii() and line.count(b"\n") == 1 and line.endswith(b"\n")
    parsed = json.loads(line)
    assert parsed["media_device_id"] == "门\n1" and parsed["channel"] == 3


def test_relay_address() -> None:
    assert relay_address({"ip": "192.168.1.50", "port": 5000}) == "192.168.1.50:5000"
    assert relay_address({"ip": "fe80::1", "port": 5000}) == "[fe80::1]:5000"


# ------------------------------------------------------------------------------ pass modes

def test_normal_mode_pulses_for_a_recognised_person_only(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        assert rig.settings.value("GATE_PASS_MODE") == "normal"  # the default
        rig.relays[GATE_ID] = rig.board.relay(channel=3, delay_time=7)
        relay = rig.controller()
        relay.on_event(event(event_id="1700000000000001"))
        relay.on_event(event(event_id="1700000000000002", identity=False))  # a stranger
        await settled(relay)
        await relay.close()
        assert rig.board.connections == [[{
            "action": "open", "channel": 3, "delay_time": 7, "media_device_id": GATE_ID,
            "event_id": "1700000000000001", "identity_id": "0120"}]]
        assert rig.lookups == [GATE_ID]  # the stranger was decided without a lookup
        stats = relay.stats()
        assert (stats["pulses"], stats["suppressed"], stats["failures"]) == (1, 1, 0)

    run(tmp_path, scenario)


def test_allpass_pulses_for_every_event_including_strangers(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.set_mode("allpass")
        relay = rig.controller()
        relay.on_event(event(event_id="1700000000000001", identity=False))
        await settled(relay)
        relay.on_event(event(event_id="1700000000000002"))
        await settled(relay)
        await relay.close()
        assert len(rig.board.connections) == 2  # one connection, one line per pulse
        assert all(len(lines) == 1 for lines in rig.board.connections)
        assert [(line["event_id"], line["identity_id"]) for line in rig.board.lines] == [
            ("1700000000000001", ""), ("1700000000000002", "0120")]
        assert all((line["channel"], line["delay_time"]) == (2, 5)
                   for line in rig.board.lines)
        assert relay.stats()["pulses"] == 2

    run(tmp_path, scenario)


def test_allforbidden_never_pulses_and_a_mode_change_applies_to_the_next_event(
        tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.set_mode("allforbidden")
        relay = rig.controller()
        relay.on_event(event(event_id="1700000000000001"))
        relay.on_event(event(event_id="1700000000000002", identity=False))
        await settled(relay)
        assert rig.board.connections == [] and rig.lookups == []
        assert relay.stats()["suppressed"] == 2
        await rig.set_mode("normal")
        relay.on_event(event(event_id="1700000000000003"))
        await settled(relay)
        await relay.close()
        assert [line["event_id"] for line in rig.board.lines] == ["1700000000000003"]

    run(tmp_path, scenario)


def test_devices_without_a_relay_and_events_without_a_device(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        await rig.set_mode("allpass")
        rig.relays["tablet"] = {}  # a device with no relay
        relay = rig.controller()
        relay.on_event(event(device_id="tablet"))
        relay.on_event(event(device_id="deleted-meanwhile"))  # relay_of answers None
        relay.on_event(event(device_id=""))  # a search without a device
        await settled(relay)
        await relay.close()
        assert rig.board.connections == []
        assert rig.lookups == ["tablet", "deleted-meanwhile"]
        stats = relay.stats()
        assert (stats["no_relay"], stats["pulses"], stats["failures"]) == (2, 0, 0)

    run(tmp_path, scenario)


def test_two_relays_are_pulsed_each_with_its_channel(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        other = RelayBoard()
        await other.start()
        try:
            rig.relays["side"] = other.relay(channel=1, delay_time=0)
            relay = rig.controller()
            relay.on_event(event(event_id="1700000000000001"))
            relay.on_event(event(event_id="1700000000000002", device_id="side"))
            await settled(relay)
            await relay.close()
        finally:
            await other.stop()
        assert [(x["event_id"], x["channel"], x["delay_time"]) for x in rig.board.lines] == [
            ("1700000000000001", 2, 5)]
        assert [(x["event_id"], x["channel"], x["delay_time"], x["media_device_id"])
                for x in other.lines] == [("1700000000000002", 1, 0, "side")]

    run(tmp_path, scenario)


# ------------------------------------------------------------------------------ failures

def test_a_refused_connection_is_counted_not_raised_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario(rig: Rig) -> None:
        port = free_port()  # nobody listens yet: connection refused
        rig.relays[GATE_ID] = {"ip": "127.0.0.1", "port": port, "channel": 2, "delay_time": 5}
        relay = rig.controller()
        for index in range(3):
            relay.on_event(event(event_id=f"170000000000000{index}"))  # returns, no raise
        await settled(relay)
        stats = relay.stats()
        address = f"127.0.0.1:{port}"
        assert (stats["pulses"], stats["failures"]) == (0, 3)
        assert list(stats["failing_relays"]) == [address]
        assert stats["last_error"].startswith(address + ": ")
        # The board comes up on that port: the next event opens the gate.
        board = RelayBoard(port)
        await board.start()
        try:
            relay.on_event(event(event_id="1700000000000009"))
            await settled(relay)
        finally:
            await board.stop()
        await relay.close()
        assert [line["event_id"] for line in board.lines] == ["1700000000000009"]
        assert relay.stats()["failing_relays"] == {} and relay.stats()["pulses"] == 1
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and address in warnings[0], warnings  # 3 failures, 1 state
        assert sum("works again" in r.getMessage() for r in caplog.records) == 1

    run(tmp_path, scenario)


def test_a_relay_that_never_accepts_times_out(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        # A listening socket that never accepts, its accept queue filled: further SYNs are
        # dropped and a connect hangs, as with a board that has gone off the network.
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        for _ in range(4):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            fillers.append(filler)
        try:
            rig.relays[GATE_ID] = {"ip": "127.0.0.1", "port": port, "channel": 2,
                                   "delay_time": 5}
            relay = rig.controller(timeout_s=0.5)
            began = time.monotonic()
            relay.on_event(event())
            await settled(relay)
            elapsed_s = time.monotonic() - began
            await relay.close()
        finally:
            for sock in fillers + [listener]:
                sock.close()
        if relay.stats()["pulses"] == 1:
            pytest.skip("this kernel accepted the connection despite the full queue")
        assert 0.4 <= elapsed_s < 2.0
        assert relay.stats()["failures"] == 1
        reason = relay.stats()["failing_relays"][f"127.0.0.1:{port}"]
        assert "within 0.5 s" in reason

    run(tmp_path, scenario)


def test_a_failing_lookup_or_a_malformed_event_never_raises(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)

    async def scenario(rig: Rig) -> None:
        async def broken(device_id: str) -> Optional[Dict[str, Any]]:
            raise RuntimeError("store closed")

        relay = RelayController(rig.settings, broken, TcpRelayDriver())
        relay.on_event(event())
        relay.on_event(RecordedEvent(record={"event_id": "1"}))  # no media_device_info
        await settled(relay)
        await relay.close()
        stats = relay.stats()
        assert stats["failures"] == 2 and stats["pulses"] == 0
        assert "store closed" in stats["failing_relays"][f"(device {GATE_ID})"]
        assert rig.board.connections == []

    run(tmp_path, scenario)


# ------------------------------------------------------------------------------ lifecycle

def test_close_cancels_pulses_in_flight_and_later_events_are_ignored(tmp_path: Path) -> None:
    async def scenario(rig: Rig) -> None:
        gate_open = asyncio.Event()  # never set: the lookup hangs

        async def hanging(device_id: str) -> Optional[Dict[str, Any]]:
            await gate_open.wait()
            return rig.board.relay()

        relay = RelayController(rig.settings, hanging, TcpRelayDriver())
        relay.on_event(event(event_id="1700000000000001"))
        relay.on_event(event(event_id="1700000000000002"))
        await asyncio.sleep(0.05)
        assert relay.stats()["pending"] == 2
        began = time.monotonic()
        await relay.close()
        assert time.monotonic() - began < 0.5
        assert relay.stats()["pending"] == 0
        relay.on_event(event(event_id="1700000000000003"))  # after close: nothing
        await asyncio.sleep(0.1)
        assert relay.stats()["pending"] == 0 and rig.board.connections == []
        assert relay.stats()["failures"] == 0  # cancelled, not failed

    run(tmp_path, scenario)
