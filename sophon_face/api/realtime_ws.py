"""The real-time event WebSocket server (api/event.md 7), on its own port (5679).

Any path upgrades. The server sends nothing until the client's first valid configuration;
a bad configuration is answered with an error message and the previous one stays. One
sender task per connection drains that connection's bounded queue, so only it ever waits
on the client's socket. Heartbeat pings detect dead peers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Tuple

from aiohttp import WSMsgType, web

from ..errors import ApiError
from ..push.realtime import RealtimeHub, Subscriber, parse_config

log = logging.getLogger(__name__)

HEARTBEAT_S = 30.0
HUB = web.AppKey("realtime_hub", RealtimeHub)


async def _sender(ws: web.WebSocketResponse, subscriber: Subscriber, hub: RealtimeHub) -> None:
    while not ws.closed:
        await subscriber.ready.wait()
        subscriber.ready.clear()
        while subscriber.queue and not ws.closed:
            await ws.send_str(subscriber.queue.popleft())
            hub.sent += 1


async def _error(ws: web.WebSocketResponse, error: ApiError) -> None:
    await ws.send_str(json.dumps({"error": {"code": error.code, "message": error.message}},
                                 sort_keys=True, separators=(",", ":")))


async def realtime_socket(request: web.Request) -> web.StreamResponse:
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S, max_msg_size=64 * 1024)
    if not ws.can_prepare(request).ok:
        return web.Response(status=400, text="WebSocket upgrade expected")
    await ws.prepare(request)
    hub = request.app[HUB]
    subscriber = hub.add()
    sender = asyncio.ensure_future(_sender(ws, subscriber, hub))
    try:
        async for message in ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    subscriber.config = parse_config(
                        message.data if message.type == WSMsgType.TEXT else None)
                except ApiError as error:
                    await _error(ws, error)
            elif message.type == WSMsgType.ERROR:
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        hub.remove(subscriber)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return ws


def build_realtime_app(hub: RealtimeHub) -> web.Application:
    app = web.Application()
    app[HUB] = hub
    app.router.add_get("/{tail:.*}", realtime_socket)
    return app


async def start_realtime_server(hub: RealtimeHub, host: str,
                                port: int) -> Tuple[web.AppRunner, int]:
    runner = web.AppRunner(build_realtime_app(hub), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    return runner, runner.addresses[0][1]


__all__ = ["build_realtime_app", "start_realtime_server"]
