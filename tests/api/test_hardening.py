"""Hostile and malformed input: every failure is the spec's envelope and code, never a 500."""

from __future__ import annotations

import base64
import struct
import zlib

import pytest

from sophon_face.errors import error_class

from .conftest import photo
from .live import b64_of

FEATURE_128 = [0.1] * 128


def _png_bomb(width: int = 60000, height: int = 60000) -> str:
    """A few hundred bytes declaring a 3.6-gigapixel image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
           + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))
    return base64.b64encode(png).decode()


def _truncated_jpeg() -> str:
    data = photo("macron_2025.jpg").read_bytes()
    return base64.b64encode(data[: len(data) // 2]).decode()


# --- HTTP conventions (README 3) -------------------------------------------------------

def test_unknown_path_is_404_not_found(server):
    reply = server.post("nosuchendpoint", {})
    assert reply.status == 404
    assert reply.error == ("NOT_FOUND", "/sophon/v2/face/nosuchendpoint")


def test_wrong_method_is_405_with_allow(server):
    reply = server.request("GET", "/sophon/v2/face/compare")
    assert reply.status == 405
    assert reply.error == ("METHOD_NOT_ALLOWED", "GET")
    assert "POST" in reply.headers["allow"]


def test_trailing_slash_is_tolerated(server):
    reply = server.request("POST", "/sophon/v2/face/getpermissions/", b"{}",
                           {"Content-Type": "application/json"})
    assert reply.status == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x"])
def test_wrong_content_type_is_415(server, content_type):
    reply = server.request("POST", "/sophon/v2/face/compare", b"{}",
                           {"Content-Type": content_type})
    assert reply.status == 415
    assert reply.error == ("UNSUPPORT_CONTENT_TYPE", content_type)


def test_json_content_type_parameters_and_case_are_accepted(server):
    reply = server.request("POST", "/sophon/v2/face/getpermissions", b"{}",
                           {"Content-Type": " Application/JSON ; charset=utf-8"})
    assert reply.status == 200


def test_missing_content_type_with_a_body_is_415(server):
    reply = server.request("POST", "/sophon/v2/face/compare", b'{"a": 1}', {})
    assert reply.status == 415 and reply.error == ("UNSUPPORT_CONTENT_TYPE", "")


@pytest.mark.parametrize("body", [b"", b"   \n"])
def test_empty_body(server, body):
    json_header = {"Content-Type": "application/json"}
    reply = server.request("POST", "/sophon/v2/face/compare", body, json_header)
    assert reply.status == 400 and reply.error == ("EMPTY_REQUEST_JSON", "empty request body")
    # Endpoints without a required parameter treat an empty body as {}.
    assert server.request("POST", "/sophon/v2/face/getidentities", body, json_header).status == 200
    assert server.request("POST", "/sophon/v2/face/getpermissions", body, {}).status == 200


@pytest.mark.parametrize("body", [b"{", b"[1, 2]", b"null", b"42", b'"x"', b"\xff\xfe{}",
                                  b"{'a': 1}"])
def test_invalid_json(server, body):
    reply = server.request("POST", "/sophon/v2/face/compare", body,
                           {"Content-Type": "application/json"})
    assert reply.status == 400
    assert reply.error == ("INVALID_REQUEST_JSON", "request body is not a JSON object")


def test_utf8_bom_is_tolerated(server):
    reply = server.request("POST", "/sophon/v2/face/getpermissions", b"\xef\xbb\xbf{}",
                           {"Content-Type": "application/json"})
    assert reply.status == 200


def test_oversized_body_is_413(server):
    body = b'{"image_1_base64": "' + b"A" * (33 * 1024 * 1024) + b'"}'
    reply = server.request("POST", "/sophon/v2/face/compare", body,
                           {"Content-Type": "application/json"})
    assert reply.status == 413
    assert reply.error == ("IMAGE_SIZE_TOO_LARGE_ERROR", "request body too large")


def test_null_is_absent_and_unknown_keys_are_ignored(server):
    reply = server.post("compare", {"image_1_base64": None, "image_1_path": None,
                                    "image_2_base64": "x", "whatever": [1]})
    assert reply.error == ("MISSING_ARGUMENTS", "image_1_base64/image_1_path")


# --- image inputs ------------------------------------------------------------------------

@pytest.mark.parametrize("value, code", [
    ("", "IMAGE_DECODE_ERROR"),
    ("!!!not base64!!!", "IMAGE_DECODE_ERROR"),
    (base64.b64encode(b"hello, this is not an image").decode(), "IMAGE_DECODE_ERROR"),
    ("data:image/jpeg;base64,", "IMAGE_DECODE_ERROR"),
])
def test_bad_image_data(server, value, code):
    reply = server.post("fiqa", {"image_base64_str": value})
    assert reply.status == 400 and reply.error == (code, "image_base64_str")


def test_truncated_jpeg_is_a_decode_error(server):
    reply = server.post("compare", {"image_1_base64": b64_of(photo("macron_2014.jpg")),
                                    "image_2_base64": _truncated_jpeg()})
    assert reply.status == 400 and reply.error == ("IMAGE_DECODE_ERROR", "image_2_base64")


def test_decompression_bomb_is_refused_before_decoding(server):
    reply = server.post("detect", {"image_base64_str": _png_bomb()})
    assert reply.status == 400
    assert reply.error == ("IMAGE_SIZE_TOO_LARGE_ERROR", "image_base64_str")


def test_image_over_16_mib_is_too_large(server):
    reply = server.post("detect", {"image_base64_str": "A" * (22 * 1024 * 1024)})
    assert reply.error == ("IMAGE_SIZE_TOO_LARGE_ERROR", "image_base64_str")


# --- parameters: (endpoint, body, code, message) ------------------------------------------

CASES = [
    ("detect", {}, "MISSING_ARGUMENTS", "image_base64_str/image_path"),
    ("detect", {"image_path": 5}, "INVALID_ARGUMENTS", "image_path: 5"),
    ("detect", {"image_base64_str": "x", "max_num_faces": 0}, "INVALID_ARGUMENTS", "max_num_faces: 0"),
    ("detect", {"image_base64_str": "x", "max_num_faces": True}, "INVALID_ARGUMENTS", "max_num_faces: true"),
    ("detect", {"image_base64_str": "x", "with_feature": "true"}, "INVALID_ARGUMENTS", 'with_feature: "true"'),
    ("compare", {"image_1_base64": "x"}, "MISSING_ARGUMENTS", "image_2_base64/image_2_path"),
    ("compare", {"image_1_base64": "x", "image_2_base64": "y", "fiqa_level": "best"},
     "INVALID_ARGUMENTS", 'fiqa_level: "best"'),
    ("compare", {"image_1_base64": ["x"], "image_2_base64": "y"}, "INVALID_ARGUMENTS",
     'image_1_base64: ["x"]'),
    ("fiqa", {"image_base64_str": "x", "fiqa_level": 3}, "INVALID_ARGUMENTS", "fiqa_level: 3"),
    ("search", {}, "MISSING_ARGUMENTS", "rgb_image_path/rgb_image_base64"),
    ("search", {"rgb_image_base64": "x", "min_face_size": -1}, "INVALID_ARGUMENTS", "min_face_size: -1"),
    ("search", {"rgb_image_base64": "x", "with_liveness_check": "maybe"}, "INVALID_ARGUMENTS",
     'with_liveness_check: "maybe"'),
    ("search", {"rgb_image_base64": "x", "permission_name": "no-such-group-xyz"},
     "PERMISSION_ID_NOT_FOUND", "no-such-group-xyz"),
    ("search", {"rgb_image_base64": "x", "media_device_ip": "192.168.1.22"},
     "DEVICE_ID_NOT_FOUND", "192.168.1.22"),
    ("search", {"rgb_image_base64": "x", "with_liveness_check": "liveness_rgb_ir"},
     "MISSING_ARGUMENTS", "ir_image_path/ir_image_base64"),
    ("search", {"rgb_image_base64": "x", "ir_image_base64": "x",
                "with_liveness_check": "liveness_rgb_ir"},
     "NOT_SUPPORT_IR_LIVENESS", "liveness detection not supported"),
    ("createidentity", {}, "MISSING_ARGUMENTS", "register_feature/register_image/register_image_path"),
    ("createidentity", {"register_feature": [0.1] * 127}, "INVALID_ARGUMENTS",
     "register_feature: <array of 127 items>"),
    ("createidentity", {"register_feature": [0.0] * 128}, "INVALID_ARGUMENTS",
     "register_feature: <array of 128 items>"),
    ("createidentity", {"register_feature": [0.1] * 127 + ["a"]}, "INVALID_ARGUMENTS",
     "register_feature: <array of 128 items>"),
    ("createidentity", {"register_feature": "AAAA"}, "INVALID_ARGUMENTS", 'register_feature: "AAAA"'),
    ("createidentity", {"register_feature": FEATURE_128, "identity_id": "x" * 129},
     "INVALID_ARGUMENTS", 'identity_id: "' + "x" * 129 + '"'),
    ("createidentity", {"register_feature": FEATURE_128, "identity_id": "y" * 300},
     "INVALID_ARGUMENTS", "identity_id: <string of 300 chars>"),
    ("createidentity", {"register_feature": FEATURE_128, "identity_name": 5},
     "INVALID_ARGUMENTS", "identity_name: 5"),
    ("createidentity", {"register_feature": FEATURE_128, "user_type": "boss"},
     "INVALID_ARGUMENTS", 'user_type: "boss"'),
    ("createidentity", {"register_feature": FEATURE_128, "permission_ids": "abc"},
     "INVALID_ARGUMENTS", 'permission_ids: "abc"'),
    ("createidentity", {"register_feature": FEATURE_128, "permission_ids": ["a", 7]},
     "INVALID_ARGUMENTS", "permission_ids[1]: 7"),
    ("createidentity", {"register_feature": FEATURE_128, "ext_user_info": []},
     "INVALID_ARGUMENTS", "ext_user_info: []"),
    ("createidentity", {"register_feature": FEATURE_128, "ext_user_info": {"n": 2 ** 70}},
     "INVALID_ARGUMENTS", "ext_user_info: " + '{"n":%d}' % 2 ** 70),
    ("createidentity", {"register_feature": FEATURE_128, "force_replace": 1},
     "INVALID_ARGUMENTS", "force_replace: 1"),
    ("createidentity", {"register_feature": FEATURE_128, "permission_ids": ["no-such-group"]},
     "PERMISSION_ID_NOT_FOUND", "no-such-group"),
    ("createidentity", {"register_image": "", "fiqa_level": "no"}, "IMAGE_DECODE_ERROR", "register_image"),
    ("createidentity", {"register_image_path": "/etc/passwd"}, "IMAGE_NOT_OPENED", "/etc/passwd"),
    ("getidentity", {}, "MISSING_ARGUMENTS", "identity_id"),
    ("getidentity", {"identity_id": 100000}, "INVALID_ARGUMENTS", "identity_id: 100000"),
    ("getidentity", {"identity_id": ""}, "ID_NOT_FOUND", ""),
    ("getidentity", {"identity_id": "nobody"}, "ID_NOT_FOUND", "nobody"),
    ("getidentities", {"filters": []}, "INVALID_ARGUMENTS", "filters: []"),
    ("getidentities", {"filters": {"identity_name": 5}}, "INVALID_ARGUMENTS", "filters.identity_name: 5"),
    ("getidentities", {"page_limit": 0}, "INVALID_ARGUMENTS", "page_limit: 0"),
    ("getidentities", {"page_index": -1}, "INVALID_ARGUMENTS", "page_index: -1"),
    ("getidentities", {"page_limit": 2.5}, "INVALID_ARGUMENTS", "page_limit: 2.5"),
    ("updateidentity", {}, "MISSING_ARGUMENTS", "identity_id"),
    ("updateidentity", {"identity_id": "nobody"}, "ID_NOT_FOUND", "nobody"),
    ("updateidentity", {"identity_id": "nobody", "user_type": "VIP!"}, "INVALID_ARGUMENTS",
     'user_type: "VIP!"'),
    ("deleteidentities", {}, "MISSING_ARGUMENTS", "identity_ids"),
    ("deleteidentities", {"identity_ids": "100000"}, "INVALID_ARGUMENTS", 'identity_ids: "100000"'),
    ("deleteidentities", {"identity_ids": [1]}, "INVALID_ARGUMENTS", "identity_ids[0]: 1"),
    ("deleteidentities", {"identity_ids": ["x"] * 10001}, "INVALID_ARGUMENTS",
     "identity_ids: <array of 10001 items>"),
    ("addface", {"register_feature": FEATURE_128}, "MISSING_ARGUMENTS", "identity_id"),
    ("addface", {"identity_id": "nobody"}, "MISSING_ARGUMENTS",
     "register_feature/register_image/register_image_path"),
    ("addface", {"identity_id": "nobody", "register_feature": FEATURE_128}, "ID_NOT_FOUND", "nobody"),
    ("deleteface", {"identity_id": "nobody"}, "MISSING_ARGUMENTS", "register_image_id/face_id"),
    ("deleteface", {"identity_id": "nobody", "face_id": "f"}, "ID_NOT_FOUND", "nobody"),
    ("replaceface", {"identity_id": "x", "register_feature": FEATURE_128}, "MISSING_ARGUMENTS",
     "register_image_index/register_image_id/face_id"),
    ("replaceface", {"identity_id": "x", "register_image_index": 0}, "MISSING_ARGUMENTS",
     "register_feature/register_image/register_image_path"),
    ("replaceface", {"identity_id": "x", "register_image_index": -1, "register_feature": FEATURE_128},
     "INVALID_ARGUMENTS", "register_image_index: -1"),
    ("replaceface", {"identity_id": "nobody", "register_image_index": 0,
                     "register_feature": FEATURE_128}, "ID_NOT_FOUND", "nobody"),
    ("getregisterimage", {}, "MISSING_ARGUMENTS", "image_id"),
    ("createpermission", {}, "MISSING_ARGUMENTS", "permission_name"),
    ("createpermission", {"permission_name": ""}, "INVALID_ARGUMENTS", 'permission_name: ""'),
    ("createpermission", {"permission_name": "g", "description": 1}, "INVALID_ARGUMENTS",
     "description: 1"),
    ("getpermission", {}, "MISSING_ARGUMENTS", "permission_id/permission_name"),
    ("getpermission", {"permission_id": "nope"}, "ID_NOT_FOUND", "nope"),
    ("getpermission", {"permission_name": "nope"}, "ID_NOT_FOUND", "nope"),
    ("getpermissions", {"permission_name": 1}, "INVALID_ARGUMENTS", "permission_name: 1"),
    ("updatepermission", {}, "MISSING_ARGUMENTS", "permission_name/permission_id"),
    ("updatepermission", {"permission_id": "nope", "new_name": ""}, "INVALID_ARGUMENTS",
     'new_name: ""'),
    ("deletepermission", {"permission_name": "nope"}, "ID_NOT_FOUND", "nope"),
]


@pytest.mark.parametrize("endpoint, body, code, message", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_parameter_errors(server, endpoint, body, code, message):
    reply = server.post(endpoint, body)
    assert reply.status == error_class(code).http_status, reply
    assert reply.error == (code, message)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_extra_info_is_invalid(server, literal):
    body = '{"register_feature": [%s], "ext_user_info": {"x": %s}}' % (
        ",".join(["0.1"] * 128), literal)
    reply = server.request("POST", "/sophon/v2/face/createidentity", body.encode(),
                           {"Content-Type": "application/json"})
    assert reply.status == 400 and reply.error[0] == "INVALID_ARGUMENTS"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_feature_values_are_invalid(server, literal):
    # Python's JSON parser accepts these literals, so the feature check must refuse them.
    values = ",".join(["0.1"] * 127 + [literal])
    reply = server.request("POST", "/sophon/v2/face/createidentity",
                           ('{"register_feature": [%s]}' % values).encode(),
                           {"Content-Type": "application/json"})
    assert reply.error == ("INVALID_ARGUMENTS", "register_feature: <array of 128 items>")


def test_error_statuses_follow_the_table(server):
    assert server.post("getidentity", {"identity_id": "nobody"}).status == 404
    assert server.post("getidentity", {}).status == 400
    group = server.post("createpermission", {"permission_name": "status-table"})
    assert group.status == 200
    assert server.post("createpermission", {"permission_name": "status-table"}).status == 409
    server.post("deletepermission", {"permission_name": "status-table"})


def test_search_on_an_empty_group_is_empty_group_error(server):
    server.post("createpermission", {"permission_name": "empty-group-test"})
    reply = server.post("search", {"rgb_image_base64": b64_of(photo("macron_2025.jpg")),
                                   "permission_name": "empty-group-test"})
    assert reply.status == 409
    assert reply.error == ("EMPTY_GROUP_ERROR", "comparison group is empty")
    server.post("deletepermission", {"permission_name": "empty-group-test"})
