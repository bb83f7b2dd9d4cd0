"""Placeholder handlers (being implemented): every call answers DEVICE_INIT_ERROR."""

from __future__ import annotations

from aiohttp import web

from ..errors import DeviceInitError


async def _not_ready(request: web.Request) -> web.Response:
    raise DeviceInitError()

get_configs = _not_ready
set_configs = _not_ready
