"""The one place that speaks HTTP: the error envelope, body reading and JSON rendering.

Order of checks for a POST (api/README.md 3.7): routing (404/405) and body size (413)
come from aiohttp and the middleware, then Content-Type (3.2), then body parsing (3.3,
with our limits on time, nesting depth and list lengths: ``BodyLimits``), then the
endpoint schema (parameters).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Mapping

from aiohttp import web

from ..errors import (ApiError, EmptyRequestJson, ImageSizeTooLargeError, InternalError,
                      InvalidRequestJson, MethodNotAllowed, NotFound, UnsupportContentType,
                      invalid_argument)
from ..workers.admission import REQUEST_BODY_BYTES
from .keys import SERVICES, Services
from .metrics import METRICS, NO_ERROR
from .validation import Context, Schema

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

BODY_TOO_LARGE_MESSAGE = "request body too large"
_request_ids = itertools.count(1)


def json_response(payload: Mapping[str, Any], status: int = 200) -> web.Response:
    """Sorted keys, compact separators, ASCII-escaped (api/README.md 11): byte-stable."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return web.Response(text=text, status=status, content_type="application/json", charset="utf-8")


def error_response(error: ApiError) -> web.Response:
    response = json_response({"error": {"code": error.code, "message": error.message}},
                             status=error.http_status)
    response.headers.update(error.headers)  # ServiceBusy: Retry-After
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost middleware: every failure leaves as the spec's envelope, never a traceback.
    Every answer is also counted and timed here (api/metrics.py), with its error code."""
    request_id = next(_request_ids)
    started = time.perf_counter()
    code = NO_ERROR
    try:
        response = await handler(request)
    except ApiError as error:
        log.debug("request %d %s %s -> %s %s", request_id, request.method, request.path,
                  error.code, error.message)
        code, response = error.code, error_response(error)
    except web.HTTPRequestEntityTooLarge:
        # The one code whose status depends on the case: 413 for the body (12.4).
        error = ImageSizeTooLargeError(BODY_TOO_LARGE_MESSAGE)
        code = error.code
        response = json_response({"error": {"code": error.code, "message": error.message}}, 413)
    except web.HTTPNotFound:
        code, response = NotFound.code, error_response(NotFound(request.path))
    except web.HTTPMethodNotAllowed as exc:
        code, response = MethodNotAllowed.code, error_response(MethodNotAllowed(request.method))
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
    except web.HTTPException as exc:
        _observe(request, exc.status, NO_ERROR, started)
        raise  # deliberate HTTP answers (e.g. image downloads) pass through
    except Exception:  # anything unexpected: logged with its id, answered without internals
        log.exception("request %d %s %s failed", request_id, request.method, request.path)
        code, response = InternalError.code, error_response(InternalError())
    _observe(request, response.status, code, started)
    return response


def _observe(request: web.Request, status: int, code: str, started: float) -> None:
    metrics = request.app.get(METRICS)
    if metrics is not None:
        metrics.observe_request(request, status, code, time.perf_counter() - started)


def _media_type(header: str) -> str:
    return header.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class BodyLimits:
    """What one request body may be (the ``server.*`` settings of the same names)."""

    #: Larger bodies get HTTP 413 (aiohttp's client_max_size enforces it while reading).
    max_bytes: int = 32 * 1024 * 1024
    #: The whole body must arrive within this after the request head: a client trickling
    #: it byte by byte gets HTTP 408 and its connection is closed (api/guard.py).
    timeout_s: float = 60.0
    #: Nested objects/arrays beyond this depth (the top-level object is depth 1):
    #: INVALID_REQUEST_JSON.
    max_json_depth: int = 128
    #: An array anywhere in the body longer than this: INVALID_ARGUMENTS naming it.
    max_list_length: int = 10000


class BodyTimeout(InvalidRequestJson):  # type: ignore[misc, valid-type]
    """The body did not arrive within ``BodyLimits.timeout_s``. Our decision: the code of
    a body that cannot be parsed, with HTTP 408 (the one status that tells a client its
    request was too slow), and the connection is closed after the answer."""

    http_status = 408
    default_message = "request body not received in time"


#: True while handling a request whose connection must close once its answer is written
#: (api/guard.py ``connection_middleware`` does it): the client is still sending a body
#: nobody reads. A context variable, since aiohttp 3.10 has no typed request keys; each
#: request runs in a task of its own.
CLOSE_AFTER_RESPONSE: ContextVar[bool] = ContextVar("close_after_response", default=False)


def check_json_shape(value: Any, limits: BodyLimits, name: str = "", depth: int = 1) -> None:
    """Depth and list lengths of parsed JSON, in document order (the first offence is
    reported). Recursion is bounded by ``max_json_depth``; scalars are not visited."""
    if depth > limits.max_json_depth:
        raise InvalidRequestJson()
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)):
                check_json_shape(item, limits, f"{name}.{key}" if name else str(key), depth + 1)
    elif isinstance(value, list):
        if len(value) > limits.max_list_length:
            raise invalid_argument(name or "<body>", value)  # R10: "<array of N items>"
        for i, item in enumerate(value):
            if isinstance(item, (dict, list)):
                check_json_shape(item, limits, f"{name}[{i}]", depth + 1)


async def read_json_object(request: web.Request, empty_body_is_error: bool) -> Dict[str, Any]:
    """Content-Type, size, time and JSON checks shared by every POST endpoint."""
    limits = request.app.get(BODY_LIMITS) or BodyLimits()
    max_bytes = limits.max_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    content_type = request.headers.get("Content-Type")
    if content_type is not None and _media_type(content_type) != "application/json":
        raise UnsupportContentType(content_type)
    try:  # aiohttp enforces client_max_size while reading (413); the time is ours
        raw = await asyncio.wait_for(request.read(), limits.timeout_s)
    except asyncio.TimeoutError:
        log.info("%s %s from %s: body not received within %.0f s, closing", request.method,
                 request.path, request.remote, limits.timeout_s)
        CLOSE_AFTER_RESPONSE.set(True)
        raise BodyTimeout() from None
    # A job this request submits waits holding the body: the pool's admission counts it.
    REQUEST_BODY_BYTES.set(len(raw))
    if content_type is None and raw.strip():
        raise UnsupportContentType("")
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    if not raw.strip():
        if empty_body_is_error:
            raise EmptyRequestJson()
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise InvalidRequestJson() from None
    if not isinstance(body, dict):
        raise InvalidRequestJson()
    check_json_shape(body, limits)
    return body


async def parse_request(request: web.Request, schema: Schema) -> Dict[str, Any]:
    body = await read_json_object(request, schema.empty_body_is_error)
    return schema.parse(body, request.app[VALIDATION_CONTEXT])


UseCase = Callable[[Services, Dict[str, Any]], Awaitable[Mapping[str, Any]]]


def json_endpoint(schema: Schema, use_case: UseCase) -> Handler:
    """The shape of almost every endpoint: validate the body, call the use case, render."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await parse_request(request, schema)
        return json_response(await use_case(request.app[SERVICES], body))
    return handler


ListUseCase = Callable[[Services, Dict[str, Any], int, int], Awaitable[Mapping[str, Any]]]


def list_endpoint(schema: Schema, filters_schema: Schema, use_case: ListUseCase) -> Handler:
    """A paged list with a nested ``filters`` object (getidentities, getevents): the
    filters' fields are checked after their parent, depth first (README 3.7)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        body = await parse_request(request, schema)
        filters = filters_schema.parse(body["filters"], request.app[VALIDATION_CONTEXT],
                                       prefix="filters.")
        return json_response(await use_case(request.app[SERVICES], filters,
                                            body["page_limit"], body["page_index"]))
    return handler


# Typed application keys of the HTTP layer (set by app.build_app).
BODY_LIMITS = web.AppKey("body_limits", BodyLimits)
VALIDATION_CONTEXT = web.AppKey("validation_context", Context)
