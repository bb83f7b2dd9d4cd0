"""Handlers of the identity family (api/identity.md). Thin: parse, call, render."""

from __future__ import annotations

from aiohttp import web

from . import schemas
from .http import json_endpoint, list_endpoint, parse_request
from .keys import SERVICES


create = json_endpoint(schemas.CREATE_IDENTITY, lambda s, body: s.identities.create(body))
get_one = json_endpoint(schemas.GET_IDENTITY, lambda s, body: s.identities.get(body["identity_id"]))
update = json_endpoint(schemas.UPDATE_IDENTITY, lambda s, body: s.identities.update(body))
delete_many = json_endpoint(schemas.DELETE_IDENTITIES,
                            lambda s, body: s.identities.delete_many(body["identity_ids"]))
add_face = json_endpoint(schemas.ADD_FACE, lambda s, body: s.identities.add_face(body))
delete_face = json_endpoint(schemas.DELETE_FACE, lambda s, body: s.identities.delete_face(body))
replace_face = json_endpoint(schemas.REPLACE_FACE, lambda s, body: s.identities.replace_face(body))


get_many = list_endpoint(schemas.GET_IDENTITIES, schemas.IDENTITY_FILTERS,
                         lambda s, filters, limit, index: s.identities.list(filters, limit, index))


def _jpeg(data: bytes | None) -> web.Response:
    """R4: an unknown id (or one registered from a feature, R19) is a 404 with an empty
    image/jpeg body, so an <img> shows nothing and a program can test the status."""
    if not data:
        return web.Response(status=404, body=b"", content_type="image/jpeg")
    return web.Response(body=data, content_type="image/jpeg")


async def register_image_by_path(request: web.Request) -> web.Response:
    image_id = request.match_info.get("image_id", "")
    return _jpeg(await request.app[SERVICES].identities.register_image(image_id))


async def register_image_by_body(request: web.Request) -> web.Response:
    body = await parse_request(request, schemas.GET_REGISTER_IMAGE)
    return _jpeg(await request.app[SERVICES].identities.register_image(body["image_id"]))
