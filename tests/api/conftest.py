"""API tests run against a real daemon: real models, a real LMDB, a real socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import cv2
import pytest

from sophon_face.config import Config, config_from_mapping
from sophon_face.workers.models import PreparedModels, prepare_optional

from ..video_media import head_factory
from .live import LiveServer

TEST_DATA_DIR = Path(__file__).resolve().parents[1] / "data"


def make_config(data_dir: Path, **recognition: object) -> Config:
    return config_from_mapping({
        "server": {"ws_port": 0},  # an ephemeral real-time WebSocket port per daemon
        "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR)]},
        "workers": {"count": 1, "intra_op_threads": 2},
        "recognition": dict(recognition),
    })


@pytest.fixture(scope="session")
def models(cpu_manifest, prepared_models: Dict[str, Path]) -> PreparedModels:
    # With the optional models (age, gender, mask, liveness) the profile ships.
    return PreparedModels(cpu_manifest, prepared_models["detector"], prepared_models["recognizer"],
                          prepare_optional(cpu_manifest, None))


@pytest.fixture(scope="session")
def server(models: PreparedModels, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One daemon shared by the API tests; tests use their own ids so they do not collide."""
    live = LiveServer(make_config(tmp_path_factory.mktemp("daemon")), models).start()
    yield live
    live.stop()


@pytest.fixture()
def fresh_server(models: PreparedModels, tmp_path: Path) -> Iterator[LiveServer]:
    """A daemon with an empty store, for tests that need exact library contents."""
    live = LiveServer(make_config(tmp_path / "daemon"), models).start()
    yield live
    live.stop()


@pytest.fixture()
def small_library_server(models: PreparedModels, tmp_path: Path) -> Iterator[LiveServer]:
    """A daemon whose library holds at most 2 faces (GROUP_LEN_ERROR)."""
    live = LiveServer(make_config(tmp_path / "daemon", library_capacity=2), models).start()
    yield live
    live.stop()


def photo(name: str) -> Path:
    return TEST_DATA_DIR / name


@pytest.fixture(scope="session")
def heads(detector) -> Callable[[str], Callable[[int], Any]]:
    """``heads(photo)(face_px)``: the head of a test photo for generated videos."""
    return head_factory(lambda image: detector.detect(image)[0].bbox,
                        lambda name: cv2.imread(str(TEST_DATA_DIR / name)))
