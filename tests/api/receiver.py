"""A platform's history-push receiver on loopback: a real HTTP server in a thread."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional


class Receiver:
    """Collects every JSON body POSTed to it; ``status`` sets what it answers, after
    ``delay_s`` (a slow platform). ``port``: a fixed port (a platform that comes back where
    it was down), else a free one."""

    def __init__(self, port: int = 0) -> None:
        self.received: List[Dict[str, Any]] = []
        self.status = 200
        self.delay_s = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    status = receiver.status
                    if 200 <= status < 300:
                        receiver.received.append(json.loads(body.decode("utf-8")))
                time.sleep(receiver.delay_s)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/event_recieve"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "Receiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def wait_for(self, condition: Callable[[List[Dict[str, Any]]], bool],
                 timeout_s: float = 30.0) -> List[Dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                snapshot = list(self.received)
            if condition(snapshot):
                return snapshot
            time.sleep(0.05)
        raise AssertionError(f"receiver got {len(self.received)} event(s), condition not met")

    def event_ids(self) -> List[Optional[str]]:
        with self._lock:
            return [item.get("event_id") for item in self.received]
