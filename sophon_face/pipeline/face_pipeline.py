"""The face stages in request order: detect -> pick -> align -> quality -> embed.

One ``FacePipeline`` lives in each worker, next to the backends it was built on (its
own sessions, or its clients of backends shared by all workers); it is synchronous and
used from that worker's thread only.
"""

from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Sequence

import numpy as np

from sophon_face.errors import LowQualityError, NoFaceError

from .align import align_face
from .detector import Detector
from .embedder import Embedder
from .extras import FaceExtras
from .quality import QualityThresholds, assess, estimate_headpose, normalize_fiqa_level
from .types import AnalyzedFace, DecodedImage, DetectedFace, HeadPose

log = logging.getLogger(__name__)

#: Side of the synthetic warm-up image; any size the letterbox accepts would do.
_WARM_UP_SIDE_PX = 320


class _Stopwatch:
    """Adds the milliseconds of each stage to a caller's dict (or to nothing)."""

    def __init__(self, times: Optional[Dict[str, float]]) -> None:
        self._times = times
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        if self._times is not None:
            self._times[stage] = self._times.get(stage, 0.0) + (now - self._last) * 1000.0
        self._last = now


class FacePipeline:
    """Detector + embedder + quality limits, behind the calls the workers make."""

    def __init__(self, detector: Detector, embedder: Embedder, thresholds: QualityThresholds,
                 extras: Optional[FaceExtras] = None) -> None:
        self._detector = detector
        self._embedder = embedder
        self._thresholds = thresholds
        #: The optional models (attributes, mask, liveness); empty when the profile has none.
        self.extras = extras if extras is not None else FaceExtras()

    @property
    def feature_dim(self) -> int:
        return self._embedder.feature_dim

    @property
    def thresholds(self) -> QualityThresholds:
        return self._thresholds

    def detect(self, image: DecodedImage) -> List[DetectedFace]:
        """All faces, largest first; ``NoFaceError`` naming the image's parameter if none."""
        faces = self._detector.detect(image.image_bgr)
        if not faces:
            raise NoFaceError(image.param)
        return faces

    def detect_bgr(self, image_bgr: np.ndarray) -> List[DetectedFace]:
        """All faces of a raw frame, largest first; ``[]`` when there is none."""
        return self._detector.detect(image_bgr)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) unit features of aligned crops, in one embedder run."""
        return self._embedder.embed(list(crops))

    def analyze_largest(self, image: DecodedImage, fiqa_level: str, with_feature: bool = True,
                        min_face_size: Optional[float] = None, raise_on_low_quality: bool = True,
                        times: Optional[Dict[str, float]] = None,
                        faces: Optional[Sequence[DetectedFace]] = None) -> AnalyzedFace:
        """The largest face (of short side >= ``min_face_size`` if given), its quality at
        ``fiqa_level`` and, if asked, its feature.

        Raises ``NoFaceError`` when there is no face, ``LowQualityError("face_size")`` when
        every face is smaller than ``min_face_size``, and ``LowQualityError`` with the
        failed items when the face fails the level and ``raise_on_low_quality`` is set.
        ``faces`` (from ``detect``) skips detection, for callers that must report every
        image's missing face before any quality failure (compare).
        """
        level = normalize_fiqa_level(fiqa_level)
        watch = _Stopwatch(times)
        if faces is None:
            faces = self.detect(image)
            watch.lap("detect")
        if min_face_size is not None:
            faces = [f for f in faces if f.short_side >= min_face_size]
            if not faces:
                raise LowQualityError("face_size")
        face = faces[0]
        crop = align_face(image.image_bgr, face.landmarks)
        watch.lap("align")
        # The mask model runs only where its verdict is checked (``high``).
        wears_mask = self.extras.wears_mask(image.image_bgr, face) if level == "high" else None
        report = assess(image.image_bgr, face, crop, level, self._thresholds, wears_mask)
        watch.lap("quality")
        if report.failed and raise_on_low_quality:
            raise LowQualityError(",".join(report.failed))
        feature = None
        if with_feature:
            feature = self._embedder.embed([crop])[0]
            watch.lap("embed")
        return AnalyzedFace(face=face, quality=report, feature=feature)

    def features_of(self, image: DecodedImage, faces: Sequence[DetectedFace]) -> np.ndarray:
        """(N, D) features of ``faces`` of ``image``: every crop in one embedder run."""
        crops = [align_face(image.image_bgr, face.landmarks) for face in faces]
        return self._embedder.embed(crops)

    def headpose_of(self, face: DetectedFace) -> HeadPose:
        return estimate_headpose(face.landmarks, face.bbox)

    def warm_up(self) -> bool:
        """Run both models once on a synthetic image; True, or the backend's exception."""
        # Noise, not a photo: warm-up must not depend on data files being installed.
        rng = np.random.default_rng(0)
        image_bgr = rng.integers(0, 256, (_WARM_UP_SIDE_PX, _WARM_UP_SIDE_PX, 3), dtype=np.uint8)
        started = time.perf_counter()
        faces = self._detector.detect(image_bgr)
        self._embedder.warm_up()
        log.info("face pipeline warmed up in %.0f ms (%d faces in the noise image, %d-d features)",
                 (time.perf_counter() - started) * 1000.0, len(faces), self.feature_dim)
        return True

    def close(self) -> None:
        """Release both models' runtime sessions (on the thread that used them)."""
        self._detector.close()
        self._embedder.close()
        self.extras.close()
