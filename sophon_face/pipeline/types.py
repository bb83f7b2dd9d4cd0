"""Plain data passed between the pipeline stages, the workers and the service layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

#: Canonical quality items, in canonical order (api/README.md section 5).
QUALITY_ITEMS: Tuple[str, ...] = (
    "headpose", "clarity", "face_size", "partial", "face_color", "brightness", "mask", "occlusion",
)

#: fiqa_level values accepted on the wire (R9: "middle" is a synonym of "normal").
FIQA_LEVELS: Tuple[str, ...] = ("no", "low", "normal", "high")
FIQA_LEVEL_SYNONYMS: Dict[str, str] = {"middle": "normal"}


@dataclass(frozen=True)
class ImageLimits:
    """Refuse an image before its pixels are decoded (api/README.md section 4.5)."""

    max_encoded_bytes: int = 16 * 1024 * 1024
    max_side_px: int = 8192
    max_pixels: int = 8192 * 8192


@dataclass(frozen=True)
class ImageInput:
    """One image slot of a request: base64 text or a local path, and its parameter name.

    ``param`` is what error messages name (e.g. ``"image_2_base64"``); for a path the
    IMAGE_NOT_OPENED message is the path itself.
    """

    param: str
    base64_text: Optional[str] = None
    path: Optional[str] = None


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image, upright (EXIF orientation applied), with its original bytes."""

    image_bgr: np.ndarray  # H x W x 3 uint8, BGR
    encoded: bytes  # the bytes as received, kept so a JPEG is stored byte for byte
    format: str  # "jpeg", "png", "bmp", "webp", ...
    param: str  # the request parameter it came from


@dataclass(frozen=True)
class DetectedFace:
    """One face found by the detector, in original-image pixels."""

    bbox: np.ndarray  # (4,) float32: xmin, ymin, xmax, ymax
    landmarks: np.ndarray  # (5, 2) float32 x, y: left eye, right eye, nose, left/right mouth
    score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))

    @property
    def short_side(self) -> float:
        """Face size as the API defines it: the shorter side of the bbox."""
        return float(min(self.bbox[2] - self.bbox[0], self.bbox[3] - self.bbox[1]))


@dataclass(frozen=True)
class HeadPose:
    yaw_deg: float
    pitch_deg: float
    roll_deg: float


@dataclass(frozen=True)
class QualityReport:
    """FIQA of one face at one level: measured scores and checked items."""

    level: str
    brightness: float
    clarity: float
    face_size: float
    headpose: HeadPose
    partial: bool
    face_color: Optional[float]  # None when not assessed
    mask: int  # -1 not assessed (we have no mask model), 0 no mask, 1 mask
    occlusion: Sequence[int]  # one flag per checked region; [] when not assessed
    passed: Tuple[str, ...] = ()
    failed: Tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass(frozen=True)
class AnalyzedFace:
    """A face with what the caller asked for: quality and/or an L2-normalised feature."""

    face: DetectedFace
    quality: Optional[QualityReport] = None
    feature: Optional[np.ndarray] = None  # (D,) float32, unit norm


@dataclass(frozen=True)
class StageTimes:
    """Milliseconds spent per stage, for debug_info and benchmarks."""

    ms: Dict[str, float] = field(default_factory=dict)
