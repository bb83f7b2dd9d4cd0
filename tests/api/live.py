"""A real daemon for API tests: the aiohttp app on a real socket, driven over HTTP.

The server runs in a background thread with its own event loop; tests talk to it with
``http.client`` exactly as a door pad or platform would.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import threading
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from aiohttp import web

from sophon_face.app import PREVIEW_CONTROL_PORT, PREVIEW_PORT, WS_PORT, build_app
from sophon_face.config import Config


class Reply:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def json(self) -> Any:
        return json.loads(self.body.decode("utf-8"))

    @property
    def error(self) -> Tuple[str, str]:
        """(code, message) of an error envelope, checking it has nothing else."""
        payload = self.json
        assert set(payload) == {"error"}, payload
        assert set(payload["error"]) == {"code", "message"}, payload
        return payload["error"]["code"], payload["error"]["message"]

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:300]!r})"


class LiveServer:
    def __init__(self, config: Config, models: Any = None) -> None:
        self._config = config
        self._models = models
        self._loop = asyncio.new_event_loop()
        self._runner: Optional[web.AppRunner] = None
        self.port = 0
        self.ws_port = 0  # the real-time event WebSocket (api/event.md 7)
        self.preview_port = 0  # device.md 10.1 and 10.2
        self.preview_control_port = 0
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> "LiveServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=300)
        return self

    async def _start(self) -> None:
        app = build_app(self._config, models=self._models)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self.ws_port = app[WS_PORT]
        self.preview_port = app[PREVIEW_PORT]
        self.preview_control_port = app[PREVIEW_CONTROL_PORT]

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None, timeout: float = 120) -> Reply:
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                         response.read())
        finally:
            conn.close()

    def connection(self, timeout: float) -> http.client.HTTPConnection:
        """A new connection to the server (a TLS server's tests return an HTTPS one)."""
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def post(self, endpoint: str, payload: Any = None, **kwargs: Any) -> Reply:
        """POST JSON to ``/sophon/v2/face/<endpoint>``."""
        body = json.dumps(payload).encode("utf-8") if payload is not None else b""
        return self.request("POST", f"/sophon/v2/face/{endpoint}", body,
                            {"Content-Type": "application/json"}, **kwargs)


def b64_of(path: Path, prefix: bool = False) -> str:
    text = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return ("data:image/jpeg;base64," + text) if prefix else text
