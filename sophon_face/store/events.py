"""Recognition events (api/event.md section 2): records keyed by their integer id.

The key is the 8-byte big-endian event id (microseconds since the epoch, README 7), so a
cursor walks events oldest to newest: retention deletes from the front, listing reads
from the back. Stored record fields are the event of section 2 plus:

* ``feature``: the probe feature as raw little-endian float32 bytes (the API renders it as
  ``recognize_face_attr.feature_binary``);
* ``media_device_url``: for the history push's ``media_device_info`` (section 8);
* ``image_bytes``: bytes of the image files this event owns (retention by size).

The running total of ``image_bytes`` lives in ``meta`` and changes in the same
transaction as the events, so it is always exact.
"""

from __future__ import annotations

import base64
import re
import struct
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

from sophon_face.store import codec, keys
from sophon_face.store.env import Txn

KIND = "event"

#: Fields that are internal to the store and never rendered (R28: is_send likewise).
_INTERNAL = ("feature", "media_device_url", "image_bytes")

_IMAGE_BYTES = keys.meta_key("event_image_bytes")
_U64 = struct.Struct(">Q")
_EVENT_ID = re.compile(r"[0-9]{1,19}")


def get(txn: Txn, event_id: str) -> Optional[Dict[str, Any]]:
    """The stored record, or None (also for a string that is not an event id)."""
    key = _key_or_none(event_id)
    if key is None:
        return None
    data = txn.raw.get(key, db=txn.dbs.events)
    return None if data is None else codec.unpack(KIND, data)


def exists(txn: Txn, event_id: str) -> bool:
    key = _key_or_none(event_id)
    return key is not None and txn.raw.get(key, db=txn.dbs.events) is not None


def last_id(txn: Txn) -> int:
    """The newest event id, 0 when there is none."""
    cursor = txn.raw.cursor(db=txn.dbs.events)
    return keys.event_id_from_key(cursor.key()) if cursor.last() else 0


def put(txn: Txn, record: Mapping[str, Any]) -> None:
    """Insert a new event (ids are never reused, so this never overwrites)."""
    key = keys.event_key(int(record["event_id"]))
    if not txn.raw.put(key, codec.pack(KIND, record), db=txn.dbs.events, overwrite=False):
        raise RuntimeError(f"event {record['event_id']} already exists")
    _add_image_bytes(txn, int(record["image_bytes"]))


def pop_oldest(txn: Txn) -> Optional[Dict[str, Any]]:
    """Delete and return the oldest event (retention)."""
    cursor = txn.raw.cursor(db=txn.dbs.events)
    if not cursor.first():
        return None
    record = codec.unpack(KIND, cursor.value())
    cursor.delete()
    _add_image_bytes(txn, -int(record["image_bytes"]))
    return record


def iter_all(txn: Txn) -> Iterator[Dict[str, Any]]:
    """Every event, oldest first."""
    cursor = txn.raw.cursor(db=txn.dbs.events)
    for value in cursor.iternext(keys=False, values=True):
        yield codec.unpack(KIND, value)


def get_many(txn: Txn, event_ids: List[int]) -> List[Dict[str, Any]]:
    """Records of the given ids in the given order (ids known to exist)."""
    records = []
    for event_id in event_ids:
        data = txn.raw.get(keys.event_key(event_id), db=txn.dbs.events)
        if data is not None:
            records.append(codec.unpack(KIND, data))
    return records


def count(txn: Txn) -> int:
    return txn.entries(txn.dbs.events)


def image_bytes(txn: Txn) -> int:
    raw = txn.raw.get(_IMAGE_BYTES, db=txn.dbs.meta)
    return 0 if raw is None else _U64.unpack(raw)[0]


def clear(txn: Txn) -> None:
    txn.raw.drop(txn.dbs.events, delete=False)
    txn.raw.delete(_IMAGE_BYTES, db=txn.dbs.meta)


def render(record: Mapping[str, Any]) -> Dict[str, Any]:
    """The event of api/event.md 2 (with ``feature_binary``; no internal fields)."""
    out = {k: v for k, v in record.items() if k not in _INTERNAL}
    attr = dict(record["recognize_face_attr"])
    attr["feature_binary"] = feature_base64(record)
    out["recognize_face_attr"] = attr
    return out


def feature_base64(record: Mapping[str, Any]) -> str:
    """The probe feature in the wire format of README 4.3 ("" when none was stored)."""
    return base64.b64encode(record["feature"]).decode("ascii") if record["feature"] else ""


def image_ids(record: Mapping[str, Any]) -> Tuple[str, ...]:
    return tuple(i for i in (record["recognize_face_image_id"], record["spot_image_id"]) if i)


def _add_image_bytes(txn: Txn, delta: int) -> None:
    if delta:
        total = max(0, image_bytes(txn) + delta)
        txn.raw.put(_IMAGE_BYTES, _U64.pack(total), db=txn.dbs.meta)


def _key_or_none(event_id: str) -> Optional[bytes]:
    if not isinstance(event_id, str) or not _EVENT_ID.fullmatch(event_id):
        return None
    if event_id != str(int(event_id)):  # "0012" is not the id "12"
        return None
    return keys.event_key(int(event_id))
