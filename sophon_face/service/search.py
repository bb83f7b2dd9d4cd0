"""1:N search (api/compare.md section 5): the probe's largest face against the gallery.

Exact: every face in scope is scored (one vectorised matrix-vector product over the
gallery's contiguous feature matrix), off the event loop. An unregistered person comes
back as the best candidate with ``result: false``: the score is calibrated so that the
recognizer's own decision threshold lands on 82 (service/scoring.py), and nothing is
"matched" below MATCH_THRESHOLD.

Every call that reaches matching records one event (api/event.md 9) through
``EventService.record``: the probe's box, landmarks and feature, its face crop and the
scene image (as REGN_IMAGE_TYPE asks; both JPEG-encoded on the worker), the candidate when
recognised, the group searched and the device. The answer waits for the event's commit (an
answered call never loses its event) but never fails because of it.

Live settings: MATCH_THRESHOLD, REGN_MIN_FACE (default ``min_face_size``), the armed time
windows REGN_TIME_PART1/2 (NOT_IN_PASS_TIME), REGN_IMAGE_TYPE and the duplicate timeout.
Liveness: ``liveness_rgb`` runs the RGB liveness models (pipeline/liveness.py) on the
probe face; a probe scoring below ``recognition.liveness_threshold`` fails with
LIVENESS_DETECT_FAIL and records no event. ``liveness_rgb_ir`` (no IR model), and
``liveness_rgb`` on a profile without liveness models, answer NOT_SUPPORT_IR_LIVENESS.
Attributes (``with_attribute``, or ALG_ATTRIBUTE_DETECT for the event) come from the
attribute and mask models where the profile has them; ``null`` otherwise.
"""

from __future__ import annotations

import base64
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np

from ..errors import (ApiError, DeviceIdNotFound, EmptyGroupError, LivenessDetectFail, MatchFail,
                      MissingArguments, NotInPassTime, NotSupportIrLiveness,
                      PermissionIdNotFound)
from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.images import jpeg_for_storage, load_image
from ..pipeline.types import ImageInput
from ..store import devices, faces, identities, images, permissions
from ..store.env import Store, Txn
from ..store.gallery import Gallery, Match
from ..workers.pool import WorkerPool
from .analysis import ImageAccess, image_input, render_bbox, render_landmark, reply_attributes
from .events import EventDraft, EventService
from .identities import render_identity
from .scoring import cosine_to_score
from .settings import RuntimeSettings

#: The stored face crop is the detector box grown by this fraction on every side, so the
#: crop shows the whole head as a platform expects a "face photo" to.
CROP_MARGIN = 0.25


#: The event's attributes when nothing computed them (event.md 2, R51).
NO_ATTRIBUTES: Dict[str, Optional[str]] = {"age": None, "gender": None, "glasses": None,
                                           "mask": None}


@dataclass(frozen=True)
class Probe:
    feature: np.ndarray
    box: List[float]
    point: List[float]
    face_jpeg: Optional[bytes]
    spot_jpeg: Optional[bytes]
    attributes: Dict[str, Optional[str]]
    live_score: Optional[float] = None  # only when liveness was asked for


def face_crop_jpeg(image_bgr: np.ndarray, bbox: np.ndarray, quality: int) -> Optional[bytes]:
    height, width = image_bgr.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in bbox)
    dx, dy = (x2 - x1) * CROP_MARGIN, (y2 - y1) * CROP_MARGIN
    left, top = max(0, int(x1 - dx)), max(0, int(y1 - dy))
    right, bottom = min(width, int(round(x2 + dx))), min(height, int(round(y2 + dy)))
    if right <= left or bottom <= top:
        return None
    ok, buf = cv2.imencode(".jpg", image_bgr[top:bottom, left:right],
                           [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return buf.tobytes() if ok else None


def _probe_job(pipeline: FacePipeline, source: ImageInput, access: ImageAccess,
               min_face_size: int, image_type: str, jpeg_quality: int, with_attributes: bool,
               with_liveness: bool) -> Probe:
    """On a worker: the largest big-enough face, its liveness and attributes if asked,
    its feature, and the event images."""
    image = load_image(source, access.limits, access.roots)
    analyzed = pipeline.analyze_largest(image, "no", with_feature=True,
                                        min_face_size=float(min_face_size))
    assert analyzed.feature is not None
    face = analyzed.face
    live_score = pipeline.extras.live_score(image.image_bgr, face) if with_liveness else None
    attributes = (pipeline.extras.describe(image.image_bgr, [face])[0] if with_attributes
                  else dict(NO_ATTRIBUTES))
    face_jpeg = (face_crop_jpeg(image.image_bgr, face.bbox, jpeg_quality)
                 if image_type in ("recognize_face", "all") else None)
    spot_jpeg = (jpeg_for_storage(image, max(jpeg_quality, 90))
                 if image_type in ("spot_image", "all") else None)
    return Probe(analyzed.feature, render_bbox(face), render_landmark(face), face_jpeg, spot_jpeg,
                 attributes, live_score)


def _scope(txn: Txn, body: Dict[str, Any]) -> Tuple[Optional[Dict[str, Any]],
                                                    Optional[Dict[str, Any]]]:
    """(group, device). R24: permission_name, else the device's group, else the whole
    library (group None). The device is looked up whenever its IP is given: the event is
    attributed to it even when ``permission_name`` picks the group."""
    group = None
    if body["permission_name"] is not None:
        group = permissions.get_by_name(txn, body["permission_name"])
        if group is None:
            raise PermissionIdNotFound(body["permission_name"])
    device = None
    if body["media_device_ip"] is not None:
        device = devices.find_by_ip(txn, body["media_device_ip"])
        if device is None:
            raise DeviceIdNotFound(body["media_device_ip"])
        if group is None and device["permission_id"]:
            group = permissions.get_by_id(txn, device["permission_id"])
    return group, device


#: How often a match is searched again when its face was changed between the gallery
#: search and the identity read (each retry sees the gallery after that write). The search
#: runs inside the read transaction (``search_and_read``), so a retry is needed only when a
#: write commits AND reaches the gallery in the moment between the transaction's start and
#: the search; under a face replaced hundreds of times a second on a loaded machine
#: (tests/integration/test_concurrency.py) two separate thread hops let every retry race.
MATCH_RETRIES = 10


@dataclass(frozen=True)
class ScoredMatch:
    match: Match
    score: float  # 0..100
    candidate: Optional["Candidate"]  # None: the face changed under the search (retry)


def search_and_read(txn: Txn, gallery: Gallery, probe: np.ndarray, group_id: Optional[str],
                    match_cosine: float, photo_from_score: float) -> Optional[ScoredMatch]:
    """The best match in scope and its identity, read in the same read transaction right
    after the search (None: the scope is empty). ``photo_from_score``: the registration
    photo is read when the score reaches it (0 to always read it)."""
    match = gallery.search(probe, group_id, txn)
    if match is None:
        return None
    score = cosine_to_score(match.score, match_cosine)
    return ScoredMatch(match, score, matched_candidate(txn, match, score >= photo_from_score))


def snapshot_match(txn: Txn, stale: Match, probe: np.ndarray, match_cosine: float,
                   photo_from_score: float) -> Optional[ScoredMatch]:
    """The last resort when the gallery kept running ahead of every read snapshot: the
    matched identity as the snapshot holds it, scored exactly against its faces there, so
    the answer is one consistent state (None when the identity is gone in the snapshot)."""
    identity = identities.get(txn, stale.identity_id)
    if identity is None or not identity["face_ids"]:
        return None
    best: Optional[Tuple[float, str]] = None
    unit = probe / max(float(np.linalg.norm(probe)), 1e-12)
    for face_id in identity["face_ids"]:
        record = faces.get(txn, face_id)
        if record is None:
            continue
        cosine = float(np.dot(faces.feature(record), unit))
        if best is None or cosine > best[0]:
            best = (cosine, face_id)
    if best is None:
        return None
    match = Match(best[1], stale.identity_id, best[0])
    score = cosine_to_score(best[0], match_cosine)
    return ScoredMatch(match, score, matched_candidate(txn, match, score >= photo_from_score))


@dataclass(frozen=True)
class Candidate:
    identity: Dict[str, Any]
    register_image_id: str
    photo: Optional[bytes]


def matched_candidate(txn: Txn, match: Match, with_photo: bool) -> Optional[Candidate]:
    """The matched identity, its face's photo id and (if asked) photo, or None when a write
    replaced or deleted the matched face after the gallery was searched."""
    identity = identities.get(txn, match.identity_id)
    if identity is None or match.face_id not in identity["face_ids"]:
        return None
    image_id = identity["register_image_ids"][identity["face_ids"].index(match.face_id)]
    return Candidate(identity, image_id, images.get(txn, image_id) if with_photo else None)


class SearchService:
    def __init__(self, store: Store, gallery: Gallery, pool: WorkerPool, access: ImageAccess,
                 match_cosine: float, settings: RuntimeSettings, events: EventService,
                 jpeg_quality: int = 90,
                 device_seen: Optional[Callable[[str], None]] = None,
                 liveness_threshold: Optional[float] = None) -> None:
        self._store = store
        self._device_seen = device_seen  # a photo device's status (device.md 9)
        #: None when the profile has no RGB liveness models.
        self._liveness_threshold = liveness_threshold
        self._gallery = gallery
        self._pool = pool
        self._access = access
        self._match_cosine = match_cosine
        self._settings = settings
        self._events = events
        self._jpeg_quality = jpeg_quality

    async def search(self, body: Dict[str, Any]) -> Dict[str, Any]:
        started = time.perf_counter()
        called_at = time.time()
        group, device = await self._store.read(_scope, body)
        if device is not None and self._device_seen is not None:
            self._device_seen(device["media_device_id"])
        if not self._settings.is_armed():
            raise NotInPassTime()
        liveness = body["with_liveness_check"]
        if liveness == "liveness_rgb_ir" and body["ir"] is None:
            raise MissingArguments("ir_image_path/ir_image_base64")
        if liveness == "liveness_rgb_ir" or (liveness == "liveness_rgb"
                                             and self._liveness_threshold is None):
            raise NotSupportIrLiveness()
        group_id = group["permission_id"] if group is not None else None
        in_scope = (self._gallery.count() if group_id is None
                    else self._gallery.count_in_group(group_id))
        if in_scope == 0:
            raise EmptyGroupError()

        source = image_input(body, "rgb", "rgb_image_base64", "rgb_image_path")
        min_face = body["min_face_size"]
        with_attributes = bool(body["with_attribute"]
                               or self._settings.value("ALG_ATTRIBUTE_DETECT"))
        probe = await self._pool.run(
            _probe_job, source, self._access,
            self._settings.value("REGN_MIN_FACE") if min_face is None else min_face,
            self._settings.value("REGN_IMAGE_TYPE"), self._jpeg_quality, with_attributes,
            liveness == "liveness_rgb")
        if probe.live_score is not None and self._liveness_threshold is not None \
                and probe.live_score < self._liveness_threshold:
            raise LivenessDetectFail(liveness)  # R58: the mode; no event (compare.md 5)
        threshold = float(self._settings.value("MATCH_THRESHOLD"))
        # The photo also goes to the real-time push of a recognised person's event.
        photo_from = 0.0 if (body["with_register_photo"]
                             and not body["with_result_modification"]) else threshold
        compare_ms = 0.0
        for _attempt in range(MATCH_RETRIES):
            compare_started = time.perf_counter()
            try:
                found = await self._store.read(search_and_read, self._gallery, probe.feature,
                                               group_id, self._match_cosine, photo_from)
            except ApiError:
                raise
            except Exception as exc:
                raise MatchFail() from exc
            compare_ms += (time.perf_counter() - compare_started) * 1000.0
            if found is None:  # the scope emptied while the probe was being computed
                raise EmptyGroupError()
            score, candidate = found.score, found.candidate
            result = score >= threshold  # R23
            if candidate is not None:
                break
        else:
            # The gallery kept running ahead of every snapshot (a face replaced hundreds of
            # times a second): answer from one snapshot instead of failing.
            found = await self._store.read(snapshot_match, found.match, probe.feature,
                                           self._match_cosine, photo_from)
            if found is None or found.candidate is None:
                raise MatchFail()
            score, candidate = found.score, found.candidate
            result = score >= threshold
        identity, photo = candidate.identity, candidate.photo
        await self._events.record(EventDraft(
            timestamp=called_at, score=score, feature=probe.feature, box=probe.box,
            point=probe.point, identity=identity if result else None,
            register_image_id=candidate.register_image_id, group=group, device=device,
            attributes=probe.attributes, face_jpeg=probe.face_jpeg, spot_jpeg=probe.spot_jpeg,
            register_jpeg=photo if result else None))
        reply: Dict[str, Any] = {
            "identity_id": identity["identity_id"],
            "identity_info": render_identity(identity),
            "result": result,
            "score": score,
        }
        if body["with_register_photo"] and photo is not None and (
                result or not body["with_result_modification"]):
            # R20/R21: plain base64 JPEG; none for feature-registered faces
            reply["register_image"] = base64.b64encode(photo).decode("ascii")
        if body["with_attribute"]:
            reply["attribute"] = reply_attributes(probe.attributes)
        if body["with_debug_info"]:
            reply["debug_info"] = {
                "comparetime": round(compare_ms, 2),
                "totaltime": round((time.perf_counter() - started) * 1000.0, 2),
            }
        return reply
