"""RGB liveness: the repository's crop rule, the committed ONNX files and their provenance, and
real/spoof photos through the real models (models/liveness/SOURCE.md)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np
import pytest

from sophon_face.backends.base import BackendError, TensorSpec
from sophon_face.manifest.schema import Manifest, ModelSource, ModelSpec
from sophon_face.pipeline.liveness import (
    DEFAULT_LIVE_THRESHOLD, RgbLiveness, liveness_crop, liveness_crop_box,
)
from sophon_face.pipeline.types import DetectedFace

REPO_DIR = Path(__file__).resolve().parents[2]
LIVENESS_DIR = REPO_DIR / "models" / "liveness"
PHOTOS_DIR = REPO_DIR / "tests" / "data" / "liveness"

#: role -> (file under models/, crop scale): the entries models/cpu.yaml is to carry.
MODEL_FILES: Dict[str, Tuple[str, float]] = {
    "liveness_v2": ("liveness/minifasnet_v2_2.7.onnx", 2.7),
    "liveness_v1se": ("liveness/minifasnet_v1se_4.0.onnx", 4.0),
}

REAL = ("image_T1.jpg", "demo_frame00_real.png")
SPOOF = ("image_F1.jpg", "image_F2.jpg", "demo_frame45_screen.png", "demo_frame70_print.png")

#: The repository's own test.py on its samples: its RetinaFace box [x, y, w, h] and the mean
#: class-1 softmax that torch computes on the original .pth weights (SOURCE.md).
UPSTREAM: Dict[str, Tuple[Sequence[int], float]] = {
    "image_F1.jpg": ((178, 136, 223, 225), 0.072331),
    "image_F2.jpg": ((120, 252, 252, 256), 0.181286),
    "image_T1.jpg": ((106, 147, 207, 213), 0.993568),
}


def _face(xyxy: Sequence[float]) -> DetectedFace:
    return DetectedFace(bbox=np.asarray(xyxy, dtype=np.float32),
                        landmarks=np.zeros((5, 2), dtype=np.float32), score=1.0)


def _photo(name: str) -> np.ndarray:
    image_bgr = cv2.imread(str(PHOTOS_DIR / name), cv2.IMREAD_COLOR)
    assert image_bgr is not None, name
    return image_bgr


def _spec(role: str, **kw) -> ModelSpec:
    file, scale = MODEL_FILES[role]
    base = dict(role=role, family="minifasnet", source=ModelSource(file=file),
                input_size=(80, 80), color_order="bgr", crop_scale=scale)
    base.update(kw)
    return ModelSpec(**base)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the crop rule (no model needed) ---------------------------------------------------------

# (image w, h, box [x, y, w, h], scale) -> the inclusive rectangle the repository's
# CropImage._get_new_box returns (computed with its code at commit b6d5f04).
UPSTREAM_CROPS: List[Tuple[int, int, Tuple[int, int, int, int], float, Tuple[int, int, int, int]]] = [
    (480, 640, (106, 147, 207, 213), 2.7, (0, 7, 479, 499)),  # growth capped by the width
    (480, 640, (106, 147, 207, 213), 4.0, (0, 7, 479, 499)),
    (480, 640, (0, 0, 100, 120), 2.7, (0, 0, 270, 324)),  # top-left corner: slid right/down
    (480, 640, (400, 560, 80, 80), 4.0, (159, 319, 479, 639)),  # bottom-right: slid left/up
    (480, 640, (100, 100, 400, 500), 2.7, (0, 40, 479, 639)),  # a box almost the image
    (300, 200, (-20, -30, 60, 50), 4.0, (0, 0, 238, 199)),  # a box starting outside
    (640, 480, (600, 10, 30, 40), 2.7, (558, 0, 639, 108)),  # right edge
]


@pytest.mark.parametrize("image_w,image_h,box,scale,expected", UPSTREAM_CROPS)
def test_crop_box_follows_the_repository_rule(image_w, image_h, box, scale, expected):
    x, y, w, h = box
    assert liveness_crop_box(image_w, image_h, (x, y, x + w, y + h), scale) == expected


def test_crop_box_stays_inside_the_image_and_keeps_the_growth_when_it_fits():
    rng = np.random.default_rng(7)
    for _ in range(2000):
        image_w, image_h = (int(v) for v in rng.integers(2, 1000, size=2))
        x0, y0 = rng.uniform(-200, image_w + 200), rng.uniform(-200, image_h + 200)
        box = (x0, y0, x0 + rng.uniform(0.5, image_w), y0 + rng.uniform(0.5, image_h))
        scale = float(rng.choice([1.0, 2.7, 4.0]))
        left, top, right, bottom = liveness_crop_box(image_w, image_h, box, scale)
        assert 0 <= left <= right <= image_w - 1 and 0 <= top <= bottom <= image_h - 1
    # A small face in the middle of a large image: grown exactly `scale` times about its centre.
    assert liveness_crop_box(1000, 1000, (450, 460, 550, 540), 4.0) == (300, 340, 700, 660)
    # A degenerate box (zero width) still gives a crop instead of dividing by zero.
    left, top, right, bottom = liveness_crop_box(100, 100, (50, 40, 50, 60), 2.7)
    assert right >= left and bottom > top


def test_crop_takes_the_inclusive_pixels_and_resizes_them_bilinearly():
    rng = np.random.default_rng(3)
    image_bgr = rng.integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    box = (250.0, 10.0, 310.0, 90.0)  # near the top-right corner: the crop slides inside
    left, top, right, bottom = liveness_crop_box(320, 240, box, 2.7)
    assert right == 319 and top == 0
    crop = liveness_crop(image_bgr, box, 2.7, (80, 80))
    expected = cv2.resize(image_bgr[top:bottom + 1, left:right + 1], (80, 80),
                          interpolation=cv2.INTER_LINEAR)
    assert crop.shape == (80, 80, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, expected)


# --- wiring, with a fake backend -------------------------------------------------------------

class _FixedLogits:
    """A backend that answers the same logits for every crop and remembers what it saw."""

    runtime = "fake"

    def __init__(self, logits: Sequence[float]) -> None:
        self.logits = np.asarray(logits, dtype=np.float32)
        self.feeds: List[np.ndarray] = []
        self.closed = False

    def input_specs(self) -> List[TensorSpec]:
        return [TensorSpec("input", (None, 3, 80, 80))]

    def output_names(self) -> List[str]:
        return ["logits"]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        batch = feeds["input"]
        self.feeds.append(batch)
        return {"logits": np.tile(self.logits, (batch.shape[0], 1))}

    def close(self) -> None:
        self.closed = True


def test_score_is_the_mean_of_the_class_1_probabilities_and_close_closes_every_backend():
    v2, v1se = _FixedLogits([0.0, 0.0, 0.0]), _FixedLogits([0.0, np.log(3.0), 0.0])
    liveness = RgbLiveness([(v2, _spec("liveness_v2")), (v1se, _spec("liveness_v1se"))])
    image_bgr = np.full((200, 300, 3), (10, 20, 30), dtype=np.uint8)
    score = liveness.live_score(image_bgr, _face((100, 50, 160, 130)))
    assert score == pytest.approx((1 / 3 + 3 / 5) / 2, abs=1e-6)
    blob = v2.feeds[0]  # BGR order, raw 0-255, NCHW float32
    assert blob.shape == (1, 3, 80, 80) and blob.dtype == np.float32
    assert blob[0, :, 40, 40].tolist() == [10.0, 20.0, 30.0]
    scores = liveness.live_scores(image_bgr, [_face((0, 0, 50, 50)), _face((200, 100, 300, 200))])
    assert scores.shape == (2,) and scores.dtype == np.float32 and v2.feeds[-1].shape[0] == 2
    assert liveness.live_scores(image_bgr, []).shape == (0,)
    assert liveness.roles == ("liveness_v2", "liveness_v1se")
    liveness.close()
    assert v2.closed and v1se.closed


def test_bad_specs_are_refused():
    with pytest.raises(BackendError, match="crop_scale"):
        RgbLiveness([(_FixedLogits([0, 0, 0]), _spec("liveness_v2", crop_scale=None))])
    with pytest.raises(BackendError, match="minifasnet"):
        RgbLiveness([(_FixedLogits([0, 0, 0]), _spec("liveness_v2", family="aizoo_ssd"))])
    with pytest.raises(BackendError):
        RgbLiveness([])
    one_class = RgbLiveness([(_FixedLogits([0.0]), _spec("liveness_v2"))])
    with pytest.raises(BackendError, match="classes"):
        one_class.warm_up()


# --- provenance ------------------------------------------------------------------------------

def test_source_md_records_the_sha256_of_each_committed_model():
    source_md = (LIVENESS_DIR / "SOURCE.md").read_text(encoding="utf-8")
    for file, _ in MODEL_FILES.values():
        path = REPO_DIR / "models" / file
        rows = [line for line in source_md.splitlines()
                if f"`{path.name}`" in line and re.search(r"\b[0-9a-f]{64}\b", line)]
        assert rows, f"SOURCE.md has no sha256 row for {path.name}"
        assert all(_sha256(path) in row for row in rows), path.name
    licence = (LIVENESS_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in licence and "Version 2.0" in licence
    assert "Copyright 2020 Minivision" in licence


def test_manifest_entries_when_present_name_the_committed_files(cpu_manifest: Manifest):
    for role, (file, scale) in MODEL_FILES.items():
        spec = cpu_manifest.model(role)
        if spec is None:
            continue  # the CPU profile does not list liveness yet
        assert spec.family == "minifasnet" and spec.crop_scale == pytest.approx(scale)
        assert spec.source.file == file and spec.source.package is None
        assert spec.source.sha256 == _sha256(cpu_manifest.base_dir / file)
        assert tuple(spec.input_size) == (80, 80) and spec.color_order == "bgr"
        assert tuple(spec.mean) == (0.0, 0.0, 0.0) and tuple(spec.std) == (1.0, 1.0, 1.0)


# --- the real models -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def liveness(cpu_manifest: Manifest):
    pytest.importorskip("onnxruntime")
    from sophon_face.backends.onnx import OnnxBackend

    models = []
    for role, (file, _) in MODEL_FILES.items():
        spec = cpu_manifest.model(role) or _spec(role)
        models.append((OnnxBackend(str(REPO_DIR / "models" / file), intra_op_threads=1), spec))
    model = RgbLiveness(models)
    yield model
    model.close()


def test_onnx_files_reproduce_the_repository_scores(liveness):
    """The repository's box, our crop, the ONNX files: the scores torch gives on the .pth."""
    for name, ((x, y, w, h), expected) in UPSTREAM.items():
        score = liveness.live_score(_photo(name), _face((x, y, x + w, y + h)))
        assert score == pytest.approx(expected, abs=1e-4), name


def _largest_face(detector, image_bgr: np.ndarray) -> DetectedFace:
    faces = detector.detect(image_bgr)
    assert faces
    return max(faces, key=lambda face: face.area)


def test_real_faces_score_above_the_threshold_and_spoofs_below(liveness, detector):
    scores = {name: liveness.live_score(_photo(name), _largest_face(detector, _photo(name)))
              for name in REAL + SPOOF}
    for name in REAL:
        assert scores[name] >= DEFAULT_LIVE_THRESHOLD, (name, scores[name])
    for name in SPOOF:
        assert scores[name] < DEFAULT_LIVE_THRESHOLD, (name, scores[name])
    # Measured margins (SOURCE.md): the sample real face is near-certain, the samples' spoofs low.
    assert scores["image_T1.jpg"] > 0.95 and max(scores[name] for name in SPOOF) < 0.3


def test_scores_are_probabilities_on_any_box(liveness):
    rng = np.random.default_rng(11)
    image_bgr = rng.integers(0, 256, size=(120, 90, 3), dtype=np.uint8)
    faces = [_face((10, 10, 60, 80)), _face((-40, -40, 20, 20)), _face((80, 100, 400, 300)),
             _face((30, 30, 30, 30)), _face((0, 0, 90, 120))]
    scores = liveness.live_scores(image_bgr, faces)
    assert scores.shape == (len(faces),) and np.all(np.isfinite(scores))
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    one_by_one = [liveness.live_score(image_bgr, face) for face in faces]
    assert np.allclose(scores, one_by_one, atol=1e-5)  # a batch scores like single faces
    liveness.warm_up()
