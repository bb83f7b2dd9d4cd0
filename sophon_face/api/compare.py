"""Handlers of the compare family (api/compare.md): detect, compare, fiqa, search."""

from __future__ import annotations

from aiohttp import web

from . import schemas
from .http import json_response, parse_request
from .keys import SERVICES


async def detect(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.DETECT)
    return json_response(await request.app[SERVICES].analysis.detect(body))


async def compare(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.COMPARE)
    return json_response(await request.app[SERVICES].analysis.compare(body))


async def fiqa(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.FIQA)
    return json_response(await request.app[SERVICES].analysis.fiqa(body))


async def search(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.SEARCH)
    return json_response(await request.app[SERVICES].search.search(body))
