"""Crash-safety harness: SIGKILL a real daemon under concurrent writes, then audit its store.

Shared by tests/integration/test_crash.py (a few rounds in ``make test``), by
tests/integration/test_concurrency.py (the daemon process and the store audit) and by
bench/crash.py (many rounds). One round:

1. start ``python -m sophon_face serve`` on the harness's data directory;
2. run several client threads, each owning its own identities, so the state each one expects
   is knowable without coordinating with the others; they create, add, replace and delete
   faces as fast as the daemon answers;
3. SIGKILL the daemon after a random delay, while requests are in flight;
4. restart it on the same directory and read its view over the API (``/health``,
   ``getidentities``, ``getidentity``, ``getregisterimage``), then stop it with SIGTERM;
5. open the LMDB store in this process and check every invariant of api/identity.md 1 and
   of the Store section of ARCHITECTURE.md, and that every acknowledged change is there. The
   one request of each client that was in flight at the kill may have committed or not: both
   outcomes are accepted, nothing else is.

The data directory is kept across rounds, so every round also recovers from the previous
round's kill, and identities settled in earlier rounds must stay exactly as they were.

A kill is a process crash, not a power cut: what was written but not yet fsync'd survives in
the page cache, so these rounds test atomicity and ordering, not the fsync itself.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import numpy as np
import yaml

from sophon_face.api.validation import Context, feature_vector
from sophon_face.service.identities import render_identity
from sophon_face.store import faces, identities, keys
from sophon_face.store.codec import StoreFormatError, feature_from_bytes
from sophon_face.store.env import Store, Txn
from sophon_face.store.gallery import AddFace, Gallery, GallerySnapshot
from tests.api.live import Reply

REPO_DIR = Path(__file__).resolve().parents[2]
TEST_DATA_DIR = REPO_DIR / "tests" / "data"
#: The registration photo of photo faces: small (14 kB), so a photo request costs ~70 ms.
PHOTO_PATH = TEST_DATA_DIR / "macron_2014.jpg"
API_PREFIX = "/sophon/v2/face/"
#: A photo face's stored feature must be this close (cosine) to the photo's feature from
#: ``detect``: the worker pool may batch crops differently, so bit equality is not promised.
PHOTO_FEATURE_MIN_COSINE = 0.999
#: Faces per identity the clients aim to stay under (deleteface becomes likelier above).
MAX_FACES_PER_IDENTITY = 8
MAX_LIVE_IDENTITIES_PER_CLIENT = 6


# ------------------------------------------------------------------------------ HTTP

class NotSent(Exception):
    """The connection was refused: the request certainly never reached a daemon."""


class Lost(Exception):
    """The connection broke after the request may have been sent: outcome unknown."""


class Connection:
    """One keep-alive HTTP connection to the daemon.

    Keep-alive matters: a client sends thousands of requests per round, and a new TCP
    connection per request would leave as many client ports in TIME_WAIT.
    """

    def __init__(self, port: int, timeout_s: float = 60.0) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        self._connected = False

    def call(self, method: str, path: str, payload: Any = None) -> Reply:
        if not self._connected:
            try:
                self._conn.connect()
            except OSError as exc:
                raise NotSent(f"{type(exc).__name__}: {exc}") from exc
            self._connected = True
        body = None if payload is None else json.dumps(payload).encode("utf-8")
        headers = {} if body is None else {"Content-Type": "application/json"}
        try:
            self._conn.request(method, path, body=body, headers=headers)
            response = self._conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            raise Lost(f"{type(exc).__name__}: {exc}") from exc
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)

    def post(self, endpoint: str, payload: Any) -> Reply:
        return self.call("POST", API_PREFIX + endpoint, payload)

    def close(self) -> None:
        self._conn.close()
        self._connected = False


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------ daemon

class DaemonError(RuntimeError):
    pass


def write_config(path: Path, data_dir: Path, models_dir: Path, *, workers: int = 1,
                 intra_op_threads: int = 1, max_wait_s: float = 30.0,
                 log_level: str = "WARNING") -> Path:
    """A conf.yaml for a test daemon. One models cache for every daemon of a session, so
    only the first start pays for folding the models."""
    config = {
        "server": {"host": "127.0.0.1", "shutdown_timeout_s": 5.0, "ws_port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR)]},
        "models": {"cache_dir": str(models_dir)},
        "workers": {"count": workers, "intra_op_threads": intra_op_threads,
                    "max_wait_s": max_wait_s},
        "preview": {"port": 0, "control_port": 0},
        "logging": {"level": log_level},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class Daemon:
    """``python -m sophon_face serve`` as a child process, on a fresh port per start."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        self._config_path = config_path
        self._log_path = log_path
        self._proc: Optional[subprocess.Popen] = None
        self.port = 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 120.0) -> Dict[str, Any]:
        """Start and wait until ``/health`` answers 200; returns the health payload."""
        if self.running:
            raise DaemonError("daemon already running")
        for _ in range(3):
            self.port = free_port()
            with open(self._log_path, "ab") as log:
                self._proc = subprocess.Popen(
                    [sys.executable, "-m", "sophon_face", "serve",
                     "--config", str(self._config_path), "--port", str(self.port)],
                    stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO_DIR),
                    # Its own process group: a ^C meant for the test runner must not take the
                    # daemon down at a moment the harness did not choose.
                    start_new_session=True)
            health = self._wait_healthy(timeout_s)
            if health is not None:
                return health
            # It exited before answering: most likely another process took the port
            # between free_port() and the daemon's bind. Try another one.
        raise DaemonError(f"daemon did not start; end of its log:\n{self.log_tail()}")

    def _wait_healthy(self, timeout_s: float) -> Optional[Dict[str, Any]]:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return None
            conn = Connection(self.port, timeout_s=5.0)
            try:
                reply = conn.call("GET", "/health")
            except (NotSent, Lost):
                time.sleep(0.05)
                continue
            finally:
                conn.close()
            if reply.status == 200:
                return reply.json
            time.sleep(0.05)
        self.kill()
        raise DaemonError(f"daemon not healthy after {timeout_s} s; log:\n{self.log_tail()}")

    def connection(self) -> Connection:
        return Connection(self.port)

    def post(self, endpoint: str, payload: Any) -> Reply:
        conn = self.connection()
        try:
            return conn.post(endpoint, payload)
        finally:
            conn.close()

    def get(self, path: str) -> Reply:
        conn = self.connection()
        try:
            return conn.call("GET", path)
        finally:
            conn.close()

    def health(self) -> Dict[str, Any]:
        reply = self.get("/health")
        if reply.status != 200:
            raise DaemonError(f"/health answered {reply!r}")
        return reply.json

    def kill(self) -> None:
        """SIGKILL: no handler runs, no transaction is finished or aborted."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
        self._proc.wait()
        self._proc = None

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit status (SIGKILL after ``timeout_s``)."""
        proc = self._proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise DaemonError(f"daemon ignored SIGTERM for {timeout_s} s") from None
        self._proc = None
        return code

    def log_size(self) -> int:
        try:
            return self._log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        try:
            with open(self._log_path, "rb") as log:
                log.seek(offset)
                return log.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


# ------------------------------------------------------------------------------ store audit

@dataclass
class StoreContents:
    """Everything the audit needs, read in one read transaction of a stopped daemon's store."""

    identities: Dict[str, Dict[str, Any]]
    faces: Dict[str, Dict[str, Any]]
    images: Dict[str, bytes]
    ordered_ids: List[str]
    order_entries: int
    order_error: str
    gallery: GallerySnapshot


def _collect(txn: Txn) -> Tuple[Any, ...]:
    ident_records = {r["identity_id"]: r for r in identities.iter_all(txn)}
    order_error = ""
    ordered: List[str] = []
    try:
        ordered = [r["identity_id"] for r in identities.iter_in_order(txn)]
    except StoreFormatError as exc:  # a dangling creation-order entry
        order_error = str(exc)
    face_records = {r["face_id"]: r for r in faces.iter_all(txn)}
    blobs = {keys.uuid_from_key(key): bytes(value)
             for key, value in txn.raw.cursor(db=txn.dbs.images).iternext()}
    return (ident_records, face_records, blobs, ordered,
            txn.entries(txn.dbs.identity_order), order_error)


async def _read_store(data_dir: Path, dim: int) -> StoreContents:
    # The gallery is rebuilt by open() exactly as the daemon's start rebuilds it.
    store = Store(data_dir, gallery=Gallery(dim), min_free_bytes=0)
    await store.open()
    try:
        idents, face_records, blobs, ordered, entries, order_error = await store.read(_collect)
        assert store.gallery is not None
        snapshot = await store.read(store.gallery.snapshot)  # exact rows: in LMDB
    finally:
        await store.close()
    return StoreContents(idents, face_records, blobs, ordered, entries, order_error, snapshot)


def read_store(data_dir: Path, dim: int) -> StoreContents:
    """Open the store in this process (its daemon must be stopped) and read all of it."""
    return asyncio.run(_read_store(data_dir, dim))


def store_violations(contents: StoreContents, dim: int) -> List[str]:
    """Every broken invariant of the store, as readable sentences (empty: all hold)."""
    found: List[str] = []
    idents, face_records, blobs = contents.identities, contents.faces, contents.images

    if contents.order_error:
        found.append(f"creation order: {contents.order_error}")
    if sorted(contents.ordered_ids) != sorted(idents) or contents.order_entries != len(idents):
        found.append(f"creation order lists {contents.order_entries} entries "
                     f"({len(contents.ordered_ids)} readable) for {len(idents)} identities")

    face_owner: Dict[str, Tuple[str, int]] = {}
    image_owner: Dict[str, str] = {}
    for identity_id, record in idents.items():
        face_ids, image_ids = record["face_ids"], record["register_image_ids"]
        if len(face_ids) != len(image_ids):
            found.append(f"identity {identity_id}: {len(face_ids)} face_ids but "
                         f"{len(image_ids)} register_image_ids")
        for index, (face_id, image_id) in enumerate(zip(face_ids, image_ids)):
            if face_id in face_owner:
                found.append(f"face {face_id} listed twice ({face_owner[face_id]} and "
                             f"{identity_id}[{index}])")
            face_owner[face_id] = (identity_id, index)
            if image_id in image_owner:
                found.append(f"register image {image_id} listed twice "
                             f"({image_owner[image_id]} and {identity_id})")
            image_owner[image_id] = identity_id
            face = face_records.get(face_id)
            if face is None:
                found.append(f"identity {identity_id}[{index}]: face {face_id} has no record")
            elif face["identity_id"] != identity_id or face["register_image_id"] != image_id:
                found.append(f"identity {identity_id}[{index}]: face {face_id} record says "
                             f"identity {face['identity_id']}, image {face['register_image_id']}"
                             f" but the identity lists image {image_id}")

    for face_id, face in face_records.items():
        if face_id not in face_owner:
            found.append(f"orphan face record {face_id} (identity {face['identity_id']})")
        if face["dim"] != dim or len(face["feature"]) != 4 * dim:
            found.append(f"face {face_id}: dim {face['dim']}, {len(face['feature'])} bytes")
    for image_id in blobs:
        if image_id not in image_owner:
            found.append(f"orphan image blob {image_id}")

    found += gallery_violations(contents, dim)
    return found


def gallery_violations(contents: StoreContents, dim: int) -> List[str]:
    """The gallery rebuilt at open must hold exactly the faces of the faces database, with
    their identities, and rows bit-identical to what adding each face one by one (the
    daemon's path after a commit) produces."""
    found: List[str] = []
    snapshot, face_records = contents.gallery, contents.faces
    rows = dict(zip(snapshot.face_ids, range(len(snapshot.face_ids))))
    if len(rows) != len(snapshot.face_ids):
        found.append("gallery holds a face id in more than one row")
    missing = set(face_records) - set(rows)
    extra = set(rows) - set(face_records)
    if missing:
        found.append(f"gallery lacks {len(missing)} stored faces, e.g. {sorted(missing)[:3]}")
    if extra:
        found.append(f"gallery holds {len(extra)} faces not in the store, e.g. {sorted(extra)[:3]}")
    incremental = Gallery(dim)
    incremental.apply([AddFace(face_id, record["identity_id"], feature_from_bytes(record["feature"]))
                       for face_id, record in face_records.items() if record["dim"] == dim])
    expected = incremental.snapshot()
    expected_rows = {face_id: (identity_id, expected.matrix[row])
                     for row, (face_id, identity_id)
                     in enumerate(zip(expected.face_ids, expected.identity_ids))}
    for face_id, row in rows.items():
        if face_id not in expected_rows:
            continue
        identity_id, vector = expected_rows[face_id]
        if snapshot.identity_ids[row] != identity_id:
            found.append(f"gallery row of face {face_id} belongs to {snapshot.identity_ids[row]}, "
                         f"the face record to {identity_id}")
        if snapshot.matrix[row].tobytes() != vector.tobytes():
            found.append(f"gallery row of face {face_id} is not bit-identical to its stored "
                         f"feature (max diff {np.abs(snapshot.matrix[row] - vector).max():.3g})")
    return found


# ------------------------------------------------------------------------------ client model

@dataclass(frozen=True)
class FaceExpect:
    face_id: Optional[str]     # None: made by the in-flight request, so its ids are unknown
    image_id: Optional[str]
    feature: Optional[bytes]   # exact stored float32 bytes; None for a photo face


@dataclass(frozen=True)
class IdentityExpect:
    name: str
    faces: Tuple[FaceExpect, ...]

    def ids(self) -> Set[str]:
        return ({f.face_id for f in self.faces if f.face_id}
                | {f.image_id for f in self.faces if f.image_id})


#: What a client expects of one identity; None = the identity does not exist.
State = Optional[IdentityExpect]


class BadReply(Exception):
    """A 200 answer whose content contradicts what the client knows."""


@dataclass
class Operation:
    kind: str
    endpoint: str
    payload: Dict[str, Any]
    identity_id: str
    before: State
    #: The state if the request commits, with None for the ids the daemon will generate.
    landed: State
    #: Turns the 200 answer into the new acknowledged state (raises BadReply).
    on_success: Callable[[Any], State]
    writes: bool = True


@dataclass
class InFlight:
    """The request a client had sent when the daemon died: it may or may not have landed."""

    kind: str
    identity_id: str
    before: State
    landed: State


def _reply_faces(body: Any, identity_id: str) -> List[Tuple[str, str]]:
    """(face_id, register_image_id) pairs of an addface/deleteface/replaceface answer."""
    if not isinstance(body, dict) or body.get("identity_id") != identity_id:
        raise BadReply(f"answer is not about {identity_id}: {body!r}")
    face_ids, image_ids = body.get("face_ids"), body.get("register_image_ids")
    if not isinstance(face_ids, list) or not isinstance(image_ids, list) \
            or len(face_ids) != len(image_ids) or body.get("total_face_cnt") != len(face_ids):
        raise BadReply(f"lists not parallel or miscounted: {body!r}")
    return list(zip(face_ids, image_ids))


def _fresh(new_ids: Sequence[str], before: State) -> None:
    """New face / image ids must be canonical UUIDs never used by this identity."""
    old = before.ids() if before is not None else set()
    for value in new_ids:
        if not isinstance(value, str) or value in old or str(uuid.UUID(value)) != value:
            raise BadReply(f"id {value!r} is not a fresh canonical UUID")


class Client(threading.Thread):
    """Sends one request at a time for the identities it owns, until the daemon dies."""

    def __init__(self, name: str, port: int, seed: int, dim: int, photo_b64: str,
                 photo_share: float, killed: threading.Event) -> None:
        super().__init__(name=name, daemon=True)
        self.prefix = name
        self._port = port
        self._rng = random.Random(seed)
        self._context = Context(feature_dim=dim)
        self._dim = dim
        self._photo_b64 = photo_b64
        self._photo_share = photo_share
        self._killed = killed
        self._next_identity = 0
        self._next_name = 0
        self.states: Dict[str, State] = {}
        self.in_flight: Optional[InFlight] = None
        self.acked_writes = 0
        self.acked_reads = 0
        self.violations: List[str] = []

    # -------------------------------------------------------------- loop

    def run(self) -> None:
        conn = Connection(self._port)
        try:
            while True:
                op = self._next_operation()
                if op.writes:
                    self.in_flight = InFlight(op.kind, op.identity_id, op.before, op.landed)
                try:
                    reply = conn.post(op.endpoint, op.payload)
                except NotSent:
                    self.in_flight = None  # refused: nothing reached a daemon
                    if not self._killed.is_set():
                        self.violations.append(f"{self.prefix}: connection refused before the kill")
                    return
                except Lost as exc:
                    if not self._killed.is_set():
                        self.violations.append(f"{self.prefix}: {op.kind} lost before the kill: {exc}")
                    return  # in_flight stays: the request may have committed
                if reply.status != 200:
                    # Every request targets an identity this client knows to exist, so any
                    # error is a daemon fault. Its effect is unknown: keep it in flight.
                    self.violations.append(f"{self.prefix}: {op.kind} {op.identity_id} "
                                           f"answered {reply!r}")
                    return
                try:
                    state = op.on_success(reply.json)
                except (BadReply, ValueError, KeyError, TypeError) as exc:
                    self.violations.append(f"{self.prefix}: {op.kind} {op.identity_id}: {exc}")
                    return
                self.states[op.identity_id] = state
                self.in_flight = None
                if op.writes:
                    self.acked_writes += 1
                else:
                    self.acked_reads += 1
        except Exception:  # a harness bug must surface as a violation, not a silent thread
            self.violations.append(f"{self.prefix}: client crashed:\n{traceback.format_exc()}")
        finally:
            conn.close()

    # -------------------------------------------------------------- operations

    def _next_operation(self) -> Operation:
        rng = self._rng
        live = [i for i, s in self.states.items() if s is not None]
        if len(live) < 2 or (rng.random() < 0.1 and len(live) < MAX_LIVE_IDENTITIES_PER_CLIENT):
            identity_id = f"{self.prefix}i{self._next_identity}"
            self._next_identity += 1
            return self._create(identity_id, force=False)
        identity_id = rng.choice(live)
        state = self.states[identity_id]
        assert state is not None
        count = len(state.faces)
        r = rng.random()
        if r < 0.08:
            return self._get(identity_id, state)
        if r < 0.13:
            return self._delete_identity(identity_id, state)
        if r < 0.18:
            return self._create(identity_id, force=True)
        if count == 0 or (r < 0.48 and count < MAX_FACES_PER_IDENTITY):
            return self._add(identity_id, state)
        if r < 0.70:
            return self._replace(identity_id, state, rng.randrange(count))
        return self._delete_face(identity_id, state, rng.randrange(count))

    def _new_face(self) -> Tuple[Dict[str, Any], FaceExpect]:
        if self._rng.random() < self._photo_share:
            return ({"register_image": self._photo_b64, "fiqa_level": "no"},
                    FaceExpect(None, None, None))
        values = [round(self._rng.gauss(0.0, 1.0), 6) for _ in range(self._dim)]
        # The daemon's own parser computes the vector it stores (L2-normalised float32).
        stored = feature_vector(values, "register_feature", self._context).tobytes()
        return {"register_feature": values}, FaceExpect(None, None, stored)

    def _create(self, identity_id: str, force: bool) -> Operation:
        name = f"{identity_id}~{self._next_name}"
        self._next_name += 1
        source, face = self._new_face()
        payload = {"identity_id": identity_id, "identity_name": name, **source}
        if force:
            payload["force_replace"] = True
        before = self.states.get(identity_id)

        def on_success(body: Any) -> State:
            if body.get("identity_id") != identity_id:
                raise BadReply(f"createidentity answered {body!r}")
            _fresh([body["face_id"], body["register_image_id"]], before)
            return IdentityExpect(name, (dataclasses.replace(
                face, face_id=body["face_id"], image_id=body["register_image_id"]),))

        kind = "createidentity(force)" if force else "createidentity"
        return Operation(kind, "createidentity", payload, identity_id, before,
                         IdentityExpect(name, (face,)), on_success)

    def _add(self, identity_id: str, before: IdentityExpect) -> Operation:
        source, face = self._new_face()

        def on_success(body: Any) -> State:
            pairs = _reply_faces(body, identity_id)
            known = [(f.face_id, f.image_id) for f in before.faces]
            if len(pairs) != len(known) + 1 or pairs[:-1] != known:
                raise BadReply(f"addface: expected {known} + one new, got {pairs}")
            _fresh(pairs[-1], before)
            new = dataclasses.replace(face, face_id=pairs[-1][0], image_id=pairs[-1][1])
            return IdentityExpect(before.name, before.faces + (new,))

        return Operation("addface", "addface", {"identity_id": identity_id, **source},
                         identity_id, before,
                         IdentityExpect(before.name, before.faces + (face,)), on_success)

    def _replace(self, identity_id: str, before: IdentityExpect, index: int) -> Operation:
        source, face = self._new_face()
        target_field = self._rng.choice(("register_image_index", "register_image_id", "face_id"))
        old = before.faces[index]
        target = {"register_image_index": index, "register_image_id": old.image_id,
                  "face_id": old.face_id}[target_field]
        landed = before.faces[:index] + (face,) + before.faces[index + 1:]

        def on_success(body: Any) -> State:
            pairs = _reply_faces(body, identity_id)
            known = [(f.face_id, f.image_id) for f in before.faces]
            if len(pairs) != len(known) or pairs[:index] + pairs[index + 1:] != \
                    known[:index] + known[index + 1:]:
                raise BadReply(f"replaceface[{index}]: expected {known} with one new, got {pairs}")
            _fresh(pairs[index], before)
            new = dataclasses.replace(face, face_id=pairs[index][0], image_id=pairs[index][1])
            return IdentityExpect(before.name, before.faces[:index] + (new,) + before.faces[index + 1:])

        payload = {"identity_id": identity_id, target_field: target, **source}
        return Operation(f"replaceface({target_field})", "replaceface", payload, identity_id,
                         before, IdentityExpect(before.name, landed), on_success)

    def _delete_face(self, identity_id: str, before: IdentityExpect, index: int) -> Operation:
        target_field = self._rng.choice(("register_image_id", "face_id"))
        old = before.faces[index]
        remaining = before.faces[:index] + before.faces[index + 1:]

        def on_success(body: Any) -> State:
            pairs = _reply_faces(body, identity_id)
            expected = [(f.face_id, f.image_id) for f in remaining]
            if pairs != expected:
                raise BadReply(f"deleteface[{index}]: expected {expected}, got {pairs}")
            return IdentityExpect(before.name, remaining)

        payload = {"identity_id": identity_id,
                   target_field: old.face_id if target_field == "face_id" else old.image_id}
        return Operation(f"deleteface({target_field})", "deleteface", payload, identity_id,
                         before, IdentityExpect(before.name, remaining), on_success)

    def _delete_identity(self, identity_id: str, before: IdentityExpect) -> Operation:
        # A never-created id rides along: R60 reports it as failed without failing the call.
        ghost = identity_id + "-ghost"

        def on_success(body: Any) -> State:
            expected = {"failed_identity_ids": [ghost], "success_identity_ids": [identity_id]}
            if body != expected:
                raise BadReply(f"deleteidentities: expected {expected}, got {body!r}")
            return None

        return Operation("deleteidentities", "deleteidentities",
                         {"identity_ids": [identity_id, ghost]}, identity_id, before, None,
                         on_success)

    def _get(self, identity_id: str, before: IdentityExpect) -> Operation:
        expected = {
            "ext_user_info": {}, "identity_id": identity_id, "identity_name": before.name,
            "permission_ids": [], "user_type": "employee",
            "face_ids": [f.face_id for f in before.faces],
            "register_image_ids": [f.image_id for f in before.faces],
        }

        def on_success(body: Any) -> State:
            # Nothing else touches this identity, so the daemon must answer the model exactly.
            if body != expected:
                raise BadReply(f"getidentity: expected {expected}, got {body!r}")
            return before

        return Operation("getidentity", "getidentity", {"identity_id": identity_id},
                         identity_id, before, before, on_success, writes=False)


# ------------------------------------------------------------------------------ rounds

@dataclass
class RoundReport:
    index: int
    kill_delay_s: float
    acked_writes: int = 0
    acked_reads: int = 0
    in_flight: int = 0          # requests whose outcome was unknown at the kill
    in_flight_landed: int = 0   # ... of which the store shows the committed outcome
    identities: int = 0
    faces: int = 0
    images: int = 0
    elapsed_s: float = 0.0
    violations: List[str] = field(default_factory=list)


class CrashHarness:
    """Rounds of write load + SIGKILL + restart + audit on one data directory."""

    def __init__(self, work_dir: Path, models_dir: Path, *, seed: int, clients: int = 4,
                 min_kill_delay_s: float = 0.3, max_kill_delay_s: float = 2.5,
                 photo_share: float = 0.08) -> None:
        self.work_dir = Path(work_dir)
        self.data_dir = self.work_dir / "data"
        self.work_dir.mkdir(parents=True, exist_ok=True)
        config = write_config(self.work_dir / "conf.yaml", self.data_dir, Path(models_dir))
        self.daemon = Daemon(config, self.work_dir / "daemon.log")
        self.seed = seed
        self._rng = random.Random(seed)
        self._clients = clients
        self._delays = (min_kill_delay_s, max_kill_delay_s)
        self._photo_share = photo_share
        self._photo_bytes = PHOTO_PATH.read_bytes()
        self._photo_b64 = base64.b64encode(self._photo_bytes).decode("ascii")
        self.dim = 0
        self._photo_feature: Optional[np.ndarray] = None
        # What earlier rounds left behind, verified: it must never change afterwards.
        self._settled: Dict[str, Dict[str, Any]] = {}
        self._settled_faces: Dict[str, bytes] = {}
        self._settled_images: Dict[str, str] = {}

    def close(self) -> None:
        self.daemon.kill()

    def run_round(self, index: int) -> RoundReport:
        started = time.monotonic()
        delay = self._rng.uniform(*self._delays)
        report = RoundReport(index, round(delay, 3))
        log_offset = self.daemon.log_size()
        health = self.daemon.start()
        if not self.dim:
            self._learn_photo_feature(health)
        killed = threading.Event()
        clients = [Client(f"r{index}c{k}", self.daemon.port, self._rng.getrandbits(32), self.dim,
                          self._photo_b64, self._photo_share, killed)
                   for k in range(self._clients)]
        for client in clients:
            client.start()
        time.sleep(delay)
        killed.set()  # before the signal: any error a client sees from now on is the kill
        self.daemon.kill()
        for client in clients:
            client.join(timeout=60)
            if client.is_alive():
                report.violations.append(f"{client.prefix}: still blocked 60 s after the kill")
            report.violations += client.violations
            report.acked_writes += client.acked_writes
            report.acked_reads += client.acked_reads
            report.in_flight += client.in_flight is not None

        health = self.daemon.start()
        view = self._api_view(health, clients)
        code = self.daemon.stop()
        if code != 0:
            report.violations.append(f"daemon exited {code} on SIGTERM:\n{self.daemon.log_tail()}")

        contents = read_store(self.data_dir, self.dim)
        report.identities, report.faces = len(contents.identities), len(contents.faces)
        report.images = len(contents.images)
        report.violations += store_violations(contents, self.dim)
        report.violations += self._view_violations(view, contents)
        report.violations += self._settled_violations(contents)
        # The daemon logs at WARNING: an ERROR (an unexpected exception, a failed gallery
        # update after a commit, ...) is a fault even when every answer looked right.
        logged = self.daemon.log_since(log_offset)
        if " ERROR " in logged or "Traceback" in logged:
            report.violations.append(f"the daemon logged errors:\n{logged[-3000:]}")
        for client in clients:
            found, landed = self._client_violations(client, contents)
            report.violations += found
            report.in_flight_landed += landed
        self._settle(contents)
        report.elapsed_s = round(time.monotonic() - started, 2)
        return report

    # -------------------------------------------------------------- helpers

    def _learn_photo_feature(self, health: Dict[str, Any]) -> None:
        self.dim = int(health["feature_dim"])
        reply = self.daemon.post("detect", {"image_path": str(PHOTO_PATH), "with_feature": True})
        if reply.status != 200:
            raise DaemonError(f"detect on {PHOTO_PATH.name} answered {reply!r}")
        raw = base64.b64decode(reply.json["faces"][0]["feature_base64_str"])
        self._photo_feature = np.frombuffer(raw, dtype="<f4").astype(np.float64)

    def _api_view(self, health: Dict[str, Any], clients: Sequence[Client]) -> Dict[str, Any]:
        """What the restarted daemon says, read before it is stopped and the store opened."""
        conn = self.daemon.connection()
        try:
            listed: List[Dict[str, Any]] = []
            total = -1
            page = 0
            while total < 0 or len(listed) < total:
                reply = conn.post("getidentities", {"page_limit": 1000, "page_index": page})
                if reply.status != 200:
                    raise DaemonError(f"getidentities answered {reply!r}")
                body = reply.json
                total = body["pagination"]["total_count"]
                if not body["identities"]:
                    break
                listed += body["identities"]
                page += 1
            touched = sorted(self._touched(clients))
            single = {i: conn.post("getidentity", {"identity_id": i}) for i in touched}
            photos = {}
            for item in listed:
                if item["identity_id"] in single:
                    for image_id in item["register_image_ids"]:
                        photos[image_id] = conn.call(
                            "GET", f"{API_PREFIX}getregisterimage/{image_id}")
        finally:
            conn.close()
        return {"faces": health["store"]["faces"], "listed": listed, "total": total,
                "single": single, "photos": photos}

    @staticmethod
    def _touched(clients: Sequence[Client]) -> Set[str]:
        ids = set()
        for client in clients:
            ids.update(client.states)
            if client.in_flight is not None:
                ids.add(client.in_flight.identity_id)
        return ids

    def _view_violations(self, view: Dict[str, Any], contents: StoreContents) -> List[str]:
        found = []
        if view["faces"] != len(contents.faces):
            found.append(f"/health store.faces {view['faces']} != {len(contents.faces)} face records")
        listed = {item["identity_id"]: item for item in view["listed"]}
        if view["total"] != len(contents.identities) or len(listed) != len(view["listed"]):
            found.append(f"getidentities: total {view['total']}, {len(view['listed'])} listed, "
                         f"{len(contents.identities)} identities stored")
        for identity_id, record in contents.identities.items():
            if listed.get(identity_id) != render_identity(record):
                found.append(f"getidentities shows {identity_id} as {listed.get(identity_id)!r}, "
                             f"the store as {render_identity(record)!r}")
        for identity_id, reply in view["single"].items():
            record = contents.identities.get(identity_id)
            if record is None:
                if reply.status != 404 or reply.json != {
                        "error": {"code": "ID_NOT_FOUND", "message": identity_id}}:
                    found.append(f"getidentity {identity_id} (not stored) answered {reply!r}")
            elif reply.status != 200 or reply.json != render_identity(record):
                found.append(f"getidentity {identity_id} answered {reply!r}, store has "
                             f"{render_identity(record)!r}")
        for image_id, reply in view["photos"].items():
            blob = contents.images.get(image_id)
            if blob is None:
                ok = reply.status == 404 and reply.body == b""
            else:
                ok = reply.status == 200 and reply.body == blob
            if not ok or reply.headers.get("content-type") != "image/jpeg":
                found.append(f"getregisterimage {image_id}: {reply.status} "
                             f"{reply.headers.get('content-type')} {len(reply.body)} bytes; "
                             f"store has {None if blob is None else len(blob)} bytes")
        return found

    def _client_violations(self, client: Client, contents: StoreContents) -> Tuple[List[str], int]:
        found: List[str] = []
        landed = 0
        for identity_id in sorted(self._touched([client])):
            acked = client.states.get(identity_id)
            record = contents.identities.get(identity_id)
            problem = self._mismatch(acked, record, contents, acked)
            flight = client.in_flight
            if flight is not None and flight.identity_id == identity_id:
                other = self._mismatch(flight.landed, record, contents, flight.before)
                if problem is not None and other is None:
                    landed += 1
                if problem is not None and other is not None:
                    found.append(f"{identity_id}: matches neither the acknowledged state "
                                 f"({problem}) nor the in-flight {flight.kind} landed ({other})")
            elif problem is not None:
                found.append(f"{identity_id}: acknowledged state lost: {problem}")
        strays = [i for i in contents.identities
                  if i.startswith(client.prefix + "i") and i not in client.states
                  and (client.in_flight is None or client.in_flight.identity_id != i)]
        if strays:
            found.append(f"{client.prefix}: identities nobody created: {strays}")
        return found, landed

    def _mismatch(self, expect: State, record: Optional[Dict[str, Any]],
                  contents: StoreContents, before: State) -> Optional[str]:
        """None when the stored identity is ``expect``; else why not."""
        if expect is None:
            return None if record is None else "exists, expected deleted or never created"
        if record is None:
            return "missing"
        if record["identity_name"] != expect.name:
            return f"name {record['identity_name']!r}, expected {expect.name!r}"
        pairs = list(zip(record["face_ids"], record["register_image_ids"]))
        if len(pairs) != len(expect.faces) or len(record["face_ids"]) != len(pairs):
            return f"{len(record['face_ids'])} faces, expected {len(expect.faces)}"
        old = before.ids() if before is not None else set()
        for index, (face, (face_id, image_id)) in enumerate(zip(expect.faces, pairs)):
            if face.face_id is None:
                if face_id in old or image_id in old:
                    return f"face {index} kept an old id, expected new ones"
            elif (face_id, image_id) != (face.face_id, face.image_id):
                return f"face {index} is {(face_id, image_id)}, expected {(face.face_id, face.image_id)}"
            stored = contents.faces.get(face_id)
            if stored is None:
                return f"face {index} ({face_id}) has no face record"
            if face.feature is not None:
                if stored["feature"] != face.feature:
                    return f"face {index}: stored feature differs from the registered one"
                if image_id in contents.images:
                    return f"face {index} was registered from a feature but has a photo"
            else:
                if contents.images.get(image_id) != self._photo_bytes:
                    return f"face {index}: photo missing or not the bytes sent"
                vector = feature_from_bytes(stored["feature"]).astype(np.float64)
                assert self._photo_feature is not None
                cosine = float(vector @ self._photo_feature /
                               (np.linalg.norm(vector) * np.linalg.norm(self._photo_feature)))
                if cosine < PHOTO_FEATURE_MIN_COSINE:
                    return f"face {index}: feature is not the photo's (cosine {cosine:.4f})"
        return None

    def _settle(self, contents: StoreContents) -> None:
        self._settled = {i: render_identity(r) for i, r in contents.identities.items()}
        self._settled_faces = {f: r["feature"] for f, r in contents.faces.items()}
        self._settled_images = {i: hashlib.sha256(b).hexdigest() for i, b in contents.images.items()}

    def _settled_violations(self, contents: StoreContents) -> List[str]:
        found = []
        for identity_id, rendered in self._settled.items():
            record = contents.identities.get(identity_id)
            if record is None or render_identity(record) != rendered:
                found.append(f"identity {identity_id} from an earlier round changed")
        for face_id, feature in self._settled_faces.items():
            record = contents.faces.get(face_id)
            if record is None or record["feature"] != feature:
                found.append(f"face {face_id} from an earlier round changed or vanished")
        for image_id, digest in self._settled_images.items():
            blob = contents.images.get(image_id)
            if blob is None or hashlib.sha256(blob).hexdigest() != digest:
                found.append(f"photo {image_id} from an earlier round changed or vanished")
        return found
