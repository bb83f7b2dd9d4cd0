"""Media devices and the preview layout (api/device.md 1-8).

Photo devices are fully used by ``search`` (the device's group, the event's device). Video
devices (rtsp, file, gb28181) are stored, validated and returned; ingestion comes later.
Validation follows device.md's tables: presence first (top-level fields, then the relay's
sub-fields inside a non-empty ``net_relay``, then ``rtmp_address`` when forwarding), then
types and values in row order, then state (ids, group, duplicates, the device limit), all
state checks inside the write transaction.

Choices where the spec is silent:
- rtsp URLs need ``rtsp://`` and a host; gb28181 URLs ``gb28181://``; a ``file`` URL is an
  absolute path inside the configured image roots (like every local path); photo URLs are
  any non-empty string (the device's IP).
- ``roi_area`` must be ``[]`` on a photo device (it has no frames to crop).
- ``delay_time`` is in seconds (upstream: "seconds the relay stays closed").
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from ..errors import (DeviceAddressDuplicateError, DeviceIdNotFound, DeviceMaxNumError,
                      DevicePerviewIdNotExist, DeviceRtmpAddressDuplicateError, IdRepeatError,
                      MissingArguments, PermissionIdNotFound, invalid_argument)
from ..store import devices, permissions
from ..store.env import Store, Txn

log = logging.getLogger(__name__)

TYPES = ("rtsp", "photo", "file", "gb28181")
VIDEO_TYPES = ("rtsp", "file", "gb28181")
RELAY_FIELDS = ("ip", "port", "channel", "delay_time")
PREVIEW_MODES = (1, 4, 16)
MAX_CHARS = 128
MAX_URL_CHARS = 2048


def _present(body: Dict[str, Any], name: str) -> bool:
    return body.get(name) is not None


def _string(body: Dict[str, Any], name: str, max_chars: int = MAX_CHARS) -> Optional[str]:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_chars:
        raise invalid_argument(name, value)
    return value


def _integer(value: Any, name: str, low: int, high: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and (not math.isfinite(value) or not value.is_integer())):
        raise invalid_argument(name, value)
    number = int(value)
    if number < low or (high is not None and number > high):
        raise invalid_argument(name, value)
    return number


def _relay(value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid_argument("net_relay", value)
    if not value:
        return {}
    ip = value["ip"]
    if not isinstance(ip, str) or not ip or len(ip) > MAX_CHARS:
        raise invalid_argument("net_relay.ip", ip)
    return {"ip": ip, "port": _integer(value["port"], "net_relay.port", 1, 65535),
            "channel": _integer(value["channel"], "net_relay.channel", 0),
            "delay_time": _integer(value["delay_time"], "net_relay.delay_time", 0)}


def _roi(value: Any) -> List[float]:
    if not isinstance(value, list) or len(value) not in (0, 4):
        raise invalid_argument("roi_area", value)
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise invalid_argument(f"roi_area[{i}]", v)
    if value and not (value[0] < value[2] and value[1] < value[3]):
        raise invalid_argument("roi_area", value)
    return list(value)


def _check_presence(body: Dict[str, Any], required: Sequence[str]) -> None:
    for name in required:
        if not _present(body, name):
            raise MissingArguments(name)
    relay = body.get("net_relay")
    if isinstance(relay, dict) and relay:
        for name in RELAY_FIELDS:
            if relay.get(name) is None:
                raise MissingArguments(f"net_relay.{name}")
    if body.get("do_rtmp_forward") is True and body.get("rtmp_address") is None:
        raise MissingArguments("rtmp_address")


class DeviceService:
    def __init__(self, store: Store, max_count: int, image_roots: Sequence[Path]) -> None:
        self._store = store
        self._max_count = max_count
        self._roots = [os.path.realpath(str(r)) for r in image_roots]
        self._subscribers: List[Callable[[str, Dict[str, Any]], None]] = []
        self._preview_subscribers: List[Callable[[Dict[str, Any], bool], None]] = []

    def subscribe(self, callback: Callable[[str, Dict[str, Any]], None]) -> None:
        """``callback(action, device)`` after a committed add / modify / delete."""
        self._subscribers.append(callback)

    def subscribe_preview(self, callback: Callable[[Dict[str, Any], bool], None]) -> None:
        """``callback(preview, broadcast)`` with the whole layout after each committed change.

        ``broadcast`` is False when the change is the side effect of a device delete: the
        device subscribers are called right after, and their "delete" notice is the one
        that tells the preview clients (device.md 10.2), carrying this layout."""
        self._preview_subscribers.append(callback)

    def _announce_preview(self, preview: Dict[str, Any], broadcast: bool) -> None:
        for callback in self._preview_subscribers:
            try:
                callback(dict(preview), broadcast)
            except Exception:
                log.exception("preview subscriber failed")

    def _announce(self, action: str, device: Dict[str, Any],
                  preview: Optional[Dict[str, Any]] = None) -> None:
        """Device subscribers; with ``preview`` (a delete), the preview subscribers first,
        so that whoever reads the layout while handling the device sees the new one."""
        if preview is not None:
            self._announce_preview(preview, broadcast=False)
        for callback in self._subscribers:
            try:
                callback(action, device)
            except Exception:
                log.exception("device subscriber failed")

    def announce_wiped(self, gone: Sequence[Dict[str, Any]]) -> None:
        """``wipedata`` erased these devices and the preview layout (service/data.py): the
        subscribers hear it as deletes, like ``deletemediadevices``."""
        preview = dict(devices.DEFAULT_PREVIEW)
        if not gone:
            self._announce_preview(preview, broadcast=True)
        for device in gone:
            self._announce("delete", device, preview)

    def _url(self, kind: str, url: Any) -> str:
        if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
            raise invalid_argument("media_device_url", url)
        if kind == "rtsp":
            try:
                parts = urlsplit(url)
                host = parts.hostname
            except ValueError:  # e.g. an unclosed IPv6 bracket
                raise invalid_argument("media_device_url", url) from None
            if parts.scheme.lower() != "rtsp" or not host:
                raise invalid_argument("media_device_url", url)
        elif kind == "gb28181" and not url.lower().startswith("gb28181://"):
            raise invalid_argument("media_device_url", url)
        elif kind == "file":
            real = os.path.realpath(url)
            if not os.path.isabs(url) or not any(
                    real == root or real.startswith(root + os.sep) for root in self._roots):
                raise invalid_argument("media_device_url", url)
        return url

    @staticmethod
    def _ip_of(kind: str, url: str) -> str:
        if kind == "photo":
            return url
        if kind == "file":
            return ""
        return urlsplit(url).hostname or ""

    def _optional_fields(self, body: Dict[str, Any], record: Dict[str, Any]) -> None:
        """Rows 5-9 of addmediadevice (rows 3-7 of update), into ``record``."""
        permission_id = _string(body, "permission_id")
        if permission_id is not None:
            record["permission_id"] = permission_id
        if _present(body, "net_relay"):
            record["net_relay"] = _relay(body["net_relay"])
        if _present(body, "do_rtmp_forward"):
            if not isinstance(body["do_rtmp_forward"], bool):
                raise invalid_argument("do_rtmp_forward", body["do_rtmp_forward"])
            record["do_rtmp_forward"] = body["do_rtmp_forward"]
        rtmp = _string(body, "rtmp_address", MAX_URL_CHARS)
        if rtmp is not None:
            record["rtmp_address"] = rtmp
        if record["do_rtmp_forward"] and not record["rtmp_address"]:
            raise invalid_argument("rtmp_address", record["rtmp_address"])
        if _present(body, "roi_area"):
            roi = _roi(body["roi_area"])
            if roi and record["media_device_type"] not in VIDEO_TYPES:
                raise invalid_argument("roi_area", body["roi_area"])
            record["roi_area"] = roi

    def _check_state(self, txn: Txn, record: Dict[str, Any]) -> None:
        if record["permission_id"] and not permissions.exists(txn, record["permission_id"]):
            raise PermissionIdNotFound(record["permission_id"])
        for other in devices.iter_in_order(txn):
            if other["media_device_id"] == record["media_device_id"]:
                continue
            if other["media_device_url"] == record["media_device_url"]:
                raise DeviceAddressDuplicateError(record["media_device_url"])
            if record["rtmp_address"] and other["rtmp_address"] == record["rtmp_address"]:
                raise DeviceRtmpAddressDuplicateError(record["rtmp_address"])

    async def add(self, body: Dict[str, Any]) -> Dict[str, Any]:
        _check_presence(body, ("media_device_name", "media_device_type", "media_device_url"))
        name = _string(body, "media_device_name")
        kind = body["media_device_type"]
        if not isinstance(kind, str) or kind.lower() not in TYPES:
            raise invalid_argument("media_device_type", kind)
        kind = kind.lower()
        url = self._url(kind, body["media_device_url"])
        device_id = _string(body, "media_device_id") or str(uuid.uuid4())  # R18
        record: Dict[str, Any] = {
            "media_device_id": device_id, "media_device_name": name, "media_device_type": kind,
            "media_device_url": url, "media_device_ip": self._ip_of(kind, url),
            "permission_id": "", "net_relay": {}, "do_rtmp_forward": False,
            "rtmp_address": "", "roi_area": []}
        self._optional_fields(body, record)

        def write(txn: Txn) -> Tuple[Dict[str, Any], list]:
            if devices.get(txn, device_id) is not None:
                raise IdRepeatError(device_id)
            self._check_state(txn, record)
            if devices.count(txn) >= self._max_count:
                raise DeviceMaxNumError()
            return devices.render(devices.put(txn, record)), []

        device = await self._store.write(write)
        self._announce("add", device)
        return {"media_device_id": device_id, "media_device_name": name}

    async def list(self, body: Dict[str, Any]) -> Dict[str, Any]:
        device_id = _string(body, "media_device_id", 10 ** 6)

        def read(txn: Txn) -> List[Dict[str, Any]]:
            if device_id is None:
                return [devices.render(r) for r in devices.iter_in_order(txn)]
            record = devices.get(txn, device_id)
            if record is None:
                raise DeviceIdNotFound(device_id)  # R53
            return [devices.render(record)]

        return {"devices": await self._store.read(read)}

    async def update(self, body: Dict[str, Any]) -> Dict[str, Any]:
        _check_presence(body, ("media_device_id",))
        device_id = _string(body, "media_device_id", 10 ** 6)
        assert device_id is not None
        name = _string(body, "media_device_name")

        def write(txn: Txn) -> Tuple[Dict[str, Any], list]:
            old = devices.get(txn, device_id)
            if old is None:
                for field in ("permission_id", "net_relay", "do_rtmp_forward", "rtmp_address",
                              "roi_area"):  # types first, then the unknown device
                    scratch = {"media_device_type": "rtsp", "do_rtmp_forward": False,
                               "rtmp_address": "x"}
                    if field in body:
                        self._optional_fields({field: body[field]}, scratch)
                raise DeviceIdNotFound(device_id)
            record = devices.render(old)
            for field in ("media_device_url", "media_device_type"):  # R43
                sent = body.get(field)
                if sent is not None and sent != old[field] and not (
                        field == "media_device_type" and isinstance(sent, str)
                        and sent.lower() == old[field]):
                    raise invalid_argument(field, sent)
            if name is not None:
                record["media_device_name"] = name
            self._optional_fields(body, record)
            self._check_state(txn, record)
            return devices.render(devices.put(txn, record)), []

        device = await self._store.write(write)
        self._announce("modify", device)
        return {"media_device_id": device_id, "media_device_name": device["media_device_name"]}

    async def delete(self, body: Dict[str, Any]) -> Dict[str, Any]:
        _check_presence(body, ("media_device_id",))
        device_id = _string(body, "media_device_id", 10 ** 6)
        assert device_id is not None

        def write(txn: Txn) -> Tuple[Tuple[Dict[str, Any], Dict[str, Any]], list]:
            old = devices.get(txn, device_id)
            if old is None:
                raise DeviceIdNotFound(device_id)
            devices.delete(txn, device_id)  # also drops it from both preview lists
            return (devices.render(old), devices.get_preview(txn)), []

        device, preview = await self._store.write(write, check_free_space=False)
        self._announce("delete", device, preview)
        return {"media_device_id": device_id, "media_device_name": device["media_device_name"]}

    async def delete_all(self, body: Dict[str, Any]) -> Dict[str, Any]:
        def write(txn: Txn) -> Tuple[Tuple[List[Dict[str, Any]], Dict[str, Any]], list]:
            gone = [devices.render(r) for r in devices.iter_in_order(txn)]
            for record in gone:
                devices.delete(txn, record["media_device_id"])
            return (gone, devices.get_preview(txn)), []

        gone, preview = await self._store.write(write, check_free_space=False)
        for device in gone:  # each notice carries the final layout (both lists emptied)
            self._announce("delete", device, preview)
        return {"deleted_device_count": len(gone), "total_device_count": len(gone),
                "media_device_list": [d["media_device_id"] for d in gone]}

    async def get_preview(self, body: Dict[str, Any]) -> Dict[str, Any]:
        return await self._store.read(devices.get_preview)

    async def update_preview(self, body: Dict[str, Any]) -> Dict[str, Any]:
        changes: Dict[str, Any] = {}
        for name in ("selected_device_list", "preview_device_list"):
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, list) or len(value) > 64:
                raise invalid_argument(name, value)
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise invalid_argument(f"{name}[{i}]", item)
            changes[name] = list(dict.fromkeys(value))
        mode = body.get("preview_mode")
        if mode is not None:  # R44: an int or a numeric string
            number = mode
            if isinstance(mode, str) and mode.strip().isdigit():
                number = int(mode.strip())
            if isinstance(number, bool) or number not in PREVIEW_MODES:
                raise invalid_argument("preview_mode", mode)
            changes["preview_mode"] = int(number)
        last = _string(body, "last_set_name")
        if last is not None:
            changes["last_set_name"] = last

        def write(txn: Txn) -> Tuple[Dict[str, Any], list]:
            for name in ("selected_device_list", "preview_device_list"):
                for device_id in changes.get(name, []):
                    if devices.get(txn, device_id) is None:
                        raise DevicePerviewIdNotExist(device_id)
            preview = devices.get_preview(txn)
            preview.update(changes)
            devices.put_preview(txn, preview)
            return preview, []

        preview = await self._store.write(write)
        self._announce_preview(preview, broadcast=True)  # device.md 8: modify_media_device {}
        return preview
