"""The CLI contract: check-config and health exit codes, one line of output."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from sophon_face.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_check_config_ok_and_error(tmp_path, capsys):
    assert main(["check-config", "--config", str(REPO / "conf.yaml")]) == 0
    assert "ok (profile cpu, port 5555" in capsys.readouterr().out
    bad = tmp_path / "conf.yaml"
    bad.write_text("workers: {count: two}\n", encoding="utf-8")
    assert main(["check-config", "--config", str(bad)]) == 1
    assert "workers.count: expected int, got 'two'" in capsys.readouterr().out


class _Health(BaseHTTPRequestHandler):
    payload: dict = {}
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = json.dumps(self.payload).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def health_server():
    server = HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def _url(server) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/health"


def test_health_exit_codes(health_server, capsys):
    _Health.status = 200
    _Health.payload = {"status": "ok", "backend": "onnx", "feature_dim": 128,
                       "warm_up": {"ok": True, "ms": 12.0}, "store": {"faces": 3}}
    assert main(["health", "--url", _url(health_server)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("healthy:") and out.count("\n") == 1
    _Health.status = 503
    _Health.payload = {"status": "error", "warm_up": {"ok": False, "error": "boom"}}
    assert main(["health", "--url", _url(health_server)]) == 1
    assert capsys.readouterr().out.startswith("unhealthy: HTTP 503")


def test_health_unreachable(capsys):
    assert main(["health", "--url", "http://127.0.0.1:9/health", "--timeout", "2"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("unhealthy:") and out.count("\n") == 1
