"""RGB liveness: is the face in front of the camera, or a photo or a screen held up to it?

The models are Silent-Face-Anti-Spoofing's MiniFASNets (minivision-ai, Apache-2.0; see
``models/liveness/SOURCE.md``): MiniFASNetV2 sees the face box grown 2.7x and
MiniFASNetV1SE sees it grown 4.0x, so between them they look at the skin texture and at
the surroundings where a phone's bezel or a paper's edge shows. Each takes an 80x80 BGR
crop as raw 0-255 floats and answers three-class logits; class 1 is "real". As in the
repository's ``test.py`` the models' softmaxes are combined; the score is the mean of their
class-1 probabilities, 0..1.

The crop follows the repository's ``CropImage`` rule exactly (``liveness_crop_box``), so
the converted models see what they were trained on: the box is grown about its centre, the
growth is capped so the crop fits in the image, a crop that overhangs an edge is slid back
inside rather than cut, and the pixels are resized to the model's input with bilinear
interpolation.

This is a small RGB model: it stops casual attacks (a printed photo, a phone screen) seen
by an ordinary camera, not determined ones (a good mask, a high-resolution screen at the
right distance). Portraits photographed from paper or screens are exactly what it is
trained to reject, so a scanned or downloaded portrait sent to the API may well be judged
not live.
"""

from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from sophon_face.backends.base import Backend, BackendError
from sophon_face.manifest.schema import ModelSpec

from .detector import blob_from_bgr
from .types import DetectedFace

log = logging.getLogger(__name__)

#: The models' class index meaning "a real face" (0 and 2 are the two kinds of spoof).
REAL_CLASS = 1

#: Live probability at or above which a face counts as live (models/liveness/SOURCE.md,
#: "Threshold"). With our detector's boxes, the repository's labelled camera captures
#: (34 real, 57 print or screen) leave a gap from 0.22 (highest spoof) to 0.53 (lowest real);
#: 0.5 lies in it and is where "real" outweighs both spoof classes together.
DEFAULT_LIVE_THRESHOLD = 0.5

#: (x0, y0, x1, y1), inclusive pixel bounds of a crop inside the image.
PixelBox = Tuple[int, int, int, int]


def liveness_crop_box(image_w: int, image_h: int, bbox_xyxy: Sequence[float],
                      scale: float) -> PixelBox:
    """The pixels a model grown ``scale`` times sees: the repository's CropImage rule.

    The box's width and height are ``xmax - xmin`` and ``ymax - ymin``. The growth is
    capped at what fits in the image ((side - 1) / box side), the grown box keeps the
    face's centre, and a box overhanging an edge is slid back inside. Bounds are truncated
    to ints and are inclusive, like the repository's.
    """
    xmin, ymin, xmax, ymax = (float(v) for v in bbox_xyxy[:4])
    box_w = max(xmax - xmin, 1.0)
    box_h = max(ymax - ymin, 1.0)
    scale = min((image_h - 1) / box_h, (image_w - 1) / box_w, float(scale))
    half_w, half_h = box_w * scale / 2.0, box_h * scale / 2.0
    centre_x, centre_y = xmin + box_w / 2.0, ymin + box_h / 2.0
    x0, x1 = _slide_inside(centre_x - half_w, centre_x + half_w, image_w - 1)
    y0, y1 = _slide_inside(centre_y - half_h, centre_y + half_h, image_h - 1)
    # int() truncates like the repository's; the clamp only catches float dust at 0.
    return (min(max(int(x0), 0), image_w - 1), min(max(int(y0), 0), image_h - 1),
            min(max(int(x1), 0), image_w - 1), min(max(int(y1), 0), image_h - 1))


def _slide_inside(low: float, high: float, last: int) -> Tuple[float, float]:
    """Shift [low, high] so it starts at >= 0 and ends at <= last (it is never longer)."""
    if low < 0:
        high -= low
        low = 0.0
    if high > last:
        low -= high - last
        high = float(last)
    return low, high


def liveness_crop(image_bgr: np.ndarray, bbox_xyxy: Sequence[float], scale: float,
                  size_wh: Tuple[int, int]) -> np.ndarray:
    """The ``size_wh`` BGR crop a liveness model takes for one face box."""
    height, width = image_bgr.shape[:2]
    x0, y0, x1, y1 = liveness_crop_box(width, height, bbox_xyxy, scale)
    patch = image_bgr[y0:y1 + 1, x0:x1 + 1]
    return cv2.resize(patch, (int(size_wh[0]), int(size_wh[1])), interpolation=cv2.INTER_LINEAR)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


class _Model:
    """One liveness model: its backend, its crop scale and its input geometry."""

    def __init__(self, backend: Backend, spec: ModelSpec) -> None:
        if spec.family != "minifasnet":
            raise BackendError(f"liveness model {spec.role!r}: family {spec.family!r} "
                               f"is not minifasnet")
        if spec.crop_scale is None or spec.crop_scale <= 0:
            raise BackendError(f"liveness model {spec.role!r}: the manifest gives no crop_scale")
        inputs = backend.input_specs()
        if len(inputs) != 1:
            raise BackendError(f"liveness model {spec.role!r} has {len(inputs)} inputs, expected 1")
        self.backend = backend
        self.spec = spec
        self.input_name = inputs[0].name
        self.output_name = backend.output_names()[0]
        self.size_wh = (int(spec.input_size[0]), int(spec.input_size[1]))

    def real_probabilities(self, image_bgr: np.ndarray,
                           faces: Sequence[DetectedFace]) -> np.ndarray:
        crops = [liveness_crop(image_bgr, face.bbox, float(self.spec.crop_scale), self.size_wh)
                 for face in faces]
        outputs = self.backend.run({self.input_name: blob_from_bgr(crops, self.spec)})
        logits = np.asarray(outputs[self.output_name], dtype=np.float32).reshape(len(faces), -1)
        if logits.shape[1] <= REAL_CLASS:
            raise BackendError(f"liveness model {self.spec.role!r} returned {logits.shape[1]} "
                               f"classes, expected 3")
        return _softmax(logits)[:, REAL_CLASS]


class RgbLiveness:
    """RGB liveness from one or more MiniFASNet models, each behind a ``Backend``.

    ``models`` pairs each backend with its manifest spec (roles ``liveness_v2`` and
    ``liveness_v1se``); each spec's ``crop_scale`` says how far its crop reaches around
    the face box. The score of a face is the mean of the models' class-1 ("real")
    probabilities. Model maths only: the caller compares the score with the threshold
    setting (``DEFAULT_LIVE_THRESHOLD`` unless configured).
    """

    def __init__(self, models: Sequence[Tuple[Backend, ModelSpec]]) -> None:
        if not models:
            raise BackendError("RgbLiveness needs at least one liveness model")
        self._models: List[_Model] = [_Model(backend, spec) for backend, spec in models]

    @property
    def roles(self) -> Tuple[str, ...]:
        return tuple(model.spec.role for model in self._models)

    def live_scores(self, image_bgr: np.ndarray, faces: Sequence[DetectedFace]) -> np.ndarray:
        """(N,) float32 probabilities that each face is real, one backend run per model."""
        if len(faces) == 0:
            return np.zeros((0,), dtype=np.float32)
        total = np.zeros((len(faces),), dtype=np.float64)
        for model in self._models:
            total += model.real_probabilities(image_bgr, faces)
        return np.clip(total / len(self._models), 0.0, 1.0).astype(np.float32)

    def live_score(self, image_bgr: np.ndarray, face: DetectedFace) -> float:
        """The probability, 0..1, that ``face`` in ``image_bgr`` is a real face."""
        return float(self.live_scores(image_bgr, [face])[0])

    def warm_up(self) -> None:
        """Score a grey image once; raises ``BackendError`` if a model answers wrongly."""
        image_bgr = np.full((160, 160, 3), 128, dtype=np.uint8)
        face = DetectedFace(bbox=np.array([56, 48, 104, 112], dtype=np.float32),
                            landmarks=np.zeros((5, 2), dtype=np.float32), score=1.0)
        score = self.live_score(image_bgr, face)
        log.debug("liveness warm-up (%s): grey image scores %.3f", ", ".join(self.roles), score)

    def close(self) -> None:
        for model in self._models:
            model.backend.close()
