"""Media devices (api/device.md 1) and the preview layout (device.md 7).

Record fields: the device object of section 1 plus ``seq`` (creation order) and
``created_at``. A box holds at most a few dozen devices, so lookups by URL or IP scan
them all instead of keeping indexes that could drift.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Iterator, List, Mapping, Optional

from sophon_face.store import codec, keys, meta
from sophon_face.store.env import Txn

KIND = "device"
PREVIEW_KIND = "preview"
DEVICE_FIELDS = ("do_rtmp_forward", "media_device_id", "media_device_ip", "media_device_name",
                 "media_device_type", "media_device_url", "net_relay", "permission_id",
                 "roi_area", "rtmp_address")
EVENT_FIELDS = ("media_device_id", "media_device_ip", "media_device_name", "media_device_type")
_PREVIEW = b"preview"
DEFAULT_PREVIEW = {"last_set_name": "", "preview_device_list": [], "preview_mode": 4,
                   "selected_device_list": []}


def get(txn: Txn, device_id: str) -> Optional[Dict[str, Any]]:
    if not isinstance(device_id, str) or not device_id:
        return None
    data = txn.raw.get(keys.device_key(device_id), db=txn.dbs.devices)
    if data is None:
        return None
    record = codec.unpack(KIND, data)
    return record if record["media_device_id"] == device_id else None


def iter_in_order(txn: Txn) -> Iterator[Dict[str, Any]]:
    cursor = txn.raw.cursor(db=txn.dbs.devices)
    records = [codec.unpack(KIND, v) for v in cursor.iternext(keys=False, values=True)]
    return iter(sorted(records, key=lambda r: r["seq"]))


def find_by_ip(txn: Txn, ip: str) -> Optional[Dict[str, Any]]:
    """compare.md 5 (R24): the oldest photo device with this IP, else the oldest device."""
    same = [r for r in iter_in_order(txn) if r["media_device_ip"] == ip]
    photos = [r for r in same if r["media_device_type"] == "photo"]
    return (photos or same or [None])[0]


def put(txn: Txn, record: Mapping[str, Any]) -> Dict[str, Any]:
    stored = dict(record)
    old = get(txn, record["media_device_id"])
    if old is None:
        stored["seq"] = meta.next_seq(txn)
        stored["created_at"] = time.time()
    else:
        stored["seq"], stored["created_at"] = old["seq"], old["created_at"]
    txn.raw.put(keys.device_key(stored["media_device_id"]), codec.pack(KIND, stored),
                db=txn.dbs.devices)
    return stored


def delete(txn: Txn, device_id: str) -> None:
    txn.raw.delete(keys.device_key(device_id), db=txn.dbs.devices)
    preview = get_preview(txn)
    for name in ("preview_device_list", "selected_device_list"):
        preview[name] = [d for d in preview[name] if d != device_id]
    put_preview(txn, preview)


def unbind_group(txn: Txn, permission_id: str) -> None:
    for record in list(iter_in_order(txn)):
        if record["permission_id"] == permission_id:
            record["permission_id"] = ""
            put(txn, record)


def count(txn: Txn) -> int:
    return txn.entries(txn.dbs.devices)


def clear(txn: Txn) -> None:
    """Every device and the preview layout (wipedata users)."""
    txn.raw.drop(txn.dbs.devices, delete=False)
    txn.raw.drop(txn.dbs.preview, delete=False)


def get_preview(txn: Txn) -> Dict[str, Any]:
    data = txn.raw.get(_PREVIEW, db=txn.dbs.preview)
    return dict(DEFAULT_PREVIEW) if data is None else codec.unpack(PREVIEW_KIND, data)["value"]


def put_preview(txn: Txn, preview: Mapping[str, Any]) -> None:
    txn.raw.put(_PREVIEW, codec.pack(PREVIEW_KIND, {"value": dict(preview)}), db=txn.dbs.preview)


def render(record: Mapping[str, Any]) -> Dict[str, Any]:
    return {key: record[key] for key in DEVICE_FIELDS}


def event_info(record: Mapping[str, Any]) -> Dict[str, Any]:
    return {key: record[key] for key in EVENT_FIELDS}


def ids(txn: Txn) -> List[str]:
    return [r["media_device_id"] for r in iter_in_order(txn)]


def list_in_order(txn: Txn) -> List[Dict[str, Any]]:
    """Every device record, in creation order (materialised inside the transaction)."""
    return list(iter_in_order(txn))
