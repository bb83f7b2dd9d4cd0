"""Permission groups over real HTTP (api/permission.md)."""

from __future__ import annotations

import re

import numpy as np

from .conftest import photo
from .live import b64_of


def test_group_lifecycle(fresh_server):
    server = fresh_server
    created = server.post("createpermission", {"permission_name": "测试组", "permission_id": "270ec5e6",
                                               "description": "first"})
    assert created.json == {"description": "first", "permission_id": "270ec5e6",
                            "permission_name": "测试组"}
    generated = server.post("createpermission", {"permission_name": "Gate", "permission_id": ""}).json
    assert re.fullmatch(r"[0-9a-f]{8}", generated["permission_id"])
    assert generated["description"] == ""
    assert server.post("createpermission", {"permission_name": "x", "permission_id": "270ec5e6"}).error \
        == ("ID_REPEAT_ERROR", "270ec5e6")
    assert server.post("createpermission", {"permission_name": "Gate"}).error == ("NAME_REPEAT_ERROR", "Gate")

    # The id wins over the name (R49).
    by_both = server.post("getpermission", {"permission_id": "270ec5e6", "permission_name": "Gate"})
    assert by_both.json["permission_name"] == "测试组"
    assert server.post("getpermission", {"permission_name": "Gate"}).json == generated

    listed = server.post("getpermissions", {}).json
    assert [p["permission_id"] for p in listed["permissions"]] == ["270ec5e6", generated["permission_id"]]
    assert listed["pagination"] == {"page_index": 0, "page_limit": 10, "total_count": 2}
    assert server.post("getpermissions", {"permission_name": "gat"}).json["pagination"]["total_count"] == 1

    renamed = server.post("updatepermission", {"permission_name": "Gate", "new_name": "Front gate",
                                               "new_description": "updated"}).json
    assert renamed == {"description": "updated", "permission_id": generated["permission_id"],
                       "permission_name": "Front gate"}
    assert server.post("updatepermission", {"permission_id": "270ec5e6", "new_name": "Front gate"}).error \
        == ("NAME_REPEAT_ERROR", "Front gate")
    same = server.post("updatepermission", {"permission_id": "270ec5e6", "new_name": "测试组"})
    assert same.status == 200  # renaming to its own name is allowed
    assert server.post("getpermission", {"permission_name": "Gate"}).status == 404


def test_deleting_a_group_unbinds_its_members(fresh_server):
    server = fresh_server
    gid = server.post("createpermission", {"permission_name": "doomed"}).json["permission_id"]
    keep = server.post("createpermission", {"permission_name": "kept"}).json["permission_id"]
    feature = (np.ones(128) / np.sqrt(128)).tolist()
    server.post("createidentity", {"register_image": b64_of(photo("macron_2014.jpg")), "identity_id": "m",
                                   "permission_ids": [gid, keep], "fiqa_level": "no"})
    server.post("createidentity", {"register_feature": feature, "identity_id": "f",
                                   "permission_ids": [gid]})
    assert server.post("deletepermission", {"permission_name": "doomed"}).json == {"permission_id": gid}
    assert server.post("getidentity", {"identity_id": "m"}).json["permission_ids"] == [keep]
    assert server.post("getidentity", {"identity_id": "f"}).json["permission_ids"] == []
    assert server.post("getpermission", {"permission_id": gid}).error == ("ID_NOT_FOUND", gid)
    # The gallery forgot the group: searching it by name now fails as unknown.
    reply = server.post("search", {"rgb_image_base64": b64_of(photo("macron_2025.jpg")),
                                   "permission_name": "doomed"})
    assert reply.error == ("PERMISSION_ID_NOT_FOUND", "doomed")
    kept = server.post("search", {"rgb_image_base64": b64_of(photo("macron_2025.jpg")),
                                  "permission_name": "kept"})
    assert kept.json["identity_id"] == "m" and kept.json["result"] is True
    listed = server.post("getidentities", {"filters": {"permission_id_list": [gid]}}).json
    assert listed["identities"] == []
