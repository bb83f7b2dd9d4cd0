"""Faults (issue 12, "Hardening", part 3) against a real daemon in this process: the aiohttp
app on a real socket, the real CPU models, a real LMDB store. Fakes only at the hardware
seams: the ONNX Runtime session (a runtime that fails or hangs) and, where this process
may not mount a small filesystem, the two places that meet a full disk.

* An inference worker whose runtime breaks: its request gets INTERNAL_ERROR at once, the
  worker's pipeline is probed and rebuilt (logged), later requests succeed; a run that
  hangs costs its request ``workers.timeout_s`` and the worker is replaced.
* The LMDB map at its cap, then the disk full: writes answer INSUFFICIENT_SPACE_LEFT,
  ``search`` / ``compare`` / ``detect`` keep answering, a video device keeps analysing (its
  events are dropped and counted), and all of it recovers once space is freed.
* The history-push receiver down while more events are recorded than retention keeps: the
  queue stays within ``events.max_events``; the newest events arrive in order once the
  receiver is back, the older ones went with retention.

Process-level faults (SIGKILL, SIGTERM) are in tests/integration/test_faults.py; the table
of outcomes is in bench/README.md ("Faults").
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import threading
import time
import weakref
from collections import namedtuple
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from sophon_face.backends.base import BackendError
from sophon_face.backends.onnx import OnnxBackend
from sophon_face.config import config_from_mapping

from ..video_media import Passage, write_video
from .conftest import TEST_DATA_DIR
from .live import LiveServer, Reply, b64_of
from .receiver import Receiver
from .video_support import health, ok, wait_for

#: A small registration photo, quick to analyse.
FILL_PHOTO = TEST_DATA_DIR / "macron_2014.jpg"


def config_for(data_dir: Path, *, roots: Optional[List[Path]] = None,
               **sections: Dict[str, Any]) -> Any:
    mapping: Dict[str, Dict[str, Any]] = {
        "server": {"ws_port": 0},
        "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR)] + [str(r) for r in roots or []]},
        "workers": {"count": 1, "intra_op_threads": 2},
    }
    for name, values in sections.items():
        mapping.setdefault(name, {}).update(values)
    return config_from_mapping(mapping)


def register(server: LiveServer, identity_id: str, photo: str) -> None:
    ok(server.post("createidentity", {"register_image": b64_of(TEST_DATA_DIR / photo),
                                      "identity_id": identity_id, "fiqa_level": "no"}))


def recognition_answers(server: LiveServer) -> None:
    """search, compare and detect answer as usual (whatever the store can take)."""
    found = ok(server.post("search", {"rgb_image_base64": b64_of(TEST_DATA_DIR / "ardern_2022.jpg")}))
    assert found["identity_id"] == "ardern", found
    score = ok(server.post("compare", {
        "image_1_base64": b64_of(TEST_DATA_DIR / "ardern_2018.jpg"),
        "image_2_base64": b64_of(TEST_DATA_DIR / "ardern_2022.jpg")}))["score"]
    assert score >= 82.0
    faces = ok(server.post("detect", {"image_base64_str": b64_of(TEST_DATA_DIR / "sunak.jpg")}))
    assert len(faces["faces"]) == 1


# ============================================================================ worker faults

class RuntimeFaults:
    """ONNX Runtime sessions (the CPU profile's hardware seam) that fail on demand, the way
    a runtime whose device went away does: ``fail_next`` runs raise once; after
    ``break_open_sessions`` every session opened so far raises on every run (only new
    sessions work); ``hang_next`` makes the next run block until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._lock = threading.Lock()
        self._sessions: "weakref.WeakSet[OnnxBackend]" = weakref.WeakSet()
        self._broken: "weakref.WeakSet[OnnxBackend]" = weakref.WeakSet()
        self._fail_next = 0
        self._hang: Optional[threading.Event] = None
        real_init, real_run = OnnxBackend.__init__, OnnxBackend.run
        faults = self

        def init(backend: OnnxBackend, *args: Any, **kwargs: Any) -> None:
            real_init(backend, *args, **kwargs)
            with faults._lock:
                faults._sessions.add(backend)

        def run(backend: OnnxBackend, feeds: Dict[str, Any]) -> Dict[str, Any]:
            with faults._lock:
                ours = backend in faults._sessions  # not another daemon of this process
                fail = ours and (backend in faults._broken or faults._fail_next > 0)
                if ours:
                    faults._fail_next = max(0, faults._fail_next - 1)
                    hang, faults._hang = faults._hang, None
                else:
                    hang = None
            if hang is not None:
                hang.wait(30)
            if fail:
                raise BackendError("onnxruntime run failed: [ONNXRuntimeError] : 6 : "
                                   "RUNTIME_EXCEPTION : Non-zero status code returned")
            return real_run(backend, feeds)

        monkeypatch.setattr(OnnxBackend, "__init__", init)
        monkeypatch.setattr(OnnxBackend, "run", run)

    def fail_next(self, runs: int = 1) -> None:
        with self._lock:
            self._fail_next = runs

    def break_open_sessions(self) -> None:
        with self._lock:
            self._broken.update(self._sessions)

    def hang_next(self) -> threading.Event:
        release = threading.Event()
        with self._lock:
            self._hang = release
        return release


def test_a_broken_worker_fails_its_request_is_rebuilt_and_the_pool_recovers(
        models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="sophon_face.workers.recovery")
    faults = RuntimeFaults(monkeypatch)  # before the start: the workers' sessions are seen
    timeout_s = 2.0
    server = LiveServer(config_for(tmp_path / "daemon", workers={
        "timeout_s": timeout_s, "max_wait_s": timeout_s}), models).start()
    detect = {"image_base64_str": b64_of(TEST_DATA_DIR / "sunak.jpg")}

    def recovery() -> Dict[str, int]:
        return health(server)["workers"]["recovery"]

    def failed_fast(kind: str) -> None:
        started = time.monotonic()
        reply = server.post("detect", detect)
        assert reply.status == 500 and reply.error == ("INTERNAL_ERROR", "inference failed"), reply
        assert time.monotonic() - started < timeout_s, f"{kind}: the failure took too long"

    try:
        register(server, "ardern", "ardern_2018.jpg")
        ok(server.post("detect", detect))

        # A run that fails once (an input that trips the runtime): the probe passes.
        faults.fail_next()
        failed_fast("one failed run")
        wait_for(lambda: recovery()["recovering"] == 0, 10, "the probe")
        ok(server.post("detect", detect))
        assert recovery() == {"failed_jobs": 1, "rebuilt": 0, "replaced": 0, "recovering": 0}

        # The runtime breaks for good: only new sessions work.
        faults.break_open_sessions()
        failed_fast("a broken runtime")
        wait_for(lambda: recovery()["recovering"] == 0, 30, "the rebuild")
        recognition_answers(server)
        assert recovery() == {"failed_jobs": 2, "rebuilt": 1, "replaced": 0, "recovering": 0}

        # A run that hangs: its request times out, a new worker takes the place.
        release = faults.hang_next()
        started = time.monotonic()
        reply = server.post("detect", detect)
        waited_s = time.monotonic() - started
        assert reply.status == 500 and reply.error == ("INTERNAL_ERROR", "inference timed out")
        assert timeout_s - 0.5 < waited_s < timeout_s + 2.0, waited_s
        wait_for(lambda: recovery()["recovering"] == 0, 30, "the replacement")
        recognition_answers(server)  # while the old thread still hangs
        release.set()
        wait_for(lambda: any("retired worker is closed" in r.getMessage()
                             for r in caplog.records), 10, "the retired worker to close")
        state = health(server)
        assert state["status"] == "ok" and state["workers"]["count"] == 1
        assert state["workers"]["recovery"]["replaced"] == 1
    finally:
        server.stop()

    logged = [r.getMessage() for r in caplog.records]
    assert sum("still answers; back to work" in m for m in logged) == 1, logged
    assert sum("no longer answers" in m and "rebuilding it" in m for m in logged) == 1, logged
    assert sum("new pipeline built and warmed" in m for m in logged) == 2, logged  # rebuilt, replaced
    assert sum("did not return within" in m for m in logged) == 1, logged


# ============================================================================ full storage

class SmallDisk:
    """A small filesystem for the daemon's data that a test fills and frees.

    A real tmpfs when this process may mount one (root with CAP_SYS_ADMIN, as in this
    project's CI container). Otherwise a plain folder whose fullness is simulated at the two
    seams that meet it: writing an event image file (``os.write`` in store/event_images.py
    raises ENOSPC) and the store's free-space check (``shutil.disk_usage`` in store/env.py
    reports no room). ``mode`` says which one ran; FAULTS_SIMULATE_DISK=1 forces the
    simulation."""

    SIZE_MIB = 48

    def __init__(self, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path = path
        path.mkdir(parents=True)
        self.mode = "tmpfs" if self._mount() else "simulated"
        self._ballast = path / "ballast"
        self._full = False
        if self.mode == "simulated":
            self._simulate(monkeypatch)

    def _mount(self) -> bool:
        if os.environ.get("FAULTS_SIMULATE_DISK") or os.geteuid() != 0 \
                or shutil.which("mount") is None:
            return False
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.SIZE_MIB}m,mode=0700",
                               "tmpfs", str(self.path)], capture_output=True)
        return done.returncode == 0

    def _simulate(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from sophon_face.store import env, event_images

        disk = self
        real_write, real_usage = os.write, shutil.disk_usage
        usage = namedtuple("usage", "total used free")

        class FullOs:
            def __getattr__(self, name: str) -> Any:
                return getattr(os, name)

            @staticmethod
            def write(fd: int, data: Any) -> int:
                if disk._full:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_write(fd, data)

        class FullShutil:
            def __getattr__(self, name: str) -> Any:
                return getattr(shutil, name)

            @staticmethod
            def disk_usage(path: Any) -> Any:
                if disk._full and str(path).startswith(str(disk.path)):
                    return usage(disk.SIZE_MIB << 20, disk.SIZE_MIB << 20, 0)
                return real_usage(path)

        monkeypatch.setattr(event_images, "os", FullOs())
        monkeypatch.setattr(env, "shutil", FullShutil())

    def fill(self) -> None:
        """No byte left: a ballast file takes all the free space (as another process would)."""
        self._full = True
        if self.mode != "tmpfs":
            return
        chunk = b"\0" * (1 << 20)
        fd = os.open(str(self._ballast), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 4096, 1):
                try:
                    while True:
                        os.write(fd, chunk[:size])
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        assert shutil.disk_usage(str(self.path)).free < 64 * 1024

    def free(self) -> None:
        self._full = False
        if self._ballast.exists():
            self._ballast.unlink()

    def close(self) -> None:
        if self.mode == "tmpfs":
            done = subprocess.run(["umount", str(self.path)], capture_output=True)
            if done.returncode != 0:  # still busy: detach now, freed when the last file closes
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture()
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "disk", monkeypatch)
    try:
        yield disk
    finally:
        disk.close()


@pytest.fixture(scope="module")
def stranger_loop(tmp_path_factory: pytest.TempPathFactory, heads) -> Path:
    """A stranger crosses the corridor in 0.8 s, then nobody for 0.6 s: played in a loop,
    each crossing is one stranger event (strangers are never duplicate-suppressed)."""
    folder = tmp_path_factory.mktemp("fault-videos")
    return write_video(folder / "stranger.avi", [Passage("sunak.jpg", 0.05, 0.8)], 1.4,
                       {"sunak.jpg": heads("sunak.jpg")})


def fill_the_map(server: LiveServer, pads: List[str]) -> None:
    """Fill the map to its last pages: the ``pads`` identities' records grown by
    ``ext_user_info`` in ever smaller steps, until not even 512 more bytes fit. (A new face
    needs a whole 128 KiB feature block copied, so faces stop fitting long before.)"""
    size = 256 * 1024
    for pad in pads:
        while size >= 512:
            reply = server.post("updateidentity", {"identity_id": pad,
                                                   "ext_user_info": {"pad": "x" * size}})
            if reply.status == 200:
                break
            assert refused(reply), reply
            size //= 4
        if size < 512:
            return
    raise AssertionError("the map did not fill")


def refused(reply: Reply) -> bool:
    return reply.status == 507 and reply.error == ("INSUFFICIENT_SPACE_LEFT",
                                                   "insufficient storage space")


def test_a_full_map_then_a_full_disk_refuse_writes_while_recognition_and_video_go_on(
        models, small_disk: SmallDisk, stranger_loop: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    # The map may grow to 3 MiB; below 1 MiB of free disk writes are refused (the reserve).
    config = config_for(
        small_disk.path / "daemon", roots=[stranger_loop.parent],
        storage={"map_size_bytes": 1 << 20, "max_map_size_bytes": 3 << 20,
                 "min_free_bytes": 1 << 20},
        events={"max_events": 200},
        video={"analysis_fps": 8.0, "loop_files": True, "track_timeout_s": 0.3})
    server = LiveServer(config, models).start()
    feature_only = {"register_feature": [0.0, 1.0] + [0.0] * 126, "fiqa_level": "no"}

    def counts() -> Dict[str, int]:
        state = health(server)
        return {"events": state["store"]["events"],
                "lost": state["store"]["events_not_recorded"],
                "analysed": state["devices"][device].get("frames_analysed", 0)}

    def video_goes_on_dropping_events(before: Dict[str, int]) -> Dict[str, int]:
        # Video events that do not fit are dropped and counted; frames are analysed meanwhile.
        now = wait_for(lambda: (lambda c: c if c["lost"] >= before["lost"] + 2 else None)(
            counts()), 30, "video events to be dropped")
        assert now["analysed"] > before["analysed"], now
        return now

    def events_come_back(before: Dict[str, int]) -> Dict[str, Any]:
        wait_for(lambda: counts()["events"] >= before["events"] + 1, 20, "video events again")
        newest = ok(server.post("getevents", {"page_limit": 1}))["events"][0]
        image = server.request("GET", f"/sophon/v2/face/getspotimage/{newest['spot_image_id']}"
                                      f"?timestamp={newest['timestamp']}")
        assert image.status == 200 and image.body[:2] == b"\xff\xd8"
        return newest

    try:
        register(server, "ardern", "ardern_2018.jpg")
        device = ok(server.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": "corridor",
            "media_device_url": str(stranger_loop)}))["media_device_id"]
        pads = [f"pad-{n}" for n in range(48)]
        for pad in pads:
            ok(server.post("createidentity", dict(feature_only, identity_id=pad)))
        wait_for(lambda: counts()["events"] >= 1, 30, "the first video event")

        # ---- the LMDB map reaches its cap (small event records may still fit a while:
        # LMDB reuses the pages each commit frees)
        fill_the_map(server, pads)
        assert health(server)["status"] == "ok"
        assert refused(server.post("createidentity", dict(feature_only, identity_id="late")))
        assert refused(server.post("createidentity", {
            "identity_id": "late", "register_image": b64_of(FILL_PHOTO), "fiqa_level": "no"}))
        before = counts()
        recognition_answers(server)  # its event may be dropped, the answer is not
        video_goes_on_dropping_events(before)
        # Deleting needs no free space: the operator's way out.
        ok(server.post("deleteidentities", {"identity_ids": pads}))
        ok(server.post("createidentity", dict(feature_only, identity_id="late")))
        events_come_back(counts())

        # ---- the disk fills up
        small_disk.fill()
        assert refused(server.post("createidentity", dict(feature_only, identity_id="later")))
        assert refused(server.post("createpermission", {"permission_name": "night shift"}))
        before = counts()
        recognition_answers(server)
        after = video_goes_on_dropping_events(before)
        assert after["events"] == before["events"]  # the reserve refuses every event
        assert health(server)["status"] == "ok"
        small_disk.free()
        ok(server.post("createidentity", dict(feature_only, identity_id="later")))
        newest = events_come_back(counts())
        assert newest["user_type"] == "stranger"
        found = ok(server.post("search", {"rgb_image_base64": b64_of(TEST_DATA_DIR / "ardern_2022.jpg")}))
        assert found["identity_id"] == "ardern"
    finally:
        server.stop()

    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "LMDB map is at its configured maximum" in logged
    assert "write refused" in logged  # the disk: the free-space reserve
    assert "event not recorded" in logged


# ============================================================================ push receiver down

def test_a_receiver_down_for_longer_than_retention_gets_the_newest_events_in_order(
        models, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The history queue is bounded by retention (``events.max_events``, here 4): a
    receiver down while 7 events are recorded gets the 4 kept, oldest first, once up; the 3
    older ones went with retention (logged). Nothing within the bound is lost."""
    caplog.set_level(logging.WARNING, logger="sophon_face.service.events")
    bound = 4
    server = LiveServer(config_for(tmp_path / "daemon", events={"max_events": bound}),
                        models).start()
    port = _free_port()
    url = f"http://127.0.0.1:{port}/event_recieve"

    def search() -> None:
        found = ok(server.post("search", {"rgb_image_base64": b64_of(TEST_DATA_DIR / "ardern_2022.jpg")}))
        assert found["identity_id"] == "ardern"

    def history() -> Dict[str, Any]:
        return health(server)["push"]["history"]

    try:
        register(server, "ardern", "ardern_2018.jpg")
        ok(server.post("setconfigs", {"config_dict": {
            "HISTORY_EVENT_UPLOAD_URL": url, "HISTORY_REPORT_PEROID": 1}}))
        for _ in range(7):
            search()
        wait_for(lambda: history()["failures"] >= 1, 10, "a failed round")
        kept = sorted(e["event_id"] for e in ok(server.post(
            "getevents", {"page_limit": 100}))["events"])
        assert len(kept) == bound
        wait_for(lambda: history()["queued"] == bound, 5, "the queue to show the bound")
        with Receiver(port=port) as receiver:
            got = receiver.wait_for(lambda got: len(got) >= bound, timeout_s=15)
            assert [g["event_id"] for g in got] == kept  # oldest first
            search()  # the receiver up: delivered at the next round
            receiver.wait_for(lambda got: len(got) >= bound + 1, timeout_s=10)
            time.sleep(1.2)  # another round sends nothing again
            ids = receiver.event_ids()
        assert len(ids) == len(set(ids)) == bound + 1 and ids == sorted(ids)
        assert history()["queued"] == 0 and history()["failing_urls"] == []
    finally:
        server.stop()
    assert any("retention removed" in r.getMessage() and "not delivered" in r.getMessage()
               for r in caplog.records)


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
