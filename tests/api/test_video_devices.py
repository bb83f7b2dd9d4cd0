"""Video devices end to end: a generated video played by a ``file`` device becomes one
event per person passing by (api/device.md, api/event.md 2 and 9), over real HTTP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import cv2
import pytest

from sophon_face.config import Config, config_from_mapping

from ..video_media import Passage, head_factory, write_video
from .conftest import TEST_DATA_DIR
from .live import LiveServer, b64_of

#: Four passages: Ardern (registered from her 2018 photo, seen in her 2022 one), a
#: stranger (Sunak, never registered), then Obama and Macron crossing at the same time.
SCENE = [Passage("ardern_2022.jpg", 0.5, 3.0),
         Passage("sunak.jpg", 4.0, 3.0, left_to_right=False),
         Passage("obama_senate.jpg", 7.5, 3.0, y_px=60),
         Passage("macron_2025.jpg", 7.5, 3.0, y_px=380, left_to_right=False)]
SCENE_S = 11.0
REGISTERED = {"ardern": "ardern_2018.jpg", "obama": "obama_senate.jpg", "macron": "macron_2025.jpg"}


def video_config(data_dir: Path, video_dir: Path, **video: Any) -> Config:
    return config_from_mapping({
        "server": {"ws_port": 0},
        "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR), str(video_dir)]},
        "workers": {"count": 1, "intra_op_threads": 2},
        "video": dict({"analysis_fps": 8.0, "reconnect_min_s": 0.5}, **video),
    })


@pytest.fixture(scope="module")
def heads(detector) -> Callable[[str], Callable[[int], Any]]:
    return head_factory(lambda image: detector.detect(image)[0].bbox,
                        lambda name: cv2.imread(str(TEST_DATA_DIR / name)))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("videos")


@pytest.fixture(scope="module")
def scene_video(video_dir: Path, heads) -> Path:
    return write_video(video_dir / "scene.avi", SCENE, SCENE_S,
                       {p.photo: heads(p.photo) for p in SCENE})


@pytest.fixture()
def video_server(models, tmp_path: Path, video_dir: Path) -> Iterator[LiveServer]:
    live = LiveServer(video_config(tmp_path / "daemon", video_dir), models).start()
    yield live
    live.stop()


def ok(reply) -> Dict[str, Any]:
    assert reply.status == 200, reply
    return reply.json


def register(server: LiveServer, group: str = "") -> None:
    for identity_id, photo in REGISTERED.items():
        body = {"register_image": b64_of(TEST_DATA_DIR / photo), "identity_id": identity_id,
                "identity_name": identity_id.title(), "fiqa_level": "no"}
        if group:
            body["permission_ids"] = [group]
        ok(server.post("createidentity", body))


def health(server: LiveServer) -> Dict[str, Any]:
    return server.request("GET", "/health").json


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def all_events(server: LiveServer) -> List[Dict[str, Any]]:
    return ok(server.post("getevents", {"limit": 100}))["events"]


def test_file_device_yields_one_event_per_passage(video_server: LiveServer, scene_video: Path) -> None:
    server = video_server
    register(server)
    device = ok(server.post("addmediadevice", {
        "media_device_type": "file", "media_device_name": "corridor",
        "media_device_url": str(scene_video)}))["media_device_id"]
    state = wait_for(lambda: health(server)["devices"].get(device, {}).get("state") == "finished"
                     and health(server)["devices"][device], SCENE_S + 60, "the file to finish")
    time.sleep(0.5)  # the end-of-stream events are recorded right after the reader finished
    events = sorted(all_events(server), key=lambda e: e["ext_data"]["in_timestamp"])
    names = [e["identity_id"] or "stranger" for e in events]
    assert names[0] == "ardern" and names[1] == "stranger"
    assert sorted(names[2:]) == ["macron", "obama"], names
    assert state["frames_analysed"] > 50 and state["frames_read"] >= int(SCENE_S * 15) - 2
    track_ids = {e["ext_data"]["track_id"] for e in events}
    assert len(track_ids) == 4
    for event in events:
        ext = event["ext_data"]
        assert event["frame_id"] > 0
        assert ext["video_shape"] == [1280, 720, 3]
        assert ext["in_timestamp"] <= ext["recognition_timestamp"]
        assert ext["in_timestamp"] <= ext["out_timestamp"]
        assert event["media_device_info"] == {"media_device_id": device, "media_device_ip": "",
                                              "media_device_name": "corridor",
                                              "media_device_type": "file"}
        assert event["recognize_face_image_id"] and event["spot_image_id"]
        spot = server.post("getspotimage", {"image_id": event["spot_image_id"],
                                            "timestamp": event["timestamp"]})
        assert spot.status == 200, spot
    stranger = events[1]
    assert stranger["user_type"] == "stranger" and stranger["score"] < 82.0
    assert stranger["ext_data"]["unknown_id"] == stranger["ext_data"]["track_id"]
    recognised = [e for e in events if e["identity_id"]]
    assert all(e["score"] >= 82.0 and e["identity_name"] == e["identity_id"].title()
               for e in recognised)
