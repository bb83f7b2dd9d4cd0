"""The real-time push's pieces without sockets (api/event.md 7): the message of one event,
the configuration message, and the hub's fan-out rules (filter, render once, bounded
queues that drop the oldest). The WebSocket server itself is tested with real clients in
tests/integration/test_realtime_ws.py."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

from sophon_face.api.realtime_ws import parse_subscriber_config
from sophon_face.errors import ApiError
from sophon_face.push import realtime
from sophon_face.push.realtime import (RealtimeHub, SubscriberConfig, event_ms, message_text,
                                       realtime_message)
from sophon_face.service.recorded import RecordedEvent

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
FACE_JPEG = (DATA_DIR / "macron_2014.jpg").read_bytes()
REGISTER_JPEG = (DATA_DIR / "astronaut_collins.jpg").read_bytes()
GATE = {"media_device_id": "04f98265-1fad-47e5-9dda-66e191272055",
        "media_device_ip": "192.168.1.243", "media_device_name": "front gate",
        "media_device_type": "rtsp"}
NO_DEVICE = {"media_device_id": "", "media_device_ip": "", "media_device_name": "",
             "media_device_type": ""}
ATTR = {"age": "20-30", "box": [169.91207885742188, 256.9922180175781, 487.3203430175781,
                                671.7279663085938],
        "expression": None, "gender": "male", "glasses": "no", "hat": None, "mask": "no",
        "point": [210.5, 300.25, 260.0, 215.0, 290.75, 320.0, 318.5, 370.0, 420.25, 425.0]}


def record(event_id: str = "1566016554020311", timestamp: float = 1566016554.020311,
           device: Optional[Dict[str, str]] = None, identity: bool = True) -> Dict[str, Any]:
    """A record as store/events.py writes it (feature as raw float32, no feature_binary)."""
    return {
        "event_id": event_id,
        "timestamp": timestamp,
        "identity_id": "666666" if identity else "",
        "identity_name": "小明" if identity else "",
        "register_image_id": "r-1" if identity else "",
        "recognize_face_image_id": "00" + event_id,
        "spot_image_id": "01" + event_id,
        "permission_id": "270ec5e6" if identity else "",
        "permission_name": "staff" if identity else "",
        "user_type": "employee" if identity else "stranger",
        "score": 94.80000305175781 if identity else 27.69,
        "post_action": "0",
        "frame_id": 1234 if device else 0,
        "media_device_info": dict(device or NO_DEVICE),
        "media_device_url": "rtsp://192.168.1.243/stream1" if device else "",
        "recognize_face_attr": dict(ATTR),
        "feature": np.linspace(-1, 1, 512, dtype=np.float32).tobytes(),
        "ext_data": {"in_timestamp": timestamp - 1.5, "recognition_timestamp": timestamp},
        "image_bytes": len(FACE_JPEG),
    }


def event(face: bool = True, register: bool = True, **kwargs: Any) -> RecordedEvent:
    return RecordedEvent(record=record(**kwargs), face_jpeg=FACE_JPEG if face else None,
                         spot_jpeg=b"\xff\xd8scene", register_jpeg=REGISTER_JPEG if register else None)


def data_url(jpeg: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


# ---------------------------------------------------------------- the message (event.md 7)

def test_message_has_exactly_the_fields_of_the_table() -> None:
    message = realtime_message(event(device=GATE), True, True)
    assert message == {
        "event_id": "1566016554020311",
        "timestamp": 1566016554020,
        "identity_id": "666666",
        "identity_name": "小明",
        "user_type": "employee",
        "score": 94.8,
        "media_device_ip": "192.168.1.243",
        "media_device_id": "04f98265-1fad-47e5-9dda-66e191272055",
        "media_device_type": "rtsp",
        "recognize_face_attr": ATTR,
        "recognize_face_image": data_url(FACE_JPEG),
        "register_image": data_url(REGISTER_JPEG),
    }
    assert isinstance(message["timestamp"], int)


def test_images_only_when_requested_and_available() -> None:
    both = event(device=GATE)
    assert "recognize_face_image" not in realtime_message(both, False, True)
    assert "register_image" not in realtime_message(both, True, False)
    assert {"recognize_face_image", "register_image"}.isdisjoint(realtime_message(both, False, False))
    stranger = event(register=False, identity=False)  # no registration photo to send
    assert set(realtime_message(stranger, True, True)) & {"recognize_face_image", "register_image"} \
        == {"recognize_face_image"}
    empty = RecordedEvent(record=record(), face_jpeg=b"", register_jpeg=b"")
    assert {"recognize_face_image", "register_image"}.isdisjoint(realtime_message(empty, True, True))
    # The scene image is never part of a real-time message.
    assert "spot_image" not in json.dumps(realtime_message(both, True, True))


def test_deviceless_stranger_and_missing_device_info() -> None:
    message = realtime_message(event(identity=False, register=False), False, False)
    assert (message["identity_id"], message["identity_name"], message["user_type"]) == ("", "", "stranger")
    assert (message["media_device_id"], message["media_device_ip"], message["media_device_type"]) \
        == ("", "", "")
    assert message["score"] == 27.69
    bare = record()
    del bare["media_device_info"]
    assert realtime_message(RecordedEvent(record=bare), False, False)["media_device_id"] == ""


def test_no_feature_in_the_attributes() -> None:
    rec = record()
    rec["recognize_face_attr"] = dict(ATTR, feature_binary="zuSKvBMxOTw=", feature_base64_str="x")
    attr = realtime_message(RecordedEvent(record=rec), False, False)["recognize_face_attr"]
    assert attr == ATTR
    assert "feature" not in realtime_message(RecordedEvent(record=rec), False, False)


@pytest.mark.parametrize("seconds, ms", [
    (1566016554.020, 1566016554020),       # 1566016554.020 * 1000 is ...019.9998 in binary
    (1566016554.020311, 1566016554020),
    (1628066406.652506, 1628066406652),    # truncated, like the event id's digits
    (1628066406.9999996, 1628066407000),   # rounds to the microsecond first
    (0.0, 0),
])
def test_timestamp_in_integer_milliseconds(seconds: float, ms: int) -> None:
    assert event_ms(seconds) == ms


def test_score_two_decimals() -> None:
    rec = record()
    rec["score"] = 82.345678
    assert realtime_message(RecordedEvent(record=rec), False, False)["score"] == 82.35


def test_text_is_sorted_compact_ascii_like_the_http_api() -> None:
    text = message_text(realtime_message(event(device=GATE), False, False))
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"),
                              ensure_ascii=True)
    assert "\\u5c0f\\u660e" in text and text.isascii()
    assert list(json.loads(text)) == sorted(json.loads(text))


# ---------------------------------------------------------------- configuration messages

def test_configuration_defaults_and_values() -> None:
    assert parse_subscriber_config("{}") == SubscriberConfig(False, False, frozenset())
    config = parse_subscriber_config(json.dumps({
        "with_face_image": True, "with_register_image": False,
        "media_device_ids": ["a", "b", "a"]}))
    assert config == SubscriberConfig(True, False, frozenset({"a", "b"}))
    assert config.wants("a") and not config.wants("c") and not config.wants("")
    everything = parse_subscriber_config(json.dumps({"media_device_ids": []}))
    assert everything.wants("") and everything.wants("anything")  # R31: empty = all


def test_configuration_aliases_nulls_unknown_keys_and_bom() -> None:
    legacy = parse_subscriber_config(json.dumps(
        {"need_face": True, "need_register": True, "event_list": ["d1"]}))
    assert legacy == SubscriberConfig(True, True, frozenset({"d1"}))
    # The documented key wins over its alias; null is absent (README 3.4).
    both = parse_subscriber_config(json.dumps(
        {"with_face_image": False, "need_face": True, "media_device_ids": None,
         "event_list": ["d2"], "with_register_image": None}))
    assert both == SubscriberConfig(False, False, frozenset({"d2"}))
    assert parse_subscriber_config('{"reg_pic": true, "x": [1]}') == SubscriberConfig()
    assert parse_subscriber_config('\ufeff{"need_face": true}').with_face_image is True


INVALID_JSON = ("INVALID_REQUEST_JSON", "request body is not a JSON object")


@pytest.mark.parametrize("message, expected", [
    ("", INVALID_JSON),
    ("   ", INVALID_JSON),
    ("not json", INVALID_JSON),
    ('{"with_face_image": true', INVALID_JSON),
    ("null", INVALID_JSON),
    ("[1, 2]", INVALID_JSON),
    ('"with_face_image"', INVALID_JSON),
    ("7", INVALID_JSON),
    ("[" * 100000 + "]" * 100000, INVALID_JSON),
    (b'{"with_face_image": true}', INVALID_JSON),  # a binary message
    (None, INVALID_JSON),
    ('{"with_face_image": "yes"}', ("INVALID_ARGUMENTS", 'with_face_image: "yes"')),
    ('{"with_face_image": 1}', ("INVALID_ARGUMENTS", "with_face_image: 1")),
    ('{"with_register_image": "true"}', ("INVALID_ARGUMENTS", 'with_register_image: "true"')),
    ('{"need_register": 0}', ("INVALID_ARGUMENTS", "with_register_image: 0")),
    ('{"media_device_ids": "d1"}', ("INVALID_ARGUMENTS", 'media_device_ids: "d1"')),
    ('{"media_device_ids": {"id": "d1"}}', ("INVALID_ARGUMENTS", 'media_device_ids: {"id":"d1"}')),
    ('{"media_device_ids": ["a", 5]}', ("INVALID_ARGUMENTS", "media_device_ids[1]: 5")),
    ('{"event_list": [null]}', ("INVALID_ARGUMENTS", "media_device_ids[0]: null")),
    (json.dumps({"with_face_image": "y" * 300}),
     ("INVALID_ARGUMENTS", "with_face_image: <string of 300 chars>")),
    # Table order: the first bad row is reported.
    ('{"media_device_ids": 1, "with_face_image": 2}', ("INVALID_ARGUMENTS", "with_face_image: 2")),
])
def test_invalid_configurations(message: Any, expected: Any) -> None:
    with pytest.raises(ApiError) as caught:
        parse_subscriber_config(message)
    assert (caught.value.code, caught.value.message) == expected


# ---------------------------------------------------------------- the hub, without sockets

def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_filter_unconfigured_and_device_lists() -> None:
    async def scenario() -> None:
        hub = RealtimeHub()
        unconfigured = hub.add()
        everything = hub.add()
        everything.config = SubscriberConfig()
        gate_only = hub.add()
        gate_only.config = SubscriberConfig(media_device_ids=frozenset({GATE["media_device_id"]}))
        hub.publish(event(device=GATE, event_id="1"))
        hub.publish(event(device=None, event_id="2"))
        hub.publish(event(device=dict(GATE, media_device_id="other"), event_id="3"))
        ids = lambda s: [json.loads(t)["event_id"] for t in s.queue]  # noqa: E731
        assert ids(unconfigured) == []
        assert ids(everything) == ["1", "2", "3"]
        assert ids(gate_only) == ["1"]
        assert hub.stats() == {"subscribers": 3, "configured": 2, "published": 3, "sent": 0,
                               "dropped": 0, "queued": 4}
        await hub.close()
    run(scenario())


def test_each_variant_rendered_once_per_event(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    original = realtime.realtime_message

    def counting(ev: RecordedEvent, face: bool, register: bool) -> Dict[str, Any]:
        calls.append((ev.record["event_id"], face, register))
        return original(ev, face, register)

    monkeypatch.setattr(realtime, "realtime_message", counting)

    async def scenario() -> None:
        hub = RealtimeHub()
        subscribers = []
        for i in range(12):
            subscriber = hub.add()
            subscriber.config = SubscriberConfig(with_face_image=i % 3 == 0,
                                                 with_register_image=i % 3 == 1)
            subscribers.append(subscriber)
        hub.add()  # unconfigured: renders nothing
        hub.publish(event(event_id="a"))
        hub.publish(event(event_id="b"))
        assert sorted(calls) == sorted([(e, f, r) for e in "ab"
                                        for f, r in ((True, False), (False, True), (False, False))])
        # Subscribers of one variant share the very same text.
        same = [s.queue[0] for s in subscribers if s.config.variant == (True, False)]
        assert all(text is same[0] for text in same)
        await hub.close()
    run(scenario())


def test_a_full_queue_drops_its_oldest() -> None:
    async def scenario() -> None:
        hub = RealtimeHub(queue_size=5)
        slow = hub.add()
        slow.config = SubscriberConfig()
        for i in range(12):
            hub.publish(event(event_id=str(i), face=False, register=False))
        assert [json.loads(t)["event_id"] for t in slow.queue] == ["7", "8", "9", "10", "11"]
        assert (slow.dropped, hub.stats()["dropped"], hub.stats()["queued"]) == (7, 7, 5)
        await hub.close()
    run(scenario())


def test_closed_hub() -> None:
    async def scenario() -> None:
        hub = RealtimeHub()
        subscriber = hub.add()
        subscriber.config = SubscriberConfig()
        await hub.close()
        await hub.close()  # idempotent
        assert hub.closed and hub.subscriber_count == 0
        hub.publish(event())  # ignored, never raises
        assert list(subscriber.queue) == []
        with pytest.raises(RuntimeError):
            hub.add()
    run(scenario())


def test_queue_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        RealtimeHub(queue_size=0)
