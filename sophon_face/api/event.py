"""Handlers of the event family (api/event.md 3-6)."""

from __future__ import annotations

import math

from aiohttp import web

from ..errors import MissingArguments, invalid_argument
from . import schemas
from .http import json_endpoint, list_endpoint, parse_request
from .keys import SERVICES

get_one = json_endpoint(schemas.GET_EVENT, lambda s, body: s.events.get(body["event_id"]))
search_by_image = json_endpoint(schemas.SEARCH_BY_IMAGE,
                                lambda s, body: s.event_search.search(body))


get_many = list_endpoint(schemas.GET_EVENTS, schemas.EVENT_FILTERS,
                         lambda s, filters, limit, index: s.events.list(filters, limit, index))


def _jpeg(data: bytes) -> web.Response:
    return web.Response(body=data, content_type="image/jpeg")


async def spot_image_by_path(request: web.Request) -> web.Response:
    """``GET getspotimage/{image_id}?timestamp=...``: errors are JSON envelopes (6)."""
    raw = request.query.get("timestamp")
    if raw is None:
        raise MissingArguments("timestamp")
    try:
        timestamp = float(raw)
    except ValueError:
        raise invalid_argument("timestamp", raw) from None
    if not math.isfinite(timestamp):
        raise invalid_argument("timestamp", raw)
    image_id = request.match_info.get("image_id", "")
    return _jpeg(await request.app[SERVICES].events.image(image_id))


async def spot_image_by_body(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.GET_SPOT_IMAGE)
    return _jpeg(await request.app[SERVICES].events.image(body["image_id"]))
