"""History push (api/event.md 8) from a real daemon process to a real receiver on loopback:
the receiver is down, then flaky (5xx and timeouts), then up, with a SIGTERM restart and
a SIGKILL restart in between. Every event arrives, first arrivals in event order, with the
payload of section 8."""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List

import pytest

from .crash_harness import TEST_DATA_DIR, Daemon, write_config


class FlakyReceiver:
    """``mode``: "down" (connection refused: not listening), "5xx", "slow" (past the
    daemon's timeout) or "up"."""

    def __init__(self) -> None:
        self.arrivals: List[Dict[str, Any]] = []
        self.mode = "down"
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                mode = receiver.mode
                if mode == "slow":
                    time.sleep(3.0)
                    status = 200
                else:
                    status = 503 if mode == "5xx" else 200
                if mode == "up":
                    with receiver.lock:
                        receiver.arrivals.append(json.loads(body))
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/history"
        self.server.server_close()  # "down": nobody listens on the port yet
        self.handler = Handler
        self.thread: Any = None

    def listen(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", int(self.url.split(":")[2].split("/")[0])),
                                          self.handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread is not None:
            self.server.shutdown()
            self.server.server_close()

    def ids(self) -> List[str]:
        with self.lock:
            return [a["event_id"] for a in self.arrivals]


def b64(name: str) -> str:
    return base64.b64encode((TEST_DATA_DIR / name).read_bytes()).decode("ascii")


@pytest.mark.crash
def test_every_event_arrives_in_order_across_outages_and_restarts(
        tmp_path: Path, prepared_models: Dict[str, Path]) -> None:
    config = write_config(tmp_path / "conf.yaml", tmp_path / "data",
                          prepared_models["detector"].parent)
    # A short POST timeout, so the "slow" receiver really times the daemon out.
    text = config.read_text().replace("logging:", "push:\n  history_timeout_s: 1.0\nlogging:")
    config.write_text(text)
    daemon = Daemon(config, tmp_path / "daemon.log")
    receiver = FlakyReceiver()
    created: List[str] = []

    def search(image: str) -> None:
        reply = daemon.post("search", {"rgb_image_base64": b64(image)})
        assert reply.status == 200, reply

    def events_now() -> List[str]:
        listed = daemon.post("getevents", {"page_limit": 1000}).json["events"]
        return [e["event_id"] for e in listed]

    try:
        daemon.start()
        assert daemon.post("createidentity", {"register_image": b64("ardern_2018.jpg"),
                                              "identity_id": "ardern"}).status == 200
        search("ardern_2022.jpg")  # before any URL is set: delivered once one is
        assert daemon.post("setconfigs", {"config_dict": {
            "HISTORY_EVENT_UPLOAD_URL": receiver.url + ", ", "HISTORY_REPORT_PEROID": 1}}).status == 200
        search("sunak.jpg")
        time.sleep(2.0)  # rounds fail: connection refused
        receiver.listen()
        receiver.mode = "5xx"
        search("obama_senate.jpg")
        time.sleep(2.0)
        assert daemon.stop() == 0  # SIGTERM restart while undelivered
        daemon.start()
        receiver.mode = "slow"
        search("macron_2025.jpg")
        time.sleep(3.0)
        daemon.kill()  # SIGKILL restart while a POST may be in flight
        daemon.start()
        search("ardern_2018.jpg")
        receiver.mode = "up"
        created = sorted(events_now())
        assert len(created) == 5
        deadline = time.monotonic() + 60
        while set(receiver.ids()) != set(created) and time.monotonic() < deadline:
            time.sleep(0.1)
        ids = receiver.ids()
        assert set(ids) == set(created)
        first_arrivals = list(dict.fromkeys(ids))
        assert first_arrivals == created  # oldest first, none skipped
        time.sleep(2.5)  # delivered events are not sent again
        assert len(receiver.ids()) == len(ids)
        payload = receiver.arrivals[0]
        assert payload["api_version"] == "2.0" and payload["identity_id"] == "ardern"
        assert set(payload) == {
            "api_version", "event_id", "identity_id", "identity_name", "timestamp", "score",
            "post_action", "user_type", "in_timestamp", "out_timestamp", "media_device_info",
            "mq_license_key", "reg_image", "spot_image", "ir_image", "recognize_face_image",
            "recognize_face_attr"}
        assert payload["reg_image"] and payload["spot_image"] and payload["recognize_face_image"]
        assert daemon.health()["push"]["history"]["failures"] >= 0
    finally:
        if daemon.running:
            daemon.kill()
        receiver.close()
