"""Shared fixtures: the CPU profile's real models (prepared once per session) and test photos."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import cv2
import pytest

from sophon_face.manifest.schema import Manifest, load_manifest
from sophon_face.pipeline.types import DecodedImage

REPO_DIR = Path(__file__).resolve().parent.parent
TEST_DATA_DIR = Path(__file__).resolve().parent / "data"
CPU_MANIFEST = REPO_DIR / "models" / "cpu.yaml"


@pytest.fixture(scope="session")
def cpu_manifest() -> Manifest:
    return load_manifest(CPU_MANIFEST)


@pytest.fixture(scope="session")
def prepared_models(cpu_manifest: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """{"detector": path, "recognizer": path} of loadable CPU-profile weights.

    Skips (not fails) where the CPU extra is not installed, e.g. on the box's Python 3.8.
    """
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from sophon_face.manifest.files import ModelFileError, prepared_path

    cache_dir = tmp_path_factory.mktemp("models")
    try:
        return {
            role: prepared_path(getattr(cpu_manifest, role), cpu_manifest.base_dir, cache_dir)
            for role in ("detector", "recognizer")
        }
    except ModelFileError as exc:
        pytest.skip(f"CPU-profile weights unavailable: {exc}")


@pytest.fixture(scope="session")
def detector(cpu_manifest: Manifest, prepared_models: Dict[str, Path]):
    from sophon_face.backends.onnx import OnnxBackend
    from sophon_face.pipeline.detector import Detector

    backend = OnnxBackend(str(prepared_models["detector"]), intra_op_threads=2)
    yield Detector(backend, cpu_manifest.detector)
    backend.close()


@pytest.fixture(scope="session")
def embedder(cpu_manifest: Manifest, prepared_models: Dict[str, Path]):
    from sophon_face.backends.onnx import OnnxBackend
    from sophon_face.pipeline.embedder import Embedder

    backend = OnnxBackend(str(prepared_models["recognizer"]), intra_op_threads=2)
    yield Embedder(backend, cpu_manifest.recognizer)
    backend.close()


@pytest.fixture(scope="session")
def face_pipeline(detector, embedder):
    from sophon_face.pipeline.face_pipeline import FacePipeline
    from sophon_face.pipeline.quality import QualityThresholds

    return FacePipeline(detector, embedder, QualityThresholds())


_IMAGE_CACHE: Dict[str, DecodedImage] = {}


def _load_test_image(name: str) -> DecodedImage:
    """A photo of tests/data as the pipeline receives it (decoded once per session)."""
    if name not in _IMAGE_CACHE:
        path = TEST_DATA_DIR / name
        image_bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image_bgr is None:
            raise FileNotFoundError(f"test photo not readable: {path}")
        image_bgr.setflags(write=False)  # shared between tests: nobody may paint on it
        _IMAGE_CACHE[name] = DecodedImage(
            image_bgr=image_bgr, encoded=path.read_bytes(),
            format="png" if path.suffix == ".png" else "jpeg", param="image_base64")
    return _IMAGE_CACHE[name]


@pytest.fixture(scope="session")
def load_test_image() -> Callable[[str], DecodedImage]:
    """``load_test_image("sunak.jpg") -> DecodedImage`` (param ``"image_base64"``)."""
    return _load_test_image
