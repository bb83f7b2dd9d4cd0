"""What every WebSocket server of the daemon needs from aiohttp: a connection that can be
dropped at once, and the hubs' ``Connection`` over one socket (api/realtime_ws.py,
api/preview_ws.py)."""

from __future__ import annotations

from aiohttp import web

from ..push.realtime import CLOSE_GOING_AWAY


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
