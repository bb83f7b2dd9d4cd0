"""Face detection: letterbox, one backend run, family-specific decoding, NMS.

The maths is written once against the ``Backend`` protocol, so the same decoding runs on
ONNX Runtime and on SAIL. Two decoder families are supported:

* ``yunet`` (OpenCV's YuNet, 2023mar export): anchor-free, strides 8/16/32, one prior per
  cell. Outputs are named ``cls_<s>``, ``obj_<s>``, ``bbox_<s>`` and ``kps_<s>``. The
  decoding mirrors OpenCV's ``FaceDetectorYN``: score = sqrt(clip(cls) * clip(obj)); box
  centre = (cell + offset) * stride, size = exp(log-size) * stride; keypoints =
  (cell + offset) * stride.
* ``scrfd`` (InsightFace's SCRFD with keypoints): strides 8/16/32, usually two anchors per
  cell, outputs score (N, 1), bbox distances (N, 4) and keypoint offsets (N, 10), all in
  stride units measured from the anchor point. Output names differ between exports, so
  the outputs are matched by shape (width 1/4/10, row count -> stride), never by order.

Landmarks come out in image order: left eye, right eye, nose, left mouth, right mouth as
seen in the picture (YuNet's and SCRFD's native order).

The letterbox shrinks a photo larger than the model input and never enlarges a smaller one
(issue 9; measured with ``scripts/fidelity_check.py``). Enlarging a small photo to fill
640x640 hands YuNet faces of 300-640 px, where its confidence falls once the head is tilted:
on tight crops of the tests/data portraits (the face filling 80-100 % of a 160 or 250 px
photo, rolled 0 or +-35 degrees) enlarging refused 16 of 162 crops at score 0.7, and not
enlarging none (lowest score 0.88). This is the likely cause of the one LFW pair (250x250
photos) the daemon refused and OpenCV did not; letterboxing without enlarging accepted it
(issue 9's own measurement on LFW, which is not used here). Kept at its own size, a
small photo is seen exactly as ``FaceDetectorYN`` sees it at the image's own input size (its
samples' call): features agree with OpenCV's bare pipeline to cosine >= 0.998 where the
alignment crop is a single warp (0.93-0.97 before). On the devset (63 photos, 1953 pairs)
TAR at FAR 1e-3 went from 99.17 % to 100 % (one pair) and the lowest same-person cosine
from 0.433 to 0.488 (both through one 560x415 photo), d' from 6.57 to 6.77; the 27 same-person
pairs that changed moved by +0.005 on average (12 up, 15 down), so for recognition alone the
change is neutral within this set's noise. What it removes is the refusals. The cost is at
the other end: the devset and tests/data photos shrunk to a 64 or 96 px long side (faces of
20-40 px) were refused 10 times in 144, none when enlarged, and 9 times by OpenCV itself;
the API's smallest recognisable face is 40 px (REGN_MIN_FACE).
"""

from __future__ import annotations

import logging
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np

from sophon_face.backends.base import Backend, BackendError
from sophon_face.manifest.schema import ModelSpec

from .types import DetectedFace

log = logging.getLogger(__name__)

STRIDES: Tuple[int, ...] = (8, 16, 32)

#: Candidates kept for NMS, highest scores first; OpenCV's FaceDetectorYN uses the same cap.
MAX_NMS_CANDIDATES = 5000

#: (boxes (N, 4) xyxy, landmarks (N, 5, 2), scores (N,)), all float32, model-input pixels.
Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]


def blob_from_bgr(images_bgr: Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """Same-size HxWx3 uint8 BGR images -> the model's normalised float32 NCHW blob.

    ``spec.mean`` and ``spec.std`` are given in the model's channel order.
    """
    batch = np.stack([np.asarray(img) for img in images_bgr]).astype(np.float32)
    if spec.color_order == "rgb":
        batch = batch[..., ::-1]
    mean = np.asarray(spec.mean, dtype=np.float32)
    std = np.asarray(spec.std, dtype=np.float32)
    if np.any(mean != 0.0):
        batch = batch - mean
    if np.any(std != 1.0):
        batch = batch / std
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def letterbox(image_bgr: np.ndarray, input_size: Tuple[int, int]) -> Tuple[np.ndarray, float, float]:
    """Shrink the image to fit ``input_size`` (w, h) keeping its aspect (a smaller image
    keeps its own size: see the module docstring); pad bottom and right with black.

    Returns the canvas and the x and y scales (model pixels per original pixel). Padding
    only at the bottom/right keeps the mapping back a pure scale.
    """
    in_w, in_h = int(input_size[0]), int(input_size[1])
    h, w = image_bgr.shape[:2]
    scale = min(in_w / w, in_h / h, 1.0)
    new_w = min(in_w, max(1, int(round(w * scale))))
    new_h = min(in_h, max(1, int(round(h * scale))))
    if (new_w, new_h) == (w, h):
        resized = image_bgr
    else:
        # INTER_AREA: big photos are shrunk 4-8x and would alias otherwise, which costs
        # small faces (group photos) their detections.
        resized = cv2.resize(image_bgr, (new_w, new_h), interpolation=cv2.INTER_AREA)
    canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, new_w / w, new_h / h


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; indices of the kept boxes, best score first."""
    if len(boxes) == 0:
        return np.zeros((0,), dtype=np.int64)
    order = np.argsort(-scores, kind="stable")[:MAX_NMS_CANDIDATES]
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = np.maximum(0.0, x2 - x1) * np.maximum(0.0, y2 - y1)
    keep: List[int] = []
    while order.size:
        best = int(order[0])
        keep.append(best)
        rest = order[1:]
        inter_w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]))
        inter_h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]))
        inter = inter_w * inter_h
        union = areas[best] + areas[rest] - inter
        iou = np.where(union > 0.0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _grid_points(cols: int, rows: int, anchors: int) -> np.ndarray:
    """(rows*cols*anchors, 2) cell coordinates (col, row), row-major, anchors innermost."""
    cs, rs = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    points = np.stack([cs.ravel(), rs.ravel()], axis=1)
    return np.repeat(points, anchors, axis=0) if anchors > 1 else points


def _empty() -> Detections:
    return (np.zeros((0, 4), np.float32), np.zeros((0, 5, 2), np.float32), np.zeros((0,), np.float32))


def _concat(parts: List[Detections]) -> Detections:
    if not parts:
        return _empty()
    return tuple(np.concatenate([p[i] for p in parts]).astype(np.float32)  # type: ignore[return-value]
                 for i in range(3))


def _one_image(arr: np.ndarray) -> np.ndarray:
    """Drop the batch axis of a batch-1 output; some exports omit it."""
    return arr[0] if arr.ndim == 3 else arr


def decode_yunet(outputs: Dict[str, np.ndarray], input_size: Tuple[int, int],
                 score_threshold: float) -> Detections:
    """Decode YuNet (2023mar) outputs of ONE image into boxes, landmarks and scores."""
    in_w, in_h = int(input_size[0]), int(input_size[1])
    parts: List[Detections] = []
    for stride in STRIDES:
        # Like FaceDetectorYN: the grid covers the input rounded up to a multiple of 32.
        cols = -(-in_w // 32) * 32 // stride
        rows = -(-in_h // 32) * 32 // stride
        try:
            cls = _one_image(outputs[f"cls_{stride}"]).reshape(-1)
            obj = _one_image(outputs[f"obj_{stride}"]).reshape(-1)
            bbox = _one_image(outputs[f"bbox_{stride}"]).reshape(-1, 4)
            kps = _one_image(outputs[f"kps_{stride}"]).reshape(-1, 10)
        except KeyError as exc:
            raise BackendError(f"yunet decoder: model has no output {exc}") from exc
        if cls.shape[0] != rows * cols:
            raise BackendError(
                f"yunet decoder: stride {stride} has {cls.shape[0]} cells, expected {rows * cols} "
                f"for input {in_w}x{in_h}")
        scores = np.sqrt(np.clip(cls, 0.0, 1.0) * np.clip(obj, 0.0, 1.0))
        hit = np.nonzero(scores >= score_threshold)[0]
        if hit.size == 0:
            continue
        cells = _grid_points(cols, rows, 1)[hit]
        box = bbox[hit]
        centre = (cells + box[:, :2]) * stride
        size = np.exp(box[:, 2:4]) * stride
        boxes = np.concatenate([centre - size / 2.0, centre + size / 2.0], axis=1)
        marks = (kps[hit].reshape(-1, 5, 2) + cells[:, None, :]) * stride
        parts.append((boxes, marks, scores[hit]))
    return _concat(parts)


def _scrfd_by_stride(outputs: Dict[str, np.ndarray], in_w: int, in_h: int) -> Dict[int, Dict[int, np.ndarray]]:
    """{stride: {width: (rows, width)}} for width 1 (score), 4 (bbox), 10 (kps)."""
    cells = {s: (in_w // s) * (in_h // s) for s in STRIDES}
    found: Dict[int, Dict[int, np.ndarray]] = {s: {} for s in STRIDES}
    for name, raw in outputs.items():
        arr = _one_image(raw)
        if arr.ndim != 2 or arr.shape[1] not in (1, 4, 10):
            continue
        for stride, n_cells in cells.items():
            if arr.shape[0] % n_cells == 0 and arr.shape[0] // n_cells in (1, 2, 3):
                # The per-stride cell counts differ by 4x, and anchors per cell are 1-3,
                # so exactly one stride fits each row count.
                if arr.shape[1] in found[stride]:
                    raise BackendError(f"scrfd decoder: two outputs of shape {arr.shape} ({name})")
                found[stride][arr.shape[1]] = arr
                break
    for stride in STRIDES:
        missing = [w for w in (1, 4, 10) if w not in found[stride]]
        if missing:
            raise BackendError(
                f"scrfd decoder: no output of width {missing} for stride {stride} "
                f"(a model with keypoints and strides 8/16/32 is required)")
    return found


def decode_scrfd(outputs: Dict[str, np.ndarray], input_size: Tuple[int, int],
                 score_threshold: float) -> Detections:
    """Decode SCRFD (with keypoints) outputs of ONE image into boxes, landmarks and scores."""
    in_w, in_h = int(input_size[0]), int(input_size[1])
    by_stride = _scrfd_by_stride(outputs, in_w, in_h)
    parts: List[Detections] = []
    for stride in STRIDES:
        cols, rows = in_w // stride, in_h // stride
        score = by_stride[stride][1].reshape(-1)
        anchors = score.shape[0] // (cols * rows)
        hit = np.nonzero(score >= score_threshold)[0]
        if hit.size == 0:
            continue
        # Anchor points sit at the cell's top-left corner (no half-cell offset) in SCRFD.
        points = _grid_points(cols, rows, anchors)[hit] * stride
        dist = by_stride[stride][4][hit] * stride
        boxes = np.concatenate([points - dist[:, :2], points + dist[:, 2:4]], axis=1)
        marks = by_stride[stride][10][hit].reshape(-1, 5, 2) * stride + points[:, None, :]
        parts.append((boxes, marks, score[hit]))
    return _concat(parts)


_DECODERS = {"yunet": decode_yunet, "scrfd": decode_scrfd}


class Detector:
    """Finds faces in a BGR image with a detector model behind a ``Backend``."""

    def __init__(self, backend: Backend, spec: ModelSpec) -> None:
        if spec.family not in _DECODERS:
            raise BackendError(f"no decoder for detector family {spec.family!r}")
        inputs = backend.input_specs()
        if len(inputs) != 1:
            raise BackendError(f"detector model has {len(inputs)} inputs, expected 1")
        shape = tuple(inputs[0].shape)
        in_w, in_h = int(spec.input_size[0]), int(spec.input_size[1])
        if len(shape) == 4 and shape[2] is not None and shape[3] is not None \
                and (shape[2], shape[3]) != (in_h, in_w):
            raise BackendError(
                f"detector model input is {shape[3]}x{shape[2]}, manifest says {in_w}x{in_h}")
        self._backend = backend
        self._spec = spec
        self._input_name = inputs[0].name
        self._decode = _DECODERS[spec.family]

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    def detect(self, image_bgr: np.ndarray) -> List[DetectedFace]:
        """All faces, largest bbox area first, in original-image pixels."""
        h, w = image_bgr.shape[:2]
        if h == 0 or w == 0:
            return []
        canvas, sx, sy = letterbox(image_bgr, self._spec.input_size)
        outputs = self._backend.run({self._input_name: blob_from_bgr([canvas], self._spec)})
        boxes, marks, scores = self._decode(outputs, self._spec.input_size, self._spec.score_threshold)
        keep = nms(boxes, scores, self._spec.nms_iou)
        scale = np.array([sx, sy], dtype=np.float32)
        faces: List[DetectedFace] = []
        for i in keep:
            box = (boxes[i].reshape(2, 2) / scale).reshape(4)
            box = np.clip(box, 0.0, [w, h, w, h]).astype(np.float32)
            if box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0:
                continue  # a sliver left over after clipping to the image is no face
            faces.append(DetectedFace(
                bbox=box, landmarks=(marks[i] / scale).astype(np.float32), score=float(scores[i])))
        faces.sort(key=lambda f: f.area, reverse=True)
        log.debug("detected %d faces in a %dx%d image", len(faces), w, h)
        return faces

    def close(self) -> None:
        self._backend.close()
