"""What every WebSocket server of the daemon needs from aiohttp: a guarded listening
socket (token, connection limits, TLS: api/guard.py), a connection that can be dropped at
once, and the hubs' ``Connection`` over one socket (api/realtime_ws.py, api/preview_ws.py)."""

from __future__ import annotations

from typing import Optional, Tuple

from aiohttp import web

from ..push.realtime import CLOSE_GOING_AWAY, CLOSE_TIMEOUT_S
from .guard import GuardedRunner, ServerGuard


def ws_application(guard: Optional[ServerGuard]) -> web.Application:
    """An app for one WebSocket server, with the guard's middlewares (its token)."""
    return web.Application(middlewares=(guard or ServerGuard()).ws_middlewares())


async def start_ws_server(app: web.Application, host: str, port: int,
                          guard: Optional[ServerGuard]) -> Tuple[web.AppRunner, int]:
    """Serve ``app`` on ``host:port`` (0: any free port) behind ``guard``'s connection
    limits and TLS; returns the runner (clean it up) and the bound port."""
    guard = guard or ServerGuard()
    runner = GuardedRunner(app, guard.limits, access_log=None, shutdown_timeout=CLOSE_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=guard.ssl_context)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]


def abort_connection(request: web.Request) -> None:
    """Drop the TCP connection now, discarding unsent bytes (a graceful transport close
    waits for a stuck peer to drain them, which may be never)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


class ClientSocket:
    """A hub's Connection over one WebSocket: a close that cannot leave it hanging."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self._ws, self._request = ws, request

    async def send_str(self, data: str) -> None:
        await self._ws.send_str(data)

    async def send_bytes(self, data: bytes) -> None:
        await self._ws.send_bytes(data)

    async def close(self, *, code: int = CLOSE_GOING_AWAY, message: bytes = b"") -> bool:
        try:
            return await self._ws.close(code=code, message=message)
        finally:
            # After a clean closing handshake this finds nothing left to drop; after a
            # failed or abandoned one it unblocks this connection's handler and frees it.
            abort_connection(self._request)
