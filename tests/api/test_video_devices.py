"""Video devices end to end: a generated video played by a ``file`` device becomes one
event per person passing by (api/device.md, api/event.md 2 and 9), over real HTTP."""

from __future__ import annotations

import asyncio
import json
import os
import socketserver
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List

import cv2
import pytest

from sophon_face.config import Config, config_from_mapping

from ..video_media import Passage, head_factory, write_video
from .conftest import TEST_DATA_DIR
from .live import LiveServer, b64_of
from .receiver import Receiver

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


class RelayBoard:
    """A door relay on loopback: records each JSON line it is sent (push/relay.py)."""

    def __init__(self) -> None:
        self.pulses: List[Dict[str, Any]] = []
        board = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    board.pulses.append(json.loads(line.decode("utf-8")))

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def set_configs(server: LiveServer, **values: Any) -> None:
    ok(server.post("setconfigs", {"config_dict": values}))


def all_events(server: LiveServer) -> List[Dict[str, Any]]:
    return ok(server.post("getevents", {"limit": 100}))["events"]


def test_file_device_yields_one_event_per_passage(video_server: LiveServer, scene_video: Path) -> None:
    """The whole flow of one camera: events, their images, the relay, the history push
    and the device status push."""
    server = video_server
    register(server)
    board = RelayBoard()
    with Receiver() as history, Receiver() as monitor:
        set_configs(server, HISTORY_EVENT_UPLOAD_URL=history.url, HISTORY_REPORT_PEROID=1,
                    MEDIA_DEVICE_MONITOR_URL=monitor.url, MEDIA_DEVICE_MONITOR_REPORT_PEROID=1,
                    MQ_LICENSE_KEY="AFVKQF000120210604151110")
        relay = {"ip": "127.0.0.1", "port": board.port, "channel": 3, "delay_time": 5}
        device = ok(server.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": "corridor",
            "media_device_url": str(scene_video), "net_relay": relay}))["media_device_id"]
        state = wait_for(lambda: health(server)["devices"].get(device, {}).get("state") == "finished"
                         and health(server)["devices"][device], SCENE_S + 60, "the file to finish")
        time.sleep(0.5)  # the end-of-stream events are recorded right after the reader finished
        events = sorted(all_events(server), key=lambda e: e["ext_data"]["in_timestamp"])
        history.wait_for(lambda got: len(got) == 4)
        reports = monitor.wait_for(lambda got: any(
            d["media_device_status"] == "online" for r in got for d in r["media_devices"]))
    board.close()

    names = [e["identity_id"] or "stranger" for e in events]
    assert names[0] == "ardern" and names[1] == "stranger", names
    assert sorted(names[2:]) == ["macron", "obama"], names
    assert state["frames_analysed"] > 50 and state["frames_read"] >= int(SCENE_S * 15) - 2
    assert state["frames_dropped"] + state["frames_analysed"] <= state["frames_read"]
    assert len({e["ext_data"]["track_id"] for e in events}) == 4
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

    # GATE_PASS_MODE "normal": one pulse per recognised person, none for the stranger.
    wait_for(lambda: len(board.pulses) >= 3, 10, "relay pulses")
    assert sorted(p["identity_id"] for p in board.pulses) == ["ardern", "macron", "obama"]
    assert all(p["channel"] == 3 and p["delay_time"] == 5 and p["media_device_id"] == device
               for p in board.pulses)
    # The history push delivered the same four events; the status push saw the device.
    assert sorted(h["event_id"] for h in history.received) == sorted(e["event_id"] for e in events)
    report = reports[-1]
    assert report["mq_license_key"] == "AFVKQF000120210604151110"
    assert report["media_devices"] == report["sub_devices"]
    assert report["media_devices"][0]["media_device_id"] == device


def two_passes_and_a_pair(path: Path, heads) -> Path:
    """Ardern walks by twice (2 s apart), then Obama (top) and Macron (bottom) together."""
    scene = [Passage("ardern_2022.jpg", 0.2, 2.0), Passage("ardern_2022.jpg", 3.5, 2.0),
             Passage("obama_senate.jpg", 6.0, 2.5, y_px=60),
             Passage("macron_2025.jpg", 6.0, 2.5, y_px=380, left_to_right=False)]
    return write_video(path, scene, 9.0, {p.photo: heads(p.photo) for p in scene})


def test_two_devices_roi_and_duplicate_suppression(video_server: LiveServer, video_dir: Path,
                                                   heads) -> None:
    server = video_server
    register(server)
    video = two_passes_and_a_pair(video_dir / "twice.avi", heads)
    ids = {}
    for name, roi in (("whole", []), ("bottom", [0, 380, 1280, 720])):
        # Two devices cannot share a URL: the second plays the same file through a link.
        url = video if name == "whole" else video_dir / "twice-bottom.avi"
        if not url.exists():
            os.symlink(video, url)
        ids[name] = ok(server.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": name,
            "media_device_url": str(url), "roi_area": roi}))["media_device_id"]
    wait_for(lambda: all(health(server)["devices"][d]["state"] == "finished"
                         for d in ids.values()), 60, "both files to finish")
    time.sleep(0.5)
    by_device: Dict[str, List[str]] = {name: [] for name in ids}
    for event in sorted(all_events(server), key=lambda e: e["timestamp"]):
        name = event["media_device_info"]["media_device_name"]
        by_device[name].append(event["identity_id"] or "stranger")
    # Ardern's second passage is within GATE_DUPLICATE_REMOVAL_TIMEOUT (6 s) of the first.
    assert sorted(by_device["whole"]) == ["ardern", "macron", "obama"], by_device
    # The ROI sees only the lower half of the picture: Macron; Ardern's face is cut by it.
    assert by_device["bottom"] == ["macron"], by_device


def test_armed_windows_deletion_while_streaming_and_flat_memory(models, tmp_path: Path,
                                                                video_dir: Path, heads) -> None:
    """A looping file outside the armed window: faces are tracked, nothing is recorded;
    memory stays flat over the run; deleting the device stops its reader at once."""
    live = LiveServer(video_config(tmp_path / "daemon", video_dir, loop_files=True), models).start()
    try:
        register(live)
        now = time.localtime()
        window_end = time.strftime("%H:%M:%S", time.localtime(time.time() - 3600))
        window_start = time.strftime("%H:%M:%S", time.localtime(time.time() - 7200))
        assert now  # a window that ended an hour ago
        set_configs(live, REGN_TIME_PART1=f"{window_start},{window_end}", REGN_TIME_PART1_SWITCH=True)
        scene = [Passage("ardern_2022.jpg", 0.2, 2.5)]
        video = write_video(video_dir / "loop.avi", scene, 3.0,
                            {p.photo: heads(p.photo) for p in scene})
        device = ok(live.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": "loop",
            "media_device_url": str(video)}))["media_device_id"]
        wait_for(lambda: health(live)["devices"][device]["frames_analysed"] > 20, 30, "warm-up")
        rss = [_rss_bytes()]
        for _ in range(6):
            time.sleep(4)
            rss.append(_rss_bytes())
        stats = health(live)["devices"][device]
        assert stats["tracks"] >= 4 and stats["faces"] > 50  # it did see Ardern, many times
        assert all_events(live) == []  # outside the armed window
        growth_mb = (max(rss[2:]) - rss[1]) / 1e6
        assert growth_mb < 40, [round(r / 1e6) for r in rss]
        assert any(t.name == f"video-{device}" for t in threading.enumerate())
        ok(live.post("deletemediadevice", {"media_device_id": device}))
        wait_for(lambda: device not in health(live)["devices"], 10, "the device to go")
        wait_for(lambda: not any(t.name == f"video-{device}" for t in threading.enumerate()),
                 10, "the decode thread to end")
    finally:
        live.stop()


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
