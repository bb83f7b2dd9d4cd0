"""The event store and its in-memory index on a real LMDB: filters, order, scan, retention."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

import numpy as np
import pytest

from sophon_face.service.scoring import cosines_to_scores
from sophon_face.store import events, push_queue
from sophon_face.store.env import Store
from sophon_face.store.event_images import EventImageFiles, event_id_of, image_id
from sophon_face.store.event_index import AddEvent, EventFilter, EventIndex, RemoveEvents

DIM = 8


def record(event_id: int, timestamp: float, identity_id: str = "", name: str = "",
           device_id: str = "", score: float = 50.0, user_type: str = "stranger",
           feature: Any = None) -> Dict[str, Any]:
    vector = np.zeros(DIM, np.float32) if feature is None else np.asarray(feature, np.float32)
    return {
        "event_id": str(event_id), "timestamp": timestamp, "identity_id": identity_id,
        "identity_name": name, "register_image_id": "", "recognize_face_image_id": "",
        "spot_image_id": "", "permission_id": "", "permission_name": "",
        "user_type": user_type, "score": score, "post_action": "0", "frame_id": 0,
        "media_device_info": {"media_device_id": device_id, "media_device_ip": "",
                              "media_device_name": "", "media_device_type": ""},
        "media_device_url": "",
        "recognize_face_attr": {"age": None, "box": [0, 0, 1, 1], "expression": None,
                                "gender": None, "glasses": None, "hat": None, "mask": None,
                                "point": []},
        "feature": vector.astype("<f4").tobytes(), "ext_data": {}, "image_bytes": 100,
    }


def unit(i: int) -> np.ndarray:
    v = np.zeros(DIM, np.float32)
    v[i % DIM] = 1.0
    return v


@pytest.fixture()
def index() -> EventIndex:
    idx = EventIndex(DIM)
    rows = [
        record(1_000_000, 1.0, "a", "Alice", "d1", 90.0, "employee", unit(0)),
        record(2_000_000, 2.0, "", "", "d2", 30.0, "stranger", unit(1)),
        record(3_000_000, 3.0, "b", "Bob", "d1", 85.5, "VIP", unit(0)),
        record(4_000_000, 4.0, "a", "alice", "", 99.0, "employee", unit(2)),
    ]
    idx.apply([AddEvent(r) for r in rows])
    return idx


def test_filters_and_newest_first(index: EventIndex) -> None:
    assert index.query(EventFilter(), 0, 10) == (4, [4_000_000, 3_000_000, 2_000_000, 1_000_000])
    assert index.query(EventFilter(identity_name="ALI"), 0, 10) == (2, [4_000_000, 1_000_000])
    assert index.query(EventFilter(identity_id=""), 0, 10) == (1, [2_000_000])
    assert index.query(EventFilter(user_type="vip"), 0, 10) == (1, [3_000_000])
    assert index.query(EventFilter(media_device_ids=["d1"]), 0, 10)[1] == [3_000_000, 1_000_000]
    assert index.query(EventFilter(media_device_ids=["nope"]), 0, 10) == (0, [])
    assert index.query(EventFilter(score_min=85.5, score_max=95), 0, 10)[1] == [3_000_000, 1_000_000]
    assert index.query(EventFilter(datetime_gte=2.0, datetime_lte=3.0), 0, 10)[1] == [3_000_000, 2_000_000]
    assert index.query(EventFilter(), 1, 2) == (4, [3_000_000, 2_000_000])
    assert index.query(EventFilter(), 8, 2) == (4, [])


def test_out_of_order_timestamps_sort_by_time_then_id() -> None:
    idx = EventIndex(DIM)
    idx.apply([AddEvent(record(1, 5.0)), AddEvent(record(2, 1.0)), AddEvent(record(3, 5.0))])
    assert idx.query(EventFilter(), 0, 10)[1] == [3, 1, 2]


def test_remove_and_last_seen(index: EventIndex) -> None:
    assert index.last_seen("d1", "a") == 1.0
    assert index.last_seen("d1", "b") == 3.0
    assert index.last_seen("", "a") is None  # device-less events are never suppressed
    index.apply([RemoveEvents((1_000_000, 2_000_000))])
    assert index.count() == 2
    assert index.query(EventFilter(), 0, 10)[1] == [4_000_000, 3_000_000]
    assert index.id_strings() == {"3000000", "4000000"}


def scores(cosines: np.ndarray) -> np.ndarray:
    return cosines_to_scores(cosines, 0.363)


def test_scan_windows_order_and_limits(index: EventIndex) -> None:
    probe = unit(0)
    result = index.scan(probe, 0.0, 10.0, None, None, True, scores, 82.0, 50000, 1000)
    assert [m[0] for m in result.matches] == [3_000_000, 1_000_000]
    assert result.matches[0][1] == pytest.approx(100.0)
    assert not result.have_more and result.last_timestamp == 1.0
    forward = index.scan(probe, 0.0, 10.0, None, None, False, scores, 82.0, 50000, 1000)
    assert [m[0] for m in forward.matches] == [1_000_000, 3_000_000]
    # One match per call: stops at it, more remain, continue after its timestamp (R59).
    first = index.scan(probe, 0.0, 10.0, None, None, True, scores, 82.0, 50000, 1)
    assert [m[0] for m in first.matches] == [3_000_000] and first.have_more
    second = index.scan(probe, 0.0, 10.0, first.last_timestamp, None, True, scores, 82.0, 50000, 1)
    assert [m[0] for m in second.matches] == [1_000_000]
    # Scan limit: two events examined, more candidates remain.
    limited = index.scan(probe, 0.0, 10.0, None, None, True, scores, 82.0, 2, 1000)
    assert limited.scanned == 2 and limited.have_more and limited.last_timestamp == 3.0
    assert [m[0] for m in index.scan(probe, 0.0, 10.0, None, ["d2"], True, scores, 0.0,
                                     50000, 1000).matches] == [2_000_000]
    empty = index.scan(probe, 20.0, 30.0, None, None, True, scores, 0.0, 50000, 1000)
    assert empty.matches == [] and empty.last_timestamp is None and not empty.have_more


def test_store_round_trip_retention_order_and_reload(tmp_path) -> None:
    async def scenario() -> None:
        idx = EventIndex(DIM)
        store = Store(tmp_path / "data", indexes=(idx,), min_free_bytes=0)
        await store.open()
        try:
            def add(txn, rec):
                events.put(txn, rec)
                push_queue.enqueue(txn, rec["event_id"])
                return None, [AddEvent(rec)]

            for i in range(1, 6):
                await store.write(add, record(i * 10, float(i), feature=unit(i)))
            assert idx.count() == 5
            assert await store.read(events.image_bytes) == 500
            assert await store.read(events.last_id) == 50
            assert [e for e, _ in await store.read(push_queue.oldest, 10)] == \
                ["10", "20", "30", "40", "50"]

            def pop(txn):
                old = events.pop_oldest(txn)
                return old, [RemoveEvents((int(old["event_id"]),))]

            removed = await store.write(pop)
            assert removed["event_id"] == "10"
            assert await store.read(events.image_bytes) == 400
            assert await store.read(events.get, "10") is None
            rendered = events.render(await store.read(events.get, "20"))
            assert "feature" not in rendered and "image_bytes" not in rendered
            assert len(rendered["recognize_face_attr"]["feature_binary"]) == 44  # 32 bytes
            for bad in ("", "abc", "0020", "-20", "1" * 25, "２０"):
                assert await store.read(events.get, bad) is None
        finally:
            await store.close()
        reopened_index = EventIndex(DIM)
        again = Store(tmp_path / "data", indexes=(reopened_index,), min_free_bytes=0)
        await again.open()
        try:
            assert reopened_index.query(EventFilter(), 0, 10)[1] == [50, 40, 30, 20]
        finally:
            await again.close()

    asyncio.run(scenario())


def test_image_files_write_read_delete_and_sweep(tmp_path) -> None:
    local, remote = tmp_path / "local", tmp_path / "remote"
    current: List[Any] = [local]
    files = EventImageFiles((local, remote), current_dir=lambda: current[0])
    face = image_id("face", "1628066406652506")
    assert event_id_of(face) == "1628066406652506" and event_id_of("../etc") is None
    assert files.write(face, b"\xff\xd8jpeg")
    current[0] = remote
    spot = image_id("spot", "1628066406652506")
    assert files.write(spot, b"\xff\xd8spot")
    assert files.read(face) == b"\xff\xd8jpeg" and files.read(spot) == b"\xff\xd8spot"
    assert files.read("face-../../x") is None
    orphan = image_id("face", "1700000000000000")
    assert files.write(orphan, b"x")
    assert files.sweep_orphans({"1628066406652506"}) == 1
    assert files.read(orphan) is None and files.read(face) is not None
    files.delete([face])
    assert files.read(face) is None
    files.delete_all()
    assert files.read(spot) is None
    # An unusable directory: the write reports failure instead of raising.
    blocker = tmp_path / "blocked"
    blocker.write_text("a file, not a folder")
    assert not EventImageFiles((blocker,), current_dir=lambda: blocker).write(face, b"x")
