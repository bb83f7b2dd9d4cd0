"""The daemon in the benchmark's own process, on a real socket, its event loop in a thread:
benchmarks call it over HTTP like a client and may reach into ``app`` to swap a part."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from typing import Any, Dict, Optional

from aiohttp import web

from sophon_face.app import build_app
from sophon_face.config import Config


class InProcessDaemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app: Optional[web.Application] = None
        self.runner: Optional[web.AppRunner] = None
        self.port = 0

    def start(self, models: Any) -> "InProcessDaemon":
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(models), self.loop).result(300)
        return self

    async def _start(self, models: Any) -> None:
        self.app = build_app(self.config, models=models)
        self.runner = web.AppRunner(self.app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def stop(self) -> None:
        if self.runner is not None:
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def request(self, method: str, path: str, payload: Any = None) -> Any:
        """The JSON answer; RuntimeError with the body on any status but 200."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
        try:
            body = json.dumps(payload) if payload is not None else None
            conn.request(method, path, body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            data = json.loads(response.read())
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {data}")
            return data
        finally:
            conn.close()

    def post(self, endpoint: str, payload: Dict[str, Any]) -> Any:
        return self.request("POST", f"/sophon/v2/face/{endpoint}", payload)
