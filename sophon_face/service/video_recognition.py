"""Recognition of tracked video faces, and their events (api/event.md 2 and 9).

The video readers (``video/``) decide WHEN a track is worth a search and when it yields its
event; this service does the searching and the recording, with the same rules as a photo
device's ``search``: the device's permission group (else the whole library),
MATCH_THRESHOLD, the armed windows, REGN_IMAGE_TYPE, duplicate suppression, one
transaction per event with its history-push queue entry.

Choices where the spec is silent:
- A track whose device group (or the library) holds no face is a stranger with score 0
  (a photo ``search`` answers EMPTY_GROUP_ERROR, but a camera has nobody to answer).
- ``ext_data.pose_score`` is the best shot's frontalness, ``1 - (|yaw| + |pitch|) / 90``
  clipped to 0..1; ``ext_data.unknown_id`` is the track id for strangers.
- With ALG_ATTRIBUTE_DETECT, the best shot's attributes (age, gender, mask) are computed
  on a worker when its event is recorded, not for every frame.
- An event recorded when the person is recognised (before they leave the picture) has
  ``out_timestamp`` = the last time they were seen so far.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import cv2
import numpy as np

from ..errors import ApiError
from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.types import DetectedFace
from ..store import permissions
from ..store.env import Store, Txn
from ..store.gallery import Gallery
from .analysis import render_bbox, render_landmark
from .events import EventDraft, EventService
from .recorded import RecordedEvent
from .search import MATCH_RETRIES, NO_ATTRIBUTES, face_crop_jpeg, search_and_read
from .settings import RuntimeSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Identification:
    """The best candidate for a track: recognised (``identity`` set) or a stranger."""

    score: float  # 0..100, rounded like search's
    identity: Optional[Dict[str, Any]] = None
    register_image_id: str = ""
    register_jpeg: Optional[bytes] = None

    @property
    def recognised(self) -> bool:
        return self.identity is not None


@dataclass(frozen=True)
class Sighting:
    """What a track gives its event: the best shot (frame, face, feature) and its timing."""

    feature: np.ndarray
    face: DetectedFace
    image_bgr: np.ndarray
    frame_id: int
    track_id: int
    in_timestamp: float
    out_timestamp: float
    recognition_timestamp: float
    pose_score: float


def _group_of(txn: Txn, permission_id: str) -> Optional[Dict[str, Any]]:
    return permissions.get_by_id(txn, permission_id) if permission_id else None


def _attributes_job(pipeline: FacePipeline, image_bgr: np.ndarray,
                    face: DetectedFace) -> Dict[str, Optional[str]]:
    return pipeline.extras.describe(image_bgr, [face])[0]


def _jpegs(sighting: Sighting, image_type: str, quality: int) -> tuple:
    face_jpeg = (face_crop_jpeg(sighting.image_bgr, sighting.face.bbox, quality)
                 if image_type in ("recognize_face", "all") else None)
    spot_jpeg = None
    if image_type in ("spot_image", "all"):
        ok, buf = cv2.imencode(".jpg", sighting.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        spot_jpeg = buf.tobytes() if ok else None
    return face_jpeg, spot_jpeg


class VideoRecognition:
    def __init__(self, store: Store, gallery: Gallery, pool: Any, settings: RuntimeSettings,
                 events: EventService, match_cosine: float, jpeg_quality: int = 90) -> None:
        self._store = store
        self._gallery = gallery
        self._pool = pool
        self._settings = settings
        self._events = events
        self._match_cosine = match_cosine
        self._jpeg_quality = jpeg_quality

    def is_armed(self) -> bool:
        """Within REGN_TIME_PART1/2 when any is switched on (no events outside them)."""
        return self._settings.is_armed()

    async def group(self, device: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        return await self._store.read(_group_of, device.get("permission_id") or "")

    async def identify(self, feature: np.ndarray, group: Optional[Dict[str, Any]]) -> Identification:
        """The best match of ``feature`` in the group (or the library), decided by
        MATCH_THRESHOLD; a stranger when nothing in scope scores that high."""
        group_id = group["permission_id"] if group is not None else None
        threshold = float(self._settings.value("MATCH_THRESHOLD"))
        for _attempt in range(MATCH_RETRIES):
            found = await self._store.read(search_and_read, self._gallery, feature, group_id,
                                           self._match_cosine, threshold)
            if found is None:
                return Identification(score=0.0)
            if found.score < threshold:  # R23: a comparison passes when score >= threshold
                return Identification(score=found.score)
            candidate = found.candidate
            if candidate is not None:
                return Identification(found.score, candidate.identity,
                                      candidate.register_image_id, candidate.photo)
        return Identification(score=0.0)  # the library kept changing under this track

    async def record(self, device: Dict[str, Any], group: Optional[Dict[str, Any]],
                     sighting: Sighting, identification: Identification,
                     video_shape: List[int]) -> Optional[RecordedEvent]:
        """Store and publish the track's event; None when suppressed or not stored."""
        loop = asyncio.get_running_loop()
        image_type = str(self._settings.value("REGN_IMAGE_TYPE"))
        try:
            face_jpeg, spot_jpeg = await loop.run_in_executor(
                None, functools.partial(_jpegs, sighting, image_type, self._jpeg_quality))
        except Exception:  # an image that cannot be encoded must not cost the event
            log.exception("event images of track %d could not be encoded", sighting.track_id)
            face_jpeg = spot_jpeg = None
        attributes = dict(NO_ATTRIBUTES)
        if self._settings.value("ALG_ATTRIBUTE_DETECT"):
            try:
                attributes = await self._pool.run_background(
                    _attributes_job, sighting.image_bgr, sighting.face)
            except Exception as exc:  # attributes are extras: the event stands without them
                log.warning("attributes of track %d not computed: %s", sighting.track_id, exc)
        ext_data: Dict[str, Any] = {
            "in_timestamp": sighting.in_timestamp,
            "recognition_timestamp": sighting.recognition_timestamp,
            "out_timestamp": sighting.out_timestamp,
            "track_id": sighting.track_id,
            "video_shape": list(video_shape),
            "pose_score": round(sighting.pose_score, 4),
        }
        if not identification.recognised:
            ext_data["unknown_id"] = sighting.track_id
        draft = EventDraft(
            timestamp=sighting.recognition_timestamp, score=identification.score,
            feature=sighting.feature, box=render_bbox(sighting.face),
            point=render_landmark(sighting.face), identity=identification.identity,
            register_image_id=identification.register_image_id, group=group, device=device,
            attributes=attributes, face_jpeg=face_jpeg,
            spot_jpeg=spot_jpeg, register_jpeg=identification.register_jpeg,
            frame_id=sighting.frame_id, ext_data=ext_data)
        try:
            return await self._events.record(draft)
        except ApiError as exc:  # record() logs and swallows storage failures itself
            log.warning("video event not recorded: %s", exc)
            return None
