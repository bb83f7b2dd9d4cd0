"""What the OpenAPI document says that no code states: one ``Operation`` per handler.

Per endpoint: a summary, the spec section, the request schema the handler validates with
(the same object, checked by tests/api/test_openapi.py), the codes its services raise in
the order of the spec's "Validation and errors" table, and the success shape with the
spec's examples. Request-level codes (MISSING_ARGUMENTS, INVALID_REQUEST_JSON, ...) and
every HTTP status are derived in api/openapi.py, never listed here.

The device family validates its bodies by hand in service/devices.py; its request schemas
are therefore written here, from that service's constants.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional

from ..pipeline.attributes import AGE_BUCKETS, GENDER_LABELS
from ..pipeline.types import QUALITY_ITEMS
from ..service import devices as device_rules
from . import (compare, config, data, device, event, health, identity, login, metrics,
               permission, schemas)
from .openapi import Operation

# ------------------------------------------------------------------ JSON Schema helpers

STRING: Dict[str, Any] = {"type": "string"}
INTEGER: Dict[str, Any] = {"type": "integer"}
NUMBER: Dict[str, Any] = {"type": "number"}
BOOLEAN: Dict[str, Any] = {"type": "boolean"}
STRINGS: Dict[str, Any] = {"type": "array", "items": STRING}
NUMBERS: Dict[str, Any] = {"type": "array", "items": NUMBER}


def ref(name: str) -> Dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def described(schema: Dict[str, Any], text: str) -> Dict[str, Any]:
    return dict(schema, description=text)


def obj(required: Mapping[str, Any], optional: Optional[Mapping[str, Any]] = None,
        description: str = "") -> Dict[str, Any]:
    """An object whose ``required`` fields are always present."""
    out: Dict[str, Any] = {"type": "object", "properties": dict(required, **(optional or {}))}
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def nullable_enum(values: Iterable[Any], text: str) -> Dict[str, Any]:
    return {"enum": list(values) + [None], "description": text}


def jpeg(text: str) -> Dict[str, Any]:
    return {"description": text, "content": {"image/jpeg": {
        "schema": {"type": "string", "contentMediaType": "image/jpeg"}}}}


# ------------------------------------------------------------- shared shapes (components)

ATTRIBUTE_VALUES = {
    "age": nullable_enum([name for name, _ in AGE_BUCKETS], "Age bucket (README 8.3)."),
    "gender": nullable_enum(sorted(GENDER_LABELS, reverse=True), "null when not computed."),
    "glasses": nullable_enum(["yes", "no"], "null when not computed."),
}
BOX = described(dict(NUMBERS, minItems=4, maxItems=4), "[xmin, ymin, xmax, ymax] in pixels.")
LANDMARK = described(dict(NUMBERS, minItems=10, maxItems=10),
                     "Five points [x1..x5, y1..y5]: eyes, nose tip, mouth corners.")
FEATURE_TEXT = described(dict(STRING, contentEncoding="base64"),
                         "base64 of 512 little-endian float32, L2-normalised (README 4.3).")
QUALITY_ITEM = {"type": "string", "enum": list(QUALITY_ITEMS)}
PREVIEW_MODE = {"type": "integer", "enum": list(device_rules.PREVIEW_MODES)}

COMPONENTS: Dict[str, Any] = {
    "Permission": obj({"permission_id": STRING, "permission_name": STRING,
                       "description": STRING}, description="permission.md §0"),
    "Pagination": obj({"page_index": dict(INTEGER, minimum=0),
                       "page_limit": dict(INTEGER, minimum=1),
                       "total_count": dict(INTEGER, minimum=0)},
                      description="README §9; total_count ignores the paging."),
    "Identity": obj({
        "identity_id": STRING, "identity_name": STRING,
        "user_type": {"type": "string", "enum": list(schemas.USER_TYPES)},
        "permission_ids": STRINGS, "ext_user_info": {"type": "object"},
        "face_ids": STRINGS,
        "register_image_ids": described(STRINGS, "Parallel to face_ids."),
    }, description="identity.md §1"),
    "Faces": obj({"identity_id": STRING, "total_face_cnt": dict(INTEGER, minimum=0),
                  "face_ids": STRINGS, "register_image_ids": STRINGS},
                 description="An identity's faces after the change, in order."),
    "Headpose": obj({"pitch_angle": NUMBER, "roll_angle": NUMBER, "yaw_angle": NUMBER},
                    description="Degrees, rounded to 2 decimals."),
    "Attribute": obj(ATTRIBUTE_VALUES, description="README 8.3"),
    "DetectedFace": obj({"bbox": BOX}, {
        "attribute": ref("Attribute"), "headpose": ref("Headpose"), "landmark": LANDMARK,
        "feature_base64_str": FEATURE_TEXT}, "Optional keys only when requested."),
    "MediaDeviceInfo": obj({"media_device_id": STRING, "media_device_ip": STRING,
                            "media_device_name": STRING, "media_device_type": STRING},
                           description="All four \"\" when no device is known."),
    "FaceAnalysis": obj(dict(ATTRIBUTE_VALUES, **{
        "box": BOX, "expression": {"type": "null"}, "hat": {"type": "null"},
        "mask": nullable_enum(["yes", "no"], "null when not computed."),
        "point": described(NUMBERS, "Landmarks [x1..x5, y1..y5], or []."),
    }), {"feature_binary": described(FEATURE_TEXT, "Only in event records (not in "
                                                   "searchbyimage items); \"\" if none.")},
        "event.md §2: recognize_face_attr"),
    "Event": obj({
        "event_id": STRING, "timestamp": described(NUMBER, "Seconds since the epoch."),
        "identity_id": STRING, "identity_name": STRING, "register_image_id": STRING,
        "recognize_face_image_id": STRING, "spot_image_id": STRING, "permission_id": STRING,
        "permission_name": STRING, "user_type": STRING,
        "score": dict(NUMBER, minimum=0, maximum=100), "post_action": STRING,
        "frame_id": INTEGER, "media_device_info": ref("MediaDeviceInfo"),
        "recognize_face_attr": ref("FaceAnalysis"), "ext_data": {"type": "object"},
    }, description="event.md §2"),
    "Device": obj({
        "media_device_id": STRING, "media_device_name": STRING,
        "media_device_type": {"type": "string", "enum": list(device_rules.TYPES)},
        "media_device_url": STRING, "media_device_ip": STRING, "permission_id": STRING,
        "net_relay": ref("NetRelay"), "do_rtmp_forward": BOOLEAN, "rtmp_address": STRING,
        "roi_area": NUMBERS,
    }, description="device.md §1"),
    "NetRelay": {"description": "{} = no relay.", "anyOf": [
        {"type": "object", "maxProperties": 0},
        obj({"ip": dict(STRING, minLength=1, maxLength=device_rules.MAX_CHARS),
             "port": dict(INTEGER, minimum=1, maximum=65535),
             "channel": dict(INTEGER, minimum=0),
             "delay_time": described(dict(INTEGER, minimum=0), "Seconds.")})]},
    "DeviceRef": obj({"media_device_id": STRING, "media_device_name": STRING}),
    "Preview": obj({"selected_device_list": STRINGS, "preview_device_list": STRINGS,
                    "preview_mode": PREVIEW_MODE, "last_set_name": STRING},
                   description="device.md §7"),
    "Result": obj({"result": {"const": True}},
                  description="Always true; failures use the error envelope."),
}

# ------------------------------------------------------------------- shared field docs

FIELD_DOCS: Dict[str, str] = {
    "register_feature": "Register from a face feature vector (no photo is stored, R19).",
    "register_image": "Base64 image (data-URL prefix allowed); the largest face is used.",
    "register_image_path": "Image file on the box.",
    "image_base64_str": "Base64 image (data-URL prefix allowed).",
    "image_path": "Image file on the box.",
    "identity_id": "Person id.",
    "identity_name": "Person's name.",
    "user_type": "README §8.1.",
    "permission_ids": "Permission groups (each must exist).",
    "ext_user_info": "Free-form extra information (README §8.2).",
    "fiqa_level": "Quality level (README §5).",
    "page_limit": "Items per page; values above 1000 are clamped.",
    "page_index": "Zero-based page number.",
    "permission_id": "Permission group id.",
    "permission_name": "Permission group name.",
}

MEANINGS: Dict[str, str] = {
    "ANOTHER_PICTURE_SEARCH_RUNNING_ERROR": "Another search-by-image is already running",
    "CONFIG_ITEM_FAIL": "Some configuration items could not be set (message lists them)",
    "DEVICE_ADDRESS_DUPLICATE_ERROR": "A device with this media_device_url already exists",
    "DEVICE_ID_NOT_FOUND": "Device id (or device IP) not found",
    "DEVICE_INIT_ERROR": "Device subsystem still initialising",
    "DEVICE_MAX_NUM_ERROR": "Maximum number of devices reached",
    "DEVICE_PERVIEW_ID_NOT_EXIST": "A preview device id is not in the device list",
    "DEVICE_RTMP_ADDRESS_DUPLICATE_ERROR": "RTMP address already used by another device",
    "EMPTY_GROUP_ERROR": "The group to compare against contains no faces",
    "EMPTY_REQUEST_JSON": "Empty request body",
    "ID_NOT_FOUND": "The addressed id was not found",
    "ID_REPEAT_ERROR": "The id already exists",
    "INTERNAL_ERROR": ("Internal server error (HTTP 503 with Retry-After: the expected wait "
                       "for a worker exceeds the time budget, retry)"),
    "IMAGE_DECODE_ERROR": "Image could not be decoded (bad base64 or not an image)",
    "IMAGE_NOT_OPENED": "Image path cannot be opened",
    "IMAGE_SIZE_TOO_LARGE_ERROR": "Image too large (HTTP 413: the request body is too large)",
    "INSUFFICIENT_SPACE_LEFT": "Not enough free storage",
    "INVALID_ARGUMENTS": "A parameter has a wrong type or value",
    "INVALID_REQUEST_JSON": "Body is not a JSON object",
    "GROUP_LEN_ERROR": "Face library capacity exceeded",
    "LIVENESS_DETECT_FAIL": "Liveness (anti-spoofing) check failed",
    "LOW_QUALITY_ERROR": "Face image quality insufficient (message lists the failing items)",
    "MATCH_FAIL": "The matching engine failed",
    "MISSING_ARGUMENTS": "A required parameter is missing",
    "NAME_REPEAT_ERROR": "The name already exists",
    "NO_FACE_ERROR": "No face found in the image",
    "NOT_IN_PASS_TIME": "Outside the armed (recognition) time windows",
    "NOT_SUPPORT_IN_GRAB_MODE": "Not supported while the box is in capture mode",
    "NOT_SUPPORT_IR_LIVENESS": "The requested liveness detection is not available",
    "PASSWORD_ERROR": "Wrong user name or password",
    "PERMISSION_ID_NOT_FOUND": "Referenced permission group does not exist",
    "UNSUPPORT_CONTENT_TYPE": "Content type not supported; only application/json",
    "NOT_FOUND": "Unknown path",
    "METHOD_NOT_ALLOWED": "Method not allowed on this path",
}

# ----------------------------------------------------------------------- examples

PERMISSION_EXAMPLE = {"description": "this is a first test permission",
                      "permission_id": "270ec5e6", "permission_name": "测试组"}
IDENTITY_EXAMPLE = {
    "ext_user_info": {}, "face_ids": ["912ce1a6-f4e6-4604-b492-ca1c0443ead4"],
    "identity_id": "100000", "identity_name": "小王", "permission_ids": [],
    "register_image_ids": ["1e644cc0-1631-4248-b518-c8701d3c7a91"], "user_type": "employee"}
FACES_EXAMPLE = {
    "face_ids": ["11045712-0608-41e3-9612-f759ad564caf", "c0202ce2-09e8-4f48-b8b6-3ec85b5ddbad"],
    "identity_id": "100000",
    "register_image_ids": ["69919728-f3c5-4c29-96de-681d9b21ddf4",
                           "5d290f79-f07a-409d-8eea-92f3ef077c94"],
    "total_face_cnt": 2}
NO_DEVICE = {"media_device_id": "", "media_device_ip": "", "media_device_name": "",
             "media_device_type": ""}
BOX_EXAMPLE = [169.91, 256.99, 487.32, 671.73]
FACE_ANALYSIS_EXAMPLE = {"age": None, "box": BOX_EXAMPLE, "expression": None, "gender": None,
                         "glasses": None, "hat": None, "mask": None, "point": []}
EVENT_EXAMPLE = {
    "event_id": "1628066406652506",
    "ext_data": {"in_timestamp": 1628066406.608026, "recognition_timestamp": 1628066406.608026},
    "frame_id": 0, "identity_id": "", "identity_name": "", "media_device_info": NO_DEVICE,
    "permission_id": "", "permission_name": "", "post_action": "0",
    "recognize_face_attr": dict(FACE_ANALYSIS_EXAMPLE, feature_binary=""),
    "recognize_face_image_id": "001628066406.650539", "register_image_id": "",
    "score": 27.69, "spot_image_id": "011628066406.650539", "timestamp": 1628066406.608026,
    "user_type": "stranger"}
DEVICE_ID = "2c1a6a12-ecf4-4490-a2fc-8d7a5023bfcd"
DEVICE_EXAMPLE = {
    "do_rtmp_forward": False, "media_device_id": DEVICE_ID, "media_device_ip": "192.168.1.100",
    "media_device_name": "ddd", "media_device_type": "rtsp",
    "media_device_url": "rtsp://192.168.1.100:554/ch2", "net_relay": {},
    "permission_id": "820737ae-a6d3-4322-bf7c-46f48066fb64", "roi_area": [], "rtmp_address": ""}
PREVIEW_EXAMPLE = {"last_set_name": "WEBUI", "preview_device_list": [DEVICE_ID],
                   "preview_mode": 1, "selected_device_list": [DEVICE_ID]}
PHOTO = "data:image/jpg;base64,/9j/4AAQSkZ..."

IMAGE_ERRORS = ("IMAGE_NOT_OPENED", "IMAGE_DECODE_ERROR", "IMAGE_SIZE_TOO_LARGE_ERROR",
                "NO_FACE_ERROR")

# ------------------------------------------------------------------- device bodies

_NAME = dict(STRING, maxLength=device_rules.MAX_CHARS)
_URL = dict(STRING, minLength=1, maxLength=device_rules.MAX_URL_CHARS)
_ROI = {"type": ["array", "null"], "items": dict(NUMBER, minimum=0),
        "description": "[] or [x1, y1, x2, y2] with x1 < x2, y1 < y2; video types only.",
        "anyOf": [{"maxItems": 0}, {"minItems": 4, "maxItems": 4}]}
_DEVICE_OPTIONAL = {
    "permission_id": {"type": ["string", "null"], "maxLength": device_rules.MAX_CHARS,
                      "description": "Group to bind; must exist (\"\" = none)."},
    "net_relay": {"anyOf": [ref("NetRelay"), {"type": "null"}]},
    "do_rtmp_forward": {"type": ["boolean", "null"]},
    "rtmp_address": {"type": ["string", "null"], "maxLength": device_rules.MAX_URL_CHARS,
                     "description": "Required (non-empty) when do_rtmp_forward is true."},
    "roi_area": _ROI,
}
_PREVIEW_LIST = {"type": ["array", "null"], "items": STRING, "maxItems": 64,
                 "description": "Device ids (each must exist); duplicates dropped."}
DEVICE_VALIDATED_BY = ("Validated by hand in service/devices.py (nested relay fields, the "
                       "conditional rtmp_address); this schema is written from its rules.")

ADD_DEVICE_BODY = {
    "type": "object", "description": DEVICE_VALIDATED_BY,
    "required": ["media_device_name", "media_device_type", "media_device_url"],
    "properties": dict({
        "media_device_name": _NAME,
        "media_device_type": {"type": "string", "enum": list(device_rules.TYPES),
                              "description": "Matched case-insensitively."},
        "media_device_url": described(_URL, "rtsp://host... for rtsp, gb28181://... for "
                                            "gb28181, an absolute path inside the image "
                                            "roots for file, the device's IP for photo."),
        "media_device_id": {"type": ["string", "null"], "maxLength": device_rules.MAX_CHARS,
                            "description": "Absent, null or \"\": a UUID4 is generated."},
    }, **_DEVICE_OPTIONAL),
}
UPDATE_DEVICE_BODY = {
    "type": "object", "description": DEVICE_VALIDATED_BY, "required": ["media_device_id"],
    "properties": dict({
        "media_device_id": STRING,
        "media_device_name": dict(_NAME, type=["string", "null"]),
        "media_device_url": described({}, "Accepted only if equal to the stored one (R43)."),
        "media_device_type": described({}, "Accepted only if equal to the stored one (R43)."),
    }, **_DEVICE_OPTIONAL),
}
DEVICE_ID_BODY = obj({"media_device_id": STRING}, description=DEVICE_VALIDATED_BY)
GET_DEVICES_BODY = {"type": "object", "description": DEVICE_VALIDATED_BY, "properties": {
    "media_device_id": {"type": ["string", "null"],
                        "description": "Only this device; absent = all devices."}}}
EMPTY_BODY = {"type": "object", "description": "No parameters; unknown keys are ignored."}
UPDATE_PREVIEW_BODY = {"type": "object", "description": DEVICE_VALIDATED_BY, "properties": {
    "selected_device_list": _PREVIEW_LIST, "preview_device_list": _PREVIEW_LIST,
    "preview_mode": {"anyOf": [PREVIEW_MODE, {"type": "string", "pattern": r"^\s*0*(1|4|16)\s*$"},
                               {"type": "null"}],
                     "description": "1, 4 or 16 tiles; a numeric string is accepted (R44)."},
    "last_set_name": dict(_NAME, type=["string", "null"]),
}}

# --------------------------------------------------------------------- operations

OPERATIONS: Dict[Any, Operation] = {
    # permission.md
    permission.create: Operation(
        "Create a permission group", "permission.md §1", request=schemas.CREATE_PERMISSION,
        errors=("ID_REPEAT_ERROR", "NAME_REPEAT_ERROR"), writes=True,
        fields={"permission_id": "Group id; absent, null or \"\": 8 hex characters are "
                                 "generated (R18).",
                "permission_name": "Group name, unique."},
        response=ref("Permission"),
        request_examples={"spec": {"permission_id": "270ec5e6", "permission_name": "测试组",
                                   "description": "this is a first test permission"}},
        response_examples={"spec": PERMISSION_EXAMPLE}),
    permission.get_one: Operation(
        "Read one permission group", "permission.md §2", request=schemas.GET_PERMISSION,
        errors=("ID_NOT_FOUND",), response=ref("Permission"),
        request_examples={"spec": {"permission_id": "270ec5e6"}},
        response_examples={"spec": PERMISSION_EXAMPLE}),
    permission.get_many: Operation(
        "List permission groups", "permission.md §3", request=schemas.GET_PERMISSIONS,
        fields={"permission_name": "Case-insensitive substring of the name."},
        response=obj({"permissions": {"type": "array", "items": ref("Permission")},
                      "pagination": ref("Pagination")}),
        request_examples={"spec": {"permission_name": "测试组"}},
        response_examples={"spec": {"pagination": {"page_index": 0, "page_limit": 10,
                                                   "total_count": 1},
                                    "permissions": [PERMISSION_EXAMPLE]}}),
    permission.update: Operation(
        "Rename a permission group or change its description", "permission.md §4",
        request=schemas.UPDATE_PERMISSION, errors=("ID_NOT_FOUND", "NAME_REPEAT_ERROR"),
        writes=True, response=ref("Permission"),
        request_examples={"spec": {"permission_id": "270ec5e6", "new_name": "Front gate staff",
                                   "new_description": "updated description"}},
        response_examples={"spec": {"description": "updated description",
                                    "permission_id": "270ec5e6",
                                    "permission_name": "Front gate staff"}}),
    permission.delete: Operation(
        "Delete a permission group", "permission.md §5", request=schemas.DELETE_PERMISSION,
        errors=("ID_NOT_FOUND",), writes=True, response=obj({"permission_id": STRING}),
        request_examples={"spec": {"permission_id": "270ec5e6"}},
        response_examples={"spec": {"permission_id": "270ec5e6"}}),
    # identity.md
    identity.create: Operation(
        "Register a person with one face", "identity.md §2", request=schemas.CREATE_IDENTITY,
        errors=("ID_REPEAT_ERROR", "PERMISSION_ID_NOT_FOUND", "GROUP_LEN_ERROR")
        + IMAGE_ERRORS + ("LOW_QUALITY_ERROR",), writes=True, inference=True,
        fields={"identity_id": "Unique id; absent, null or \"\": a UUID4 is generated (R18).",
                "force_replace": "true: an existing identity with this id is replaced "
                                 "entirely; false: ID_REPEAT_ERROR."},
        response=obj({"identity_id": STRING, "register_image_id": STRING, "face_id": STRING}),
        request_examples={"spec": {"identity_id": "100000", "identity_name": "小王",
                                   "register_image": PHOTO, "permission_ids": ["270ec5e6"],
                                   "fiqa_level": "high"}},
        response_examples={"spec": {"face_id": "11045712-0608-41e3-9612-f759ad564caf",
                                    "identity_id": "100000",
                                    "register_image_id": "69919728-f3c5-4c29-96de-681d9b21ddf4"}}),
    identity.get_one: Operation(
        "Read one person", "identity.md §3", request=schemas.GET_IDENTITY,
        errors=("ID_NOT_FOUND",), response=ref("Identity"),
        request_examples={"spec": {"identity_id": "100000"}},
        response_examples={"spec": IDENTITY_EXAMPLE}),
    identity.get_many: Operation(
        "List persons (filters, pagination)", "identity.md §4", request=schemas.GET_IDENTITIES,
        nested={"filters": schemas.IDENTITY_FILTERS},
        fields={"filters": "Filters combined with AND; absent or {} = all identities.",
                "permission_id_list": "Identities in at least one of these groups; [] = any.",
                "identity_name": "Case-insensitive substring of the name.",
                "identity_id": "Exact id."},
        response=obj({"identities": {"type": "array", "items": ref("Identity")},
                      "pagination": ref("Pagination")}),
        request_examples={"spec": {"filters": {"identity_name": "小"}, "page_limit": 10,
                                   "page_index": 0}},
        response_examples={"spec": {"identities": [IDENTITY_EXAMPLE], "pagination": {
            "page_index": 0, "page_limit": 10, "total_count": 1}}}),
    identity.update: Operation(
        "Update a person's name, type, groups or extra information", "identity.md §5",
        description="Absent or null fields keep their value; present ones replace it "
                    "wholesale (R17).",
        request=schemas.UPDATE_IDENTITY, errors=("ID_NOT_FOUND", "PERMISSION_ID_NOT_FOUND"),
        writes=True, response=ref("Identity"),
        request_examples={"spec": {"identity_id": "100000", "identity_name": "小王",
                                   "permission_ids": ["db4c5e0c-0135-4238-acc8-a273d4130a4a"]}},
        response_examples={"spec": dict(IDENTITY_EXAMPLE, permission_ids=[
            "db4c5e0c-0135-4238-acc8-a273d4130a4a"])}),
    identity.delete_many: Operation(
        "Delete several persons", "identity.md §6", request=schemas.DELETE_IDENTITIES,
        description="Unknown ids are reported in failed_identity_ids; the call succeeds (R60).",
        writes=True,
        response=obj({"success_identity_ids": STRINGS, "failed_identity_ids": STRINGS}),
        request_examples={"spec": {"identity_ids": ["100000", "100001"]}},
        response_examples={"spec": {"failed_identity_ids": [],
                                    "success_identity_ids": ["100000", "100001"]}}),
    identity.add_face: Operation(
        "Append one more face to a person", "identity.md §7", request=schemas.ADD_FACE,
        errors=("ID_NOT_FOUND", "GROUP_LEN_ERROR") + IMAGE_ERRORS + ("LOW_QUALITY_ERROR",),
        writes=True, inference=True, response=ref("Faces"),
        request_examples={"spec": {"identity_id": "100000", "register_image": PHOTO}},
        response_examples={"spec": FACES_EXAMPLE}),
    identity.delete_face: Operation(
        "Remove one face from a person", "identity.md §8", request=schemas.DELETE_FACE,
        errors=("ID_NOT_FOUND",), writes=True, response=ref("Faces"),
        request_examples={"spec": {"identity_id": "100000",
                                   "face_id": "5fc7d615-e2f0-4650-9a80-d45a5568ed1e"}},
        response_examples={"spec": {
            "face_ids": ["11045712-0608-41e3-9612-f759ad564caf"], "identity_id": "100000",
            "register_image_ids": ["69919728-f3c5-4c29-96de-681d9b21ddf4"],
            "total_face_cnt": 1}}),
    identity.replace_face: Operation(
        "Replace one face of a person in place", "identity.md §9",
        request=schemas.REPLACE_FACE,
        errors=("ID_NOT_FOUND", "INVALID_ARGUMENTS") + IMAGE_ERRORS + ("LOW_QUALITY_ERROR",),
        writes=True, inference=True, response=ref("Faces"),
        fields={"register_image_index": "Zero-based position of the face to replace."},
        request_examples={"spec": {"identity_id": "100000",
                                   "face_id": "c8305074-ffc4-4f29-8044-de0bf52cb597",
                                   "register_image": PHOTO}},
        response_examples={"spec": FACES_EXAMPLE}),
    identity.register_image_by_path: Operation(
        "Download a registration photo (JPEG)", "identity.md §10",
        description="An unknown id, an id registered from a feature (R19) or an empty id is "
                    "a 404 with an empty image/jpeg body, no envelope (R4).",
        parameters=({"name": "image_id", "in": "path", "required": True, "schema": STRING,
                     "description": "A register_image_id.",
                     "example": "4ead3ae3-54ff-4eff-9673-87d01ff10244"},),
        responses={"200": jpeg("The stored photo."),
                   "404": jpeg("No such photo: an empty body (Content-Length: 0).")}),
    identity.register_image_by_body: Operation(
        "Download a registration photo (JPEG), id in a JSON body", "identity.md §10",
        request=schemas.GET_REGISTER_IMAGE, alias_of=identity.register_image_by_path,
        fields={"image_id": "A register_image_id.",
                "register_image_id": "Legacy name of image_id."},
        request_examples={"spec": {"image_id": "4ead3ae3-54ff-4eff-9673-87d01ff10244"}},
        responses={"200": jpeg("The stored photo."),
                   "404": jpeg("No such photo: an empty body (Content-Length: 0).")}),
    # compare.md
    compare.detect: Operation(
        "Detect faces (attributes, head pose, landmarks, features on request)",
        "compare.md §2", request=schemas.DETECT, errors=IMAGE_ERRORS, inference=True,
        fields={"max_num_faces": "At most this many faces, largest first."},
        response=obj({"faces": {"type": "array", "items": ref("DetectedFace"),
                                "minItems": 1}}),
        request_examples={"spec": {"image_base64_str": "data:image/jpeg;base64,/9j/...",
                                   "with_feature": False, "with_attribute": True}},
        response_examples={"spec": {"faces": [{
            "attribute": {"age": "youth", "gender": "male", "glasses": "no"},
            "bbox": BOX_EXAMPLE}]}}),
    compare.compare: Operation(
        "1:1 similarity of two face images (0-100)", "compare.md §3", request=schemas.COMPARE,
        errors=IMAGE_ERRORS + ("LOW_QUALITY_ERROR",), inference=True,
        response=obj({"score": described(dict(NUMBER, minimum=0, maximum=100),
                                         ">= 82: very likely the same person.")}),
        request_examples={"spec": {"image_1_base64": "/9j/***", "image_2_base64": "/9j/***"}},
        response_examples={"spec": {"score": 84.53}}),
    compare.fiqa: Operation(
        "Face image quality assessment", "compare.md §4", request=schemas.FIQA,
        description="A failed assessment is a normal answer: fiqa_result false (R26).",
        errors=IMAGE_ERRORS, inference=True,
        response=obj({"fiqa_result": BOOLEAN, "detailed_result": obj({
            "bbox": BOX,
            "passed_items": {"type": "array", "items": QUALITY_ITEM},
            "failed_items": {"type": "array", "items": QUALITY_ITEM},
            "detailed_scores": obj({
                "brightness": NUMBER, "clarity": NUMBER, "face_size": NUMBER,
                "headpose": ref("Headpose"),
                "mask": described({"enum": [-1, 0, 1]}, "-1 not evaluated, 0 no mask, 1 mask."),
                "occlusion": described(NUMBERS, "All 0 = not occluded."),
                "partial": described(BOOLEAN, "true = cut by the image border."),
            }, {"face_color": NUMBER})})}),
        request_examples={"spec": {"image_base64_str": "data:image/jpeg;base64,/9j/..."}},
        response_examples={"spec": {"detailed_result": {
            "bbox": [74, 132, 582, 753], "detailed_scores": {
                "brightness": 0.6982694456054408, "clarity": 1.3644584821822876,
                "face_size": 414.7357482910156,
                "headpose": {"pitch_angle": 8.61, "roll_angle": -0.99, "yaw_angle": -1.99},
                "mask": -1, "occlusion": [0], "partial": False},
            "failed_items": [],
            "passed_items": ["headpose", "clarity", "face_size", "partial", "brightness",
                             "occlusion"]}, "fiqa_result": True}}),
    compare.search: Operation(
        "1:N recognition against the library; records an event", "compare.md §5",
        request=schemas.SEARCH,
        description="Scope: permission_name, else the group of the device at "
                    "media_device_ip, else the whole library (R24). liveness_rgb_ir needs an "
                    "IR image (MISSING_ARGUMENTS ir_image_path/ir_image_base64).",
        errors=("PERMISSION_ID_NOT_FOUND", "DEVICE_ID_NOT_FOUND", "NOT_IN_PASS_TIME",
                "MISSING_ARGUMENTS", "NOT_SUPPORT_IR_LIVENESS", "EMPTY_GROUP_ERROR")
        + IMAGE_ERRORS + ("LOW_QUALITY_ERROR", "LIVENESS_DETECT_FAIL", "MATCH_FAIL"),
        inference=True,
        fields={"min_face_size": "Smallest face (px) recognised; default REGN_MIN_FACE.",
                "permission_name": "Search only this group (by name).",
                "media_device_ip": "The capturing device; its group is searched."},
        response=obj({"result": described(BOOLEAN, "score >= MATCH_THRESHOLD."),
                      "score": dict(NUMBER, minimum=0, maximum=100),
                      "identity_id": STRING, "identity_info": ref("Identity")}, {
            "register_image": described(dict(STRING, contentEncoding="base64"),
                                        "The candidate's photo, base64 JPEG (R20, R21)."),
            "attribute": ref("Attribute"),
            "debug_info": obj({"comparetime": NUMBER, "totaltime": NUMBER},
                              description="Milliseconds.")}),
        request_examples={"spec": {"rgb_image_path": "/data/test.jpg",
                                   "media_device_ip": "192.168.1.22"}},
        response_examples={"spec": {
            "debug_info": {"comparetime": 30, "totaltime": 38}, "identity_id": "1dd23",
            "identity_info": dict(IDENTITY_EXAMPLE, identity_id="1dd23", identity_name="unknow",
                                  permission_ids=["dddd"]),
            "result": False, "score": 27.693189090909087}}),
    # event.md
    event.get_one: Operation(
        "Read one recognition event", "event.md §3", request=schemas.GET_EVENT,
        errors=("ID_NOT_FOUND",), response=ref("Event"),
        request_examples={"spec": {"event_id": "1628066406652506"}},
        response_examples={"spec": EVENT_EXAMPLE}),
    event.get_many: Operation(
        "List recognition events (filters, pagination), newest first", "event.md §4",
        request=schemas.GET_EVENTS, nested={"filters": schemas.EVENT_FILTERS},
        fields={"filters": "Filters combined with AND; absent or {} = all events.",
                "datetime_gte": "Seconds (> 1e11: milliseconds, R27).",
                "datetime_lte": "Seconds (> 1e11: milliseconds, R27).",
                "identity_name": "Case-insensitive substring.",
                "user_type": "Compared case-insensitively (R52)."},
        response=obj({"events": {"type": "array", "items": ref("Event")},
                      "pagination": ref("Pagination")}),
        request_examples={"spec": {"page_limit": 10, "page_index": 0}},
        response_examples={"spec": {"events": [EVENT_EXAMPLE], "pagination": {
            "page_index": 0, "page_limit": 10, "total_count": 1}}}),
    event.search_by_image: Operation(
        "Find past events showing the same face", "event.md §5",
        request=schemas.SEARCH_BY_IMAGE,
        errors=("INVALID_ARGUMENTS", "NOT_SUPPORT_IN_GRAB_MODE",
                "ANOTHER_PICTURE_SEARCH_RUNNING_ERROR") + IMAGE_ERRORS + ("LOW_QUALITY_ERROR",),
        inference=True,
        fields={"starttime": "Window start, seconds; default now - 24 h.",
                "endtime": "Window end, seconds; default now.",
                "last_end_timestamp": "endtimestamp of the previous call, to continue.",
                "threshold": "Minimum compare_score.",
                "reverse": "true: newest first."},
        response=obj({
            "events": {"type": "array", "items": obj({
                "event_id": STRING, "compare_score": dict(NUMBER, minimum=0, maximum=100),
                "timestamp": NUMBER, "out_timestamp": NUMBER, "identity_name": STRING,
                "identity_id": STRING, "register_image_id": STRING,
                "recognize_face_image_id": STRING, "spot_image_id": STRING,
                "user_type": STRING, "media_device_info": ref("MediaDeviceInfo"),
                "recognize_face_attr": ref("FaceAnalysis")})},
            "have_more": BOOLEAN, "total_time": described(NUMBER, "Seconds."),
            "endtimestamp": described(NUMBER, "Send it back as last_end_timestamp.")}),
        request_examples={"spec": {"face_image_base64": "/9j/4AAQSkZJRgABAQAAAQ...",
                                   "threshold": 85}},
        response_examples={"spec": {
            "endtimestamp": 1628066406.608026, "have_more": False,
            "total_time": 0.0299224853515625, "events": [{
                "compare_score": 100.0, "event_id": "1628066406652506", "identity_id": "",
                "identity_name": "", "media_device_info": NO_DEVICE,
                "out_timestamp": 1628066406.608026,
                "recognize_face_attr": FACE_ANALYSIS_EXAMPLE,
                "recognize_face_image_id": "001628066406.650539", "register_image_id": "",
                "spot_image_id": "011628066406.650539", "timestamp": 1628066406.608026,
                "user_type": "stranger"}]}}),
    event.spot_image_by_path: Operation(
        "Download an event's face crop or scene image (JPEG)", "event.md §6",
        errors=("MISSING_ARGUMENTS", "INVALID_ARGUMENTS", "ID_NOT_FOUND"),
        parameters=(
            {"name": "image_id", "in": "path", "required": True, "schema": STRING,
             "description": "The event's recognize_face_image_id or spot_image_id.",
             "example": "011628066406.650539"},
            {"name": "timestamp", "in": "query", "required": True, "schema": NUMBER,
             "description": "The event's timestamp (seconds).", "example": 1628066406.608026}),
        responses={"200": jpeg("The image.")}),
    event.spot_image_by_body: Operation(
        "Download an event image (JPEG), id in a JSON body", "event.md §6",
        request=schemas.GET_SPOT_IMAGE, errors=("ID_NOT_FOUND",),
        alias_of=event.spot_image_by_path,
        request_examples={"spec": {"image_id": "011628066406.650539",
                                   "timestamp": 1628066406.608026}},
        responses={"200": jpeg("The image.")}),
    # config.md
    config.get_configs: Operation(
        "Read one or all configuration keys", "config.md §2", request=schemas.GET_CONFIGS,
        fields={"config_name": "A key of config.md §4; absent = all keys. Unknown: "
                               "INVALID_ARGUMENTS."},
        response=described({"type": "object", "propertyNames": {"pattern": "^[A-Z][A-Z0-9_]*$"}},
                           "A flat object {KEY: value} (R33)."),
        request_examples={"spec": {"config_name": "GATE_DUPLICATE_REMOVAL_TIMEOUT"}},
        response_examples={"spec": {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 6.0}}),
    config.set_configs: Operation(
        "Change configuration keys", "config.md §3", request=schemas.SET_CONFIGS,
        description="Valid keys are applied even when others fail (CONFIG_ITEM_FAIL, R35).",
        errors=("CONFIG_ITEM_FAIL",), writes=True,
        fields={"config_dict": "KEY -> new value (config.md §4)."},
        response=described({"type": "object", "propertyNames": {"pattern": "^[A-Z][A-Z0-9_]*$"}},
                           "Each key sent, with its stored value."),
        request_examples={"spec": {"config_dict": {
            "HISTORY_EVENT_UPLOAD_URL": "http://www.xxx.com/event_recieve",
            "HISTORY_REPORT_PEROID": 5}}},
        response_examples={"spec": {"HISTORY_EVENT_UPLOAD_URL":
                                    "http://www.xxx.com/event_recieve",
                                    "HISTORY_REPORT_PEROID": 5}}),
    # data.md
    data.wipe: Operation(
        "Erase persons/groups/devices and/or events, or reset the settings", "data.md §1",
        request=schemas.WIPE_DATA, at_least_one=("users", "events", "all"), writes=True,
        description="Every present flag is honoured; all-false is a no-op (R39). The host "
                    "is never rebooted (R38).",
        response=ref("Result"), request_examples={"spec": {"users": True}},
        response_examples={"spec": {"result": True}}),
    data.check_event_image_path: Operation(
        "Report the event-image directory and whether it is usable", "data.md §2",
        request=schemas.CHECK_EVENT_IMAGE_PATH,
        response=obj({"available": BOOLEAN, "event_image_path": STRING}),
        request_examples={"spec": {}},
        response_examples={"spec": {"available": True, "event_image_path": "/data2/events"}}),
    # login.md
    login.login: Operation(
        "Verify the box user's credentials", "login.md §1", request=schemas.LOGIN,
        errors=("PASSWORD_ERROR",), response=ref("Result"),
        request_examples={"spec": {"username": "admin", "password": "admin"}},
        response_examples={"spec": {"result": True}}),
    login.change_password: Operation(
        "Change the box user's password", "login.md §2", request=schemas.CHANGE_PASSWORD,
        errors=("PASSWORD_ERROR",), writes=True, response=ref("Result"),
        request_examples={"spec": {"username": "admin", "old_password": "admin",
                                   "new_password": "aTIfaSHA"}},
        response_examples={"spec": {"result": True}}),
    # device.md
    device.add: Operation(
        "Add a camera or photo device", "device.md §2", body_schema=ADD_DEVICE_BODY,
        errors=("MISSING_ARGUMENTS", "INVALID_ARGUMENTS", "ID_REPEAT_ERROR",
                "PERMISSION_ID_NOT_FOUND", "DEVICE_ADDRESS_DUPLICATE_ERROR",
                "DEVICE_RTMP_ADDRESS_DUPLICATE_ERROR", "DEVICE_MAX_NUM_ERROR"),
        writes=True, response=ref("DeviceRef"),
        request_examples={"spec": {
            "media_device_id": DEVICE_ID, "media_device_url": "rtsp://192.168.1.100:554/ch2",
            "media_device_name": "bbb", "media_device_type": "rtsp", "net_relay": {},
            "permission_id": "820737ae-a6d3-4322-bf7c-46f48066fb64"}},
        response_examples={"spec": {"media_device_id": DEVICE_ID, "media_device_name": "bbb"}}),
    device.get_many: Operation(
        "List devices, or read one", "device.md §3", body_schema=GET_DEVICES_BODY,
        body_required=False, errors=("INVALID_ARGUMENTS", "DEVICE_ID_NOT_FOUND"),
        response=obj({"devices": {"type": "array", "items": ref("Device")}}),
        request_examples={"spec": {"media_device_id": DEVICE_ID}},
        response_examples={"spec": {"devices": [DEVICE_EXAMPLE]}}),
    device.update: Operation(
        "Update a device", "device.md §4", body_schema=UPDATE_DEVICE_BODY,
        errors=("MISSING_ARGUMENTS", "INVALID_ARGUMENTS", "DEVICE_ID_NOT_FOUND",
                "PERMISSION_ID_NOT_FOUND", "DEVICE_RTMP_ADDRESS_DUPLICATE_ERROR"),
        writes=True, response=ref("DeviceRef"),
        request_examples={"spec": {
            "media_device_id": DEVICE_ID, "media_device_url": "rtsp://192.168.1.100:554/ch2",
            "media_device_name": "ddd", "media_device_type": "rtsp", "net_relay": {},
            "permission_id": "820737ae-a6d3-4322-bf7c-46f48066fb64"}},
        response_examples={"spec": {"media_device_id": DEVICE_ID, "media_device_name": "ddd"}}),
    device.delete: Operation(
        "Delete one device", "device.md §5", body_schema=DEVICE_ID_BODY,
        errors=("MISSING_ARGUMENTS", "INVALID_ARGUMENTS", "DEVICE_ID_NOT_FOUND"), writes=True,
        response=ref("DeviceRef"), request_examples={"spec": {"media_device_id": DEVICE_ID}},
        response_examples={"spec": {"media_device_id": DEVICE_ID, "media_device_name": "ddd"}}),
    device.delete_all: Operation(
        "Delete all devices", "device.md §6", body_schema=EMPTY_BODY, body_required=False,
        writes=True,
        response=obj({"media_device_list": STRINGS,
                      "deleted_device_count": dict(INTEGER, minimum=0),
                      "total_device_count": dict(INTEGER, minimum=0)}),
        response_examples={"spec": {"deleted_device_count": 1, "media_device_list": [DEVICE_ID],
                                    "total_device_count": 1}}),
    device.get_preview: Operation(
        "Read the preview layout", "device.md §7", body_schema=EMPTY_BODY, body_required=False,
        response=ref("Preview"), response_examples={"spec": PREVIEW_EXAMPLE}),
    device.update_preview: Operation(
        "Change the preview layout", "device.md §8", body_schema=UPDATE_PREVIEW_BODY,
        body_required=False, errors=("INVALID_ARGUMENTS", "DEVICE_PERVIEW_ID_NOT_EXIST"),
        writes=True, response=ref("Preview"),
        request_examples={"spec": {"selected_device_list": [DEVICE_ID],
                                   "preview_device_list": [DEVICE_ID], "preview_mode": "1",
                                   "last_set_name": "WEBUI"}},
        response_examples={"spec": PREVIEW_EXAMPLE}),
    # operations, outside the upstream API
    health.health: Operation(
        "Honest health: the store is open and the models answered a warm-up", "operations",
        description="HTTP 200 when healthy, 503 with the same body when not.",
        responses={
            "200": {"description": "Healthy.", "content": {"application/json": {
                "schema": ref("Health")}}},
            "503": {"description": "Not healthy (store closed or warm-up failed).",
                    "content": {"application/json": {"schema": ref("Health")}}}}),
    metrics.metrics: Operation(
        "Prometheus metrics (text exposition format 0.0.4)", "operations",
        responses={"200": {"description": "Metrics.", "content": {"text/plain": {
            "schema": STRING}}}}),
}

COMPONENTS["Health"] = obj({
    "status": {"type": "string", "enum": ["ok", "error"]}, "backend": STRING,
    "profile": STRING, "models": {}, "feature_dim": INTEGER,
    "warm_up": obj({"ok": BOOLEAN, "ms": NUMBER, "error": {"type": ["string", "null"]}}),
    "workers": {"type": "object"}, "store": obj({
        "open": BOOLEAN, "faces": INTEGER, "events": INTEGER}),
    "push": {"type": "object"}, "devices": {}, "uptime_s": NUMBER,
}, description="The top-level shape; nested details may grow.")

TAGS = [
    {"name": "permission", "description": "Permission groups (permission.md)."},
    {"name": "identity", "description": "Persons, faces, registration photos (identity.md)."},
    {"name": "compare", "description": "Detect, compare, quality check, 1:N search "
                                       "(compare.md)."},
    {"name": "event", "description": "Recognition events (event.md)."},
    {"name": "config", "description": "Configuration keys (config.md)."},
    {"name": "data", "description": "Wipe data, event-image directory (data.md)."},
    {"name": "login", "description": "Box user credentials (login.md)."},
    {"name": "device", "description": "Media devices and preview (device.md)."},
    {"name": "operations", "description": "Health, metrics and this document; not part of "
                                          "the upstream API."},
]

INFO = {
    "title": "sophon-face: Sophon v2 face API",
    "summary": "Face-recognition daemon serving the Sophon v2 face HTTP API.",
    "description": (
        "Every endpoint is POST with a JSON object body except the image downloads. No "
        "authentication (README §1). One trailing '/' is tolerated on every path. An "
        "unknown path answers 404 NOT_FOUND, a known path with another method 405 "
        "METHOD_NOT_ALLOWED with an Allow header (components.responses). Errors are "
        "{\"error\": {\"code\", \"message\"}} with a fixed HTTP status per code; each "
        "operation lists its codes in x-error-codes. The real-time event stream and the "
        "preview streams are WebSockets on their own ports (event.md §7, device.md §10) and "
        "are not described here."),
}
