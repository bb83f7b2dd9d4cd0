"""Domain errors, one class per upstream error code (api/README.md section 12.4).

Every layer raises these; only the API middleware turns them into the
``{"error": {"code", "message"}}`` envelope and the HTTP status carried here.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar, Dict, Mapping, Optional, Type

#: INVALID_ARGUMENTS messages replace a serialised value longer than this (R10).
MAX_ECHOED_VALUE_CHARS = 200


class ApiError(Exception):
    """An error with an upstream code, an HTTP status and a client-facing message."""

    code: ClassVar[str] = "INTERNAL_ERROR"
    http_status: ClassVar[int] = 500
    default_message: ClassVar[str] = "internal error"

    def __init__(self, message: str | None = None,
                 headers: Optional[Mapping[str, str]] = None) -> None:
        self.message = self.default_message if message is None else message
        #: HTTP headers the answer carries besides the envelope (ServiceBusy: Retry-After).
        self.headers: Dict[str, str] = dict(headers or {})
        super().__init__(f"{self.code}: {self.message}")


_BY_CODE: Dict[str, Type[ApiError]] = {}


def _error(code: str, http_status: int, default_message: str = "") -> Type[ApiError]:
    cls = type(code.title().replace("_", ""), (ApiError,), {
        "code": code, "http_status": http_status, "default_message": default_message,
    })
    _BY_CODE[code] = cls
    return cls


# Table order follows api/README.md section 12.4.
AnotherPictureSearchRunningError = _error(
    "ANOTHER_PICTURE_SEARCH_RUNNING_ERROR", 409, "another search by image is running")
ConfigItemFail = _error("CONFIG_ITEM_FAIL", 400)
DeviceAddressDuplicateError = _error("DEVICE_ADDRESS_DUPLICATE_ERROR", 409)
DeviceIdNotFound = _error("DEVICE_ID_NOT_FOUND", 404)
DeviceInitError = _error("DEVICE_INIT_ERROR", 503, "device subsystem is initializing")
DeviceMaxNumError = _error("DEVICE_MAX_NUM_ERROR", 409, "maximum number of devices reached")
DevicePerviewIdNotExist = _error("DEVICE_PERVIEW_ID_NOT_EXIST", 404)
DeviceRtmpAddressDuplicateError = _error("DEVICE_RTMP_ADDRESS_DUPLICATE_ERROR", 409)
EmptyGroupError = _error("EMPTY_GROUP_ERROR", 409, "comparison group is empty")
EmptyRequestJson = _error("EMPTY_REQUEST_JSON", 400, "empty request body")
IdNotFound = _error("ID_NOT_FOUND", 404)
IdRepeatError = _error("ID_REPEAT_ERROR", 409)
InternalError = _error("INTERNAL_ERROR", 500, "internal error")
ImageDecodeError = _error("IMAGE_DECODE_ERROR", 400)
ImageNotOpened = _error("IMAGE_NOT_OPENED", 400)
ImageSizeTooLargeError = _error("IMAGE_SIZE_TOO_LARGE_ERROR", 400)
InvalidArguments = _error("INVALID_ARGUMENTS", 400)
InsufficientSpaceLeft = _error("INSUFFICIENT_SPACE_LEFT", 507, "insufficient storage space")
InvalidRequestJson = _error("INVALID_REQUEST_JSON", 400, "request body is not a JSON object")
GroupLenError = _error("GROUP_LEN_ERROR", 409, "face library capacity exceeded")
LivenessDetectFail = _error("LIVENESS_DETECT_FAIL", 400)
LowQualityError = _error("LOW_QUALITY_ERROR", 400)
MatchFail = _error("MATCH_FAIL", 500, "match failed")
MissingArguments = _error("MISSING_ARGUMENTS", 400)
NameRepeatError = _error("NAME_REPEAT_ERROR", 409)
NoFaceError = _error("NO_FACE_ERROR", 400)
NotInPassTime = _error("NOT_IN_PASS_TIME", 403, "not in pass time")
NotSupportInGrabMode = _error("NOT_SUPPORT_IN_GRAB_MODE", 409, "not supported in grab mode")
NotSupportIrLiveness = _error("NOT_SUPPORT_IR_LIVENESS", 501, "liveness detection not supported")
PasswordError = _error("PASSWORD_ERROR", 401, "password error")
PermissionIdNotFound = _error("PERMISSION_ID_NOT_FOUND", 404)
UnsupportContentType = _error("UNSUPPORT_CONTENT_TYPE", 415)
# Routing codes (our decision, marked with a dagger in the table).
NotFound = _error("NOT_FOUND", 404)
MethodNotAllowed = _error("METHOD_NOT_ALLOWED", 405)


class ServiceBusy(InternalError):  # type: ignore[misc, valid-type]
    """The workers cannot take the request in time: its expected wait, or the bytes of the
    bodies waiting, are beyond the daemon's limits (workers/admission.py). Upstream has no
    "busy" code; a client retries on 5xx.

    Our decision: answer INTERNAL_ERROR with HTTP 503 and an explicit message, so the
    envelope stays within the upstream code set while the status tells a proxy or a
    client library that retrying later is right, and ``Retry-After`` (whole seconds, at
    least 1) says when, from the pool's estimate of its queue.
    """

    http_status = 503
    default_message = "server busy, retry later"

    def __init__(self, message: str | None = None,
                 retry_after_s: Optional[float] = None) -> None:
        self.retry_after_s = retry_after_s
        headers: Dict[str, str] = {}
        if retry_after_s is not None:
            headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))
        super().__init__(message, headers)


def error_class(code: str) -> Type[ApiError]:
    """The class for an upstream code (KeyError for an unknown one)."""
    return _BY_CODE[code]


def describe_value(value: Any) -> str:
    """Compact JSON of ``value`` for an INVALID_ARGUMENTS message (R10)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= MAX_ECHOED_VALUE_CHARS:
        return text
    if isinstance(value, list):
        return f"<array of {len(value)} items>"
    if isinstance(value, dict):
        return f"<object of {len(value)} keys>"
    if isinstance(value, str):
        return f"<string of {len(value)} chars>"
    return text[:MAX_ECHOED_VALUE_CHARS]


def invalid_argument(name: str, value: Any) -> ApiError:
    """INVALID_ARGUMENTS with the ``"<name>: <json value>"`` message of R10."""
    return InvalidArguments(f"{name}: {describe_value(value)}")

