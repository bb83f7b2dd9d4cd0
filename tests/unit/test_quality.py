"""FIQA: levels, head-pose geometry, and the calibrated items on real photos and their
blurred, darkened, shadowed and cut copies."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from sophon_face.pipeline.align import ARCFACE_TEMPLATE_112, align_face, alignment_matrix
from sophon_face.pipeline.quality import (
    FRONTAL_NOSE_HEIGHT_RATIO, LEVEL_ITEMS, QualityThresholds, assess, estimate_headpose,
    normalize_fiqa_level,
)
from sophon_face.pipeline.types import QUALITY_ITEMS, DetectedFace

THRESHOLDS = QualityThresholds()
HIGH_ITEMS = ("headpose", "clarity", "face_size", "partial", "face_color", "brightness")
FRONTAL = ("obama_senate.jpg", "sunak.jpg", "ardern_2018.jpg", "ardern_2022.jpg")


def test_normalize_fiqa_level():
    assert normalize_fiqa_level("HIGH") == "high"
    assert normalize_fiqa_level("middle") == "normal"
    assert normalize_fiqa_level("Middle") == "normal"
    assert normalize_fiqa_level("normal") == "normal"
    assert normalize_fiqa_level("no") == "no"
    for bad in ("medium", "", " high"):
        with pytest.raises(ValueError):
            normalize_fiqa_level(bad)


def test_level_items_follow_the_api_and_canonical_order():
    assert LEVEL_ITEMS["high"] == HIGH_ITEMS
    assert LEVEL_ITEMS["normal"] == ("headpose", "clarity", "face_size", "partial", "brightness")
    assert LEVEL_ITEMS["low"] == ("headpose", "face_size")
    assert LEVEL_ITEMS["no"] == ()
    for items in LEVEL_ITEMS.values():
        assert list(items) == [i for i in QUALITY_ITEMS if i in items]
    assert (THRESHOLDS.high.min_face_size_px, THRESHOLDS.high.max_pose_sum_deg) == (112, 60)
    assert (THRESHOLDS.normal.min_face_size_px, THRESHOLDS.normal.max_pose_sum_deg) == (80, 90)
    assert (THRESHOLDS.low.min_face_size_px, THRESHOLDS.low.max_pose_sum_deg) == (60, 120)


# --- head pose geometry on synthetic landmarks ----------------------------------------------

def _frontal_points() -> np.ndarray:
    """The template with the nose at the calibrated frontal height: pose (0, 0, 0)."""
    pts = ARCFACE_TEMPLATE_112.copy()
    eye_y = (pts[0, 1] + pts[1, 1]) / 2
    mouth_y = (pts[3, 1] + pts[4, 1]) / 2
    pts[2, 1] = eye_y + FRONTAL_NOSE_HEIGHT_RATIO * (mouth_y - eye_y)
    pts[0, 1] = pts[1, 1] = eye_y
    pts[3, 1] = pts[4, 1] = mouth_y
    pts[2, 0] = (pts[0, 0] + pts[1, 0] + pts[3, 0] + pts[4, 0]) / 4
    return pts


BOX = np.array([0, 0, 112, 112], np.float32)


def test_headpose_of_frontal_points_is_zero():
    pose = estimate_headpose(_frontal_points(), BOX)
    assert (pose.yaw_deg, pose.pitch_deg, pose.roll_deg) == pytest.approx((0, 0, 0), abs=1e-6)


def test_headpose_signs_and_roll_invariance():
    turned = _frontal_points()
    turned[2, 0] += 6  # nose towards the picture's right
    raised = _frontal_points()
    raised[2, 1] -= 5  # nose towards the eyes: chin up
    assert estimate_headpose(turned, BOX).yaw_deg > 10
    assert estimate_headpose(raised, BOX).pitch_deg > 10
    # Rotating the whole face in the picture changes roll only.
    angle = math.radians(25)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    for pts in (turned, raised):
        flat, tilted = estimate_headpose(pts, BOX), estimate_headpose((pts - 56) @ rot.T + 56, BOX)
        assert tilted.roll_deg == pytest.approx(25.0, abs=1e-6)
        assert tilted.yaw_deg == pytest.approx(flat.yaw_deg, abs=1e-6)
        assert tilted.pitch_deg == pytest.approx(flat.pitch_deg, abs=1e-6)


def test_headpose_of_collapsed_landmarks_stays_finite():
    pose = estimate_headpose(np.full((5, 2), 50.0), BOX)
    assert all(math.isfinite(v) for v in (pose.yaw_deg, pose.pitch_deg, pose.roll_deg))


# --- real photos ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def main_face(detector, load_test_image):
    """name -> (image_bgr, largest face)."""
    cache = {}

    def get(name):
        if name not in cache:
            image_bgr = load_test_image(name).image_bgr
            cache[name] = (image_bgr, detector.detect(image_bgr)[0])
        return cache[name]
    return get


def _assess(image_bgr, face, level="high"):
    return assess(image_bgr, face, align_face(image_bgr, face.landmarks), level, THRESHOLDS)


def test_frontal_portraits_have_headpose_near_zero(main_face):
    for name in FRONTAL:
        pose = estimate_headpose(main_face(name)[1].landmarks, main_face(name)[1].bbox)
        assert abs(pose.yaw_deg) + abs(pose.pitch_deg) < 15, (name, pose)
        assert abs(pose.roll_deg) < 8, (name, pose)


@pytest.mark.parametrize("name", FRONTAL + ("macron_2025.jpg", "gauss.png"))
def test_good_portrait_passes_high(name, main_face):
    report = _assess(*main_face(name))
    assert report.level == "high"
    assert report.passed == HIGH_ITEMS and report.failed == () and report.ok
    assert report.mask == -1 and list(report.occlusion) == []
    assert 0.0 <= report.brightness <= 1.0 and 0.0 <= report.face_color <= 1.0
    assert report.partial is False


def test_blurred_copy_fails_clarity(main_face):
    image_bgr, face = main_face("sunak.jpg")
    # Blur of 2 pixels of the 112-px crop, expressed in this photo's pixels.
    crop_scale = math.sqrt(abs(np.linalg.det(alignment_matrix(face.landmarks)[:, :2])))
    blurred = cv2.GaussianBlur(image_bgr, (0, 0), 2.0 / crop_scale)
    sharp = _assess(image_bgr, face)
    for level in ("high", "normal"):
        report = _assess(blurred, face, level)
        assert report.failed == ("clarity",), level
    assert _assess(blurred, face).clarity < sharp.clarity - 2


def test_small_face_blurred_by_sigma_3_fails_clarity(main_face):
    image_bgr, face = main_face("astronaut_collins.jpg")  # a 90-px face
    report = _assess(cv2.GaussianBlur(image_bgr, (0, 0), 3.0), face, "normal")
    assert "clarity" in report.failed
    assert "clarity" in _assess(image_bgr, face, "normal").passed


def test_darkened_copy_fails_brightness_and_overexposed_too(main_face):
    image_bgr, face = main_face("ardern_2018.jpg")
    dark = (image_bgr * 0.25).astype(np.uint8)
    for level in ("high", "normal"):
        assert "brightness" in _assess(dark, face, level).failed, level
    assert _assess(dark, face).brightness < 0.2
    bright = np.clip(image_bgr.astype(np.float32) * 2.2, 0, 255).astype(np.uint8)
    assert "brightness" in _assess(bright, face).failed


def test_side_shadow_fails_face_color_at_high_only(main_face):
    image_bgr, face = main_face("obama_senate.jpg")
    shadowed = image_bgr.copy()
    nose_x = int(face.landmarks[2, 0])
    shadowed[:, nose_x:] = (shadowed[:, nose_x:] * 0.3).astype(np.uint8)
    high = _assess(shadowed, face)
    assert "face_color" in high.failed and high.face_color < 0.6
    normal = _assess(shadowed, face, "normal")
    assert "face_color" not in normal.failed + normal.passed


def test_face_cut_by_the_border_is_partial(detector, main_face):
    image_bgr, face = main_face("sunak.jpg")
    cut_x = int((face.landmarks[0, 0] + face.landmarks[2, 0]) / 2)  # through the left eye/nose
    cut = np.ascontiguousarray(image_bgr[:, cut_x:])
    faces = detector.detect(cut)
    assert faces
    report = _assess(cut, faces[0])
    assert report.partial is True and "partial" in report.failed


def test_partial_rule_on_landmarks_outside():
    image = np.full((200, 200, 3), 128, np.uint8)
    marks = ARCFACE_TEMPLATE_112.astype(np.float32) + [50, 50]
    inside = DetectedFace(bbox=np.array([40, 30, 170, 180], np.float32), landmarks=marks, score=0.9)
    assert _assess(image, inside, "no").partial is False
    outside = DetectedFace(bbox=inside.bbox, landmarks=marks - [95, 0], score=0.9)
    assert _assess(image, outside, "no").partial is True
    touching = DetectedFace(bbox=np.array([0, 30, 170, 180], np.float32), landmarks=marks, score=0.9)
    assert _assess(image, touching, "no").partial is True


def test_levels_low_and_no(main_face):
    image_bgr, face = main_face("macron_2014.jpg")  # a 73-px face: too small for normal
    assert _assess(image_bgr, face, "normal").failed == ("face_size",)
    low = _assess(image_bgr, face, "low")
    assert low.passed == ("headpose", "face_size") and low.failed == ()
    none = _assess(image_bgr, face, "no")
    assert none.passed == () and none.failed == () and none.ok
    assert none.clarity > 0 and none.face_size == pytest.approx(face.short_side)
    assert _assess(image_bgr, face, "MIDDLE").level == "normal"


def test_headpose_limit_is_the_sum_of_yaw_and_pitch(main_face):
    image_bgr, face = main_face("sunak.jpg")
    turned = DetectedFace(bbox=face.bbox, landmarks=face.landmarks.copy(), score=face.score)
    eye_distance = face.landmarks[1, 0] - face.landmarks[0, 0]
    turned.landmarks[2, 0] += 1.0 * eye_distance  # about 65 degrees of yaw
    pose = estimate_headpose(turned.landmarks, turned.bbox)
    assert 60 < abs(pose.yaw_deg) + abs(pose.pitch_deg) <= 90
    assert "headpose" in _assess(image_bgr, turned, "high").failed
    assert "headpose" in _assess(image_bgr, turned, "normal").passed
