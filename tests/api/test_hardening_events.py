"""Hostile bodies against the event, device, configuration, data and login endpoints:
every answer is the error envelope (or a success), never a 5xx."""

from __future__ import annotations

import pytest

ENDPOINTS = ("getevent", "getevents", "searchbyimage", "getspotimage", "getconfigs", "setconfigs",
             "wipedata", "checkeventimagepath", "login", "changepassword", "addmediadevice",
             "getmediadevices", "updatemediadevice", "deletemediadevice", "getpreview",
             "updatepreview")
HOSTILE = [
    None, [], "x", 1, {"filters": {"datetime_gte": 1e400}}, {"filters": {"score_min": -1e308}},
    {"event_id": "9" * 40}, {"event_id": "１２"}, {"image_id": "../../../etc/passwd", "timestamp": 1},
    {"config_name": {"a": 1}}, {"config_dict": {"MATCH_THRESHOLD": 1e999}},
    {"config_dict": {"MQ_EXCHANGE_ARGUMENTS": {"a": 2 ** 70}}}, {"config_dict": {"": None}},
    {"users": None, "events": None, "all": None}, {"username": "admin", "password": "\ud800"},
    {"media_device_name": "x" * 10000, "media_device_type": "rtsp", "media_device_url": "rtsp://h/" + "a" * 5000},
    {"media_device_name": "n", "media_device_type": "rtsp", "media_device_url": "rtsp://[::1"},
    {"media_device_id": "\u0000", "net_relay": {"ip": "", "port": 1, "channel": 1, "delay_time": 1}},
    {"media_device_id": "x", "roi_area": [1e400, 0, 1, 1]},
    {"preview_mode": "99999999999999999999", "selected_device_list": ["a"] * 1000},
    {"face_image_base64": "", "starttime": -1e308, "endtime": 1e308, "last_end_timestamp": 0},
    {"face_image_path": "/proc/self/environ"},
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_no_hostile_body_gets_a_server_error(server, endpoint) -> None:
    for body in HOSTILE:
        reply = server.post(endpoint, body)
        assert reply.status < 500, (endpoint, body, reply)
        if reply.status >= 400 and reply.body:
            reply.error  # the envelope, nothing else
    raw = server.request("POST", f"/sophon/v2/face/{endpoint}", b"\xff\xfe{",
                         {"Content-Type": "application/json"})
    assert raw.error[0] == "INVALID_REQUEST_JSON"
