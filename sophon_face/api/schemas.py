"""One request schema per endpoint, rows in the order of the spec's request tables."""

from __future__ import annotations

from ..pipeline.types import FIQA_LEVEL_SYNONYMS, FIQA_LEVELS
from .validation import (ANY_STRING, IDENTIFIER, NAME, PAGE_INDEX, PAGE_LIMIT, OneOf, Param,
                         Schema, boolean, choice, feature_vector, integer, number, obj,
                         obj_any, secret, string, string_list)

USER_TYPES = ("employee", "visitor", "blacklist", "stranger", "vip")
LIVENESS_MODES = ("liveness_off", "liveness_rgb", "liveness_rgb_ir")


def fiqa_level(default: str) -> Param:
    return Param("fiqa_level", choice(FIQA_LEVELS, FIQA_LEVEL_SYNONYMS), default=default)


def _images(key: str, b64: str, path: str, required: bool = True) -> OneOf:
    """An image slot: base64 beats a path (R8), ``names`` in table order."""
    return OneOf(key, (b64, path), (b64, path), {b64: ANY_STRING, path: ANY_STRING}, required)


def _registration_source() -> OneOf:
    names = ("register_feature", "register_image", "register_image_path")
    return OneOf("source", names, names, {
        "register_feature": feature_vector,
        "register_image": ANY_STRING,
        "register_image_path": ANY_STRING,
    })


# --- compare.md ----------------------------------------------------------------------

DETECT = Schema((
    _images("image", "image_base64_str", "image_path"),
    Param("with_feature", boolean, default=False),
    Param("with_attribute", boolean, default=False),
    Param("with_headpose", boolean, default=False),
    Param("with_landmark", boolean, default=False),
    Param("max_num_faces", integer(minimum=1), default=10),
))

COMPARE = Schema((
    _images("image_1", "image_1_base64", "image_1_path"),
    _images("image_2", "image_2_base64", "image_2_path"),
    fiqa_level("no"),
))

FIQA = Schema((
    _images("image", "image_base64_str", "image_path"),
    fiqa_level("high"),
))

SEARCH = Schema((
    # Table order lists the path first, but base64 has priority (R8).
    OneOf("rgb", ("rgb_image_path", "rgb_image_base64"), ("rgb_image_base64", "rgb_image_path"),
          {"rgb_image_path": ANY_STRING, "rgb_image_base64": ANY_STRING}),
    OneOf("ir", ("ir_image_path", "ir_image_base64"), ("ir_image_base64", "ir_image_path"),
          {"ir_image_path": ANY_STRING, "ir_image_base64": ANY_STRING}, required=False),
    Param("permission_name", ANY_STRING),
    Param("media_device_ip", ANY_STRING),
    Param("min_face_size", integer(minimum=0)),
    Param("with_register_photo", boolean, default=False),
    Param("with_liveness_check", choice(LIVENESS_MODES), default="liveness_off"),
    Param("with_result_modification", boolean, default=True),
    Param("with_default_group_only", boolean, default=False),
    Param("with_attribute", boolean, default=False),
    Param("with_debug_info", boolean, default=True),
))

# --- identity.md ---------------------------------------------------------------------

CREATE_IDENTITY = Schema((
    _registration_source(),
    Param("identity_name", NAME, default="佚名"),
    Param("identity_id", IDENTIFIER),
    Param("user_type", choice(USER_TYPES), default="employee"),
    Param("permission_ids", string_list(dedupe=True), default=[]),
    Param("ext_user_info", obj, default={}),
    fiqa_level("high"),
    Param("force_replace", boolean, default=False),
), aliases={"ext_info": "ext_user_info"})

GET_IDENTITY = Schema((Param("identity_id", ANY_STRING, required=True),))

GET_IDENTITIES = Schema((
    Param("filters", obj, default={}),
    Param("page_limit", PAGE_LIMIT, default=10),
    Param("page_index", PAGE_INDEX, default=0),
), empty_body_is_error=False)

#: Nested in getidentities' ``filters``; checked after ``filters`` itself, depth first.
IDENTITY_FILTERS = Schema((
    Param("permission_id_list", string_list(max_item_chars=None)),
    Param("identity_name", ANY_STRING),
    Param("identity_id", ANY_STRING),
), empty_body_is_error=False)

UPDATE_IDENTITY = Schema((
    Param("identity_id", ANY_STRING, required=True),
    Param("identity_name", NAME),
    Param("user_type", choice(USER_TYPES)),
    Param("permission_ids", string_list(dedupe=True)),
    Param("ext_user_info", obj),
), aliases={"ext_info": "ext_user_info"})

DELETE_IDENTITIES = Schema((
    Param("identity_ids", string_list(max_item_chars=None), required=True),
))

ADD_FACE = Schema((
    Param("identity_id", ANY_STRING, required=True),
    _registration_source(),
    fiqa_level("high"),
))

DELETE_FACE = Schema((
    Param("identity_id", ANY_STRING, required=True),
    OneOf("target", ("register_image_id", "face_id"), ("register_image_id", "face_id"),
          {"register_image_id": ANY_STRING, "face_id": ANY_STRING}),
))

REPLACE_FACE = Schema((
    Param("identity_id", ANY_STRING, required=True),
    # R7: register_image_id > face_id > register_image_index.
    OneOf("target", ("register_image_index", "register_image_id", "face_id"),
          ("register_image_id", "face_id", "register_image_index"),
          {"register_image_index": integer(minimum=0), "register_image_id": ANY_STRING,
           "face_id": ANY_STRING}),
    _registration_source(),
    fiqa_level("high"),
))

GET_REGISTER_IMAGE = Schema((
    Param("image_id", ANY_STRING, required=True),
), aliases={"register_image_id": "image_id"})

# --- permission.md -------------------------------------------------------------------

CREATE_PERMISSION = Schema((
    Param("permission_name", string(128, non_empty=True), required=True),
    Param("permission_id", IDENTIFIER),
    Param("description", ANY_STRING, default=""),
))


def _group_address(names: tuple) -> OneOf:
    """R49: the id wins over the name whatever the table order."""
    return OneOf("address", names, ("permission_id", "permission_name"),
                 {"permission_id": ANY_STRING, "permission_name": ANY_STRING})


GET_PERMISSION = Schema((_group_address(("permission_id", "permission_name")),))

GET_PERMISSIONS = Schema((
    Param("permission_name", ANY_STRING),
    Param("page_limit", PAGE_LIMIT, default=10),
    Param("page_index", PAGE_INDEX, default=0),
), empty_body_is_error=False)

UPDATE_PERMISSION = Schema((
    _group_address(("permission_name", "permission_id")),
    Param("new_name", string(128, non_empty=True)),
    Param("new_description", ANY_STRING),
))

DELETE_PERMISSION = Schema((_group_address(("permission_name", "permission_id")),))

# --- event.md ------------------------------------------------------------------------
GET_EVENT = Schema((Param("event_id", ANY_STRING, required=True),))

GET_EVENTS = Schema((
    Param("filters", obj, default={}),
    Param("page_limit", PAGE_LIMIT, default=10),
    Param("page_index", PAGE_INDEX, default=0),
), empty_body_is_error=False)

#: Nested in getevents' ``filters``; checked after ``filters`` itself, depth first.
EVENT_FILTERS = Schema((
    Param("datetime_gte", number()),
    Param("datetime_lte", number()),
    Param("identity_name", ANY_STRING),
    Param("identity_id", ANY_STRING),
    Param("score_min", number()),
    Param("score_max", number()),
    Param("user_type", ANY_STRING),  # R52: any string, compared case-insensitively
    Param("media_device_ids", string_list(max_item_chars=None)),
), empty_body_is_error=False)

SEARCH_BY_IMAGE = Schema((
    _images("face_image", "face_image_base64", "face_image_path"),
    fiqa_level("low"),
    Param("starttime", number()),
    Param("last_end_timestamp", number()),
    Param("endtime", number()),
    Param("threshold", number(0.0, 100.0), default=82.0),
    Param("media_device_ids", string_list(max_item_chars=None)),
    Param("reverse", boolean, default=True),
))

#: POST form of getspotimage (R5): the GET form's path id and query timestamp as a body.
GET_SPOT_IMAGE = Schema((
    Param("image_id", ANY_STRING, required=True),
    Param("timestamp", number(), required=True),
))

# --- data.md -------------------------------------------------------------------------
#: R39: at least one flag present (checked by the handler: the message names all three).
WIPE_DATA = Schema((
    Param("users", boolean),
    Param("events", boolean),
    Param("all", boolean),
))

CHECK_EVENT_IMAGE_PATH = Schema((), empty_body_is_error=False)

# --- config.md -----------------------------------------------------------------------
#: ``config_name`` is any string here; an unknown key is refused by the service (4.2).
GET_CONFIGS = Schema((Param("config_name", ANY_STRING),), empty_body_is_error=False)

SET_CONFIGS = Schema((Param("config_dict", obj_any, required=True),))

# --- login.md ------------------------------------------------------------------------
#: login.md checks each field's presence and type before the next field's: one schema per
#: field keeps that order with the two-pass rule. Password values are never echoed.
LOGIN = Schema((
    Param("username", ANY_STRING, required=True),
    Param("password", secret(), required=True),
), interleaved=True)

CHANGE_PASSWORD = Schema((
    Param("username", ANY_STRING, required=True),
    Param("old_password", secret(), required=True),
    Param("new_password", secret(1, 128), required=True),
), interleaved=True)

# --- device.md -----------------------------------------------------------------------
# (device schemas)
