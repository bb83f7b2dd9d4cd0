"""Store migrations that cannot run inside the opening transaction.

Layout 2 -> 3 (faces.py): face records of schema 1 carried their feature inline, so a 512-d
face took a 4 KB overflow page of its own; layout 3 packs the features in blocks. Rewriting a
million faces in place would not shrink the file (LMDB never returns pages to the file
system, and a 16-page block cannot reuse the scattered single pages the old records free),
so the store is rebuilt beside the old one and swapped in:

1. ``lmdb/migrating.mdb`` is written from scratch: every database copied in key order by
   appending (full pages), every face converted through ``faces.FaceCopier`` (slots in
   face-key order, each block written once), the layout stamped 3 in the last transaction,
   then synced to disk. The old ``data.mdb`` is only read, under a write transaction that
   keeps any other writer out.
2. ``os.replace`` puts it in place of ``data.mdb`` in one atomic step, and the directory is
   synced.

A crash (or an error) at any point before step 2 leaves the old store as it was, readable by
this release (faces.py still reads schema-1 records) and by the previous one; the next open
deletes the partial file and runs the migration again from the start. After step 2 the store
is in layout 3. Free space is checked first: the rebuild needs room for the new file beside
the old one. Progress is logged every ``PROGRESS_EVERY_S`` seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import lmdb

from sophon_face.store import codec, faces, feature_blocks, keys, meta
from sophon_face.durable import fsync_dir, remove_if_present
from sophon_face.store.env import DB_NAMES, DUPSORT_DBS, Databases, Txn

log = logging.getLogger(__name__)

DATA_FILE = "data.mdb"
MIGRATING_FILE = "migrating.mdb"
#: LMDB's lock file beside a file opened with ``subdir=False``.
MIGRATING_LOCK_FILE = MIGRATING_FILE + "-lock"
#: Records copied per write transaction of the new file (bounded dirty memory).
COPY_BATCH_RECORDS = 20_000
#: Bytes copied per write transaction, whichever limit comes first.
COPY_BATCH_BYTES = 64 * 1024 * 1024
PROGRESS_EVERY_S = 5.0
#: Room kept free on the disk beyond the estimated size of the new file.
FREE_SPACE_MARGIN_BYTES = 64 * 1024 * 1024
#: Estimated bytes per face in the new file beyond its feature (record, page overhead).
FACE_OVERHEAD_BYTES = 160


class MigrationError(codec.StoreFormatError):
    """The store cannot be brought to the current layout (e.g. not enough free disk)."""


def upgrade_layout(path: str, *, progress_every_s: float = PROGRESS_EVERY_S,
                   before_swap: Optional[Callable[[], None]] = None) -> bool:
    """Bring the LMDB environment in directory ``path`` to layout 3 if it holds schema-1
    faces; True when it did. Run before the environment is opened for use, by the only
    process using the store. ``before_swap`` is a test hook (a crash just before step 2)."""
    remove_if_present(os.path.join(path, MIGRATING_FILE))
    remove_if_present(os.path.join(path, MIGRATING_LOCK_FILE))
    data_file = os.path.join(path, DATA_FILE)
    if not os.path.exists(data_file):
        return False  # a new store: created in the current layout
    old = _open(path)
    try:
        raw = old.begin(write=True)  # held throughout: no other writer meanwhile
        try:
            txn = Txn(raw, _open_dbs(old, raw), False)
            version = meta.layout_version(txn)
            if version is not None and version >= 3 or not _has_inline_faces(txn):
                raw.commit()  # (databases created); any other upgrade runs at open
                return False
            _check_free_space(path, txn)
            log.info("migrating the store at %s from layout %s to 3 (features packed in "
                     "blocks): %d faces", path, version, faces.count(txn))
            _rebuild(path, txn, progress_every_s)
        finally:
            raw.abort()  # nothing was written to the old file (a no-op after commit)
    finally:
        old.close()
    if before_swap is not None:
        before_swap()
    os.replace(os.path.join(path, MIGRATING_FILE), data_file)
    remove_if_present(os.path.join(path, MIGRATING_LOCK_FILE))
    fsync_dir(path)
    log.info("store at %s migrated to layout 3", path)
    return True


def _rebuild(path: str, old: Txn, progress_every_s: float) -> None:
    started = time.monotonic()
    new_env = lmdb.open(os.path.join(path, MIGRATING_FILE), subdir=False,
                        map_size=_map_size(path), max_dbs=len(DB_NAMES), writemap=False,
                        sync=False, metasync=False, mode=0o600)
    try:
        with new_env.begin(write=True) as raw:
            new_dbs = _open_dbs(new_env, raw)
        progress = _Progress(faces.count(old), progress_every_s, started)
        for name in DB_NAMES:
            if name in ("faces", "features", "feature_free"):
                continue
            _copy_db(new_env, new_dbs, name, _walk(old, name))
        copier = faces.FaceCopier()
        batch: Dict[str, int] = {"records": 0, "bytes": 0}
        raw = new_env.begin(write=True)
        try:
            for record in faces.iter_all(old):  # key order; either record schema
                copier.add(Txn(raw, new_dbs, True), keys.face_key(record["face_id"]), record)
                batch["records"] += 1
                batch["bytes"] += len(record["feature"])
                if (batch["records"] >= COPY_BATCH_RECORDS
                        or batch["bytes"] >= COPY_BATCH_BYTES):
                    raw.commit()
                    raw = new_env.begin(write=True)
                    batch = {"records": 0, "bytes": 0}
                progress.step()
            last = Txn(raw, new_dbs, True)
            copier.finish(last)
            meta.check_layout(last)  # the copied stamp: older upgrades, then the current one
            raw.commit()
        except BaseException:
            raw.abort()
            raise
        new_env.sync(True)
    finally:
        new_env.close()
    log.info("store migration: %d faces rewritten in %.1f s", progress.done,
             time.monotonic() - started)


def _walk(txn: Txn, name: str) -> Iterator[Tuple[bytes, bytes]]:
    cursor = txn.raw.cursor(db=getattr(txn.dbs, name))
    for key, value in cursor.iternext(keys=True, values=True):
        yield key, value


def _copy_db(env: lmdb.Environment, dbs: Databases, name: str,
             items: Iterator[Tuple[bytes, bytes]]) -> None:
    """Copy sorted items in batches, appending (duplicates of a dupsort key in order)."""
    db = getattr(dbs, name)
    dupsort = name in DUPSORT_DBS
    pending = True
    while pending:
        pending = False
        size = 0
        with env.begin(write=True) as raw:
            cursor = raw.cursor(db=db)
            for count, (key, value) in enumerate(items, 1):
                if not cursor.put(key, value, append=True, dupdata=dupsort):
                    cursor.put(key, value, dupdata=dupsort)  # defensive: never out of order
                size += len(key) + len(value)
                if count >= COPY_BATCH_RECORDS or size >= COPY_BATCH_BYTES:
                    pending = True
                    break


class _Progress:
    def __init__(self, total: int, every_s: float, started: float) -> None:
        self.total = total
        self.every_s = every_s
        self.started = started
        self.done = 0
        self._next_log = started + every_s

    def step(self) -> None:
        self.done += 1
        if self.done % 1024 == 0:
            now = time.monotonic()
            if now >= self._next_log:
                self._next_log = now + self.every_s
                log.info("store migration: %d of %d faces (%.0f %%), %.0f s", self.done,
                         self.total, 100.0 * self.done / max(1, self.total),
                         now - self.started)


def _open(path: str) -> lmdb.Environment:
    return lmdb.open(path, max_dbs=len(DB_NAMES), writemap=False, sync=True, metasync=True,
                     mode=0o600)


def _open_dbs(env: lmdb.Environment, raw: Any) -> Databases:
    return Databases(**{name: env.open_db(name.encode("ascii"), txn=raw, create=True,
                                          dupsort=name in DUPSORT_DBS)
                        for name in DB_NAMES})


def _has_inline_faces(txn: Txn) -> bool:
    """Whether the store holds schema-1 faces (all of them do in a layout-2 store)."""
    cursor = txn.raw.cursor(db=txn.dbs.faces)
    for data in cursor.iternext(keys=False, values=True):
        if faces.decode(data).inline is not None:
            return True
    return False


def _check_free_space(path: str, txn: Txn) -> None:
    """The new file is written beside the old one: refuse early rather than fill the disk."""
    needed = FREE_SPACE_MARGIN_BYTES
    psize = int(txn.raw.stat(txn.dbs.faces)["psize"])
    for name in DB_NAMES:
        if name in ("faces", "features", "feature_free"):
            continue
        stat = txn.raw.stat(getattr(txn.dbs, name))
        needed += psize * (stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"])
    cursor = txn.raw.cursor(db=txn.dbs.faces)
    if cursor.first():
        dim = faces.decode(cursor.value()).dim  # one recognizer: one dimension
        # A block's whole pages (rows and owners) shared by its rows, and the record.
        per_face = ((feature_blocks.FEATURE_BLOCK_BYTES + 16) // feature_blocks.rows_per_block(dim)
                    + FACE_OVERHEAD_BYTES)
        needed += faces.count(txn) * per_face * 11 // 10
    free = shutil.disk_usage(path).free
    if free < needed:
        raise MigrationError(
            f"migrating the store to layout 3 needs about {needed >> 20} MiB free beside it "
            f"on {path}, {free >> 20} MiB are: free some space and start again (the store "
            "is unchanged)")


def _map_size(path: str) -> int:
    """Room for the new file: never more than the old data plus blocks and slack."""
    size = os.path.getsize(os.path.join(path, DATA_FILE))
    return max(size * 2, 64 * 1024 * 1024)


