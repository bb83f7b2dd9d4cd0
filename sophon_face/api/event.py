"""Placeholder handlers (being implemented): every call answers DEVICE_INIT_ERROR."""

from __future__ import annotations

from aiohttp import web

from ..errors import DeviceInitError


async def _not_ready(request: web.Request) -> web.Response:
    raise DeviceInitError()

get_one = _not_ready
get_many = _not_ready
search_by_image = _not_ready
spot_image_by_path = _not_ready
spot_image_by_body = _not_ready
