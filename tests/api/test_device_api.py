"""Media devices and preview over real HTTP (api/device.md 1-8)."""

from __future__ import annotations

import pytest

from .conftest import TEST_DATA_DIR

RTSP = {"media_device_id": "2c1a6a12-ecf4-4490-a2fc-8d7a5023bfcd",
        "media_device_url": "rtsp://192.168.1.100:554/ch2", "media_device_name": "bbb",
        "media_device_type": "rtsp", "net_relay": {}}


def test_device_lifecycle_with_the_upstream_examples(fresh_server) -> None:
    server = fresh_server
    gid = server.post("createpermission", {"permission_name": "g"}).json["permission_id"]
    added = server.post("addmediadevice", dict(RTSP, permission_id=gid))
    assert added.json == {"media_device_id": RTSP["media_device_id"], "media_device_name": "bbb"}
    photo = server.post("addmediadevice", {"media_device_type": "PHOTO", "media_device_name": "63",
                                           "media_device_url": "192.168.1.63", "media_device_id": ""})
    photo_id = photo.json["media_device_id"]
    assert len(photo_id) == 36  # R18: "" generates a UUID4
    listed = server.post("getmediadevices", {}).json["devices"]
    assert listed[0] == {
        "do_rtmp_forward": False, "media_device_id": RTSP["media_device_id"],
        "media_device_ip": "192.168.1.100", "media_device_name": "bbb",
        "media_device_type": "rtsp", "media_device_url": "rtsp://192.168.1.100:554/ch2",
        "net_relay": {}, "permission_id": gid, "roi_area": [], "rtmp_address": ""}
    assert listed[1]["media_device_ip"] == "192.168.1.63" and listed[1]["media_device_type"] == "photo"
    empty_body = server.request("POST", "/sophon/v2/face/getmediadevices", b"")
    assert empty_body.json["devices"] == listed
    one = server.post("getmediadevices", {"media_device_id": photo_id}).json["devices"]
    assert [d["media_device_id"] for d in one] == [photo_id]
    assert server.post("getmediadevices", {"media_device_id": "nope"}).error == \
        ("DEVICE_ID_NOT_FOUND", "nope")  # R53

    # R43: the upstream update example resends url and type unchanged.
    update = dict(RTSP, media_device_name="ddd", permission_id=gid)
    assert server.post("updatemediadevice", update).json == \
        {"media_device_id": RTSP["media_device_id"], "media_device_name": "ddd"}
    assert server.post("updatemediadevice", dict(update, media_device_url="rtsp://10.0.0.1/x")).error == \
        ("INVALID_ARGUMENTS", 'media_device_url: "rtsp://10.0.0.1/x"')
    relay = {"ip": "192.168.1.50", "port": 50000, "channel": 1, "delay_time": 5}
    changed = server.post("updatemediadevice", {"media_device_id": RTSP["media_device_id"],
                                                "net_relay": relay, "roi_area": [0, 0, 1920, 1080],
                                                "do_rtmp_forward": True,
                                                "rtmp_address": "rtmp://192.168.1.10/live/cam1"})
    assert changed.status == 200
    stored = server.post("getmediadevices", {"media_device_id": RTSP["media_device_id"]}).json["devices"][0]
    assert stored["net_relay"] == relay and stored["roi_area"] == [0, 0, 1920, 1080]
    assert stored["do_rtmp_forward"] is True and stored["media_device_name"] == "ddd"

    # deletepermission unbinds the device.
    server.post("deletepermission", {"permission_id": gid})
    stored = server.post("getmediadevices", {"media_device_id": RTSP["media_device_id"]}).json["devices"][0]
    assert stored["permission_id"] == ""

    # Preview settings, and delete removing from both lists.
    assert server.post("getpreview", {}).json == {"last_set_name": "", "preview_device_list": [],
                                                  "preview_mode": 4, "selected_device_list": []}
    preview = server.post("updatepreview", {"selected_device_list": [photo_id, RTSP["media_device_id"]],
                                            "preview_device_list": [photo_id], "preview_mode": "1",
                                            "last_set_name": "WEBUI"}).json
    assert preview["preview_mode"] == 1  # R44: emitted as an int
    assert server.post("updatepreview", {"preview_device_list": ["ghost"]}).error == \
        ("DEVICE_PERVIEW_ID_NOT_EXIST", "ghost")
    assert server.post("updatepreview", {"preview_mode": 3}).error == ("INVALID_ARGUMENTS", "preview_mode: 3")
    assert server.post("deletemediadevice", {"media_device_id": photo_id}).json == \
        {"media_device_id": photo_id, "media_device_name": "63"}  # R42
    assert server.post("getpreview", {}).json["preview_device_list"] == []
    assert server.post("getpreview", {}).json["selected_device_list"] == [RTSP["media_device_id"]]
    assert server.post("deletemediadevice", {"media_device_id": photo_id}).error == \
        ("DEVICE_ID_NOT_FOUND", photo_id)
    everything = server.post("deletemediadevices", {}).json
    assert everything == {"deleted_device_count": 1, "media_device_list": [RTSP["media_device_id"]],
                          "total_device_count": 1}
    assert server.post("deletemediadevices", {}).json["deleted_device_count"] == 0


@pytest.mark.parametrize("body, error", [
    ({}, ("MISSING_ARGUMENTS", "media_device_name")),
    ({"media_device_name": "x"}, ("MISSING_ARGUMENTS", "media_device_type")),
    ({"media_device_name": "x", "media_device_type": "photo"}, ("MISSING_ARGUMENTS", "media_device_url")),
    (dict(RTSP, net_relay={"ip": "1.2.3.4"}), ("MISSING_ARGUMENTS", "net_relay.port")),
    (dict(RTSP, do_rtmp_forward=True), ("MISSING_ARGUMENTS", "rtmp_address")),
    (dict(RTSP, media_device_name=5), ("INVALID_ARGUMENTS", "media_device_name: 5")),
    (dict(RTSP, media_device_type="usb"), ("INVALID_ARGUMENTS", 'media_device_type: "usb"')),
    (dict(RTSP, media_device_url="http://x/y"), ("INVALID_ARGUMENTS", 'media_device_url: "http://x/y"')),
    (dict(RTSP, media_device_url="rtsp://"), ("INVALID_ARGUMENTS", 'media_device_url: "rtsp://"')),
    (dict(RTSP, media_device_type="photo", media_device_url=""), ("INVALID_ARGUMENTS", 'media_device_url: ""')),
    (dict(RTSP, media_device_type="file", media_device_url="/etc/passwd"),
     ("INVALID_ARGUMENTS", 'media_device_url: "/etc/passwd"')),
    (dict(RTSP, net_relay={"ip": "1.2.3.4", "port": 70000, "channel": 1, "delay_time": 1}),
     ("INVALID_ARGUMENTS", "net_relay.port: 70000")),
    (dict(RTSP, net_relay={"ip": "1.2.3.4", "port": 1, "channel": -1, "delay_time": 1}),
     ("INVALID_ARGUMENTS", "net_relay.channel: -1")),
    (dict(RTSP, net_relay=[]), ("INVALID_ARGUMENTS", "net_relay: []")),
    (dict(RTSP, do_rtmp_forward="yes"), ("INVALID_ARGUMENTS", 'do_rtmp_forward: "yes"')),
    (dict(RTSP, do_rtmp_forward=True, rtmp_address=""), ("INVALID_ARGUMENTS", 'rtmp_address: ""')),
    (dict(RTSP, roi_area=[10, 0, 5, 5]), ("INVALID_ARGUMENTS", "roi_area: [10,0,5,5]")),
    (dict(RTSP, roi_area=[0, 0, 5]), ("INVALID_ARGUMENTS", "roi_area: [0,0,5]")),
    (dict(RTSP, roi_area=[0, -1, 5, 5]), ("INVALID_ARGUMENTS", "roi_area[1]: -1")),
    ({"media_device_type": "photo", "media_device_name": "p", "media_device_url": "1.1.1.1",
      "roi_area": [0, 0, 5, 5]}, ("INVALID_ARGUMENTS", "roi_area: [0,0,5,5]")),
    (dict(RTSP, permission_id="ghost"), ("PERMISSION_ID_NOT_FOUND", "ghost")),
])
def test_addmediadevice_errors(server, body, error) -> None:
    reply = server.post("addmediadevice", body)
    assert reply.error == error
    assert reply.status < 500


def test_duplicates_and_the_device_limit(fresh_server) -> None:
    server = fresh_server
    assert server.post("addmediadevice", dict(RTSP, do_rtmp_forward=True, rtmp_address="rtmp://a/b")).status == 200
    assert server.post("addmediadevice", RTSP).error == ("ID_REPEAT_ERROR", RTSP["media_device_id"])
    assert server.post("addmediadevice", dict(RTSP, media_device_id="other")).error == \
        ("DEVICE_ADDRESS_DUPLICATE_ERROR", RTSP["media_device_url"])
    assert server.post("addmediadevice", dict(RTSP, media_device_id="other", media_device_url="rtsp://h/2",
                                              do_rtmp_forward=True, rtmp_address="rtmp://a/b")).error == \
        ("DEVICE_RTMP_ADDRESS_DUPLICATE_ERROR", "rtmp://a/b")
    video = str(TEST_DATA_DIR / "clip.mp4")  # inside the image roots; need not exist yet
    assert server.post("addmediadevice", {"media_device_type": "file", "media_device_name": "f",
                                          "media_device_url": video}).status == 200
    for i in range(14):
        assert server.post("addmediadevice", {"media_device_type": "photo", "media_device_name": f"p{i}",
                                              "media_device_url": f"10.0.0.{i}"}).status == 200
    assert server.post("addmediadevice", {"media_device_type": "photo", "media_device_name": "x",
                                          "media_device_url": "10.0.1.1"}).error == \
        ("DEVICE_MAX_NUM_ERROR", "maximum number of devices reached")
    assert server.post("updatemediadevice", {}).error == ("MISSING_ARGUMENTS", "media_device_id")
    assert server.post("updatemediadevice", {"media_device_id": "ghost"}).error == \
        ("DEVICE_ID_NOT_FOUND", "ghost")
    assert server.post("updatemediadevice", {"media_device_id": "other0", "roi_area": "x"}).error == \
        ("INVALID_ARGUMENTS", 'roi_area: "x"')
    assert server.post("deletemediadevice", {"media_device_id": 3}).error == \
        ("INVALID_ARGUMENTS", "media_device_id: 3")
    assert server.post("deletemediadevice", {}).error == ("MISSING_ARGUMENTS", "media_device_id")
