"""Face image quality (FIQA) from what the detector and the aligner already give us.

No quality model is involved: every score is measured on the 5 landmarks, the bbox and
the aligned 112x112 crop, except ``mask``, which comes from the mask model when the profile
has one (pipeline/mask.py) and is then checked at ``high`` only (api/README.md 5); without
the model it is not assessed (``mask = -1``). ``occlusion`` would need a model we do not
have (no face-parsing weights with a usable licence), so it is reported as not assessed
(``occlusion = ()``); items not assessed never appear in
the passed or failed items (api/README.md section 5).

Scores
------
* ``headpose`` (degrees, see ``estimate_headpose``) from the 5 landmarks.
* ``clarity``: natural log of the variance of the Laplacian of the grey aligned crop,
  over the face region (crop rows 24-104, columns 20-92) and only over pixels whose 3x3
  neighbourhood lies inside the image: the black fill of a crop that runs past the
  border is a hard edge that would read as sharpness.
* ``face_size``: the bbox's shorter side in pixels (the API's definition).
* ``partial``: the face is cut by the image border. Rule: the (clipped) bbox comes within
  ``PARTIAL_MARGIN_PX`` of an image edge, or a landmark lies outside the image. The
  detector clips boxes to the image, so a box that ran past an edge ends exactly on it.
* ``brightness``: mean luminance (OpenCV's BGR->grey weights) of the same face region of
  the crop, in 0..1; fails when too dark or over-exposed.
* ``face_color``: lighting uniformity, ``1 - |L - R| / (L + R)`` of the mean luminance of
  the left and right halves of the face region, in 0..1 (1 = evenly lit).

How the thresholds were chosen (``QualityThresholds`` defaults)
--------------------------------------------------------------
Measured on the 72 photos with a detected face among /work/shared/data/faces (9 portraits)
and /work/shared/data/devset (63 photos, 16 people), YuNet + the ArcFace 5-point crop
(faces 73-1302 px). Blur was applied to the original image with a Gaussian whose sigma is
given in CROP pixels (sigma_image = sigma_crop / crop-scale), because the aligned crop
normalises face size: sigma 3 on a 3000-px photo of a 600-px face is invisible at 112 px
and moves the SFace feature by cosine 0.001, while on a 100-px face it ruins it.

==========  ====================  ==================================
sigma_crop  clarity min/med/max   SFace cosine to the sharp crop min/median
==========  ====================  ==================================
0 (sharp)   5.09 / 5.94 / 7.70    1 / 1
0.5         4.45 / 5.20 / 6.17    0.983 / 0.996
1.0         3.45 / 4.10 / 4.80    0.952 / 0.972
1.5         2.61 / 3.20 / 3.82    0.872 / 0.926
2.0         1.99 / 2.51 / 3.09    0.761 / 0.860
3.0         1.25 / 1.63 / 2.15    0.561 / 0.695
==========  ====================  ==================================

Spearman rank correlation of clarity with the cosine to the sharp crop over all blurred
crops: 0.95. ``high`` needs clarity >= 4.0: every sharp photo passes (margin 1.1), 29/72
fail at sigma_crop 1.0 and all 72 at >= 1.5. ``normal`` needs >= 3.3: all pass at
sigma_crop <= 1.0, 41/72 fail at 1.5 and all 72 at >= 2.0. In image pixels, a Gaussian of
sigma 3 fails ``high`` for 27 of the 34 faces of <= 250 px (29/72 overall), sigma 5 for all
34 (51/72 overall). Sensor noise also raises the Laplacian variance, so a noisy blurred
photo can pass: a known limit of the measure.

Brightness of the 72 sharp faces: 0.359 (the darkest skin in the set) to 0.752, median
0.585. Scaling the pixels by 0.3 gives 0.106-0.224, by 0.25 0.088-0.187, by 2.2 (over-
exposed) 0.707-0.985. ``high`` accepts 0.22-0.85 (every ``x0.25`` copy fails, 70/72 of the
``x0.3`` copies; the darkest real face keeps a margin of 0.14, so dark skin in ordinary
light is not rejected); ``normal`` accepts 0.15-0.90. Darkening also lowers clarity (the
Laplacian scales with contrast: x0.25 takes log(16) = 2.8 off), so a very dark photo
usually fails ``clarity`` as well as ``brightness``; dividing clarity by the crop's
contrast was tried and separated sharp from blurred crops worse (overlap at sigma_crop 1).

Face colour of the 72 faces: 0.630 to 0.996, 5th percentile 0.729, median 0.927. With the
half of the image right of the nose scaled by 0.3 (a hard side shadow): 0.349-0.854,
median 0.493. ``high`` needs >= 0.6 (a left/right luminance ratio of about 1:2.3): all
72 real faces pass, 60/72 of the shadowed copies fail.

Head pose: the frontal nose height ratio is the median over the 72 faces (0.583; YuNet
puts the nose tip lower than the ArcFace template's 0.495), the median horizontal nose
offset was 0.006 eye distances, so no yaw offset is applied. Resulting yaw -27..+28
(median 0.7), pitch -11.6..+12.6 (median 0.0), roll -9.3..+9.2 degrees;
abs(yaw) + abs(pitch) <= 33.5, inside ``high``'s 60.

With these defaults all 72 faces pass ``high`` except the five smaller than 113 px
(face_size), and all pass ``normal`` except macron_2014 (73 px).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from .align import ALIGNED_SIZE, alignment_matrix
from .types import FIQA_LEVEL_SYNONYMS, FIQA_LEVELS, QUALITY_ITEMS, DetectedFace, HeadPose, QualityReport

log = logging.getLogger(__name__)

#: Items each level checks (api/README.md section 5); mask/occlusion need models we lack.
LEVEL_ITEMS: Dict[str, Tuple[str, ...]] = {
    "high": ("headpose", "clarity", "face_size", "partial", "face_color", "brightness"),
    "normal": ("headpose", "clarity", "face_size", "partial", "brightness"),
    "low": ("headpose", "face_size"),
    "no": (),
}

#: The face region of the aligned 112x112 crop: rows (brow to chin) and columns (cheek to
#: cheek) around the ArcFace template points, leaving out hair and background.
FACE_ROWS = slice(24, 104)
FACE_COLS = slice(20, 92)

#: A bbox closer than this to an image edge counts as cut by it.
PARTIAL_MARGIN_PX = 1.0

# Head-pose geometry (see estimate_headpose). The depth ratios are anthropometric averages
# (nose tip about 30 mm in front of the plane of the pupils and mouth corners, pupils
# about 63 mm apart, eye line to mouth line about 72 mm); the frontal nose position is
# measured on our photos.
NOSE_DEPTH_PER_EYE_DISTANCE = 0.48
NOSE_DEPTH_PER_EYE_MOUTH_DISTANCE = 0.42
FRONTAL_NOSE_HEIGHT_RATIO = 0.583
FRONTAL_NOSE_OFFSET_RATIO = 0.0


@dataclass(frozen=True)
class LevelLimits:
    """The limits one fiqa_level applies; only the items of ``LEVEL_ITEMS`` are checked."""

    min_face_size_px: float  # strictly greater than (API)
    max_pose_sum_deg: float  # abs(yaw) + abs(pitch) at most (API)
    min_clarity: float
    min_brightness: float
    max_brightness: float
    min_face_color: float


@dataclass(frozen=True)
class QualityThresholds:
    """Per-level limits. Face size and head pose are fixed by the API; the rest are ours,
    calibrated as this module's docstring describes."""

    high: LevelLimits = field(default_factory=lambda: LevelLimits(
        min_face_size_px=112.0, max_pose_sum_deg=60.0, min_clarity=4.0,
        min_brightness=0.22, max_brightness=0.85, min_face_color=0.6))
    normal: LevelLimits = field(default_factory=lambda: LevelLimits(
        min_face_size_px=80.0, max_pose_sum_deg=90.0, min_clarity=3.3,
        min_brightness=0.15, max_brightness=0.9, min_face_color=0.0))
    low: LevelLimits = field(default_factory=lambda: LevelLimits(
        min_face_size_px=60.0, max_pose_sum_deg=120.0, min_clarity=0.0,
        min_brightness=0.0, max_brightness=1.0, min_face_color=0.0))

    def limits(self, level: str) -> LevelLimits:
        """The limits of ``high``, ``normal`` or ``low`` (``KeyError`` for ``no``)."""
        return {"high": self.high, "normal": self.normal, "low": self.low}[level]


def normalize_fiqa_level(value: str) -> str:
    """The canonical level for a wire value: case-insensitive, ``middle`` -> ``normal``."""
    if not isinstance(value, str):
        raise ValueError(f"fiqa_level must be a string, got {type(value).__name__}")
    level = value.lower()
    level = FIQA_LEVEL_SYNONYMS.get(level, level)
    if level not in FIQA_LEVELS:
        raise ValueError(f"unknown fiqa_level {value!r}")
    return level


def _rotate(points: np.ndarray, angle_rad: float, centre: np.ndarray) -> np.ndarray:
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    rel = points - centre
    return np.stack([rel[:, 0] * c - rel[:, 1] * s, rel[:, 0] * s + rel[:, 1] * c], axis=1) + centre


def estimate_headpose(landmarks: np.ndarray, bbox: np.ndarray) -> HeadPose:
    """Yaw, pitch and roll in degrees from the 5 landmarks (weak-perspective geometry).

    * roll: the angle of the eye line; positive when the face is rotated clockwise in the
      picture (the right-hand eye lower).
    * The points are rotated by -roll about the eye midpoint, so the eye line is level.
    * yaw: the eyes and mouth corners lie roughly in one plane, the nose tip a depth ``d``
      in front of it. Turning the head by yaw moves the nose off the eye/mouth midline by
      ``d sin(yaw)`` while the eye distance shrinks to ``e cos(yaw)``, so
      ``offset / eye_distance = (d / e) tan(yaw)``. Positive: the face turns towards the
      right of the picture.
    * pitch: likewise the nose moves vertically by ``d sin(pitch)`` while the eye-to-mouth
      height shrinks to ``H cos(pitch)``; the nose's height between the eye line and the
      mouth line, minus its frontal value, is ``(d / H) tan(pitch)``. Positive: chin up
      (the nose moves towards the eyes).

    ``bbox`` only supplies a scale when the landmarks collapse (extreme profile).
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye = pts[0], pts[1]
    roll = math.atan2(right_eye[1] - left_eye[1], right_eye[0] - left_eye[0])
    eye_mid = (left_eye + right_eye) / 2.0
    level = _rotate(pts, -roll, eye_mid)
    eye_mid = (level[0] + level[1]) / 2.0
    mouth_mid = (level[3] + level[4]) / 2.0
    nose = level[2]
    box = np.asarray(bbox, dtype=np.float64).reshape(4)
    floor = 1e-3 * max(1.0, box[2] - box[0], box[3] - box[1])
    eye_distance = max(level[1][0] - level[0][0], floor)
    eye_mouth = max(mouth_mid[1] - eye_mid[1], floor)
    offset_ratio = (nose[0] - (eye_mid[0] + mouth_mid[0]) / 2.0) / eye_distance - FRONTAL_NOSE_OFFSET_RATIO
    height_ratio = (nose[1] - eye_mid[1]) / eye_mouth
    yaw = math.atan(offset_ratio / NOSE_DEPTH_PER_EYE_DISTANCE)
    pitch = math.atan((FRONTAL_NOSE_HEIGHT_RATIO - height_ratio) / NOSE_DEPTH_PER_EYE_MOUTH_DISTANCE)
    return HeadPose(yaw_deg=math.degrees(yaw), pitch_deg=math.degrees(pitch), roll_deg=math.degrees(roll))


def _inside_mask(image_shape: Tuple[int, ...], landmarks: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: crop pixels whose 3x3 neighbourhood samples inside the image."""
    inverse = cv2.invertAffineTransform(alignment_matrix(landmarks, size))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    src_x = inverse[0, 0] * xs + inverse[0, 1] * ys + inverse[0, 2]
    src_y = inverse[1, 0] * xs + inverse[1, 1] * ys + inverse[1, 2]
    h, w = image_shape[:2]
    inside = ((src_x >= 0) & (src_x <= w - 1) & (src_y >= 0) & (src_y <= h - 1)).astype(np.uint8)
    return cv2.erode(inside, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE).astype(bool)


def _region_scores(grey: np.ndarray, inside: np.ndarray) -> Tuple[float, float, float]:
    """(clarity, brightness, face_color) of the face region of a grey crop."""
    scale = grey.shape[0] / float(ALIGNED_SIZE)
    rows = slice(int(FACE_ROWS.start * scale), int(FACE_ROWS.stop * scale))
    cols = slice(int(FACE_COLS.start * scale), int(FACE_COLS.stop * scale))
    region = grey[rows, cols].astype(np.float64)
    valid = inside[rows, cols]
    if valid.sum() < 16:
        return 0.0, 0.0, 0.0  # the crop lies (almost) entirely outside the image
    laplacian = cv2.Laplacian(grey, cv2.CV_64F)[rows, cols]
    clarity = math.log(float(laplacian[valid].var()) + 1e-6)
    brightness = float(region[valid].mean()) / 255.0
    half = region.shape[1] // 2
    sides = []
    for part, ok in ((region[:, :half], valid[:, :half]), (region[:, half:], valid[:, half:])):
        sides.append(float(part[ok].mean()) if ok.any() else 0.0)
    total = sides[0] + sides[1]
    face_color = 1.0 - abs(sides[0] - sides[1]) / total if total > 0 else 0.0
    return clarity, brightness, face_color


def is_partial(image_shape: Tuple[int, ...], face: DetectedFace) -> bool:
    """True when the face is cut by the image border (rule in the module docstring)."""
    h, w = image_shape[:2]
    box = face.bbox
    gaps = (box[0], box[1], w - box[2], h - box[3])
    if min(gaps) < PARTIAL_MARGIN_PX:
        return True
    marks = np.asarray(face.landmarks)
    return bool(np.any(marks[:, 0] < 0) or np.any(marks[:, 0] > w)
                or np.any(marks[:, 1] < 0) or np.any(marks[:, 1] > h))


def assess(image_bgr: np.ndarray, face: DetectedFace, aligned_crop: np.ndarray, level: str,
           thresholds: QualityThresholds, wears_mask: Optional[bool] = None) -> QualityReport:
    """Measure every score and check the items of ``level``; passed/failed in canonical order.

    ``wears_mask`` is the mask model's verdict (None: not assessed); it is checked at
    ``high`` only."""
    level = normalize_fiqa_level(level)
    grey = cv2.cvtColor(aligned_crop, cv2.COLOR_BGR2GRAY)
    inside = _inside_mask(image_bgr.shape, face.landmarks, grey.shape[0])
    clarity, brightness, face_color = _region_scores(grey, inside)
    pose = estimate_headpose(face.landmarks, face.bbox)
    partial = is_partial(image_bgr.shape, face)
    face_size = face.short_side
    passed = []
    failed = []
    if level != "no":
        lim = thresholds.limits(level)
        verdicts = {
            "headpose": abs(pose.yaw_deg) + abs(pose.pitch_deg) <= lim.max_pose_sum_deg,
            "clarity": clarity >= lim.min_clarity,
            "face_size": face_size > lim.min_face_size_px,
            "partial": not partial,
            "face_color": face_color >= lim.min_face_color,
            "brightness": lim.min_brightness <= brightness <= lim.max_brightness,
        }
        items = LEVEL_ITEMS[level]
        if wears_mask is not None and level == "high":
            verdicts["mask"] = not wears_mask
            items = items + ("mask",)
        for item in QUALITY_ITEMS:
            if item in items:
                (passed if verdicts[item] else failed).append(item)
    report = QualityReport(
        level=level, brightness=brightness, clarity=clarity, face_size=face_size, headpose=pose,
        partial=partial, face_color=face_color,
        mask=-1 if wears_mask is None else int(wears_mask), occlusion=(),
        passed=tuple(passed), failed=tuple(failed))
    log.debug("fiqa %s: failed %s (clarity %.2f brightness %.2f face_color %.2f)",
              level, report.failed, clarity, brightness, face_color)
    return report
