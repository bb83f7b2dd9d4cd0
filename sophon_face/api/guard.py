"""What every listening socket of the daemon applies before a request reaches a handler:
the optional API token, and the limits that keep slow or hostile clients from holding
connections (the HTTP API on 5555 and the WebSocket servers on 5679, 5678 and 54547).

Token (``server.api_token``, or the SOPHON_FACE_API_TOKEN environment variable). Upstream
has no authentication and LAN clients rely on that, so without a token everything stays
open. With one, every request except ``PUBLIC_PATHS`` must carry it as
``Authorization: Bearer <token>`` or ``X-Api-Token: <token>``; the WebSocket servers also
take ``?token=<token>`` because a browser's WebSocket cannot set headers. Tokens are
compared with ``hmac.compare_digest`` and never logged. A missing or wrong token is
PASSWORD_ERROR (the spec's one code for bad credentials, HTTP 401) with the message
``api token missing or wrong`` and a ``WWW-Authenticate: Bearer`` challenge.

Connections (``ConnectionLimits``). aiohttp bounds the size of a request line and of each
header, and closes idle keep-alive connections, but has no deadline for the request head:
on 3.10 a client that connects and trickles a header one byte a minute holds its
connection forever (3.11+ arm the keep-alive timer at connect, an hour by default). So
each connection goes through ``GuardedProtocol``, a thin wrapper around aiohttp's
protocol that

- refuses connections beyond ``max_connections`` per listening port at once: HTTP 503 with
  the envelope (INTERNAL_ERROR, like a full worker queue), ``Retry-After: 1``, then close.
  Refusing rather than queueing: a queued connection holds a socket and a client's timer
  just the same, and a clear 503 tells a client to back off;
- requires a complete request head (request line and headers, up to the blank line) within
  ``header_timeout_s`` of the connection's start, and of the first byte of each later
  request on a kept-alive connection; beyond, HTTP 408 and close;
- requires that head to be at most ``max_header_bytes`` (aiohttp 3.10's C parser does not
  enforce its header count): beyond, HTTP 431 and close.

The body's deadline is ``server.body_timeout_s`` (api/http.py ``read_json_object``), and
an idle kept-alive connection is closed by aiohttp after ``keepalive_timeout_s``. A
WebSocket's messages are bounded by ``max_msg_size`` and its peer by the heartbeat (the
servers' own modules).

Which byte ends a head is only known to aiohttp's parser; the wrapper watches for the
blank line itself, and ``connection_middleware`` (the outermost middleware of every app)
tells it when a request reached the application and when its answer was produced, so
the next head's clock starts with the next byte.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Dict, FrozenSet, Optional

from aiohttp import web

from ..errors import InternalError, PasswordError
from .http import CLOSE_AFTER_RESPONSE, error_response

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: Served without the token: the health check (systemd, monitoring) and the API's own
#: description, which holds no data (the Sophon v2 API is public) and which a browser
#: must load before its "Authorize" can send a token.
PUBLIC_PATHS: FrozenSet[str] = frozenset({"/health", "/openapi.json", "/docs"})
TOKEN_HEADER = "X-Api-Token"
TOKEN_QUERY = "token"
CHALLENGE = 'Bearer realm="sophon-face"'
#: aiohttp's limits of one request line and one header line (its defaults), and of the
#: number of headers (aiohttp 3.11+ only; ``max_header_bytes`` bounds them on 3.10).
MAX_HEADER_LINE_BYTES = 8190
MAX_HEADER_COUNT = 128
#: After an answer sent before its body was read (401, 413, 415), aiohttp reads and drops
#: the rest for up to this long so the client sees the answer rather than a reset.
LINGERING_S = 5.0
#: The same for a connection refused at the limit: its 503 is written, then what the
#: client sends is dropped for at most this long before the socket closes.
REFUSED_LINGER_S = 1.0


class TokenRejected(PasswordError):  # type: ignore[misc, valid-type]
    """No token, or not the configured one (HTTP 401)."""

    default_message = "api token missing or wrong"

    def __init__(self) -> None:
        super().__init__(None, {"WWW-Authenticate": CHALLENGE})


class TokenCheck:
    """The configured token and the ways a request may present it."""

    def __init__(self, token: str, allow_query: bool = False) -> None:
        self._token = token.encode("utf-8")
        self._allow_query = allow_query

    def __repr__(self) -> str:  # never the token itself
        return f"TokenCheck(allow_query={self._allow_query})"

    def _matches(self, candidate: Optional[str]) -> bool:
        if not candidate:
            return False
        return hmac.compare_digest(candidate.strip().encode("utf-8", "replace"), self._token)

    def accepts(self, request: web.BaseRequest) -> bool:
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        presented = [request.headers.get(TOKEN_HEADER)]
        if scheme.lower() == "bearer":
            presented.append(credentials)
        if self._allow_query:
            presented.append(request.query.get(TOKEN_QUERY))
        # Every candidate is compared, so the time taken does not tell which one was used.
        results = [self._matches(candidate) for candidate in presented]
        return any(results)


def token_middleware(token: str, *, allow_query: bool = False,
                     public_paths: FrozenSet[str] = PUBLIC_PATHS) -> Any:
    """Refuses requests without the token (raises TokenRejected: the HTTP API's error
    middleware, outside this one, renders and counts it)."""
    check = TokenCheck(token, allow_query)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in public_paths and not check.accepts(request):
            log.debug("%s %s from %s: api token missing or wrong", request.method,
                      request.path, request.remote)
            raise TokenRejected()
        return await handler(request)

    return require_token


def ws_token_middleware(token: str) -> Any:
    """The WebSocket servers' token check: header or ``?token=``; refused before the
    upgrade with the HTTP API's 401 envelope (these apps have no error middleware)."""
    inner = token_middleware(token, allow_query=True, public_paths=frozenset())

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await inner(request, handler)
        except TokenRejected as error:
            return error_response(error)

    return require_token


@dataclass(frozen=True)
class ConnectionLimits:
    """Per listening port (the ``server.*`` settings of the same names)."""

    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 * 1024
    max_connections: int = 256
    keepalive_timeout_s: float = 15.0

    def handler_args(self) -> Dict[str, Any]:
        """aiohttp's own per-connection limits (RequestHandler keyword arguments)."""
        return {"keepalive_timeout": self.keepalive_timeout_s,
                "max_line_size": MAX_HEADER_LINE_BYTES,
                "max_field_size": MAX_HEADER_LINE_BYTES,
                "max_headers": MAX_HEADER_COUNT,
                "lingering_time": LINGERING_S}


@dataclass(frozen=True)
class ServerGuard:
    """Everything a listening socket of the daemon applies: token, limits, TLS."""

    token: str = field(default="", repr=False)
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)
    ssl_context: Optional[ssl.SSLContext] = None

    @property
    def scheme(self) -> str:
        return "https" if self.ssl_context is not None else "http"

    def http_middlewares(self) -> list:
        """The HTTP API's guard middlewares, to go after (inside) its error middleware."""
        return [token_middleware(self.token)] if self.token else []

    def ws_middlewares(self) -> list:
        """A WebSocket server's middlewares, outermost first."""
        return [connection_middleware] + ([ws_token_middleware(self.token)] if self.token else [])


# --------------------------------------------------------------------------- connections

def _raw_response(status: int, reason: str, body: bytes = b"",
                  headers: Optional[Dict[str, str]] = None) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}",
             "Connection: close"]
    if body:
        lines.append("Content-Type: application/json; charset=utf-8")
    lines.extend(f"{name}: {value}" for name, value in (headers or {}).items())
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


def _envelope(error: Any) -> bytes:
    return json.dumps({"error": {"code": error.code, "message": error.message}},
                      sort_keys=True, separators=(",", ":")).encode("utf-8")


TOO_MANY_CONNECTIONS = _raw_response(
    503, "Service Unavailable", _envelope(InternalError("too many connections, retry later")),
    {"Retry-After": "1"})
HEAD_TIMEOUT = _raw_response(408, "Request Timeout")
HEAD_TOO_LARGE = _raw_response(431, "Request Header Fields Too Large")


class ConnectionGate:
    """The connections of one listening port: admitted while fewer than the limit."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open = 0
        self.refused = 0
        self.timed_out = 0

    def admit(self) -> bool:
        if self.open >= self.limits.max_connections:
            self.refused += 1
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def stats(self) -> Dict[str, int]:
        return {"open": self.open, "refused": self.refused, "timed_out": self.timed_out}


class GuardedProtocol(asyncio.Protocol):
    """aiohttp's protocol for one connection, behind the gate and the head deadline.

    Created by the site's factory; aiohttp's own protocol is made only for an admitted
    connection, and sees every callback exactly as it would without this wrapper."""

    def __init__(self, make_inner: Callable[[], asyncio.Protocol], gate: ConnectionGate) -> None:
        self._make_inner = make_inner
        self._gate = gate
        self._inner: Optional[asyncio.Protocol] = None
        self._transport: Optional[asyncio.Transport] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._awaiting_head = True  # between requests: the next bytes are a request head
        self._head_bytes = 0
        self._tail = b""  # the last bytes seen, for a blank line split across reads
        self._refused = False

    # -- asyncio.Protocol ---------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        if not self._gate.admit():
            self._refused = True
            log.warning("connection from %s refused: %d connections open (max_connections)",
                        _peer(transport), self._gate.open)
            self._refuse(transport)  # type: ignore[arg-type]
            return
        self._inner = self._make_inner()
        self._start_head_clock()  # a connection that never sends counts too
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is None:
            return  # refused, or already closed by us: dropped
        if self._awaiting_head and not self._watch_head(data):
            return
        self._inner.data_received(data)

    def eof_received(self) -> Optional[bool]:
        # None (false): the transport closes itself, as for aiohttp's own protocol.
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._stop_head_clock()
        if self._refused:
            return
        self._gate.release()
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """503, then half-close and drop what the client still sends for a moment, so it
        reads the answer instead of a connection reset; then close."""
        transport.write(TOO_MANY_CONNECTIONS)
        if transport.can_write_eof():
            transport.write_eof()
            self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S,
                                                                transport.close)
        else:  # TLS: no half-close
            transport.close()

    # -- told by connection_middleware --------------------------------------------------
    def request_started(self) -> None:
        """aiohttp has parsed a complete head: its deadline no longer applies."""
        self._awaiting_head = False
        self._stop_head_clock()

    def request_finished(self) -> None:
        """The answer is produced: whatever arrives next is the next request's head."""
        self._awaiting_head = True
        self._head_bytes = 0
        self._tail = b""

    # -- the head deadline and size -----------------------------------------------------
    def _watch_head(self, data: bytes) -> bool:
        """Count and scan bytes of a request head; False when the connection was closed."""
        if self._timer is None:
            self._start_head_clock()
        window = self._tail + data
        end = _head_end(window)
        if end >= 0:
            self._head_bytes += max(0, end - len(self._tail))
            self._awaiting_head = False
            self._stop_head_clock()
        else:
            self._head_bytes += len(data)
            self._tail = window[-3:]
        if self._head_bytes > self._gate.limits.max_header_bytes:
            log.warning("connection from %s closed: request head over %d bytes",
                        _peer(self._transport), self._gate.limits.max_header_bytes)
            self._close_with(HEAD_TOO_LARGE)
            return False
        return True

    def _start_head_clock(self) -> None:
        self._stop_head_clock()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._gate.limits.header_timeout_s, self._head_timed_out)

    def _stop_head_clock(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if not self._awaiting_head or self._inner is None:
            return
        self._gate.timed_out += 1
        log.info("connection from %s closed: no complete request head within %.0f s",
                 _peer(self._transport), self._gate.limits.header_timeout_s)
        self._close_with(HEAD_TIMEOUT)

    def _close_with(self, answer: bytes) -> None:
        """Answer and close; aiohttp's protocol learns of it through connection_lost."""
        self._awaiting_head = False
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.write(answer)
            transport.close()
        inner, self._inner = self._inner, None
        if inner is not None:
            inner.connection_lost(None)  # stops its handler task now, not after the flush
        self._gate.release()
        self._refused = True  # counted out already: connection_lost must not again


def _head_end(window: bytes) -> int:
    """Index just past the blank line that ends a head (CRLF, or a bare LF), or -1."""
    ends = [i + len(sep) for sep in (b"\r\n\r\n", b"\n\n") for i in (window.find(sep),) if i >= 0]
    return min(ends) if ends else -1


def _peer(transport: Optional[asyncio.BaseTransport]) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return str(peer[0]) if isinstance(peer, (tuple, list)) and peer else "?"


class GuardedFactory:
    """The protocol factory a site listens with: one gate per listening port."""

    def __init__(self, server: Callable[[], asyncio.Protocol], limits: ConnectionLimits) -> None:
        self.server = server
        self.gate = ConnectionGate(limits)

    def __call__(self) -> GuardedProtocol:
        return GuardedProtocol(self.server, self.gate)


class GuardedRunner(web.AppRunner):
    """An ``AppRunner`` whose sites accept connections through a ``GuardedFactory``.

    Sites take their protocol factory from ``runner.server``; this runner hands them the
    guarded factory around aiohttp's ``Server``, which still tracks every connection for
    the graceful shutdown. One runner per listening port (as the daemon uses them)."""

    def __init__(self, app: web.Application, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(app, **dict(limits.handler_args(), **kwargs))
        self._limits = limits
        self._factory: Optional[GuardedFactory] = None

    @property
    def server(self) -> Any:  # web.Server, wrapped
        inner = super().server
        if inner is None:
            return None
        if self._factory is None or self._factory.server is not inner:
            self._factory = GuardedFactory(inner, self._limits)
        return self._factory

    @property
    def gate(self) -> Optional[ConnectionGate]:
        return self._factory.gate if self._factory is not None else None


def _guarded(request: web.BaseRequest) -> Optional[GuardedProtocol]:
    transport = request.transport
    protocol = transport.get_protocol() if transport is not None else None
    return protocol if isinstance(protocol, GuardedProtocol) else None


@web.middleware
async def connection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: tells the connection's guard where requests begin and end, and closes a
    connection whose client is still sending a body nobody will read (body timeout)."""
    guard = _guarded(request)
    if guard is not None:
        guard.request_started()
    reset = CLOSE_AFTER_RESPONSE.set(False)
    try:
        response = await handler(request)
        if CLOSE_AFTER_RESPONSE.get():
            response.force_close()
            await response.prepare(request)
            await response.write_eof()
            protocol = request.protocol
            if protocol is not None:
                protocol.force_close()  # no lingering read of the rest of the body
        return response
    finally:
        CLOSE_AFTER_RESPONSE.reset(reset)
        if guard is not None:
            guard.request_finished()
