"""Handlers of the data family (api/data.md): wipedata, checkeventimagepath."""

from __future__ import annotations

from aiohttp import web

from ..errors import MissingArguments
from . import schemas
from .http import json_endpoint, json_response, parse_request
from .keys import SERVICES

check_event_image_path = json_endpoint(schemas.CHECK_EVENT_IMAGE_PATH,
                                       lambda s, body: s.data.check_event_image_path())


async def wipe(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.WIPE_DATA)
    flags = ("users", "events", "all")
    if all(body[flag] is None for flag in flags):  # R39: at least one present
        raise MissingArguments("/".join(flags))
    return json_response(await request.app[SERVICES].data.wipe(
        users=bool(body["users"]), events=bool(body["events"]), everything=bool(body["all"])))
