"""searchbyimage (api/event.md 5): find past events showing the probe's person.

The probe runs through the worker pool like any image request; the scan runs over the
event index's feature column in one matrix product (``EventIndex.scan``), off the loop.
Only the matched events' records are read from LMDB. One search at a time (upstream's
rule): a second concurrent call gets ANOTHER_PICTURE_SEARCH_RUNNING_ERROR at once.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, Dict, List

import numpy as np

from ..errors import (AnotherPictureSearchRunningError, NotSupportInGrabMode,
                      invalid_argument)
from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.images import load_image
from ..pipeline.types import ImageInput
from ..store import events
from ..store.env import Store
from ..store.event_index import EventIndex
from ..workers.pool import WorkerPool
from .analysis import ImageAccess, image_input
from .events import seconds
from .scoring import cosines_to_scores
from .settings import RuntimeSettings

#: Upstream limits per call (event.md 5).
MAX_SCANNED_EVENTS = 50000
MAX_MATCHES = 1000
DEFAULT_WINDOW_S = 24 * 3600.0
_ITEM_FIELDS = ("event_id", "timestamp", "identity_name", "identity_id", "register_image_id",
                "recognize_face_image_id", "spot_image_id", "user_type", "media_device_info")


def _probe_job(pipeline: FacePipeline, source: ImageInput, access: ImageAccess,
               level: str) -> np.ndarray:
    image = load_image(source, access.limits, access.roots)
    analyzed = pipeline.analyze_largest(image, level, with_feature=True)
    assert analyzed.feature is not None
    return analyzed.feature


def _item(record: Dict[str, Any], score: float) -> Dict[str, Any]:
    item = {key: record[key] for key in _ITEM_FIELDS}
    item["compare_score"] = round(score, 2)
    item["out_timestamp"] = record["ext_data"].get("out_timestamp", record["timestamp"])
    item["recognize_face_attr"] = dict(record["recognize_face_attr"])  # no feature (8 keys)
    return item


class EventSearch:
    def __init__(self, store: Store, index: EventIndex, pool: WorkerPool,
                 access: ImageAccess, settings: RuntimeSettings, match_cosine: float) -> None:
        self._store = store
        self._index = index
        self._pool = pool
        self._access = access
        self._settings = settings
        self._match_cosine = match_cosine
        self._running = asyncio.Lock()

    async def search(self, body: Dict[str, Any]) -> Dict[str, Any]:
        started = time.perf_counter()
        now = time.time()
        start = (seconds(body["starttime"]) if body["starttime"] is not None
                 else now - DEFAULT_WINDOW_S)
        end = seconds(body["endtime"]) if body["endtime"] is not None else now
        if start > end:
            name = "starttime" if body["starttime"] is not None else "endtime"
            raise invalid_argument(name, body[name])
        if self._settings.value("GATE_APPLY_MODE") == "grab":
            raise NotSupportInGrabMode()
        if self._running.locked():
            raise AnotherPictureSearchRunningError()
        async with self._running:
            source = image_input(body, "face_image", "face_image_base64", "face_image_path")
            probe = await self._pool.run(_probe_job, source, self._access, body["fiqa_level"])
            after = body["last_end_timestamp"]
            result = await self._store.run_in_read_pool(functools.partial(
                self._index.scan, probe, start, end,
                None if after is None else seconds(after), body["media_device_ids"],
                body["reverse"], functools.partial(cosines_to_scores,
                                                   match_cosine=self._match_cosine),
                float(body["threshold"]), MAX_SCANNED_EVENTS, MAX_MATCHES))
            records = await self._store.read(events.get_many, [m[0] for m in result.matches])
        scores = {event_id: score for event_id, score in result.matches}
        items: List[Dict[str, Any]] = [_item(r, scores[int(r["event_id"])]) for r in records]
        if result.last_timestamp is not None:
            end_timestamp = result.last_timestamp
        else:
            end_timestamp = start if body["reverse"] else end
        return {"endtimestamp": end_timestamp, "events": items, "have_more": result.have_more,
                "total_time": time.perf_counter() - started}
