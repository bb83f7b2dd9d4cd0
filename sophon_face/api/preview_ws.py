"""The preview WebSocket servers (api/device.md 10), each on its own port.

- Frame stream (10.1), default port 5678, paths ``/preview`` and ``/``: binary messages
  whose payload is UTF-8 JSON, one per analysed frame of each on-screen device.
- Control channel (10.2), default port 54547, any path: text JSON messages on every
  layout change (updatepreview) and device add / modify / delete.

Clients send nothing that matters: whatever they send is read and ignored (a message
longer than ``server.ws_max_message_bytes`` closes the socket, 1009). A plain GET without
the upgrade is answered 400. The hub (push/preview.py) runs one sender task per
connection, so these handlers only ever read. Heartbeat pings find dead peers (no PONG
within half of ``server.ws_heartbeat_s`` closes the socket). With ``server.api_token``
the upgrade needs the token (header or ``?token=``, api/guard.py).

Choices where the spec is silent:
- A control client is sent the current layout as soon as it connects, with
  ``modify_media_device: {}``, so that a UI is in sync without calling getpreview first
  (the hub queues it before any later broadcast, so the order is always right).
- permessage-deflate is off: frames are mostly base64 JPEG, which barely compresses, and
  compressing would cost CPU per viewer instead of once per frame.
"""

from __future__ import annotations

import logging
from typing import Awaitable, Callable, List, Optional, Tuple

from aiohttp import WSCloseCode, WSMsgType, web

from ..push.preview import Client, PreviewHub
from ..push.realtime import CLOSE_GOING_AWAY, CLOSE_TIMEOUT_S
from .guard import ServerGuard
from .ws_socket import ClientSocket, abort_connection, start_ws_server, ws_application

log = logging.getLogger(__name__)

#: Seconds between server pings; a peer that does not answer within half of it is dropped.
HEARTBEAT_S = 30.0
#: Clients are not expected to send anything; this only bounds what a stray one costs.
#: The default of server.ws_max_message_bytes.
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024

HUB = web.AppKey("preview_hub", PreviewHub)
HEARTBEAT = web.AppKey("preview_heartbeat_s", float)
MAX_MESSAGE_BYTES = web.AppKey("preview_max_message_bytes", int)


async def _serve(request: web.Request, kind: str,
                 add: Callable[[PreviewHub, ClientSocket, str], Client],
                 remove: Callable[[PreviewHub, Client], Awaitable[None]]) -> web.StreamResponse:
    """One client's whole connection: register it with the hub, read until it leaves."""
    ws = web.WebSocketResponse(heartbeat=request.app[HEARTBEAT], timeout=CLOSE_TIMEOUT_S,
                               compress=False, max_msg_size=request.app[MAX_MESSAGE_BYTES])
    if not ws.can_prepare(request).ok:
        return web.Response(status=400, text="WebSocket upgrade expected")
    await ws.prepare(request)
    hub = request.app[HUB]
    peer = request.remote or "?"
    if hub.closed:  # a connection that raced the shutdown
        await ws.close(code=CLOSE_GOING_AWAY, message=b"server shutdown")
        return ws
    client = add(hub, ClientSocket(ws, request), peer)
    log.info("preview %s client %s connected (%d viewers, %d control)", kind, peer,
             hub.viewer_count, hub.control_count)
    try:
        async for message in ws:  # drives pings and the closing handshake; content ignored
            if message.type == WSMsgType.ERROR:
                break
    finally:
        await remove(hub, client)
        if ws.close_code in (None, WSCloseCode.ABNORMAL_CLOSURE):
            abort_connection(request)  # e.g. no PONG: do not wait for a dead peer to drain
        log.info("preview %s client %s disconnected (%d sent, %d dropped)", kind, peer,
                 client.sent, client.dropped)
    return ws


async def frame_socket(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "frame",
                        lambda hub, socket, name: hub.add_viewer(socket, name=name),
                        PreviewHub.remove_viewer)


async def control_socket(request: web.Request) -> web.StreamResponse:
    return await _serve(request, "control",
                        lambda hub, socket, name: hub.add_control(socket, name=name),
                        PreviewHub.remove_control)


def _app(hub: PreviewHub, heartbeat_s: float, max_message_bytes: int,
         guard: Optional[ServerGuard]) -> web.Application:
    app = ws_application(guard)
    app[HUB] = hub
    app[HEARTBEAT] = float(heartbeat_s)
    app[MAX_MESSAGE_BYTES] = int(max_message_bytes)

    async def close_hub(_app: web.Application) -> None:
        # Open sockets would otherwise hold the runner's shutdown for its whole timeout.
        # Either server's shutdown closes the shared hub: both go down together anyway.
        await hub.close()

    app.on_shutdown.append(close_hub)
    return app


def build_frame_app(hub: PreviewHub, heartbeat_s: float = HEARTBEAT_S, *,
                    max_message_bytes: int = MAX_CLIENT_MESSAGE_BYTES,
                    guard: Optional[ServerGuard] = None) -> web.Application:
    app = _app(hub, heartbeat_s, max_message_bytes, guard)
    app.router.add_get("/preview", frame_socket)
    app.router.add_get("/", frame_socket)
    return app


def build_control_app(hub: PreviewHub, heartbeat_s: float = HEARTBEAT_S, *,
                      max_message_bytes: int = MAX_CLIENT_MESSAGE_BYTES,
                      guard: Optional[ServerGuard] = None) -> web.Application:
    app = _app(hub, heartbeat_s, max_message_bytes, guard)
    app.router.add_get("/{tail:.*}", control_socket)
    return app


async def start_preview_servers(hub: PreviewHub, host: str, port: int, control_port: int,
                                heartbeat_s: float = HEARTBEAT_S, *,
                                max_message_bytes: int = MAX_CLIENT_MESSAGE_BYTES,
                                guard: Optional[ServerGuard] = None
                                ) -> Tuple[List[web.AppRunner], int, int]:
    """Serve the frame stream on ``host:port`` and the control channel on
    ``host:control_port`` (0: any free port), each behind ``guard`` (token, connection
    limits, TLS); returns both runners (clean them all up) and the two bound ports."""
    frame_app = build_frame_app(hub, heartbeat_s, max_message_bytes=max_message_bytes,
                                guard=guard)
    frame_runner, frame_port = await start_ws_server(frame_app, host, port, guard)
    try:
        control_app = build_control_app(hub, heartbeat_s, max_message_bytes=max_message_bytes,
                                        guard=guard)
        control_runner, bound_control_port = await start_ws_server(
            control_app, host, control_port, guard)
    except BaseException:
        await frame_runner.cleanup()
        raise
    return [frame_runner, control_runner], frame_port, bound_control_port


__all__ = ["HEARTBEAT_S", "MAX_CLIENT_MESSAGE_BYTES", "build_control_app", "build_frame_app",
           "start_preview_servers"]
