"""Shared by the video-device tests: scenes, the daemon's video config, a relay board on
loopback, and small polling helpers."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

from sophon_face.config import Config, config_from_mapping

from ..video_media import REGISTERED
from .conftest import TEST_DATA_DIR
from .live import LiveServer, b64_of


def video_config(data_dir: Path, video_dir: Path, **video: Any) -> Config:
    return config_from_mapping({
        "server": {"ws_port": 0},
        "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR), str(video_dir)]},
        "workers": {"count": 1, "intra_op_threads": 2},
        "video": dict({"analysis_fps": 8.0, "reconnect_min_s": 0.5}, **video),
    })


def ok(reply) -> Dict[str, Any]:
    assert reply.status == 200, reply
    return reply.json


def register(server: LiveServer, group: str = "") -> None:
    for identity_id, photo in REGISTERED.items():
        body = {"register_image": b64_of(TEST_DATA_DIR / photo), "identity_id": identity_id,
                "identity_name": identity_id.title(), "fiqa_level": "no"}
        if group:
            body["permission_ids"] = [group]
        ok(server.post("createidentity", body))


def health(server: LiveServer) -> Dict[str, Any]:
    return server.request("GET", "/health").json


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             poll_s: float = 0.2) -> Any:
    """``predicate``'s first true value; a short ``poll_s`` catches a passing moment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out waiting for {what}")


class RelayBoard:
    """A door relay on loopback: records each JSON line it is sent (push/relay.py)."""

    def __init__(self) -> None:
        self.pulses: List[Dict[str, Any]] = []
        board = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    board.pulses.append(json.loads(line.decode("utf-8")))

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def set_configs(server: LiveServer, **values: Any) -> None:
    ok(server.post("setconfigs", {"config_dict": values}))


def all_events(server: LiveServer) -> List[Dict[str, Any]]:
    return ok(server.post("getevents", {"limit": 100}))["events"]
