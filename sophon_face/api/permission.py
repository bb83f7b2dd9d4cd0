"""Handlers of the permission family (api/permission.md)."""

from __future__ import annotations

from aiohttp import web

from . import schemas
from .http import json_response, parse_request
from .keys import SERVICES


async def create(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.CREATE_PERMISSION)
    return json_response(await request.app[SERVICES].groups.create(body))


async def get_one(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.GET_PERMISSION)
    return json_response(await request.app[SERVICES].groups.get(body))


async def get_many(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.GET_PERMISSIONS)
    return json_response(await request.app[SERVICES].groups.list(
        body["permission_name"], body["page_limit"], body["page_index"]))


async def update(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.UPDATE_PERMISSION)
    return json_response(await request.app[SERVICES].groups.update(body))


async def delete(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.DELETE_PERMISSION)
    return json_response(await request.app[SERVICES].groups.delete(body))
