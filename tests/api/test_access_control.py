"""Access control (issue 12 part 5): the optional API token on the HTTP API and the three
WebSocket servers, the clients that send it (``sophon-face health``, the import/export
HTTP target), and TLS on every port with a self-signed certificate made by the test.

The daemons are real (models, store) and started the way ``sophon-face serve`` starts
them: ``app.http_runner`` / ``app.http_site`` behind the connection guard.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import importlib.util
import json
import logging
import shutil
import socket
import ssl
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import aiohttp
import pytest
from aiohttp import WSCloseCode, WSMsgType

from sophon_face import cli
from sophon_face.app import (PREVIEW_CONTROL_PORT, PREVIEW_PORT, WS_PORT, build_app,
                             http_runner, http_site, server_guard)
from sophon_face.config import Config, ConfigError, config_from_mapping, with_overrides
from sophon_face.errors import PasswordError
from sophon_face.tools.targets import TOKEN_ENV, HttpTarget
from sophon_face.workers.models import PreparedModels

from .conftest import make_config
from .live import LiveServer, Reply

TOKEN = "t0ken-" + uuid.uuid4().hex  # 38 visible ASCII characters
REJECTED = ("PASSWORD_ERROR", "api token missing or wrong")
JSON_HEADERS = {"Content-Type": "application/json"}


class GuardedDaemon(LiveServer):
    """A LiveServer served as ``sophon-face serve`` serves it; optionally over TLS."""

    def __init__(self, config: Config, models: Any, tls_ca: Optional[Path] = None) -> None:
        super().__init__(config, models)
        self.tls = None if tls_ca is None else ssl.create_default_context(cafile=str(tls_ca))

    async def _start(self) -> None:
        app = build_app(self._config, models=self._models)
        self._runner = http_runner(app)
        await self._runner.setup()
        site = http_site(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.ws_port = app[WS_PORT]
        self.preview_port = app[PREVIEW_PORT]
        self.preview_control_port = app[PREVIEW_CONTROL_PORT]

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        if self.tls is None:
            return super().connection(timeout)
        return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout,
                                           context=self.tls)

    def ws_urls(self, scheme: str = "ws") -> Dict[str, str]:
        return {"realtime": f"{scheme}://127.0.0.1:{self.ws_port}/",
                "frames": f"{scheme}://127.0.0.1:{self.preview_port}/preview",
                "control": f"{scheme}://127.0.0.1:{self.preview_control_port}/"}


def _with_server(config: Config, **server: Any) -> Config:
    return dataclasses.replace(config, server=dataclasses.replace(config.server, **server))


@pytest.fixture(scope="module")
def daemon(models: PreparedModels, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[GuardedDaemon]:
    config = _with_server(make_config(tmp_path_factory.mktemp("token-daemon")),
                          api_token=TOKEN, ws_heartbeat_s=0.6, ws_max_message_bytes=2048)
    live = GuardedDaemon(config, models).start()
    yield live
    live.stop()


def bearer(token: str = TOKEN) -> Dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(daemon: GuardedDaemon, endpoint: str, headers: Dict[str, str],
         payload: Any = None) -> Reply:
    body = json.dumps({} if payload is None else payload).encode()
    return daemon.request("POST", f"/sophon/v2/face/{endpoint}", body,
                          dict(JSON_HEADERS, **headers))


# --- HTTP ----------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path", [
    ("POST", "/sophon/v2/face/getpermissions"),
    ("POST", "/sophon/v2/face/createidentity"),
    ("GET", "/sophon/v2/face/getregisterimage/x"),
    ("GET", "/metrics"),
    ("POST", "/sophon/v2/face/nosuchendpoint"),  # the route map is not shown either
])
def test_without_the_token_requests_are_401_with_the_envelope(daemon, method, path):
    reply = daemon.request(method, path, b"{}" if method == "POST" else None, JSON_HEADERS)
    assert reply.status == 401
    assert reply.error == REJECTED
    assert reply.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [
    {"Authorization": "Bearer wrong-token-0123456789"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": f"Bearer {TOKEN[:-1]}"},
    {"Authorization": f"Basic {TOKEN}"},  # the right secret in the wrong scheme
    {"Authorization": TOKEN},
    {"X-Api-Token": "wrong-token-0123456789"},
    {"X-Api-Token": ""},
])
def test_wrong_tokens_are_401(daemon, headers):
    reply = post(daemon, "getpermissions", headers)
    assert (reply.status, reply.error) == (401, REJECTED)


def test_a_query_token_is_not_accepted_by_the_http_api(daemon):
    # Query strings end up in proxies' and browsers' logs: headers only here.
    reply = daemon.request("POST", f"/sophon/v2/face/getpermissions?token={TOKEN}", b"{}",
                           JSON_HEADERS)
    assert (reply.status, reply.error) == (401, REJECTED)


@pytest.mark.parametrize("headers", [
    bearer(), {"Authorization": f"bearer {TOKEN}"}, {"Authorization": f"Bearer  {TOKEN} "},
    {"X-Api-Token": TOKEN},
    {"X-Api-Token": TOKEN, "Authorization": "Bearer something-else-entirely"},
])
def test_the_token_is_accepted_as_bearer_or_x_api_token(daemon, headers):
    reply = post(daemon, "getpermissions", headers)
    assert reply.status == 200, reply
    assert "permissions" in reply.json


def test_errors_behind_the_token_are_the_usual_ones(daemon):
    assert post(daemon, "getidentity", bearer(), {}).error[0] == "MISSING_ARGUMENTS"
    reply = daemon.request("POST", "/sophon/v2/face/nosuchendpoint", b"{}",
                           dict(JSON_HEADERS, **bearer()))
    assert (reply.status, reply.error[0]) == (404, "NOT_FOUND")


@pytest.mark.parametrize("path", ["/health", "/openapi.json", "/docs"])
def test_health_and_the_api_description_need_no_token(daemon, path):
    assert daemon.request("GET", path).status == 200


def test_metrics_count_refusals_and_never_show_the_token(daemon):
    post(daemon, "getpermissions", {"Authorization": f"Bearer {TOKEN}-but-wrong"})
    reply = daemon.request("GET", "/metrics", headers=bearer())
    assert reply.status == 200
    text = reply.body.decode()
    assert TOKEN not in text
    assert 'code="PASSWORD_ERROR"' in text


def test_the_token_is_never_logged(daemon, caplog):
    caplog.set_level(logging.DEBUG)
    post(daemon, "getpermissions", {"Authorization": f"Bearer {TOKEN}-wrong"})
    post(daemon, "getpermissions", {"X-Api-Token": TOKEN + "0"})
    post(daemon, "getidentity", bearer(), {"identity_id": "nobody"})
    daemon.request("GET", "/metrics", headers=bearer())
    assert any("api token missing or wrong" in r.getMessage() for r in caplog.records)
    assert TOKEN not in caplog.text


def test_the_openapi_document_describes_the_optional_token(daemon):
    doc = daemon.request("GET", "/openapi.json").json
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerToken"] == dict(schemes["bearerToken"], type="http", scheme="bearer")
    assert schemes["apiTokenHeader"]["name"] == "X-Api-Token"
    assert {} in doc["security"]  # optional: off by default


# --- WebSocket servers --------------------------------------------------------------------

async def _ws_status(url: str, headers: Optional[Dict[str, str]] = None,
                     ssl_context: Optional[ssl.SSLContext] = None) -> int:
    """101 when the upgrade succeeded (the socket then works), else the HTTP status."""
    async with aiohttp.ClientSession() as session:
        try:
            async with session.ws_connect(url, headers=headers, ssl=ssl_context or True) as ws:
                await ws.send_str("{}")  # a valid (empty) configuration / ignored
                return 101
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status


@pytest.mark.parametrize("server", ["realtime", "frames", "control"])
def test_ws_servers_require_the_token(daemon, server):
    url = daemon.ws_urls()[server]
    sep = "&" if "?" in url else "?"
    assert asyncio.run(_ws_status(url)) == 401
    assert asyncio.run(_ws_status(url, {"Authorization": "Bearer nope-nope-nope-nope"})) == 401
    assert asyncio.run(_ws_status(f"{url}{sep}token=nope-nope-nope-nope")) == 401
    assert asyncio.run(_ws_status(url, bearer())) == 101
    assert asyncio.run(_ws_status(url, {"X-Api-Token": TOKEN})) == 101
    assert asyncio.run(_ws_status(f"{url}{sep}token={TOKEN}")) == 101  # browsers


def test_ws_limits_come_from_the_configuration(daemon):
    """server.ws_max_message_bytes (2048 here) and server.ws_heartbeat_s (0.6 s here)."""
    async def run() -> None:
        async with aiohttp.ClientSession(headers=bearer()) as session:
            async with session.ws_connect(daemon.ws_urls()["realtime"]) as ws:
                await ws.send_str(json.dumps({"media_device_ids": ["x" * 3000]}))
                message = await asyncio.wait_for(ws.receive(), 5)
                assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
                assert ws.close_code == WSCloseCode.MESSAGE_TOO_BIG
            async with session.ws_connect(daemon.ws_urls()["frames"], autoping=False) as ws:
                started = time.monotonic()
                while True:
                    message = await asyncio.wait_for(ws.receive(), 5)
                    if message.type not in (WSMsgType.PING, WSMsgType.TEXT, WSMsgType.BINARY):
                        break
                assert time.monotonic() - started < 0.6 * 1.5 + 1.0
    asyncio.run(run())


# --- clients that send the token ----------------------------------------------------------

def test_the_health_command_sends_the_token(daemon, capsys, monkeypatch):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    base = f"http://127.0.0.1:{daemon.port}"
    assert cli.main(["health", "--url", base + "/health"]) == 0  # exempt: no token needed
    assert cli.main(["health", "--url", base + "/health", "--token", TOKEN]) == 0
    # A protected GET-less path shows whether the token went along: 401 without, 405 with.
    protected = base + "/sophon/v2/face/getpermissions"
    capsys.readouterr()
    assert cli.main(["health", "--url", protected]) == 1
    assert "HTTP 401" in capsys.readouterr().out
    assert cli.main(["health", "--url", protected, "--token", TOKEN]) == 1
    assert "HTTP 405" in capsys.readouterr().out
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert cli.main(["health", "--url", protected]) == 1
    assert "HTTP 405" in capsys.readouterr().out


def test_the_import_export_http_target_sends_the_token(daemon, monkeypatch):
    url = f"http://127.0.0.1:{daemon.port}"

    async def groups(token: Optional[str]) -> Dict[str, Any]:
        async with HttpTarget(url, token=token) as target:
            return await target.list_groups(0, 10)

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert "permissions" in asyncio.run(groups(TOKEN))
    with pytest.raises(PasswordError):
        asyncio.run(groups(None))
    monkeypatch.setenv(TOKEN_ENV, TOKEN)  # what `import/export --token` sets too
    assert "permissions" in asyncio.run(groups(None))
    assert TOKEN not in HttpTarget(url).name


# --- configuration --------------------------------------------------------------------------

def test_the_token_setting_is_checked_and_never_echoed(monkeypatch):
    assert config_from_mapping({}).server.api_token == ""  # upstream: no authentication
    for bad in ("short", "has spaces in it 0123", "tab\there-0123456789", 12345678901234567):
        with pytest.raises(ConfigError) as info:
            config_from_mapping({"server": {"api_token": bad}})
        assert str(bad) not in str(info.value) and "server.api_token" in str(info.value)
    config = with_overrides(config_from_mapping({"server": {"api_token": "f" * 16}}),
                            api_token=TOKEN)  # SOPHON_FACE_API_TOKEN wins over the file
    assert config.server.api_token == TOKEN
    assert TOKEN not in repr(config)
    with pytest.raises(ConfigError) as info:
        with_overrides(config, api_token="tiny")
    assert "tiny" not in str(info.value) and TOKEN_ENV in str(info.value)


def test_serve_takes_the_token_from_the_environment(monkeypatch, tmp_path):
    seen = {}

    async def fake_serve(config: Config, notifier: Any) -> int:
        seen["token"] = config.server.api_token
        return 0

    monkeypatch.setattr(cli, "_serve_until_stopped", fake_serve)
    # Not the process-wide side effects of a real start inside the test session.
    monkeypatch.setattr(cli.logging, "basicConfig", lambda **_kwargs: None)
    monkeypatch.setattr(cli.faulthandler, "enable", lambda: None)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert cli.main(["serve", "--data-dir", str(tmp_path)]) == 0
    assert seen["token"] == TOKEN
    monkeypatch.setenv(TOKEN_ENV, "short")
    assert cli.main(["serve", "--data-dir", str(tmp_path)]) == 2


# --- TLS ----------------------------------------------------------------------------------

def self_signed(folder: Path) -> Tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key: with ``cryptography`` when installed,
    else ``openssl req``; the test skips (saying why) without either."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    if importlib.util.find_spec("cryptography") is None:  # not a dependency; used if present
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command is available")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                        "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        return cert, key
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                   .public_key(private.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.SubjectAlternativeName(
                       [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
                   .sign(private, hashes.SHA256()))
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


@pytest.fixture(scope="module")
def tls_daemon(models: PreparedModels, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[GuardedDaemon]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(folder)
    config = _with_server(make_config(folder / "daemon"), tls_cert=str(cert), tls_key=str(key),
                          header_timeout_s=1.0)
    live = GuardedDaemon(config, models, tls_ca=cert).start()
    live.cert = cert  # type: ignore[attr-defined]
    yield live
    live.stop()


def test_https_requests_succeed_with_tls(tls_daemon):
    reply = tls_daemon.request("POST", "/sophon/v2/face/getpermissions", b"{}", JSON_HEADERS)
    assert reply.status == 200, reply
    assert tls_daemon.request("GET", "/health").json["status"] == "ok"


def test_plain_http_is_not_served_beside_tls(tls_daemon):
    conn = http.client.HTTPConnection("127.0.0.1", tls_daemon.port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
            conn.request("GET", "/health")
            conn.getresponse()
    finally:
        conn.close()


def test_the_websocket_servers_speak_tls_too(tls_daemon):
    for url in tls_daemon.ws_urls("wss").values():
        assert asyncio.run(_ws_status(url, ssl_context=tls_daemon.tls)) == 101


def test_health_over_https_with_cafile(tls_daemon, capsys):
    url = f"https://127.0.0.1:{tls_daemon.port}/health"
    assert cli.main(["health", "--url", url, "--cafile", str(tls_daemon.cert)]) == 0
    assert cli.main(["health", "--url", url]) == 1  # self-signed: not trusted by default
    assert "unreachable" in capsys.readouterr().out


def test_the_header_deadline_holds_behind_tls(tls_daemon):
    """The guard sits inside TLS: a client that completes the handshake and then sends
    nothing is answered 408 and closed after server.header_timeout_s (1 s here)."""
    raw = socket.create_connection(("127.0.0.1", tls_daemon.port), timeout=10)
    sock = tls_daemon.tls.wrap_socket(raw, server_hostname="127.0.0.1")
    started = time.monotonic()
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    assert data.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 1.0 + 1.5
    sock.close()


def test_tls_files_are_checked_at_start(tmp_path):
    with pytest.raises(ConfigError, match="server.tls_key: set both"):
        config_from_mapping({"server": {"tls_cert": "cert.pem"}})
    config = config_from_mapping({"server": {"tls_cert": str(tmp_path / "missing.pem"),
                                             "tls_key": str(tmp_path / "key.pem")}})
    with pytest.raises(ConfigError, match="server.tls_cert: .*missing.pem: no such file"):
        server_guard(config)
    (tmp_path / "missing.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="cannot load"):
        server_guard(config)
