"""Events over real HTTP (api/event.md): recorded by search, read, listed, searched by image,
their images downloaded; duplicate suppression, armed windows, image types, retention."""

from __future__ import annotations

import base64
import datetime
import time
from pathlib import Path
from typing import Any, Dict

import pytest

from .conftest import make_config, photo
from .live import LiveServer, b64_of

MACRON = photo("macron_2014.jpg")
MACRON_2025 = photo("macron_2025.jpg")
ARDERN = photo("ardern_2018.jpg")
SUNAK = photo("sunak.jpg")
EVENT_KEYS = {"event_id", "ext_data", "frame_id", "identity_id", "identity_name",
              "media_device_info", "permission_id", "permission_name", "post_action",
              "recognize_face_attr", "recognize_face_image_id", "register_image_id", "score",
              "spot_image_id", "timestamp", "user_type"}
ATTR_KEYS = {"age", "box", "expression", "feature_binary", "gender", "glasses", "hat", "mask",
             "point"}


def ok(reply) -> Dict[str, Any]:
    assert reply.status == 200, reply
    return reply.json


def setup_gate(server) -> Dict[str, str]:
    """A group with Macron in it and a photo device bound to it."""
    gid = ok(server.post("createpermission", {"permission_name": "测试组"}))["permission_id"]
    ok(server.post("createidentity", {"register_image": b64_of(MACRON), "identity_id": "macron",
                                      "identity_name": "小明", "permission_ids": [gid],
                                      "fiqa_level": "no"}))
    ok(server.post("createidentity", {"register_image": b64_of(ARDERN), "identity_id": "ardern",
                                      "fiqa_level": "no"}))
    device = ok(server.post("addmediadevice", {
        "media_device_type": "photo", "media_device_name": "63",
        "media_device_url": "192.168.1.63", "permission_id": gid}))
    return {"group": gid, "device": device["media_device_id"]}


def events_of(server, **body) -> Dict[str, Any]:
    return ok(server.post("getevents", body))


def test_search_records_a_recognised_event_with_images(fresh_server) -> None:
    server = fresh_server
    ids = setup_gate(server)
    before = time.time()
    found = ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025),
                                      "media_device_ip": "192.168.1.63"}))
    assert found["result"] is True and found["identity_id"] == "macron"
    listed = events_of(server)
    assert listed["pagination"] == {"page_index": 0, "page_limit": 10, "total_count": 1}
    event = listed["events"][0]
    assert set(event) == EVENT_KEYS and set(event["recognize_face_attr"]) == ATTR_KEYS
    assert event == ok(server.post("getevent", {"event_id": event["event_id"]}))
    assert len(event["event_id"]) == 16 and before <= event["timestamp"] <= time.time()
    assert abs(int(event["event_id"]) / 1e6 - event["timestamp"]) < 1.0
    assert event["identity_id"] == "macron" and event["identity_name"] == "小明"
    assert event["user_type"] == "employee" and event["score"] == round(found["score"], 2)
    assert event["permission_id"] == ids["group"] and event["permission_name"] == "测试组"
    assert event["media_device_info"] == {
        "media_device_id": ids["device"], "media_device_ip": "192.168.1.63",
        "media_device_name": "63", "media_device_type": "photo"}
    macron = ok(server.post("getidentity", {"identity_id": "macron"}))
    assert event["register_image_id"] == macron["register_image_ids"][0]
    assert event["frame_id"] == 0 and event["post_action"] == "0"
    assert event["ext_data"] == {"in_timestamp": event["timestamp"],
                                 "recognition_timestamp": event["timestamp"]}
    attr = event["recognize_face_attr"]
    assert len(base64.b64decode(attr["feature_binary"])) == 128 * 4
    assert len(attr["box"]) == 4 and len(attr["point"]) == 10
    assert attr["age"] is None and attr["mask"] is None and attr["hat"] is None
    face_id, spot_id = event["recognize_face_image_id"], event["spot_image_id"]
    assert face_id and spot_id and face_id != spot_id  # R57
    ts = event["timestamp"]
    face = server.request("GET", f"/sophon/v2/face/getspotimage/{face_id}?timestamp={ts}")
    assert face.status == 200 and face.headers["content-type"] == "image/jpeg"
    assert face.body[:2] == b"\xff\xd8"
    spot = server.post("getspotimage", {"image_id": spot_id, "timestamp": ts})
    assert spot.status == 200 and spot.body == MACRON_2025.read_bytes()  # stored as sent


def test_stranger_and_device_less_events(fresh_server) -> None:
    server = fresh_server
    setup_gate(server)
    stranger = ok(server.post("search", {"rgb_image_base64": b64_of(SUNAK)}))
    assert stranger["result"] is False
    event = events_of(server)["events"][0]
    assert event["identity_id"] == "" and event["identity_name"] == ""
    assert event["user_type"] == "stranger" and event["register_image_id"] == ""
    assert event["permission_id"] == "" and event["permission_name"] == ""
    assert event["score"] == round(stranger["score"], 2)
    assert set(event["media_device_info"].values()) == {""}
    # An exact "" identity filter returns the unrecognised events (README 3.4).
    ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025)}))
    assert events_of(server, filters={"identity_id": ""})["pagination"]["total_count"] == 1
    assert events_of(server, filters={"user_type": "STRANGER"})["pagination"]["total_count"] == 1


def test_failed_searches_record_nothing(fresh_server) -> None:
    server = fresh_server
    setup_gate(server)
    assert server.post("search", {"rgb_image_base64": b64_of(photo("no_face_coffee.jpg"))}).status == 400
    spoof = photo("liveness/image_F2.jpg")  # a face replayed on a screen
    assert server.post("search", {"rgb_image_base64": b64_of(spoof),
                                  "with_liveness_check": "liveness_rgb"}).status == 400
    assert server.post("search", {"rgb_image_base64": b64_of(MACRON),
                                  "media_device_ip": "10.9.9.9"}).error == \
        ("DEVICE_ID_NOT_FOUND", "10.9.9.9")
    assert events_of(server)["pagination"]["total_count"] == 0


def test_duplicate_suppression_per_device_and_identity(fresh_server) -> None:
    server = fresh_server
    setup_gate(server)
    gate = {"rgb_image_base64": b64_of(MACRON_2025), "media_device_ip": "192.168.1.63"}
    for _ in range(3):
        assert ok(server.post("search", gate))["result"] is True  # the answer is unaffected
    assert events_of(server)["pagination"]["total_count"] == 1
    # No device: never suppressed. Strangers: never suppressed.
    ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025)}))
    ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025)}))
    ok(server.post("search", {"rgb_image_base64": b64_of(SUNAK), "media_device_ip": "192.168.1.63"}))
    ok(server.post("search", {"rgb_image_base64": b64_of(SUNAK), "media_device_ip": "192.168.1.63"}))
    assert events_of(server)["pagination"]["total_count"] == 5
    ok(server.post("setconfigs", {"config_dict": {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 0}}))
    ok(server.post("search", gate))
    assert events_of(server)["pagination"]["total_count"] == 6


def test_image_type_and_scope_by_permission_name(fresh_server) -> None:
    server = fresh_server
    ids = setup_gate(server)
    ok(server.post("setconfigs", {"config_dict": {"REGN_IMAGE_TYPE": "recognize_face"}}))
    ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025), "permission_name": "测试组"}))
    event = events_of(server)["events"][0]
    assert event["recognize_face_image_id"] and event["spot_image_id"] == ""
    assert event["permission_id"] == ids["group"]
    ok(server.post("setconfigs", {"config_dict": {"REGN_IMAGE_TYPE": "spot_image"}}))
    ok(server.post("search", {"rgb_image_base64": b64_of(SUNAK)}))
    event = events_of(server)["events"][0]
    assert event["recognize_face_image_id"] == "" and event["spot_image_id"]


def test_armed_time_windows(fresh_server) -> None:
    server = fresh_server
    setup_gate(server)
    now = datetime.datetime.now()
    later = (now + datetime.timedelta(hours=2)).strftime("%H:%M:%S")
    much_later = (now + datetime.timedelta(hours=3)).strftime("%H:%M:%S")
    ok(server.post("setconfigs", {"config_dict": {
        "REGN_TIME_PART1": f"{later},{much_later}", "REGN_TIME_PART1_SWITCH": True}}))
    assert server.post("search", {"rgb_image_base64": b64_of(MACRON_2025)}).error == \
        ("NOT_IN_PASS_TIME", "not in pass time")
    # A window wrapping past midnight around now arms it again.
    earlier = (now - datetime.timedelta(hours=1)).strftime("%H:%M:%S")
    before_that = (now - datetime.timedelta(hours=2)).strftime("%H:%M:%S")
    ok(server.post("setconfigs", {"config_dict": {
        "REGN_TIME_PART2": f"{earlier},{before_that}", "REGN_TIME_PART2_SWITCH": True}}))
    assert ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025)}))["result"]
    assert events_of(server)["pagination"]["total_count"] == 1


def test_getevents_filters_paging_and_errors(fresh_server) -> None:
    server = fresh_server
    ids = setup_gate(server)
    ok(server.post("setconfigs", {"config_dict": {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 0}}))
    for image, device in ((MACRON_2025, True), (SUNAK, False), (MACRON, True)):
        body = {"rgb_image_base64": b64_of(image)}
        if device:
            body["media_device_ip"] = "192.168.1.63"
        ok(server.post("search", body))
    everything = events_of(server, page_limit=2)
    assert everything["pagination"] == {"page_index": 0, "page_limit": 2, "total_count": 3}
    newest, middle = everything["events"]
    assert newest["timestamp"] >= middle["timestamp"]
    assert events_of(server, page_limit=2, page_index=1)["events"][0]["identity_name"] == "小明"
    assert events_of(server, page_index=5)["events"] == []
    assert events_of(server, page_limit=5000)["pagination"]["page_limit"] == 1000
    by_device = events_of(server, filters={"media_device_ids": [ids["device"]]})
    assert by_device["pagination"]["total_count"] == 2
    assert events_of(server, filters={"media_device_ids": []})["pagination"]["total_count"] == 3
    assert events_of(server, filters={"identity_name": "小"})["pagination"]["total_count"] == 2
    assert events_of(server, filters={"identity_id": "macron", "score_min": 82})["pagination"][
        "total_count"] == 2
    assert events_of(server, filters={"score_max": 60})["pagination"]["total_count"] == 1
    first_ts = newest["timestamp"]
    assert events_of(server, filters={"datetime_gte": first_ts})["pagination"]["total_count"] == 1
    # R27: milliseconds are recognised.
    assert events_of(server, filters={"datetime_gte": int(first_ts * 1000)})[
        "pagination"]["total_count"] == 1
    assert events_of(server, filters={"datetime_lte": 1})["pagination"]["total_count"] == 0
    empty = server.request("POST", "/sophon/v2/face/getevents", b"",
                           {"Content-Type": "application/json"})
    assert empty.json["pagination"]["total_count"] == 3
    for body, message in [
        ({"filters": []}, "filters: []"),
        ({"filters": {"score_min": "high"}}, 'filters.score_min: "high"'),
        ({"filters": {"media_device_ids": [1]}}, "filters.media_device_ids[0]: 1"),
        ({"filters": {"datetime_gte": True}}, "filters.datetime_gte: true"),
        ({"page_limit": 0}, "page_limit: 0"),
        ({"page_index": -1}, "page_index: -1"),
    ]:
        assert server.post("getevents", body).error == ("INVALID_ARGUMENTS", message)
    assert server.post("getevent", {}).error == ("MISSING_ARGUMENTS", "event_id")
    assert server.post("getevent", {"event_id": 5}).error == ("INVALID_ARGUMENTS", "event_id: 5")
    assert server.post("getevent", {"event_id": "1628066406652506"}).error == \
        ("ID_NOT_FOUND", "1628066406652506")


def test_getspotimage_errors(server) -> None:
    base = "/sophon/v2/face/getspotimage"
    missing = server.request("GET", f"{base}/face-1628066406652506")
    assert missing.error == ("MISSING_ARGUMENTS", "timestamp")
    assert server.request("GET", f"{base}/face-1?timestamp=abc").error == \
        ("INVALID_ARGUMENTS", 'timestamp: "abc"')
    assert server.request("GET", f"{base}/face-1628066406652506?timestamp=1.5").error == \
        ("ID_NOT_FOUND", "face-1628066406652506")
    assert server.request("GET", f"{base}/..%2F..%2Fetc%2Fpasswd?timestamp=1").status == 404
    assert server.post("getspotimage", {"timestamp": 1}).error == ("MISSING_ARGUMENTS", "image_id")
    assert server.post("getspotimage", {"image_id": "x", "timestamp": "1"}).error == \
        ("INVALID_ARGUMENTS", 'timestamp: "1"')


def test_searchbyimage_finds_the_person_in_past_events(fresh_server) -> None:
    server = fresh_server
    ids = setup_gate(server)
    ok(server.post("setconfigs", {"config_dict": {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 0}}))
    ok(server.post("search", {"rgb_image_base64": b64_of(MACRON), "media_device_ip": "192.168.1.63"}))
    ok(server.post("search", {"rgb_image_base64": b64_of(SUNAK)}))
    ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025)}))
    found = ok(server.post("searchbyimage", {"face_image_base64": b64_of(MACRON_2025)}))
    assert found["have_more"] is False and found["total_time"] >= 0
    items = found["events"]
    assert len(items) == 2 and all(i["identity_id"] == "macron" for i in items)
    assert items[0]["timestamp"] > items[1]["timestamp"]  # reverse (newest first) by default
    assert items[0]["compare_score"] == pytest.approx(100.0, abs=0.01)  # the same photo
    assert "feature_binary" not in items[0]["recognize_face_attr"]
    assert len(items[0]["recognize_face_attr"]) == 8
    assert items[0]["out_timestamp"] == items[0]["timestamp"]
    assert found["endtimestamp"] == items[1]["timestamp"] or found["endtimestamp"] < items[1]["timestamp"]
    full = ok(server.post("getevent", {"event_id": items[0]["event_id"]}))  # R29
    assert full["spot_image_id"] == items[0]["spot_image_id"]
    forward = ok(server.post("searchbyimage", {"face_image_path": str(MACRON_2025),
                                               "reverse": False, "threshold": 82}))
    assert [i["event_id"] for i in forward["events"]] == [i["event_id"] for i in reversed(items)]
    only_device = ok(server.post("searchbyimage", {"face_image_base64": b64_of(MACRON_2025),
                                                   "media_device_ids": [ids["device"]]}))
    assert len(only_device["events"]) == 1
    # Continuation (R59): resume before the newest match.
    resumed = ok(server.post("searchbyimage", {"face_image_base64": b64_of(MACRON_2025),
                                               "last_end_timestamp": items[0]["timestamp"]}))
    assert [i["event_id"] for i in resumed["events"]] == [items[1]["event_id"]]
    # An empty window answers its start.
    window = ok(server.post("searchbyimage", {"face_image_base64": b64_of(MACRON_2025),
                                              "starttime": 1000, "endtime": 2000}))
    assert window == {"endtimestamp": 1000.0, "events": [], "have_more": False,
                      "total_time": window["total_time"]}
    strict = ok(server.post("searchbyimage", {"face_image_base64": b64_of(SUNAK), "threshold": 99}))
    assert len(strict["events"]) == 1


def test_searchbyimage_errors_in_order(fresh_server) -> None:
    server = fresh_server
    probe = b64_of(MACRON)
    assert server.post("searchbyimage", {}).error == \
        ("MISSING_ARGUMENTS", "face_image_base64/face_image_path")
    for body, message in [
        ({"fiqa_level": "best"}, 'fiqa_level: "best"'),
        ({"threshold": 101}, "threshold: 101"),
        ({"threshold": "82"}, 'threshold: "82"'),
        ({"reverse": "yes"}, 'reverse: "yes"'),
        ({"starttime": 2000, "endtime": 1000}, "starttime: 2000"),
        ({"media_device_ids": "d"}, 'media_device_ids: "d"'),
    ]:
        assert server.post("searchbyimage", dict(body, face_image_base64=probe)).error == \
            ("INVALID_ARGUMENTS", message)
    assert server.post("searchbyimage", {"face_image_base64": b64_of(photo("no_face_coffee.jpg"))}
                       ).error == ("NO_FACE_ERROR", "face_image_base64")
    assert server.post("searchbyimage", {"face_image_base64": "!!"}).error == \
        ("IMAGE_DECODE_ERROR", "face_image_base64")
    assert server.post("searchbyimage", {"face_image_path": "/etc/passwd"}).error == \
        ("IMAGE_NOT_OPENED", "/etc/passwd")
    ok(server.post("setconfigs", {"config_dict": {"GATE_APPLY_MODE": "grab"}}))
    assert server.post("searchbyimage", {"face_image_base64": probe}).error == \
        ("NOT_SUPPORT_IN_GRAB_MODE", "not supported in grab mode")


def test_wipedata_erases_what_it_says(fresh_server, tmp_path: Path) -> None:
    server = fresh_server
    setup_gate(server)
    ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025), "media_device_ip": "192.168.1.63"}))
    ok(server.post("setconfigs", {"config_dict": {"MATCH_THRESHOLD": 90}}))
    event = events_of(server)["events"][0]
    assert server.post("wipedata", {}).error == ("MISSING_ARGUMENTS", "users/events/all")
    assert server.post("wipedata", {"users": "yes"}).error == ("INVALID_ARGUMENTS", 'users: "yes"')
    assert ok(server.post("wipedata", {"users": False})) == {"result": True}
    assert ok(server.post("getidentities", {}))["pagination"]["total_count"] == 2

    assert ok(server.post("wipedata", {"users": True})) == {"result": True}
    assert ok(server.post("getidentities", {}))["pagination"]["total_count"] == 0
    assert ok(server.post("getpermissions", {}))["pagination"]["total_count"] == 0
    assert ok(server.post("getmediadevices", {}))["devices"] == []
    assert server.post("search", {"rgb_image_base64": b64_of(MACRON)}).error[0] == "EMPTY_GROUP_ERROR"
    assert events_of(server)["pagination"]["total_count"] == 1  # events stay
    health = server.request("GET", "/health").json
    assert health["store"]["faces"] == 0

    assert ok(server.post("wipedata", {"events": True})) == {"result": True}
    assert events_of(server)["pagination"]["total_count"] == 0
    image = server.request("GET", f"/sophon/v2/face/getspotimage/{event['spot_image_id']}"
                                  f"?timestamp={event['timestamp']}")
    assert image.status == 404
    assert ok(server.post("getconfigs", {"config_name": "MATCH_THRESHOLD"})) == {"MATCH_THRESHOLD": 90.0}

    ok(server.post("changepassword", {"username": "admin", "old_password": "admin",
                                      "new_password": "s3cret"}))
    assert ok(server.post("wipedata", {"all": True})) == {"result": True}
    assert ok(server.post("getconfigs", {"config_name": "MATCH_THRESHOLD"})) == {"MATCH_THRESHOLD": 82.0}
    # R41: the password survives every wipe.
    assert ok(server.post("login", {"username": "admin", "password": "s3cret"})) == {"result": True}
    # The library works again after the wipe.
    ok(server.post("createidentity", {"register_image": b64_of(MACRON), "identity_id": "again",
                                      "fiqa_level": "no"}))
    assert ok(server.post("search", {"rgb_image_base64": b64_of(MACRON_2025)}))["result"]


def test_checkeventimagepath_follows_the_setting(fresh_server) -> None:
    server = fresh_server
    local = ok(server.post("checkeventimagepath", {}))
    assert local["available"] is True and local["event_image_path"].endswith("/events")
    empty = server.request("POST", "/sophon/v2/face/checkeventimagepath", b"")
    assert empty.json == local
    ok(server.post("setconfigs", {"config_dict": {"EVENT_IMAGE_PATH": "remote"}}))
    remote = ok(server.post("checkeventimagepath", {"ignored": 1}))
    assert remote["event_image_path"] == "/data2/events"
    assert remote["available"] is Path("/data2/events").is_dir()


def test_retention_keeps_the_newest_events_and_their_images(models, tmp_path: Path) -> None:
    config = make_config(tmp_path / "daemon")
    import dataclasses
    config = dataclasses.replace(config, events=dataclasses.replace(config.events, max_events=2))
    server = LiveServer(config, models).start()
    try:
        ok(server.post("createidentity", {"register_image": b64_of(MACRON), "fiqa_level": "no"}))
        for image in (SUNAK, ARDERN, MACRON_2025):
            ok(server.post("search", {"rgb_image_base64": b64_of(image)}))
        listed = events_of(server)
        assert listed["pagination"]["total_count"] == 2
        assert listed["events"][0]["identity_id"] != ""  # Macron, the newest
        files = list((tmp_path / "daemon" / "events").rglob("*.jpg"))
        assert len(files) == 4  # two events, two images each
    finally:
        server.stop()
