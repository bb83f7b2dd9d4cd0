"""Placeholder handlers (being implemented): every call answers DEVICE_INIT_ERROR."""

from __future__ import annotations

from aiohttp import web

from ..errors import DeviceInitError


async def _not_ready(request: web.Request) -> web.Response:
    raise DeviceInitError()

wipe = _not_ready
check_event_image_path = _not_ready
