"""Video devices end to end: a generated video played by a ``file`` device becomes one
event per person passing by (api/device.md, api/event.md 2 and 9), over real HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import aiohttp
import cv2
import numpy as np
import pytest

from ..video_media import SCENE, SCENE_S, Passage, write_video
from .live import LiveServer
from .receiver import Receiver
from .video_support import (RelayBoard, all_events, health, ok, register,
                            set_configs, video_config, wait_for)


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
    wait_for(lambda: all(health(server)["devices"][d].get("state") == "finished"
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
        wait_for(lambda: health(live)["devices"][device].get("frames_analysed", 0) > 20, 30,
                 "warm-up")
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
        # wipedata erases the device table: its readers stop as after deletemediadevice.
        again = ok(live.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": "loop",
            "media_device_url": str(video)}))["media_device_id"]
        wait_for(lambda: health(live)["devices"].get(again, {}).get("frames_analysed"), 30,
                 "the new reader")
        ok(live.post("wipedata", {"users": True}))
        wait_for(lambda: not health(live)["devices"], 10, "the readers to go")
        wait_for(lambda: not any(t.name.startswith("video-") for t in threading.enumerate()),
                 10, "the decode threads to end")
    finally:
        live.stop()


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_preview_stream_shows_the_tracked_faces(video_server: LiveServer, video_dir: Path,
                                                heads) -> None:
    """device.md 10: the control channel announces the device, the frame stream carries
    its analysed frames (binary frames of UTF-8 JSON) with boxes, track ids and names."""
    server = video_server
    register(server)
    scene = [Passage("ardern_2022.jpg", 0.2, 3.0)]
    video = write_video(video_dir / "preview.avi", scene, 3.5,
                        {p.photo: heads(p.photo) for p in scene})

    async def watch() -> Dict[str, List[Dict[str, Any]]]:
        got: Dict[str, List[Dict[str, Any]]] = {"control": [], "frames": []}
        async with aiohttp.ClientSession() as session:
            control = await session.ws_connect(f"ws://127.0.0.1:{server.preview_control_port}")
            viewer = await session.ws_connect(f"ws://127.0.0.1:{server.preview_port}/preview")
            got["control"].append(json.loads((await control.receive(timeout=10)).data))
            loop = asyncio.get_running_loop()
            device = (await loop.run_in_executor(None, lambda: ok(server.post("addmediadevice", {
                "media_device_type": "file", "media_device_name": "lobby",
                "media_device_url": str(video)}))))["media_device_id"]
            got["control"].append(json.loads((await control.receive(timeout=10)).data))
            await loop.run_in_executor(None, lambda: ok(server.post("updatepreview", {
                "preview_device_list": [device], "preview_mode": "1", "last_set_name": "WEBUI"})))
            got["control"].append(json.loads((await control.receive(timeout=10)).data))
            deadline = loop.time() + 30
            while loop.time() < deadline:
                message = await viewer.receive(timeout=30)
                if message.type != aiohttp.WSMsgType.BINARY:
                    break
                frame = json.loads(message.data.decode("utf-8"))
                got["frames"].append(frame)
                if any(o["identity_name"] == "Ardern" for o in frame["preview_objs"]):
                    break
            await viewer.close()
            await control.close()
        return got

    got = asyncio.run(watch())
    first, added, layout = got["control"]
    assert first["modify_media_device"] == {}
    assert added["modify_media_device"]["action"] == "add"
    assert added["modify_media_device"]["media_device_info"]["media_device_name"] == "lobby"
    assert layout["preview_mode"] == 1 and layout["last_set_name"] == "WEBUI"
    frames = got["frames"]
    assert frames, "no preview frame arrived"
    last = frames[-1]
    assert last["preview_id"] == "0" and last["roi"] == [] and last["frame_id"] > 0
    assert (last["frame_img"]["width"], last["frame_img"]["height"]) == (1280, 720)
    jpeg = base64.b64decode(last["frame_img"]["data"])
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (720, 1280, 3)
    named = [o for o in last["preview_objs"] if o["identity_name"] == "Ardern"]
    assert named and len(named[0]["detect_box"]) == 4 and named[0]["track_id"] >= 1


def test_the_hardware_decoder_seam_feeds_a_device(models, tmp_path: Path, video_dir: Path,
                                                  heads, monkeypatch) -> None:
    """``video.decoder: sail`` reads through ``sail.Decoder`` (the fake of tests/fakes,
    which enforces SAIL's calling contract) and the device works as with OpenCV."""
    from ..fakes import sail as fake_sail

    sail = fake_sail.install(monkeypatch)
    scene = [Passage("ardern_2022.jpg", 0.2, 2.5)]
    video = write_video(video_dir / "vpu.avi", scene, 3.0, {p.photo: heads(p.photo) for p in scene})
    live = LiveServer(video_config(tmp_path / "daemon", video_dir, decoder="sail"), models).start()
    try:
        register(live)
        device = ok(live.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": "vpu",
            "media_device_url": str(video)}))["media_device_id"]
        state = wait_for(lambda: health(live)["devices"][device].get("state") == "finished"
                         and health(live)["devices"][device], 60, "the file to finish")
        time.sleep(0.5)
        events = all_events(live)
    finally:
        live.stop()
    assert [e["identity_id"] for e in events] == ["ardern"]
    assert state["frames_read"] == 45 and state["native_fps"] == 15.0
    assert len(sail.DECODERS) == 1 and sail.VIOLATIONS == []
