"""detect, fiqa and compare (api/compare.md sections 2-4): stateless face analysis.

Each use case sends one job to the worker pool; a job loads its images (decode and
limits included, so large base64 never blocks the event loop) and runs the pipeline.
Responses are rendered here as the spec's plain dicts.

Choices where the spec is silent:
- ``with_attribute``: we have no age/gender/glasses model, so every attribute is ``null``
  (the spec's "not computed" value, README 8.3) rather than a guess.
- Coordinates are rounded to 2 decimals (the upstream examples carry float noise only).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.images import load_image
from ..pipeline.types import DetectedFace, HeadPose, ImageInput, ImageLimits, QualityReport
from ..workers.pool import WorkerPool
from .scoring import cosine_to_score, feature_to_base64

NOT_COMPUTED_ATTRIBUTES = {"age": None, "gender": None, "glasses": None}


@dataclass(frozen=True)
class ImageAccess:
    """Where path inputs may be read from, and the size limits of every image."""

    roots: Sequence[Path]
    limits: ImageLimits


def image_input(body: Dict[str, Any], slot: str, param_b64: str, param_path: str) -> ImageInput:
    """The chosen member of a one-of image slot, as the pipeline's ImageInput."""
    if body[slot] == param_b64:
        return ImageInput(param=param_b64, base64_text=body[param_b64])
    return ImageInput(param=param_path, path=body[param_path])


def _round(value: float) -> float:
    return round(float(value), 2)


def reply_attributes(attributes: Dict[str, Optional[str]]) -> Dict[str, Optional[str]]:
    """The ``attribute`` object of detect and search (compare.md): age, gender, glasses;
    ``null`` for what no model computed (R51). Events also carry ``mask``."""
    return {key: attributes.get(key) for key in NOT_COMPUTED_ATTRIBUTES}


def render_bbox(face: DetectedFace) -> List[float]:
    return [_round(v) for v in face.bbox]


def render_landmark(face: DetectedFace) -> List[float]:
    """``[x1..x5, y1..y5]`` (compare.md 1)."""
    return [_round(v) for v in face.landmarks[:, 0]] + [_round(v) for v in face.landmarks[:, 1]]


def render_headpose(pose: HeadPose) -> Dict[str, float]:
    return {"pitch_angle": _round(pose.pitch_deg), "roll_angle": _round(pose.roll_deg),
            "yaw_angle": _round(pose.yaw_deg)}


def render_quality(report: QualityReport, bbox: List[float]) -> Dict[str, Any]:
    scores: Dict[str, Any] = {
        "brightness": float(report.brightness),
        "clarity": float(report.clarity),
        "face_size": float(report.face_size),
        "headpose": render_headpose(report.headpose),
        "mask": int(report.mask),
        "occlusion": [int(v) for v in report.occlusion],
        "partial": bool(report.partial),
    }
    if report.face_color is not None:
        scores["face_color"] = float(report.face_color)
    return {"bbox": bbox, "detailed_scores": scores,
            "failed_items": list(report.failed), "passed_items": list(report.passed)}


# --- jobs: run on a worker thread with that worker's pipeline ---------------------------

def _detect_job(pipeline: FacePipeline, source: ImageInput, access: ImageAccess,
                options: Dict[str, Any]) -> Dict[str, Any]:
    image = load_image(source, access.limits, access.roots)
    faces = pipeline.detect(image)[: options["max_num_faces"]]
    features = pipeline.features_of(image, faces) if options["with_feature"] else None
    attributes = (pipeline.extras.describe(image.image_bgr, faces)
                  if options["with_attribute"] else None)
    rendered = []
    for i, face in enumerate(faces):
        item: Dict[str, Any] = {"bbox": render_bbox(face)}
        if attributes is not None:
            item["attribute"] = reply_attributes(attributes[i])
        if options["with_headpose"]:
            item["headpose"] = render_headpose(pipeline.headpose_of(face))
        if options["with_landmark"]:
            item["landmark"] = render_landmark(face)
        if features is not None:
            item["feature_base64_str"] = feature_to_base64(features[i])
        rendered.append(item)
    return {"faces": rendered}


def _fiqa_job(pipeline: FacePipeline, source: ImageInput, access: ImageAccess,
              level: str) -> Dict[str, Any]:
    image = load_image(source, access.limits, access.roots)
    analyzed = pipeline.analyze_largest(image, level, with_feature=False,
                                        raise_on_low_quality=False)
    report = analyzed.quality
    assert report is not None  # analyze_largest always assesses for fiqa
    return {"detailed_result": render_quality(report, render_bbox(analyzed.face)),
            "fiqa_result": not report.failed}


def _compare_job(pipeline: FacePipeline, first: ImageInput, second: ImageInput,
                 access: ImageAccess, level: str) -> float:
    # compare.md 3 checks in stages: loading (image 1, then 2), then faces (1, then 2),
    # then quality (1, then 2), so a later image's load error beats an earlier no-face.
    images = [load_image(source, access.limits, access.roots) for source in (first, second)]
    detected = [pipeline.detect(image) for image in images]
    analyzed = [pipeline.analyze_largest(image, level, with_feature=True, faces=faces)
                for image, faces in zip(images, detected)]
    a, b = analyzed[0].feature, analyzed[1].feature
    assert a is not None and b is not None
    return float(a @ b)


class FaceAnalysis:
    def __init__(self, pool: WorkerPool, access: ImageAccess, match_cosine: float) -> None:
        self._pool = pool
        self._access = access
        self._match_cosine = match_cosine

    async def detect(self, body: Dict[str, Any]) -> Dict[str, Any]:
        source = image_input(body, "image", "image_base64_str", "image_path")
        return await self._pool.run(_detect_job, source, self._access, body)

    async def fiqa(self, body: Dict[str, Any]) -> Dict[str, Any]:
        source = image_input(body, "image", "image_base64_str", "image_path")
        return await self._pool.run(_fiqa_job, source, self._access, body["fiqa_level"])

    async def compare(self, body: Dict[str, Any]) -> Dict[str, Any]:
        first = image_input(body, "image_1", "image_1_base64", "image_1_path")
        second = image_input(body, "image_2", "image_2_base64", "image_2_path")
        cosine = await self._pool.run(_compare_job, first, second, self._access,
                                      body["fiqa_level"])
        return {"score": round(cosine_to_score(cosine, self._match_cosine), 2)}

    def cosine_to_score(self, cosine: float) -> float:
        return cosine_to_score(cosine, self._match_cosine)
