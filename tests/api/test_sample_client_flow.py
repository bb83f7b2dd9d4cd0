"""The upstream sample client's flow, unmodified, against the daemon over real HTTP:

createpermission -> createidentity -> addmediadevice (photo) -> search with media_device_ip
-> setconfigs HISTORY_EVENT_UPLOAD_URL -> the platform (a real receiver on loopback)
receives the event with the payload of api/event.md section 8.
"""

from __future__ import annotations

import base64
import json
import urllib.request

from .conftest import photo
from .receiver import Receiver


def post(server, endpoint: str, payload: dict) -> dict:
    """As the sample client does it: urllib, JSON body, parse the JSON answer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}/sophon/v2/face/{endpoint}",
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status == 200
        return json.loads(response.read().decode("utf-8"))


def encoded(path) -> str:
    # The sample client uses base64.encodebytes: a newline every 76 characters.
    return base64.encodebytes(path.read_bytes()).decode("ascii")


def test_sample_client_flow_reaches_the_platform(fresh_server) -> None:
    server = fresh_server
    with Receiver() as platform:
        group = post(server, "createpermission", {"permission_name": "测试组"})
        person = post(server, "createidentity", {
            "identity_name": "小王", "permission_ids": [group["permission_id"]],
            "register_image": encoded(photo("ardern_2018.jpg"))})
        device = post(server, "addmediadevice", {
            "media_device_type": "photo", "media_device_name": "63",
            "media_device_url": "192.168.1.63", "permission_id": group["permission_id"]})
        found = post(server, "search", {"rgb_image_base64": encoded(photo("ardern_2022.jpg")),
                                        "media_device_ip": "192.168.1.63"})
        assert found["result"] is True
        assert found["identity_id"] == person["identity_id"]
        assert post(server, "setconfigs", {"config_dict": {
            "HISTORY_EVENT_UPLOAD_URL": platform.url, "HISTORY_REPORT_PEROID": 1}}) == {
            "HISTORY_EVENT_UPLOAD_URL": platform.url, "HISTORY_REPORT_PEROID": 1}

        received = platform.wait_for(lambda items: len(items) >= 1, timeout_s=30)
        event = post(server, "getevents", {})["events"][0]
        payload = received[0]
        assert payload["api_version"] == "2.0"
        assert payload["event_id"] == event["event_id"]
        assert payload["identity_id"] == person["identity_id"]
        assert payload["identity_name"] == "小王"
        assert payload["user_type"] == "employee"
        assert payload["timestamp"] == int(round(event["timestamp"] * 1e6)) // 1000
        assert isinstance(payload["in_timestamp"], int) and isinstance(payload["out_timestamp"], int)
        assert payload["score"] == event["score"]
        assert payload["media_device_info"] == {
            "media_device_id": device["media_device_id"], "media_device_ip": "192.168.1.63",
            "media_device_name": "63", "media_device_type": "photo",
            "media_device_url": "192.168.1.63"}
        assert payload["mq_license_key"] == ""
        attr = payload["recognize_face_attr"]
        assert attr["feature_binary"] == attr["feature_base64_str"] == \
            event["recognize_face_attr"]["feature_binary"]
        assert base64.b64decode(payload["spot_image"]) == photo("ardern_2022.jpg").read_bytes()
        assert base64.b64decode(payload["reg_image"]) == photo("ardern_2018.jpg").read_bytes()
        assert base64.b64decode(payload["recognize_face_image"])[:2] == b"\xff\xd8"
        assert payload["ir_image"] == ""
