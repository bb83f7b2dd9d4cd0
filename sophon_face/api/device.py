"""Placeholder handlers (being implemented): every call answers DEVICE_INIT_ERROR."""

from __future__ import annotations

from aiohttp import web

from ..errors import DeviceInitError


async def _not_ready(request: web.Request) -> web.Response:
    raise DeviceInitError()

add = _not_ready
get_many = _not_ready
update = _not_ready
delete = _not_ready
delete_all = _not_ready
get_preview = _not_ready
update_preview = _not_ready
