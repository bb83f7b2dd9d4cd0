"""The one place that speaks HTTP: the error envelope, body reading and JSON rendering.

Order of checks for a POST (api/README.md 3.7): routing (404/405) and body size (413)
come from aiohttp and the middleware, then Content-Type (3.2), then body parsing (3.3),
then the endpoint schema (parameters).
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from typing import Any, Awaitable, Callable, Dict, Mapping

from aiohttp import web

from ..errors import (ApiError, EmptyRequestJson, ImageSizeTooLargeError, InternalError,
                      InvalidRequestJson, MethodNotAllowed, NotFound, UnsupportContentType)
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
    return json_response({"error": {"code": error.code, "message": error.message}},
                         status=error.http_status)


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


async def read_json_object(request: web.Request, empty_body_is_error: bool) -> Dict[str, Any]:
    """Content-Type, size and JSON checks shared by every POST endpoint."""
    max_bytes = request.app[MAX_BODY_BYTES]
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    content_type = request.headers.get("Content-Type")
    if content_type is not None and _media_type(content_type) != "application/json":
        raise UnsupportContentType(content_type)
    raw = await request.read()  # aiohttp enforces client_max_size while reading (413)
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
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)
VALIDATION_CONTEXT = web.AppKey("validation_context", Context)
