"""Handlers of the device family (api/device.md 2-8). The validation of these bodies is
ordered by hand in the service (nested relay fields, conditional rtmp_address)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict

from aiohttp import web

from .http import Handler, json_response, read_json_object
from .keys import SERVICES, Services


def _endpoint(use_case: Callable[[Services, Dict[str, Any]], Awaitable[Dict[str, Any]]],
              empty_body_is_error: bool = True) -> Handler:
    async def handler(request: web.Request) -> web.Response:
        body = await read_json_object(request, empty_body_is_error)
        return json_response(await use_case(request.app[SERVICES], body))
    return handler


add = _endpoint(lambda s, body: s.devices.add(body))
get_many = _endpoint(lambda s, body: s.devices.list(body), empty_body_is_error=False)
update = _endpoint(lambda s, body: s.devices.update(body))
delete = _endpoint(lambda s, body: s.devices.delete(body))
delete_all = _endpoint(lambda s, body: s.devices.delete_all(body), empty_body_is_error=False)
get_preview = _endpoint(lambda s, body: s.devices.get_preview(body), empty_body_is_error=False)
update_preview = _endpoint(lambda s, body: s.devices.update_preview(body),
                           empty_body_is_error=False)
