"""Slow and hostile clients (issue 12 part 4): raw sockets that trickle a request head or
body, stay silent, flood headers or open too many connections, bodies nested too deep or
with too long lists, and WebSocket clients that send too much or never answer a ping.

The server is the daemon's own stack (api/guard.py's runner and middleware, api/http.py's
body reading, the WebSocket servers) on loopback, with short limits so the tests are
quick; the body limits are also checked on the real daemon with its default settings.
Timings are sanity bounds: "closed within the timeout plus a second".
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from typing import Any, Dict, Iterator, Optional, Tuple

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType, web

from sophon_face.api.guard import ConnectionLimits, GuardedRunner, connection_middleware
from sophon_face.api.http import BODY_LIMITS, BodyLimits, error_middleware, json_response, \
    read_json_object
from sophon_face.api.preview_ws import start_preview_servers
from sophon_face.api.realtime_ws import start_realtime_server
from sophon_face.app import GUARD, build_app, http_runner
from sophon_face.config import config_from_mapping
from sophon_face.push.preview import PreviewHub
from sophon_face.push.realtime import RealtimeHub

SLACK_S = 1.0  # scheduling slack on a loaded test machine


async def echo(request: web.Request) -> web.Response:
    return json_response({"got": await read_json_object(request, empty_body_is_error=False)})


class GuardedServer:
    """The HTTP stack of the daemon around an echo endpoint, in a thread of its own."""

    def __init__(self, limits: ConnectionLimits, body: BodyLimits = BodyLimits()) -> None:
        self.limits, self.body = limits, body
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.runner: Optional[GuardedRunner] = None
        self.port = 0

    async def _start(self) -> None:
        app = web.Application(middlewares=[connection_middleware, error_middleware])
        app[BODY_LIMITS] = self.body
        app.router.add_post("/echo", echo)
        self.runner = GuardedRunner(app, self.limits, access_log=None, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def __enter__(self) -> "GuardedServer":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def stats(self) -> Dict[str, int]:
        assert self.runner is not None and self.runner.gate is not None
        return self.runner.gate.stats()


def read_until_closed(sock: socket.socket, deadline_s: float) -> Tuple[bytes, float]:
    """Everything the server sends until it closes; (bytes, seconds until the close).
    Fails if the connection is still open after ``deadline_s``."""
    started = time.monotonic()
    data = b""
    sock.settimeout(0.05)
    while time.monotonic() - started < deadline_s:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    else:
        pytest.fail(f"still open after {deadline_s} s; received {data[:200]!r}")
    return data, time.monotonic() - started


def trickle(sock: socket.socket, data: bytes, every_s: float, stop_s: float) -> bool:
    """Send ``data`` a byte at a time; False once the server has closed the connection."""
    started = time.monotonic()
    for byte in data:
        if time.monotonic() - started > stop_s:
            return True
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            return False
        time.sleep(every_s)
    return True


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def body_of(response: bytes) -> Dict[str, Any]:
    return json.loads(response.split(b"\r\n\r\n", 1)[1].decode("utf-8"))


def request_bytes(body: bytes = b"{}", path: str = "/echo", extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{extra}\r\n").encode("ascii") + body


def http_exchange(sock: socket.socket, data: bytes) -> bytes:
    """Send one request, read one complete response (Content-Length framed)."""
    sock.sendall(data)
    sock.settimeout(10)
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, rest = received.partition(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


@pytest.fixture()
def fast_limits() -> Iterator[GuardedServer]:
    with GuardedServer(ConnectionLimits(header_timeout_s=0.8, max_header_bytes=4096,
                                        max_connections=50, keepalive_timeout_s=5.0),
                       BodyLimits(timeout_s=0.8, max_json_depth=4, max_list_length=3)) as server:
        yield server


# --- request heads -----------------------------------------------------------------------

def test_a_trickled_request_head_is_closed_with_408_within_the_timeout(fast_limits):
    sock = fast_limits.connect()
    sender = threading.Thread(target=trickle, args=(sock, request_bytes(), 0.05, 5.0))
    sender.start()
    response, seconds = read_until_closed(sock, 0.8 + SLACK_S)
    sender.join()
    assert status_of(response) == 408
    assert 0.6 <= seconds <= 0.8 + SLACK_S
    assert fast_limits.stats()["timed_out"] >= 1
    sock.close()


def test_a_silent_connection_is_closed_within_the_header_timeout(fast_limits):
    # aiohttp 3.10 has no timer on a connection that never sends anything.
    sock = fast_limits.connect()
    response, seconds = read_until_closed(sock, 0.8 + SLACK_S)
    assert status_of(response) == 408 and seconds >= 0.6
    sock.close()


def test_the_next_head_on_a_kept_alive_connection_has_the_same_deadline(fast_limits):
    sock = fast_limits.connect()
    first = http_exchange(sock, request_bytes(b'{"a":1}'))
    assert status_of(first) == 200 and body_of(first) == {"got": {"a": 1}}
    time.sleep(1.0)  # idle longer than the header timeout: keep-alive, not a head
    second = http_exchange(sock, request_bytes(b'{"a":2}'))
    assert status_of(second) == 200
    sender = threading.Thread(target=trickle, args=(sock, request_bytes(), 0.05, 5.0))
    sender.start()
    response, seconds = read_until_closed(sock, 0.8 + SLACK_S)
    sender.join()
    assert status_of(response) == 408 and seconds <= 0.8 + SLACK_S
    sock.close()


def test_a_head_sent_in_pieces_within_the_timeout_is_served(fast_limits):
    sock = fast_limits.connect()
    data = request_bytes(b'{"x":[1,2]}')
    sock.sendall(data[:10])
    time.sleep(0.3)
    sock.sendall(data[10:30])
    time.sleep(0.3)
    response = http_exchange(sock, data[30:])
    assert status_of(response) == 200 and body_of(response) == {"got": {"x": [1, 2]}}
    sock.close()


def test_a_head_over_max_header_bytes_is_431(fast_limits):
    sock = fast_limits.connect()
    filler = "".join(f"X-Filler-{i}: {'y' * 100}\r\n" for i in range(60))  # ~7 KiB > 4 KiB
    try:
        sock.sendall(request_bytes(extra=filler))
    except (BrokenPipeError, ConnectionResetError):
        pass
    response, _seconds = read_until_closed(sock, SLACK_S)
    assert status_of(response) == 431
    sock.close()


def test_an_idle_kept_alive_connection_is_closed_after_keepalive_timeout():
    with GuardedServer(ConnectionLimits(header_timeout_s=5.0, keepalive_timeout_s=0.5)) as server:
        sock = server.connect()
        assert status_of(http_exchange(sock, request_bytes())) == 200
        response, seconds = read_until_closed(sock, 0.5 + SLACK_S)
        assert response == b"" and seconds <= 0.5 + SLACK_S
        sock.close()


# --- request bodies ----------------------------------------------------------------------

def test_a_trickled_body_is_answered_408_and_the_connection_closed(fast_limits):
    sock = fast_limits.connect()
    body = b'{"padding": "' + b"z" * 200 + b'"}'
    head, payload = request_bytes(body).split(b"\r\n\r\n", 1)
    sock.sendall(head + b"\r\n\r\n")
    sender = threading.Thread(target=trickle, args=(sock, payload, 0.05, 10.0))
    sender.start()
    response, seconds = read_until_closed(sock, 0.8 + SLACK_S)
    sender.join()
    # Closed right after the answer: not after aiohttp's lingering read of the rest.
    assert status_of(response) == 408, response
    assert body_of(response) == {"error": {"code": "INVALID_REQUEST_JSON",
                                           "message": "request body not received in time"}}
    assert b"Connection: close" in response or b"connection: close" in response.lower()
    assert 0.6 <= seconds <= 0.8 + SLACK_S
    sock.close()


def test_a_slow_but_timely_body_is_served(fast_limits):
    sock = fast_limits.connect()
    body = b'{"a": "slow"}'
    head, payload = request_bytes(body).split(b"\r\n\r\n", 1)
    sock.sendall(head + b"\r\n\r\n")
    assert trickle(sock, payload, 0.02, 5.0)
    response = http_exchange(sock, b"")
    assert status_of(response) == 200 and body_of(response) == {"got": {"a": "slow"}}
    sock.close()


# --- connection limit --------------------------------------------------------------------

def test_connections_beyond_the_limit_get_503_and_are_closed():
    with GuardedServer(ConnectionLimits(header_timeout_s=10.0, max_connections=2)) as server:
        held = [server.connect(), server.connect()]
        for sock in held:  # admitted: each is served
            assert status_of(http_exchange(sock, request_bytes())) == 200
        refused = server.connect()
        refused.sendall(request_bytes())
        response, _seconds = read_until_closed(refused, SLACK_S)
        assert status_of(response) == 503
        assert b"Retry-After: 1" in response
        assert body_of(response) == {"error": {"code": "INTERNAL_ERROR",
                                               "message": "too many connections, retry later"}}
        refused.close()
        assert server.stats()["refused"] == 1
        held.pop().close()  # a slot frees up when a client leaves
        deadline = time.monotonic() + 5
        while server.stats()["open"] > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        again = server.connect()
        assert status_of(http_exchange(again, request_bytes())) == 200
        again.close()
        held[0].close()


# --- JSON shape ----------------------------------------------------------------------------

def _post(server: GuardedServer, payload: bytes) -> Tuple[int, Dict[str, Any]]:
    sock = server.connect()
    try:
        response = http_exchange(sock, request_bytes(payload))
    finally:
        sock.close()
    return status_of(response), body_of(response)


def _nested(depth: int) -> str:
    """An object ``depth`` levels deep (the top-level object is level 1)."""
    return '{"a":' * (depth - 1) + "{}" + "}" * (depth - 1)


def test_json_nesting_beyond_max_json_depth_is_invalid_request_json(fast_limits):
    assert _post(fast_limits, _nested(4).encode())[0] == 200
    status, body = _post(fast_limits, _nested(5).encode())
    assert (status, body["error"]["code"]) == (400, "INVALID_REQUEST_JSON")
    assert _post(fast_limits, b'{"a": [[[1]]]}')[0] == 200  # depth 4: fine
    assert _post(fast_limits, b'{"a": [[[[1]]]]}')[1]["error"]["code"] == "INVALID_REQUEST_JSON"
    # Deeper than Python's own recursion limit: the same answer, never a 500.
    assert _post(fast_limits, b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}")[1] == {
        "error": {"code": "INVALID_REQUEST_JSON", "message": "request body is not a JSON object"}}


def test_lists_beyond_max_list_length_are_invalid_arguments_naming_them(fast_limits):
    assert _post(fast_limits, b'{"ids": [1, 2, 3]}')[0] == 200
    assert _post(fast_limits, b'{"ids": [1, 2, 3, 4]}') == (
        400, {"error": {"code": "INVALID_ARGUMENTS", "message": "ids: [1,2,3,4]"}})
    assert _post(fast_limits, b'{"f": {"x": [[], ["a", "b", "c", "d"]]}}') == (
        400, {"error": {"code": "INVALID_ARGUMENTS", "message": 'f.x[1]: ["a","b","c","d"]'}})


def test_body_limits_on_the_real_daemon_with_its_defaults(server):
    # server.max_list_length (10000) and server.max_json_depth (128) at their defaults.
    reply = server.post("deleteidentities", {"identity_ids": ["x"] * 10001})
    assert (reply.status, reply.error) == (
        400, ("INVALID_ARGUMENTS", "identity_ids: <array of 10001 items>"))
    deep: Any = {}
    for _ in range(126):
        deep = {"k": deep}  # 127 levels; in a body's key, 128
    reply = server.post("getpermissions", {"unknown": deep})
    assert reply.status == 200
    reply = server.post("getpermissions", {"unknown": {"k": deep}})
    assert (reply.status, reply.error) == (
        400, ("INVALID_REQUEST_JSON", "request body is not a JSON object"))


def test_the_daemon_runner_takes_its_limits_from_the_configuration(tmp_path):
    config = config_from_mapping({"server": {
        "header_timeout_s": 3.0, "keepalive_timeout_s": 4.0, "max_header_bytes": 9000,
        "max_connections": 7, "body_timeout_s": 5.0, "max_json_depth": 6,
        "max_list_length": 8}, "storage": {"data_dir": str(tmp_path)}})
    app = build_app(config)
    assert app[GUARD].limits == ConnectionLimits(header_timeout_s=3.0, max_header_bytes=9000,
                                                 max_connections=7, keepalive_timeout_s=4.0)
    assert app[BODY_LIMITS] == BodyLimits(max_bytes=config.server.max_body_bytes, timeout_s=5.0,
                                          max_json_depth=6, max_list_length=8)
    runner = http_runner(app)
    assert isinstance(runner, GuardedRunner)
    assert runner.server is None  # not set up: no lifecycle has run


# --- WebSocket servers ------------------------------------------------------------------

async def _ws_servers(heartbeat_s: float, max_message_bytes: int):
    realtime_hub = RealtimeHub(queue_size=10)
    realtime_runner, realtime_port = await start_realtime_server(
        realtime_hub, "127.0.0.1", 0, heartbeat_s, max_message_bytes=max_message_bytes)
    preview_hub = PreviewHub(queue_size=4, jpeg_quality=80)
    preview_runners, frame_port, control_port = await start_preview_servers(
        preview_hub, "127.0.0.1", 0, 0, heartbeat_s, max_message_bytes=max_message_bytes)

    async def stop() -> None:
        await realtime_hub.close()
        await preview_hub.close()
        for runner in [realtime_runner] + preview_runners:
            await runner.cleanup()

    urls = [f"ws://127.0.0.1:{realtime_port}/", f"ws://127.0.0.1:{frame_port}/preview",
            f"ws://127.0.0.1:{control_port}/"]
    return urls, stop


@pytest.mark.asyncio
async def test_ws_messages_beyond_ws_max_message_bytes_close_the_socket_1009():
    urls, stop = await _ws_servers(heartbeat_s=30.0, max_message_bytes=2048)
    try:
        async with aiohttp.ClientSession() as session:
            for url in urls:
                async with session.ws_connect(url) as ws:
                    await ws.send_str(json.dumps({"media_device_ids": ["d"] * 100}))  # < 2 KiB
                    await ws.send_str("x" * 2049)
                    while True:
                        message = await asyncio.wait_for(ws.receive(), 5)
                        if message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.CLOSING):
                            break
                    assert ws.close_code == WSCloseCode.MESSAGE_TOO_BIG, url
    finally:
        await stop()


@pytest.mark.asyncio
async def test_ws_clients_that_do_not_answer_pings_are_dropped():
    urls, stop = await _ws_servers(heartbeat_s=0.6, max_message_bytes=2048)
    try:
        async with aiohttp.ClientSession() as session:
            for url in urls:
                # autoping=False: this client reads the server's pings but never pongs.
                async with session.ws_connect(url, autoping=False) as ws:
                    started = time.monotonic()
                    pinged = False
                    while True:
                        message = await asyncio.wait_for(ws.receive(), 5)
                        if message.type == WSMsgType.PING:
                            pinged = True
                        elif message.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                            break  # closed by the server (the control channel sends first)
                    seconds = time.monotonic() - started
                    assert pinged and message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED,
                                                       WSMsgType.CLOSING, WSMsgType.ERROR), url
                    assert seconds <= 0.6 * 1.5 + SLACK_S, (url, seconds)
    finally:
        await stop()
