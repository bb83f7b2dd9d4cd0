"""Data management (api/data.md): wipedata and checkeventimagepath.

``wipedata`` empties whole sub-databases in ONE write transaction (LMDB's drop is
O(pages), not one delete per record), then the gallery and the event index are rebuilt
from the emptied store on the writer thread, before any later write commits. Event image
files follow the commit (an interrupted removal leaves orphans that the start-up sweep
removes). The login password lives in ``meta`` and survives every wipe (R41); the daemon
never reboots (R38).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List, Optional, Tuple

from ..store import devices, events, push_queue
from ..store import settings as stored_settings
from ..store.env import RELOAD_ALL, Store, Txn
from ..store.event_images import EventImageFiles, directory_usable
from .devices import DeviceService
from .settings import RuntimeSettings

log = logging.getLogger(__name__)

#: The face library, its groups and their indexes (what ``users`` erases besides devices).
LIBRARY_DBS = ("identities", "identity_order", "group_members", "faces", "images",
               "permissions", "permission_names", "permission_order")


def _wipe(txn: Txn, users: bool, wipe_events: bool,
          reset_settings: bool) -> Tuple[List[Dict[str, Any]], List[Any]]:
    gone: List[Dict[str, Any]] = []
    if users:
        gone = devices.list_in_order(txn)
        for name in LIBRARY_DBS:
            txn.raw.drop(getattr(txn.dbs, name), delete=False)
        devices.clear(txn)
    if wipe_events:
        events.clear(txn)
        push_queue.clear(txn)
    if reset_settings:
        stored_settings.clear(txn)
    return gone, [RELOAD_ALL]


class DataService:
    def __init__(self, store: Store, images: EventImageFiles, settings: RuntimeSettings,
                 device_service: Optional[DeviceService] = None) -> None:
        self._store = store
        self._devices = device_service  # told of erased devices: readers stop, previews sync
        self._images = images
        self._settings = settings

    async def wipe(self, users: bool, events: bool, everything: bool) -> Dict[str, Any]:
        users, events = users or everything, events or everything
        if not (users or events or everything):
            return {"result": True}  # R39: flags present but all false: a no-op
        gone = await self._store.write(_wipe, users, events, everything, check_free_space=False)
        if users and self._devices is not None:
            self._devices.announce_wiped(gone)
        log.warning("wipedata: users=%s events=%s settings=%s", users, events, everything)
        if everything:
            self._settings.reset_to_defaults()
        if events:
            await self._store.run_in_read_pool(self._images.delete_all)
        return {"result": True}

    async def check_event_image_path(self) -> Dict[str, Any]:
        path = self._images.current_dir()  # as GATE_EVENT_IMAGE_PATH selects
        loop = asyncio.get_running_loop()
        available = await loop.run_in_executor(None, directory_usable, path)
        return {"available": available, "event_image_path": str(path)}
