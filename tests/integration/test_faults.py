"""Process-level faults (issue 12, "Hardening", part 3): real ``sophon-face`` processes, the
real CPU models, real LMDB stores, killed or stopped at the worst moments.

* SIGKILL during a bulk import straight into a data directory: the store stays consistent
  and ``--resume`` ends with every photo registered exactly once. (SIGKILL of an import
  over HTTP: tests/integration/test_bulk_import.py; of the daemon under concurrent writes:
  test_crash.py.)
* SIGKILL during a backup, in its copy and in its archive writing: the archive is absent
  or still the previous one, never partial; the live store is untouched; the next backup
  removes what the killed one left and writes a complete archive.
* SIGKILL during video ingestion: after the restart every event a client had seen is there
  with its images, no image file without an event remains, and the device goes on.
* SIGTERM: requests in flight get their answers, the history push's POST in flight is
  answered and recorded before exit (so it is not sent again), then exit 0.
* LMDB on a really full filesystem (tmpfs; root only): ENOSPC in the commit answers
  INSUFFICIENT_SPACE_LEFT and the store works again once space is freed.

In-process faults (a broken or hung inference worker, a full map or disk with video running,
the push receiver down past retention): tests/api/test_faults_api.py. Outcomes: bench/README.md
("Faults").
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import cv2
import pytest
import yaml

from sophon_face.errors import InsufficientSpaceLeft
from sophon_face.store import images
from sophon_face.store.env import LMDB_SUBDIR, Store
from sophon_face.tools.restore import restore_backup

from ..api.receiver import Receiver
from ..api.video_support import wait_for
from ..video_media import Passage, head_factory, write_video
from .crash_harness import (REPO_DIR, TEST_DATA_DIR, Daemon, read_store, store_violations,
                            write_config)
from .test_backup_restore import DIM, RECOGNIZER, _prefill
from .test_bulk_import import (GOOD, _copy, _journaled, _start_import, _when_journaled,
                               gallery_view, run_export, run_import)

pytestmark = pytest.mark.crash
#: The moments these tests catch (a backup mid-copy, requests or a POST in flight) can
#: last a fraction of a second.
MOMENT_POLL_S = 0.02


def b64(name: str) -> str:
    return base64.b64encode((TEST_DATA_DIR / name).read_bytes()).decode("ascii")


def daemon_config(tmp_path: Path, prepared_models: Dict[str, Path],
                  **sections: Dict[str, Any]) -> Path:
    path = write_config(tmp_path / "conf.yaml", tmp_path / "data",
                        prepared_models["detector"].parent)
    settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    for name, values in sections.items():
        settings.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(settings), encoding="utf-8")
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ============================================================================ bulk import

def test_sigkill_during_a_direct_import_leaves_a_consistent_store_that_resume_completes(
        tmp_path: Path, prepared_models: Dict[str, Path]) -> None:
    tree = tmp_path / "crowd"
    for index in range(10):
        for n in range(2):
            name = GOOD[(index + n) % len(GOOD)]
            _copy(name, tree / f"p{index:02d}" / f"{n}{Path(name).suffix}")
    config = daemon_config(tmp_path, prepared_models)
    data_dir = tmp_path / "data"
    journal = tmp_path / "crowd.jsonl"
    argv = [tree, "--data-dir", data_dir, "--config", config, "--journal", journal,
            "--group", "crowd", "--workers", 2]

    importer = _start_import(argv, tmp_path / "import.log")
    _when_journaled(importer, journal, 4)
    importer.kill()  # SIGKILL with photos in flight and the store open for writing
    importer.wait()
    killed_at = _journaled(journal)
    assert killed_at < 20

    contents = read_store(data_dir, DIM)  # opens it like the daemon's next start would
    assert store_violations(contents, DIM) == []
    assert len(contents.faces) >= 4

    code, out = run_import(*argv, "--resume")
    assert code == 0, out
    export = tmp_path / "export"
    assert run_export(export, "--data-dir", data_dir, "--config", config)[0] == 0
    from sophon_face.tools.bulk_import import stored_photo_digest

    view = gallery_view(export)
    assert {i: v[4] for i, v in view.items()} == {  # every photo exactly once, in order
        d.name: tuple(stored_photo_digest(p.read_bytes()) for p in sorted(d.iterdir()))
        for d in tree.iterdir()}
    assert store_violations(read_store(data_dir, DIM), DIM) == []


# ============================================================================ backup

def test_sigkill_during_a_backup_leaves_the_previous_archive_and_the_store_untouched(
        tmp_path: Path, prepared_models: Dict[str, Path]) -> None:
    config = daemon_config(tmp_path, prepared_models)
    data_dir = tmp_path / "data"
    asyncio.run(_prefill(data_dir, DIM, 20_000))
    store_file = data_dir / LMDB_SUBDIR / "data.mdb"
    store_digest = sha256(store_file)
    archive = tmp_path / "backups" / "store.tar.gz"
    command = [sys.executable, "-m", "sophon_face", "backup", str(archive),
               "--config", str(config)]
    first = subprocess.run(command, cwd=str(REPO_DIR), capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr.decode()
    previous = sha256(archive)

    def work_files() -> List[Path]:
        return [p for d in archive.parent.glob(f".{archive.name}.*") for p in d.iterdir()]

    # Killed while copying the store, then while writing the archive (the partial one
    # beside the copy): the two moments a kill could leave something half done.
    for moment, seen in (("copy", lambda f: f.name == "data.mdb"),
                         ("archive", lambda f: f.name == archive.name)):
        backup = subprocess.Popen(command, cwd=str(REPO_DIR), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_for(lambda: any(seen(f) for f in work_files()) or backup.poll() is not None,
                     60, f"the backup's {moment}", poll_s=MOMENT_POLL_S)
            os.kill(backup.pid, signal.SIGKILL)
        finally:
            backup.wait()
        assert backup.returncode == -signal.SIGKILL, f"the backup ended before its {moment}"
        assert sha256(archive) == previous, moment  # the previous archive, whole
        assert sha256(store_file) == store_digest, moment  # the store untouched
    assert work_files(), "a killed backup leaves its work folder behind"

    again = subprocess.run(command, cwd=str(REPO_DIR), capture_output=True, timeout=120)
    assert again.returncode == 0, again.stderr.decode()
    assert b"left by a backup that did not finish" in again.stderr
    assert sorted(p.name for p in archive.parent.iterdir()) == [archive.name]
    restored = restore_backup(archive, tmp_path / "restored", RECOGNIZER)
    assert restored.manifest.store.counts["identities"] == 20_000
    assert sha256(store_file) == store_digest


# ============================================================================ video

@pytest.fixture(scope="module")
def stranger_loop(tmp_path_factory: pytest.TempPathFactory, detector) -> Path:
    """A stranger crosses in 0.8 s, then nobody for 0.6 s; looped: one event per crossing."""
    heads = head_factory(lambda image: detector.detect(image)[0].bbox,
                         lambda name: cv2.imread(str(TEST_DATA_DIR / name)))
    folder = tmp_path_factory.mktemp("fault-videos")
    return write_video(folder / "stranger.avi", [Passage("sunak.jpg", 0.05, 0.8)], 1.4,
                       {"sunak.jpg": heads("sunak.jpg")})


def listed_events(daemon: Daemon) -> List[Dict[str, Any]]:
    reply = daemon.post("getevents", {"page_limit": 1000})
    assert reply.status == 200, reply
    return reply.json["events"]


def test_sigkill_during_video_ingestion_keeps_every_seen_event(
        tmp_path: Path, prepared_models: Dict[str, Path], stranger_loop: Path) -> None:
    config = daemon_config(
        tmp_path, prepared_models,
        images={"roots": [str(TEST_DATA_DIR), str(stranger_loop.parent)]},
        video={"loop_files": True, "track_timeout_s": 0.3, "analysis_fps": 8.0})
    daemon = Daemon(config, tmp_path / "daemon.log")
    event_dir = tmp_path / "data" / "events"
    seen: Dict[str, Dict[str, Any]] = {}
    try:
        daemon.start()
        reply = daemon.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": "corridor",
            "media_device_url": str(stranger_loop)})
        assert reply.status == 200, reply
        device = reply.json["media_device_id"]

        def seen_enough() -> bool:  # a client polling the events: what it saw is acknowledged
            seen.update({e["event_id"]: e for e in listed_events(daemon)})
            return len(seen) >= 3

        wait_for(seen_enough, 60, "three video events")
        time.sleep(0.7)  # about half a crossing later: a track is open, maybe being written
        daemon.kill()

        daemon.start()
        after = {e["event_id"]: e for e in listed_events(daemon)}
        assert set(seen) <= set(after)  # no event a client saw is lost
        assert daemon.health()["store"]["events"] == len(after)
        for event in after.values():  # every event has its images ...
            assert event["media_device_info"]["media_device_id"] == device
            for field in ("spot_image_id", "recognize_face_image_id"):
                image = daemon.get(f"/sophon/v2/face/getspotimage/{event[field]}"
                                   f"?timestamp={event['timestamp']}")
                assert image.status == 200 and image.body[:2] == b"\xff\xd8", (field, image)
        # ... and every image file has its event (the orphan sweep at start).
        on_disk = {p.stem for p in event_dir.glob("*/*")}
        named = {e[f] for e in after.values() for f in ("spot_image_id", "recognize_face_image_id")}
        assert on_disk <= named, sorted(on_disk - named)[:4]
        newest = max(int(i) for i in after)
        wait_for(lambda: any(int(e["event_id"]) > newest for e in listed_events(daemon)),
                 30, "the device to record again after the restart")
        assert daemon.stop() == 0
    finally:
        if daemon.running:
            daemon.kill()
    assert "Traceback" not in daemon.log_tail(400)


# ============================================================================ SIGTERM

def test_sigterm_answers_requests_in_flight_and_records_the_push_in_flight(
        tmp_path: Path, prepared_models: Dict[str, Path]) -> None:
    """``server.shutdown_timeout_s`` (5 s here) bounds both: the HTTP requests in flight
    and the history POST in flight, whose 2xx is recorded before the store closes."""
    config = daemon_config(tmp_path, prepared_models)
    daemon = Daemon(config, tmp_path / "daemon.log")
    answers: List[Any] = []
    with Receiver() as receiver:
        receiver.delay_s = 4.0  # takes the event at once, answers 200 after 4 s
        try:
            daemon.start()
            assert daemon.post("createidentity", {"register_image": b64("ardern_2018.jpg"),
                                                  "identity_id": "ardern"}).status == 200
            assert daemon.post("setconfigs", {"config_dict": {
                "HISTORY_EVENT_UPLOAD_URL": receiver.url,
                "HISTORY_REPORT_PEROID": 1}}).status == 200
            assert daemon.post("search", {"rgb_image_base64": b64("ardern_2022.jpg")}).status == 200
            first = wait_for(receiver.event_ids, 10, "the history POST",  # in flight, 4 s
                             poll_s=MOMENT_POLL_S)[0]

            def search() -> None:
                reply = daemon.post("search", {"rgb_image_base64": b64("solvay_1927_group.jpg")})
                answers.append((reply.status, time.monotonic()))

            clients = [threading.Thread(target=search) for _ in range(3)]
            for client in clients:
                client.start()
            wait_for(lambda: daemon.health()["workers"]["pending"] >= 2, 10,
                     "requests in flight", poll_s=MOMENT_POLL_S)
            stopped_at = time.monotonic()
            assert daemon.stop(timeout_s=20) == 0
            for client in clients:
                client.join(10)
            # Each request in flight got its answer (no reset connection), some after SIGTERM.
            assert [status for status, _ in answers] == [200] * 3, answers
            assert any(at > stopped_at for _, at in answers)
            assert receiver.event_ids() == [first]  # nothing else was started meanwhile

            receiver.delay_s = 0.0
            daemon.start()
            listed = sorted(e["event_id"] for e in listed_events(daemon))
            assert len(listed) == 4
            receiver.wait_for(lambda got: len(got) >= 4, timeout_s=20)
            time.sleep(1.2)  # one more round: nothing is sent again
            # The POST answered during the shutdown was recorded: not sent again.
            assert sorted(receiver.event_ids()) == listed
            assert daemon.health()["push"]["history"]["queued"] == 0
            assert daemon.stop() == 0
        finally:
            if daemon.running:
                daemon.kill()
    logged = (tmp_path / "daemon.log").read_text(encoding="utf-8", errors="replace")
    assert "Traceback" not in logged
    assert "did not finish within" not in logged


# ============================================================================ full filesystem

@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    path.mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
            capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root (tests/api/test_faults_api.py "
                    "simulates a full disk at its seams instead)")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_lmdb_on_a_really_full_filesystem_refuses_and_recovers(tmp_path: Path) -> None:
    """No free-space reserve (``min_free_bytes: 0``): the commit itself meets ENOSPC."""
    with tmpfs(tmp_path / "disk", 8) as disk:
        async def scenario() -> Optional[str]:
            store = Store(disk / "data", min_free_bytes=0, map_size_bytes=1 << 20)
            await store.open()
            written: List[str] = []
            try:
                ballast = disk / "ballast"
                with open(str(ballast), "wb") as handle:  # leaves 256 KiB free
                    handle.write(b"\0" * (shutil.disk_usage(str(disk)).free - (256 << 10)))
                refused: Optional[BaseException] = None
                for _ in range(50):  # 64 KiB each until the commit fails
                    image_id = str(uuid.uuid4())
                    try:
                        await store.write(lambda t, i=image_id: (
                            images.put(t, i, os.urandom(64 * 1024)), None))
                        written.append(image_id)
                    except InsufficientSpaceLeft as exc:
                        refused = exc
                        break
                assert refused is not None and written
                assert isinstance(refused.__cause__, Exception)
                cause = str(refused.__cause__)
                ballast.unlink()
                for image_id in written[:2] + [str(uuid.uuid4())]:  # writable again
                    await store.write(lambda t, i=image_id: (
                        images.put(t, i, os.urandom(64 * 1024)), None))
                count = await store.read(lambda t: t.entries(t.dbs.images))
                assert count == len(written) + 1
                return cause
            finally:
                await store.close()

        cause = asyncio.run(scenario())
        assert cause is not None and (os.strerror(errno.ENOSPC) in cause
                                      or os.strerror(errno.EIO) in cause), cause
        # The store opens again and holds what was acknowledged.
        reopened = asyncio.run(_count_images(disk / "data"))
        assert reopened >= 3


async def _count_images(data_dir: Path) -> int:
    store = Store(data_dir, min_free_bytes=0)
    await store.open()
    try:
        return await store.read(lambda t: t.entries(t.dbs.images))
    finally:
        await store.close()
