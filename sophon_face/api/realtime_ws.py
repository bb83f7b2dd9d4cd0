"""The real-time event WebSocket server (api/event.md 7), on its own port (5679).

Any path upgrades; a plain GET without the upgrade is answered 400. The server sends
nothing until the client's first valid configuration; a bad configuration is answered
with an error message and the previous one stays in force. The hub (push/realtime.py)
runs one sender task per connection, so this handler only ever reads. Heartbeat pings
find dead peers (no PONG within half the interval closes the socket; ``server.ws_heartbeat_s``).
A client message longer than ``server.ws_max_message_bytes`` closes the socket (1009).
With ``server.api_token`` the upgrade needs the token (header or ``?token=``, api/guard.py).

Choices where the spec is silent:
- A configuration follows the HTTP rules of api/README.md 3.3-3.5: ``null`` is absent,
  unknown keys are ignored, bools are strict, a leading BOM is tolerated; a new one
  replaces the old one wholesale (absent keys take their defaults, nothing is merged).
- An empty text message and any binary message are INVALID_REQUEST_JSON.
- permessage-deflate is off: messages are mostly base64 JPEG, which barely compresses,
  and compressing would cost CPU per subscriber instead of once per event.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional, Tuple

from aiohttp import WSCloseCode, WSMsgType, web

from ..errors import ApiError, InvalidRequestJson
from ..push.realtime import (CLOSE_GOING_AWAY, CLOSE_TIMEOUT_S, RealtimeHub, SubscriberConfig,
                             message_text)
from .guard import ServerGuard
from .http import BodyLimits, check_json_shape
from .validation import Context, Param, Schema, boolean, string_list
from .ws_socket import ClientSocket, abort_connection, start_ws_server, ws_application

log = logging.getLogger(__name__)

#: Seconds between server pings; a peer that does not answer within half of it is dropped.
HEARTBEAT_S = 30.0
#: A configuration is a few hundred bytes; a longer message closes the socket (1009).
#: The default of server.ws_max_message_bytes.
MAX_CONFIG_MESSAGE_BYTES = 64 * 1024

HUB = web.AppKey("realtime_hub", RealtimeHub)
HEARTBEAT = web.AppKey("realtime_heartbeat_s", float)
MAX_MESSAGE_BYTES = web.AppKey("realtime_max_message_bytes", int)
JSON_LIMITS = web.AppKey("realtime_json_limits", BodyLimits)

#: The configuration message (event.md 7, table order; R31 aliases).
CONFIG_SCHEMA = Schema((
    Param("with_face_image", boolean, default=False),
    Param("with_register_image", boolean, default=False),
    Param("media_device_ids", string_list(max_item_chars=None), default=[]),
), empty_body_is_error=False, aliases={
    "need_face": "with_face_image",
    "need_register": "with_register_image",
    "event_list": "media_device_ids",
})


def parse_subscriber_config(text: Any, limits: BodyLimits = BodyLimits()) -> SubscriberConfig:
    """A configuration message -> SubscriberConfig, or the ApiError to answer with.

    ``text`` is the message's str (a binary message is passed as bytes and refused);
    ``limits``: nesting depth and list lengths, as for an HTTP body."""
    if not isinstance(text, str):
        raise InvalidRequestJson()
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        raise InvalidRequestJson() from None
    if not isinstance(body, dict):
        raise InvalidRequestJson()
    check_json_shape(body, limits)
    parsed = CONFIG_SCHEMA.parse(body, Context())
    return SubscriberConfig(with_face_image=parsed["with_face_image"],
                            with_register_image=parsed["with_register_image"],
                            media_device_ids=frozenset(parsed["media_device_ids"]))


def error_text(error: ApiError) -> str:
    return message_text({"error": {"code": error.code, "message": error.message}})


async def realtime_socket(request: web.Request) -> web.StreamResponse:
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
    subscriber = hub.add(ClientSocket(ws, request), name=peer)
    log.info("real-time client %s connected (%d connected)", peer, hub.subscriber_count)
    try:
        async for message in ws:
            if message.type == WSMsgType.ERROR:
                break
            if message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                continue
            try:
                subscriber.config = parse_subscriber_config(
                    message.data if message.type == WSMsgType.TEXT else None,
                    request.app[JSON_LIMITS])
            except ApiError as error:
                log.debug("real-time client %s: bad configuration: %s %s", peer, error.code,
                          error.message)
                await ws.send_str(error_text(error))
            else:
                log.debug("real-time client %s configured: %s", peer, subscriber.config)
    except ConnectionError:  # gone while its error answer was being written
        pass
    finally:
        await hub.remove(subscriber)
        if ws.close_code in (None, WSCloseCode.ABNORMAL_CLOSURE):
            abort_connection(request)  # e.g. no PONG: do not wait for a dead peer to drain
        log.info("real-time client %s disconnected (%d sent, %d dropped)", peer,
                 subscriber.sent, subscriber.dropped)
    return ws


def build_realtime_app(hub: RealtimeHub, heartbeat_s: float = HEARTBEAT_S, *,
                       max_message_bytes: int = MAX_CONFIG_MESSAGE_BYTES,
                       json_limits: BodyLimits = BodyLimits(),
                       guard: Optional[ServerGuard] = None) -> web.Application:
    app = ws_application(guard)
    app[HUB] = hub
    app[HEARTBEAT] = float(heartbeat_s)
    app[MAX_MESSAGE_BYTES] = int(max_message_bytes)
    app[JSON_LIMITS] = json_limits
    app.router.add_get("/{tail:.*}", realtime_socket)

    async def close_hub(_app: web.Application) -> None:
        # Open sockets would otherwise hold the runner's shutdown for its whole timeout.
        await hub.close()

    app.on_shutdown.append(close_hub)
    return app


async def start_realtime_server(hub: RealtimeHub, host: str, port: int,
                                heartbeat_s: float = HEARTBEAT_S, *,
                                max_message_bytes: int = MAX_CONFIG_MESSAGE_BYTES,
                                json_limits: BodyLimits = BodyLimits(),
                                guard: Optional[ServerGuard] = None
                                ) -> Tuple[web.AppRunner, int]:
    """Serve ``hub`` on ``host:port`` (0: any free port) behind ``guard`` (token,
    connection limits, TLS); returns the runner and the port."""
    app = build_realtime_app(hub, heartbeat_s, max_message_bytes=max_message_bytes,
                             json_limits=json_limits, guard=guard)
    return await start_ws_server(app, host, port, guard)


__all__ = ["CONFIG_SCHEMA", "HEARTBEAT_S", "build_realtime_app", "parse_subscriber_config",
           "start_realtime_server"]
