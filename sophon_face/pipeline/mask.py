"""Face mask: AIZOOTech's mask SSD run on a square crop around each detected face.

The model (``models/mask/``, MIT) is a 1 M-parameter SSD trained on WIDER Face + MAFA. It
takes a 260x260 RGB image scaled to 0..1 and gives, for each of its 5,972 anchors, box
offsets (N, 4) and two independent sigmoid scores (N, 2): column 0 "mask", column 1 "no
mask". Anchors: feature maps 33/17/9/5/3, two sizes per level at aspect ratio 1 plus the
first size at ratios 0.62 and 0.42 (width / height), centred on each cell; offsets decode
SSD-style with variances 0.1 (centre) and 0.2 (log size), in units of the input side.

Why a crop per face and not one run on the whole photo: our detector has already found
the faces, and in a whole photo letterboxed to 260 px a face of a group photo shrinks
below the smallest anchor (0.04 of the side = 10 px). The crop is a square 1.5x the face
box's longer side (``CROP_SCALE``; a manifest's ``crop_scale`` overrides it): the whole
head with its chin and a little context, the face at two thirds of the crop, where the two
coarsest anchor levels fit it. Measured on tests/data and the devset with masks drawn
from the landmarks, 1.4-1.75 separate bare from masked faces equally well; from 1.875 on
the face gets too small and errors appear on both sides.

Which anchor answers for the face: the one maximising face confidence x IoU with our
detector's box, in crop coordinates (median IoU 0.91 on 107 test faces). Its two sigmoids
become one probability, mask / (mask + no mask): they are per-class sigmoids, not a
softmax, and the ratio stays meaningful when the SSD barely sees a face (both scores low:
strong profiles, heavy blur), so such a face still gets the best-overlapping anchor's
answer. Only when no decoded box overlaps the face at all (never seen on real faces) is
the answer ``UNDECIDED`` (0.5).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from sophon_face.backends.base import Backend, BackendError
from sophon_face.manifest.schema import ModelSpec

from .detector import blob_from_bgr
from .types import DetectedFace

log = logging.getLogger(__name__)

#: (feature map side, anchor sizes as fractions of the input side), coarsest last.
ANCHOR_LEVELS: Tuple[Tuple[int, Tuple[float, float]], ...] = (
    (33, (0.04, 0.056)), (17, (0.08, 0.11)), (9, (0.16, 0.22)), (5, (0.32, 0.45)), (3, (0.64, 0.72)),
)
#: Aspect ratios (width / height); the first applies to every size, the others to the first.
ANCHOR_RATIOS: Tuple[float, ...] = (1.0, 0.62, 0.42)
#: SSD box-coding variances: centre offsets, log width/height.
CENTRE_VARIANCE = 0.1
SIZE_VARIANCE = 0.2
MASK_CLASS, NO_MASK_CLASS = 0, 1  # columns of the score output

#: Side of the square crop, in units of the face box's longer side.
CROP_SCALE = 1.5
#: Padding for an image smaller than the crop: mid grey, the least mask-like value.
BORDER_BGR = (128, 128, 128)
#: The answer when no anchor box overlaps the face at all.
UNDECIDED = 0.5


def ssd_anchors() -> np.ndarray:
    """(5972, 4) anchors as (centre x, centre y, width, height), fractions of the input side.

    Order: level, then cell row, then cell column, then the four anchors of the cell
    (size 1 and size 2 at ratio 1, size 1 at 0.62, size 1 at 0.42): the model's output order.
    """
    levels = []
    for side, sizes in ANCHOR_LEVELS:
        shapes = [(s * np.sqrt(ANCHOR_RATIOS[0]), s / np.sqrt(ANCHOR_RATIOS[0])) for s in sizes]
        shapes += [(sizes[0] * np.sqrt(r), sizes[0] / np.sqrt(r)) for r in ANCHOR_RATIOS[1:]]
        centres = (np.arange(side, dtype=np.float64) + 0.5) / side
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        cells = np.stack([cx.ravel(), cy.ravel()], axis=1)  # row-major: y outer, x inner
        wh = np.asarray(shapes, dtype=np.float64)
        level = np.concatenate([
            np.repeat(cells, len(shapes), axis=0), np.tile(wh, (len(cells), 1))], axis=1)
        levels.append(level)
    return np.concatenate(levels).astype(np.float32)


def decode_boxes(offsets: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(N, 4) SSD offsets -> (N, 4) boxes (xmin, ymin, xmax, ymax), fractions of the side."""
    centre = anchors[:, :2] + offsets[:, :2] * CENTRE_VARIANCE * anchors[:, 2:]
    size = anchors[:, 2:] * np.exp(offsets[:, 2:] * SIZE_VARIANCE)
    return np.concatenate([centre - size / 2.0, centre + size / 2.0], axis=1)


def iou_with(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each row of ``boxes`` (N, 4) with one ``box`` (4,), all xyxy."""
    inter_w = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0.0, None)
    inter_h = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0.0, None)
    inter = inter_w * inter_h
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)
    union = areas + (box[2] - box[0]) * (box[3] - box[1]) - inter
    return np.where(union > 0.0, inter / np.maximum(union, 1e-12), 0.0)


def square_crop(image_bgr: np.ndarray, bbox: np.ndarray, scale: float,
                side_px: int, border_bgr: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """A ``side_px`` square crop around ``bbox`` grown ``scale`` x its longer side.

    The square is slid back inside the image where it sticks out, rather than padded:
    a black band under a face at the bottom edge reads to the model as a dark mask
    (a bare face at a photo's bottom edge scored 0.56 with black padding, 0.13 slid
    inside). Only an image
    smaller than the square is padded, with ``border_bgr``. Returns the crop and the
    square's (x0, y0, side) in image pixels.
    """
    x0, y0, x1, y1 = (float(v) for v in bbox[:4])
    size = int(round(max(2.0, scale * max(x1 - x0, y1 - y0))))
    h, w = image_bgr.shape[:2]
    left = _slide_inside(int(round((x0 + x1 - size) / 2.0)), size, w)
    top = _slide_inside(int(round((y0 + y1 - size) / 2.0)), size, h)
    window = image_bgr[max(0, top):min(h, top + size), max(0, left):min(w, left + size)]
    pads = (max(0, -top), max(0, top + size - h), max(0, -left), max(0, left + size - w))
    if any(pads):
        window = cv2.copyMakeBorder(window, *pads, cv2.BORDER_CONSTANT, value=border_bgr)
    # INTER_AREA when shrinking: a face of a big photo shrinks many times and would alias.
    interp = cv2.INTER_AREA if size > side_px else cv2.INTER_LINEAR
    crop = cv2.resize(window, (side_px, side_px), interpolation=interp)
    return crop, np.array([left, top, size], dtype=np.float32)


def _slide_inside(start: int, size: int, limit: int) -> int:
    """``start`` moved so that [start, start + size) lies in [0, limit); centred if it cannot."""
    if size >= limit:
        return (limit - size) // 2
    return min(max(start, 0), limit - size)


class MaskClassifier:
    """Probability that a detected face wears a mask, from the mask SSD behind a ``Backend``."""

    def __init__(self, backend: Backend, spec: ModelSpec) -> None:
        if spec.family != "aizoo_ssd":
            raise BackendError(f"no mask decoder for family {spec.family!r}")
        inputs = backend.input_specs()
        if len(inputs) != 1:
            raise BackendError(f"mask model has {len(inputs)} inputs, expected 1")
        side_w, side_h = int(spec.input_size[0]), int(spec.input_size[1])
        shape = tuple(inputs[0].shape)
        if side_w != side_h or (len(shape) == 4 and shape[2:] not in ((side_h, side_w), (None, None))):
            raise BackendError(f"mask model input is {shape}, manifest says {side_w}x{side_h}")
        self._backend = backend
        self._spec = spec
        self._input_name = inputs[0].name
        self._side_px = side_w
        self._crop_scale = float(spec.crop_scale or CROP_SCALE)
        self._anchors = ssd_anchors()

    def mask_scores(self, image_bgr: np.ndarray, faces: Sequence[DetectedFace]) -> List[float]:
        """For each face (full-image pixel boxes), the probability 0..1 that it wears a mask."""
        if not faces:
            return []
        crops, frames = [], []
        for face in faces:
            crop, frame = square_crop(image_bgr, face.bbox, self._crop_scale, self._side_px, BORDER_BGR)
            crops.append(crop)
            frames.append(frame)
        outputs = self._backend.run({self._input_name: blob_from_bgr(crops, self._spec)})
        offsets, scores = self._split_outputs(outputs, len(faces))
        result = []
        for i, (face, frame) in enumerate(zip(faces, frames)):
            face_box = (np.asarray(face.bbox[:4], dtype=np.float32) - frame[[0, 1, 0, 1]]) / frame[2]
            result.append(self._score_one(offsets[i], scores[i], face_box))
        return result

    def _split_outputs(self, outputs: Dict[str, np.ndarray],
                       batch: int) -> Tuple[np.ndarray, np.ndarray]:
        """(offsets (B, N, 4), scores (B, N, 2)), told apart by width, not by name or order:
        a bmodel's output names need not be the ONNX ones."""
        by_width: Dict[int, np.ndarray] = {}
        for value in outputs.values():
            array = np.asarray(value, dtype=np.float32).reshape(batch, len(self._anchors), -1)
            by_width[array.shape[2]] = array
        if set(by_width) != {4, 2}:
            raise BackendError(f"mask model outputs have widths {sorted(by_width)}, expected 2 and 4")
        return by_width[4], by_width[2]

    def _score_one(self, offsets: np.ndarray, scores: np.ndarray, face_box: np.ndarray) -> float:
        boxes = decode_boxes(offsets, self._anchors)
        fit = iou_with(boxes, face_box) * scores.max(axis=1)
        best = int(np.argmax(fit))
        if fit[best] <= 0.0:
            return UNDECIDED
        mask, no_mask = float(scores[best, MASK_CLASS]), float(scores[best, NO_MASK_CLASS])
        return mask / max(mask + no_mask, 1e-6)

    def warm_up(self) -> None:
        """One run on a grey image; raises ``BackendError`` if the outputs do not fit."""
        grey = np.full((self._side_px, self._side_px, 3), 128, dtype=np.uint8)
        face = DetectedFace(bbox=np.array([65, 65, 195, 195], np.float32),
                            landmarks=np.zeros((5, 2), np.float32), score=1.0)
        log.debug("mask model warm-up: %.3f", self.mask_scores(grey, [face])[0])

    def close(self) -> None:
        self._backend.close()
