"""1:N search (api/compare.md section 5): the probe's largest face against the gallery.

Exact: every face in scope is scored (one vectorised matrix-vector product over the
gallery's contiguous feature matrix), off the event loop. An unregistered person comes
back as the best candidate with ``result: false``: the score is calibrated so that the
recognizer's own decision threshold lands on 82 (service/scoring.py), and nothing is
"matched" below MATCH_THRESHOLD.

Not yet here (later issues): events (each call that reaches matching records one),
device-bound scope (no device can be registered yet, so any ``media_device_ip`` is an
unknown device), armed time windows (their switches default to off), liveness (no model:
``liveness_rgb``/``liveness_rgb_ir`` answer NOT_SUPPORT_IR_LIVENESS as the spec says).
"""

from __future__ import annotations

import base64
import time
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from ..errors import (DeviceIdNotFound, EmptyGroupError, MatchFail, MissingArguments,
                      NotSupportIrLiveness, PermissionIdNotFound)
from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.images import load_image
from ..pipeline.types import ImageInput
from ..store import identities, images, permissions
from ..store.env import Store, Txn
from ..store.gallery import Gallery, Match
from ..workers.pool import WorkerPool
from .analysis import NOT_COMPUTED_ATTRIBUTES, ImageAccess, image_input
from .identities import render_identity
from .scoring import cosine_to_score


def _probe_job(pipeline: FacePipeline, source: ImageInput, access: ImageAccess,
               min_face_size: int) -> np.ndarray:
    image = load_image(source, access.limits, access.roots)
    analyzed = pipeline.analyze_largest(image, "no", with_feature=True,
                                        min_face_size=float(min_face_size))
    assert analyzed.feature is not None
    return analyzed.feature


def _scope(txn: Txn, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """R24: permission_name, else the device's group, else the whole library (None)."""
    group = None
    if body["permission_name"] is not None:
        group = permissions.get_by_name(txn, body["permission_name"])
        if group is None:
            raise PermissionIdNotFound(body["permission_name"])
    if body["media_device_ip"] is not None:
        raise DeviceIdNotFound(body["media_device_ip"])  # no devices exist yet
    return group


#: How often a match is searched again when its face was changed between the gallery
#: search and the identity read (each retry sees the gallery after that write).
MATCH_RETRIES = 3


def _candidate(txn: Txn, match: Match,
               with_photo: bool) -> Optional[Tuple[Dict[str, Any], Optional[bytes]]]:
    """The matched identity and photo, or None when a write replaced or deleted the
    matched face after the gallery was searched."""
    identity = identities.get(txn, match.identity_id)
    if identity is None or match.face_id not in identity["face_ids"]:
        return None
    photo = None
    if with_photo:
        index = identity["face_ids"].index(match.face_id)
        photo = images.get(txn, identity["register_image_ids"][index])
    return identity, photo


class SearchService:
    def __init__(self, store: Store, gallery: Gallery, pool: WorkerPool, access: ImageAccess,
                 match_cosine: float, match_threshold: Callable[[], float],
                 min_face_size: Callable[[], int]) -> None:
        self._store = store
        self._gallery = gallery
        self._pool = pool
        self._access = access
        self._match_cosine = match_cosine
        self._match_threshold = match_threshold
        self._min_face_size = min_face_size

    async def search(self, body: Dict[str, Any]) -> Dict[str, Any]:
        started = time.perf_counter()
        group = await self._store.read(_scope, body)
        liveness = body["with_liveness_check"]
        if liveness == "liveness_rgb_ir" and body["ir"] is None:
            raise MissingArguments("ir_image_path/ir_image_base64")
        if liveness != "liveness_off":
            raise NotSupportIrLiveness()
        group_id = group["permission_id"] if group is not None else None
        in_scope = (self._gallery.count() if group_id is None
                    else self._gallery.count_in_group(group_id))
        if in_scope == 0:
            raise EmptyGroupError()

        source = image_input(body, "rgb", "rgb_image_base64", "rgb_image_path")
        min_face = body["min_face_size"]
        probe = await self._pool.run(_probe_job, source, self._access,
                                     self._min_face_size() if min_face is None else min_face)
        compare_ms = 0.0
        for _attempt in range(MATCH_RETRIES):
            compare_started = time.perf_counter()
            try:
                match = await self._store.run_in_read_pool(self._gallery.search, probe, group_id)
            except Exception as exc:
                raise MatchFail() from exc
            compare_ms += (time.perf_counter() - compare_started) * 1000.0
            if match is None:  # the scope emptied while the probe was being computed
                raise EmptyGroupError()
            score = cosine_to_score(match.score, self._match_cosine)
            result = score >= self._match_threshold()  # R23
            want_photo = body["with_register_photo"] and (
                result or not body["with_result_modification"])
            candidate = await self._store.read(_candidate, match, want_photo)
            if candidate is not None:
                break
        else:
            raise MatchFail()  # the library kept changing under this probe
        identity, photo = candidate
        reply: Dict[str, Any] = {
            "identity_id": identity["identity_id"],
            "identity_info": render_identity(identity),
            "result": result,
            "score": score,
        }
        if photo is not None:  # R20/R21: plain base64 JPEG; none for feature-registered faces
            reply["register_image"] = base64.b64encode(photo).decode("ascii")
        if body["with_attribute"]:
            reply["attribute"] = dict(NOT_COMPUTED_ATTRIBUTES)
        if body["with_debug_info"]:
            reply["debug_info"] = {
                "comparetime": round(compare_ms, 2),
                "totaltime": round((time.perf_counter() - started) * 1000.0, 2),
            }
        return reply
