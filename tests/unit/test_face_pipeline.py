"""FacePipeline on the real CPU models: errors, quality gating, features that tell people apart."""

from __future__ import annotations

import itertools
import math
from typing import Dict, List

import cv2
import numpy as np
import pytest

from sophon_face.backends.base import BackendError, TensorSpec
from sophon_face.errors import LowQualityError, NoFaceError
from sophon_face.manifest.schema import ModelSource, ModelSpec
from sophon_face.pipeline.align import alignment_matrix
from sophon_face.pipeline.detector import Detector
from sophon_face.pipeline.embedder import Embedder
from sophon_face.pipeline.types import DecodedImage, HeadPose

PEOPLE = ("macron_2014.jpg", "macron_2025.jpg", "ardern_2018.jpg", "ardern_2022.jpg",
          "obama_senate.jpg", "sunak.jpg", "astronaut_collins.jpg", "newton.png", "gauss.png")


def _person(name: str) -> str:
    return name.split("_")[0].split(".")[0]


def test_feature_dim_and_warm_up(face_pipeline):
    assert face_pipeline.feature_dim == 128
    assert face_pipeline.warm_up() is True


def test_no_face_raises_with_the_parameter_name(face_pipeline, load_test_image):
    image = load_test_image("no_face_coffee.jpg")
    with pytest.raises(NoFaceError) as info:
        face_pipeline.detect(image)
    assert info.value.message == image.param
    with pytest.raises(NoFaceError):
        face_pipeline.analyze_largest(image, "no")


def test_analyze_largest_portrait(face_pipeline, load_test_image):
    times: Dict[str, float] = {}
    result = face_pipeline.analyze_largest(load_test_image("sunak.jpg"), "high", times=times)
    assert result.quality is not None and result.quality.ok and result.quality.level == "high"
    assert result.feature.shape == (128,) and result.feature.dtype == np.float32
    assert np.linalg.norm(result.feature) == pytest.approx(1.0, abs=1e-5)
    assert set(times) == {"detect", "align", "quality", "embed"} and all(v >= 0 for v in times.values())
    no_feature = face_pipeline.analyze_largest(load_test_image("sunak.jpg"), "middle", with_feature=False)
    assert no_feature.feature is None and no_feature.quality.level == "normal"


def test_same_person_scores_above_every_different_pair(face_pipeline, load_test_image):
    features = {
        name: face_pipeline.analyze_largest(load_test_image(name), "no").feature for name in PEOPLE
    }
    same: List[float] = []
    different: List[float] = []
    for a, b in itertools.combinations(PEOPLE, 2):
        cosine = float(features[a] @ features[b])
        (same if _person(a) == _person(b) else different).append(cosine)
    assert len(same) == 2
    assert min(same) > max(different), (same, max(different))
    # SFace's published decision threshold (models/cpu.yaml match_cosine) separates them too.
    assert min(same) > 0.363 > max(different)


def _blurred(image: DecodedImage, sigma_crop: float, face) -> DecodedImage:
    scale = math.sqrt(abs(np.linalg.det(alignment_matrix(face.landmarks)[:, :2])))
    blurred = cv2.GaussianBlur(image.image_bgr, (0, 0), sigma_crop / scale)
    return DecodedImage(image_bgr=blurred, encoded=b"", format="jpeg", param=image.param)


def test_low_quality_is_raised_or_reported(face_pipeline, load_test_image):
    sharp = load_test_image("obama_senate.jpg")
    blurred = _blurred(sharp, 2.5, face_pipeline.detect(sharp)[0])
    with pytest.raises(LowQualityError) as info:
        face_pipeline.analyze_largest(blurred, "high")
    assert info.value.message == "clarity"
    reported = face_pipeline.analyze_largest(blurred, "high", raise_on_low_quality=False)
    assert reported.quality.failed == ("clarity",) and reported.feature is not None
    unchecked = face_pipeline.analyze_largest(blurred, "no")
    assert unchecked.quality.failed == () and unchecked.quality.passed == ()
    # Several failed items come in canonical order, joined without spaces.
    dark = DecodedImage(image_bgr=(blurred.image_bgr * 0.25).astype(np.uint8), encoded=b"",
                        format="jpeg", param="image_base64")
    with pytest.raises(LowQualityError) as info:
        face_pipeline.analyze_largest(dark, "high")
    assert info.value.message == "clarity,brightness"


def test_min_face_size_picks_the_largest_big_enough_face(face_pipeline, load_test_image):
    group = load_test_image("solvay_1927_group.jpg")
    faces = face_pipeline.detect(group)
    sizes = sorted(f.short_side for f in faces)
    threshold = sizes[len(sizes) // 2]
    chosen = face_pipeline.analyze_largest(group, "no", with_feature=False, min_face_size=threshold)
    expected = next(f for f in faces if f.short_side >= threshold)
    assert np.array_equal(chosen.face.bbox, expected.bbox)
    with pytest.raises(LowQualityError) as info:
        face_pipeline.analyze_largest(group, "no", min_face_size=sizes[-1] + 1)
    assert info.value.message == "face_size"


def test_features_of_batches_every_face(face_pipeline, load_test_image):
    group = load_test_image("solvay_1927_group.jpg")
    faces = face_pipeline.detect(group)
    features = face_pipeline.features_of(group, faces[:6])
    assert features.shape == (6, 128) and features.dtype == np.float32
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    single = face_pipeline.analyze_largest(group, "no").feature
    assert float(features[0] @ single) == pytest.approx(1.0, abs=1e-5)
    assert face_pipeline.features_of(group, []).shape == (0, 128)
    assert isinstance(face_pipeline.headpose_of(faces[0]), HeadPose)


# --- the model's contract is checked at construction and warm-up ---------------------------

class _FixedBackend:
    """A Backend returning zeros of fixed output shapes (per sample)."""

    runtime = "fake"

    def __init__(self, input_shape, outputs: Dict[str, tuple]) -> None:
        self._input = TensorSpec("input", input_shape)
        self._outputs = outputs

    def input_specs(self):
        return [self._input]

    def output_names(self):
        return list(self._outputs)

    def run(self, feeds):
        batch = next(iter(feeds.values())).shape[0]
        return {name: np.ones((batch,) + shape, np.float32) for name, shape in self._outputs.items()}

    def close(self):
        pass


def _spec(role: str, **kw) -> ModelSpec:
    return ModelSpec(role=role, source=ModelSource(file="x.onnx"), **kw)


def test_embedder_refuses_a_model_of_another_width():
    backend = _FixedBackend((1, 3, 112, 112), {"fc1": (64,)})
    embedder = Embedder(backend, _spec("recognizer", family="sface", input_size=(112, 112), feature_dim=128))
    with pytest.raises(BackendError, match="64-d"):
        embedder.warm_up()


def test_detector_refuses_a_model_of_another_input_size():
    backend = _FixedBackend((1, 3, 320, 320), {})
    with pytest.raises(BackendError, match="320x320"):
        Detector(backend, _spec("detector", family="yunet", input_size=(640, 640)))
