"""One video frame on a worker: every big-enough face with its feature and quality.

Unlike a request, a frame keeps all its faces (up to a limit, largest first): the tracker
needs each person's box and feature on every analysed frame. Detection runs on the
device's region of interest only, and faces are returned in full-frame pixels.

The best-shot score ranks the faces of one track (video/tracker.py keeps the best few):
size, frontal pose and sharpness, each mapped to 0..1 and weighted 0.4 / 0.3 / 0.3. The
caps are the ``high`` fiqa level's face size (112 px) and a clarity of 6 (the median
sharp photo of the devset is 5.9, see quality.py); pose counts down to 0 at
abs(yaw) + abs(pitch) = 60 degrees (``high``'s limit).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .align import align_face
from .face_pipeline import FacePipeline
from .quality import assess
from .types import DetectedFace, QualityReport

BEST_SHOT_SIZE_PX = 112.0
BEST_SHOT_CLARITY = 6.0
BEST_SHOT_POSE_SUM_DEG = 60.0


@dataclass(frozen=True)
class FrameFace:
    """A face of a frame: full-frame box and landmarks, unit feature, quality scores."""

    face: DetectedFace
    feature: np.ndarray  # (D,) float32, unit norm
    quality: QualityReport  # measured at the "normal" level
    best_shot_score: float  # 0..1, see the module docstring

    @property
    def pose_sum_deg(self) -> float:
        pose = self.quality.headpose
        return abs(pose.yaw_deg) + abs(pose.pitch_deg)


def best_shot_score(quality: QualityReport) -> float:
    size = min(quality.face_size / BEST_SHOT_SIZE_PX, 1.0)
    pose = abs(quality.headpose.yaw_deg) + abs(quality.headpose.pitch_deg)
    frontal = max(0.0, 1.0 - pose / BEST_SHOT_POSE_SUM_DEG)
    sharp = min(max(quality.clarity, 0.0) / BEST_SHOT_CLARITY, 1.0)
    return round(0.4 * size + 0.3 * frontal + 0.3 * sharp, 4)


def _shifted(face: DetectedFace, dx: float, dy: float) -> DetectedFace:
    offset = np.array([dx, dy], dtype=np.float32)
    return DetectedFace(bbox=face.bbox + np.tile(offset, 2), landmarks=face.landmarks + offset,
                        score=face.score)


def analyze_frame(pipeline: FacePipeline, image_bgr: np.ndarray, roi: Sequence[float],
                  min_face_px: float, max_faces: int,
                  times: Optional[Dict[str, float]] = None) -> List[FrameFace]:
    """Faces of ``image_bgr`` inside ``roi`` (``[x1, y1, x2, y2]``, ``[]`` = whole frame)
    whose short side is at least ``min_face_px``; at most ``max_faces``, largest first."""
    started = time.perf_counter()
    height, width = image_bgr.shape[:2]
    x1, y1, x2, y2 = 0, 0, width, height
    if roi:
        x1, y1 = max(0, int(roi[0])), max(0, int(roi[1]))
        x2, y2 = min(width, int(round(roi[2]))), min(height, int(round(roi[3])))
        if x2 - x1 < 2 or y2 - y1 < 2:
            return []  # the region lies outside this stream's frames
    # Everything is measured on the region: a face cut by the ROI's edge is "partial"
    # exactly like one cut by the frame's edge.
    region = image_bgr[y1:y2, x1:x2]
    faces = [f for f in pipeline.detect_bgr(region) if f.short_side >= min_face_px][:max_faces]
    detected = time.perf_counter()
    if not faces:
        _lap(times, "detect", started, detected)
        return []
    crops = [align_face(region, face.landmarks) for face in faces]
    reports = [assess(region, face, crop, "normal", pipeline.thresholds)
               for face, crop in zip(faces, crops)]
    assessed = time.perf_counter()
    features = pipeline.embed_crops(crops)
    embedded = time.perf_counter()
    _lap(times, "detect", started, detected)
    _lap(times, "quality", detected, assessed)
    _lap(times, "embed", assessed, embedded)
    if x1 or y1:
        faces = [_shifted(f, float(x1), float(y1)) for f in faces]
    return [FrameFace(face, features[i], reports[i], best_shot_score(reports[i]))
            for i, face in enumerate(faces)]


def _lap(times: Optional[Dict[str, float]], stage: str, start: float, end: float) -> None:
    if times is not None:
        times[stage] = times.get(stage, 0.0) + (end - start) * 1000.0
