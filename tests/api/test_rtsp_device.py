"""An ``rtsp`` device against a real RTSP server (GStreamer's, from Debian's packages) on
loopback: events flow, the camera drops and comes back, the device reconnects, and the
status push says offline, then online."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List

import pytest

from ..rtsp_server import RtspServer, rtsp_unavailable_reason
from ..video_media import Passage, write_video
from .live import LiveServer
from .receiver import Receiver
from .video_support import (all_events, health, ok, register, set_configs, video_config,
                            wait_for)


def statuses(reports: List[Dict[str, Any]], device_id: str) -> List[str]:
    """The device's status in each report, in order, repeats folded."""
    seen: List[str] = []
    for report in reports:
        for entry in report["media_devices"]:
            if entry["media_device_id"] == device_id and (
                    not seen or seen[-1] != entry["media_device_status"]):
                seen.append(entry["media_device_status"])
    return seen


def test_rtsp_camera_drops_and_comes_back(models, tmp_path: Path, heads) -> None:
    reason = rtsp_unavailable_reason()
    if reason:
        pytest.skip(reason)
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    # Ardern walks by every 4 s (the server loops the clip); 1.3 s out of sight between
    # passages ends her track, so each loop is a new passage.
    scene = [Passage("ardern_2022.jpg", 0.2, 2.5)]
    clip = write_video(video_dir / "door.avi", scene, 4.0, {p.photo: heads(p.photo) for p in scene})
    live = LiveServer(video_config(tmp_path / "daemon", video_dir, reconnect_min_s=0.5,
                                   reconnect_max_s=2.0, read_timeout_s=3.0), models).start()
    try:
        register(live)
        with Receiver() as monitor, RtspServer(clip) as camera:
            set_configs(live, MEDIA_DEVICE_MONITOR_URL=monitor.url,
                        MEDIA_DEVICE_MONITOR_REPORT_PEROID=1, GATE_DUPLICATE_REMOVAL_TIMEOUT=0)
            device = ok(live.post("addmediadevice", {
                "media_device_type": "rtsp", "media_device_name": "door",
                "media_device_url": camera.url}))["media_device_id"]
            wait_for(lambda: [e for e in all_events(live) if e["identity_id"] == "ardern"], 60,
                     "Ardern's first event")
            monitor.wait_for(lambda got: statuses(got, device)[-1:] == ["online"], 20)

            camera.stop()
            monitor.wait_for(lambda got: statuses(got, device)[-1:] == ["offline"], 20)
            assert health(live)["devices"][device]["status"] == "offline"
            before = len(all_events(live))

            camera.start()  # same port, same URL
            monitor.wait_for(lambda got: statuses(got, device)[-2:] == ["offline", "online"], 30)
            wait_for(lambda: len(all_events(live)) > before, 60, "events after the reconnect")
            state = health(live)["devices"][device]
            assert state["reconnects"] >= 1 and state["state"] == "online"
            events = all_events(live)
        # Only the person on camera, ever; each event names the camera.
        assert {e["identity_id"] for e in events} == {"ardern"}
        assert all(e["media_device_info"]["media_device_ip"] == "127.0.0.1"
                   and e["media_device_info"]["media_device_type"] == "rtsp"
                   and e["ext_data"]["video_shape"] == [1280, 720, 3] for e in events)
    finally:
        live.stop()
