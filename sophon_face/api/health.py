"""``GET /health``: honest health — the store is open and the models answered a warm-up."""

from __future__ import annotations

import json

from aiohttp import web

from .keys import SERVICES


async def health(request: web.Request) -> web.Response:
    payload, healthy = await request.app[SERVICES].health()
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return web.Response(text=text, status=200 if healthy else 503,
                        content_type="application/json", charset="utf-8")
