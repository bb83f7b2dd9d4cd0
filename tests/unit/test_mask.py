"""Mask: anchors and decoding against the model's output layout, the crop, and the committed
ONNX model on real photos: bare faces score low, masks drawn over nose and mouth score high.

No licence-clear photo of a real masked person could be obtained here, so the masked faces
are the test photos with a mask-coloured polygon drawn from the detector's landmarks.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import pytest

from sophon_face.backends.base import BackendError, TensorSpec
from sophon_face.manifest.schema import ModelSource, ModelSpec
from sophon_face.pipeline.mask import (
    BORDER_BGR, MaskClassifier, decode_boxes, square_crop, ssd_anchors,
)
from sophon_face.pipeline.types import DetectedFace

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
MASK_ONNX = MODELS_DIR / "mask" / "face_mask_detection.onnx"
#: The entry models/cpu.yaml gives (or will give) the mask role.
MASK_SPEC = ModelSpec(
    role="mask", family="aizoo_ssd",
    source=ModelSource(file="mask/face_mask_detection.onnx",
                       sha256="1d013ecbd495e57bec619b5d657356d9875458e3e88d92cfb15c3bf01e6dc9e8"),
    input_size=(260, 260), batch_sizes=(1,), color_order="rgb",
    mean=(0.0, 0.0, 0.0), std=(255.0, 255.0, 255.0))

#: Colour photos and paintings with one clear, roughly frontal face each.
PORTRAITS = ("macron_2014.jpg", "macron_2025.jpg", "ardern_2018.jpg", "ardern_2022.jpg",
             "obama_senate.jpg", "sunak.jpg", "astronaut_collins.jpg", "newton.png", "gauss.png")
#: Surgical light blue, white, black (BGR).
MASK_COLOURS = {"light_blue": (230, 200, 150), "white": (240, 240, 240), "black": (30, 30, 30)}
THRESHOLD = 0.5


class _FakeBackend:
    runtime = "fake"

    def __init__(self, shape=(1, 3, 260, 260), outputs=None) -> None:
        self._shape = shape
        self._outputs = outputs or {}
        self.closed = False

    def input_specs(self) -> List[TensorSpec]:
        return [TensorSpec("data", self._shape)]

    def output_names(self) -> List[str]:
        return list(self._outputs)

    def run(self, feeds):
        batch = next(iter(feeds.values())).shape[0]
        return {k: np.repeat(v, batch, axis=0) for k, v in self._outputs.items()}

    def close(self) -> None:
        self.closed = True


def draw_mask(image_bgr: np.ndarray, face: DetectedFace, colour_bgr: Tuple[int, int, int]) -> np.ndarray:
    """A copy with a mask-shaped polygon from the nose bridge to below the chin.

    Built in the face's own frame (x along the eyes, y from the eye line to the mouth) so it
    follows roll; units are the eye distance across and the eye-to-mouth height down.
    """
    left_eye, right_eye, _, mouth_left, mouth_right = face.landmarks.astype(np.float64)
    eye_mid, mouth_mid = (left_eye + right_eye) / 2.0, (mouth_left + mouth_right) / 2.0
    across = right_eye - left_eye
    eye_dist = float(np.linalg.norm(across))
    across /= eye_dist
    down = np.array([-across[1], across[0]])
    if np.dot(down, mouth_mid - eye_mid) < 0:
        down = -down
    height = float(np.dot(mouth_mid - eye_mid, down))
    outline = ((-1.05, 0.40), (-0.5, 0.28), (0.0, 0.24), (0.5, 0.28), (1.05, 0.40),
               (1.0, 1.05), (0.7, 1.55), (0.0, 1.78), (-0.7, 1.55), (-1.0, 1.05))
    points = np.array([eye_mid + x * eye_dist * across + y * height * down for x, y in outline])
    out = image_bgr.copy()
    cv2.fillPoly(out, [np.round(points).astype(np.int32)], colour_bgr, lineType=cv2.LINE_AA)
    return out


@pytest.fixture(scope="module")
def mask_classifier(cpu_manifest):
    pytest.importorskip("onnxruntime")
    from sophon_face.backends.onnx import OnnxBackend
    from sophon_face.manifest.files import source_path

    spec = cpu_manifest.model("mask") or MASK_SPEC  # the same entry, until cpu.yaml has it
    path = source_path(spec, cpu_manifest.base_dir)
    classifier = MaskClassifier(OnnxBackend(str(path), intra_op_threads=2), spec)
    classifier.warm_up()
    yield classifier
    classifier.close()


@pytest.fixture(scope="module")
def portrait_faces(detector, load_test_image):
    """(name, image_bgr, largest face) of each portrait."""
    found = []
    for name in PORTRAITS:
        image = load_test_image(name).image_bgr
        faces = detector.detect(image)
        assert faces, name
        found.append((name, image, faces[0]))
    return found


# --- model maths ---------------------------------------------------------------------------

def test_anchors_follow_the_model_layout():
    anchors = ssd_anchors()
    assert anchors.shape == (5972, 4) and anchors.dtype == np.float32
    # First cell of the 33x33 map: sizes 0.04 and 0.056 square, then 0.04 at ratios 0.62, 0.42.
    np.testing.assert_allclose(anchors[:4, :2], 0.5 / 33, rtol=1e-6)
    np.testing.assert_allclose(anchors[:2, 2:], [[0.04, 0.04], [0.056, 0.056]], rtol=1e-6)
    ratios = anchors[2:4, 2] / anchors[2:4, 3]
    np.testing.assert_allclose(ratios, [0.62, 0.42], rtol=1e-5)
    # Next cell is one column to the right; the last anchor is the 3x3 map's corner cell.
    assert anchors[4, 0] == pytest.approx(1.5 / 33) and anchors[4, 1] == pytest.approx(0.5 / 33)
    np.testing.assert_allclose(anchors[-1, :2], [2.5 / 3, 2.5 / 3], rtol=1e-6)
    assert anchors[-1, 3] == pytest.approx(0.64 / np.sqrt(0.42))


def test_decode_zero_offsets_gives_the_anchor_boxes():
    anchors = np.array([[0.5, 0.5, 0.2, 0.4]], np.float32)
    np.testing.assert_allclose(decode_boxes(np.zeros((1, 4), np.float32), anchors),
                               [[0.4, 0.3, 0.6, 0.7]], rtol=1e-6)
    # One unit of offset moves the centre 0.1 anchor widths and scales the size by e^0.2.
    moved = decode_boxes(np.array([[1.0, 0.0, 1.0, 0.0]], np.float32), anchors)[0]
    assert (moved[0] + moved[2]) / 2 == pytest.approx(0.5 + 0.1 * 0.2)
    assert moved[2] - moved[0] == pytest.approx(0.2 * np.exp(0.2))


def test_crop_slides_inside_the_image_and_pads_only_small_images():
    image = np.full((400, 600, 3), 200, np.uint8)
    crop, frame = square_crop(image, np.array([500, 300, 580, 390], np.float32), 1.5, 260, BORDER_BGR)
    assert crop.shape == (260, 260, 3) and crop.min() == 200  # no padding: slid up and left
    assert frame.tolist() == [465.0, 265.0, 135.0]
    small = np.full((50, 50, 3), 200, np.uint8)
    crop, frame = square_crop(small, np.array([0, 0, 50, 50], np.float32), 1.5, 260, BORDER_BGR)
    assert frame.tolist() == [-13.0, -13.0, 75.0]  # centred: 13 + 12 px of grey
    assert tuple(crop[0, 0]) == BORDER_BGR and tuple(crop[130, 130]) == (200, 200, 200)


def test_the_anchor_that_fits_the_face_answers_and_outputs_are_told_apart_by_width():
    anchors = ssd_anchors()
    # A 130 px face in the middle of a 260 px image: its 1.5x crop is 195 px, where the face
    # spans 1/6..5/6; the 3x3 map's centre anchor of size 0.64 fits it best (IoU 0.92).
    face = DetectedFace(bbox=np.array([65, 65, 195, 195], np.float32),
                        landmarks=np.zeros((5, 2), np.float32), score=1.0)
    centres = anchors[:, :2]
    best = int(np.argmin(np.abs(centres - 0.5).sum(1) + np.abs(anchors[:, 2] - 2 / 3)))
    offsets = np.zeros((1, len(anchors), 4), np.float32)
    scores = np.full((1, len(anchors), 2), [0.02, 0.9], np.float32)  # everywhere "no mask"...
    scores[0, best] = [0.9, 0.3]  # ...except the anchor that fits the face
    assert anchors[best, 2] == pytest.approx(0.64) and anchors[best, 0] == pytest.approx(0.5)
    backend = _FakeBackend(outputs={"scores": scores, "boxes": offsets})
    classifier = MaskClassifier(backend, MASK_SPEC)
    image = np.full((260, 260, 3), 128, np.uint8)
    (score,) = classifier.mask_scores(image, [face])
    assert score == pytest.approx(0.9 / 1.2)
    assert classifier.mask_scores(image, []) == []
    classifier.close()
    assert backend.closed


def test_rejects_a_model_that_does_not_fit():
    with pytest.raises(BackendError):
        MaskClassifier(_FakeBackend(shape=(1, 3, 320, 320)), MASK_SPEC)
    bad = MaskClassifier(_FakeBackend(outputs={"a": np.zeros((1, 5972, 3), np.float32),
                                               "b": np.zeros((1, 5972, 4), np.float32)}), MASK_SPEC)
    with pytest.raises(BackendError, match="widths"):
        bad.warm_up()


# --- the committed model on real photos ----------------------------------------------------

def test_bare_faces_score_low(mask_classifier, portrait_faces, detector, load_test_image, capsys):
    scores = {name: mask_classifier.mask_scores(image, [face])[0] for name, image, face in portrait_faces}
    group = load_test_image("solvay_1927_group.jpg").image_bgr
    group_faces = detector.detect(group)
    group_scores = mask_classifier.mask_scores(group, group_faces)
    with capsys.disabled():
        print("\nbare: " + ", ".join(f"{n.split('.')[0]} {s:.3f}" for n, s in scores.items())
              + f"; solvay {len(group_scores)} faces, max {max(group_scores):.3f}")
    assert all(s < THRESHOLD for s in scores.values()), scores
    assert len(group_faces) >= 20 and max(group_scores) < THRESHOLD


@pytest.mark.parametrize("colour", sorted(MASK_COLOURS))
def test_drawn_masks_score_high(mask_classifier, portrait_faces, colour, capsys):
    scores = {}
    for name, image, face in portrait_faces:
        masked = draw_mask(image, face, MASK_COLOURS[colour])
        scores[name] = mask_classifier.mask_scores(masked, [face])[0]
    with capsys.disabled():
        print(f"\n{colour} mask: " + ", ".join(f"{n.split('.')[0]} {s:.3f}" for n, s in scores.items()))
    assert len(scores) >= 6
    assert all(s > THRESHOLD for s in scores.values()), scores


def test_several_faces_in_one_call_keep_their_order(mask_classifier, portrait_faces):
    name, image, face = portrait_faces[0]
    masked = draw_mask(image, face, MASK_COLOURS["light_blue"])
    other = DetectedFace(bbox=face.bbox + np.float32(1.0), landmarks=face.landmarks, score=face.score)
    bare_alone = mask_classifier.mask_scores(image, [face])[0]
    scores = mask_classifier.mask_scores(masked, [face, other])
    assert scores[0] > THRESHOLD and scores[1] > THRESHOLD
    assert mask_classifier.mask_scores(masked, [face])[0] == pytest.approx(scores[0], abs=1e-6)
    assert bare_alone < THRESHOLD


# --- provenance ----------------------------------------------------------------------------

def test_source_md_gives_the_committed_onnx_checksum():
    text = (MODELS_DIR / "mask" / "SOURCE.md").read_text(encoding="utf-8")
    match = re.search(r"\| ONNX sha256 \| `([0-9a-f]{64})` \|", text)
    assert match, "SOURCE.md has no ONNX sha256 row"
    assert hashlib.sha256(MASK_ONNX.read_bytes()).hexdigest() == match.group(1)
    assert MASK_SPEC.source.sha256 == match.group(1)
    licence = (MODELS_DIR / "mask" / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "AIZOOTech" in licence
