"""The LMDB environment, its threads, and the async facade the service layer awaits.

Threading model (api/README.md section 13: a success answer means durable):

* Every write runs on ONE writer thread, in ONE write transaction. LMDB allows one writer
  per environment anyway and binds a write transaction to the thread that began it, so a
  dedicated thread turns "many coroutines want to write" into a plain FIFO queue.
* Reads run in a small read pool, each in its own read transaction. LMDB never runs on the
  event loop: a page fault on a cold mmap page would stall every request.
* Growing the map (``set_mapsize``) is only allowed while no transaction of this process is
  active: a reader still inside the old mapping would touch unmapped memory. Readers
  therefore hold a shared gate for the whole of their read transaction and growth holds it
  exclusively (see ``_ResizeGate``).

A write function has the shape ``fn(txn, *args) -> (result, gallery_changes)``. Raising
anywhere inside it aborts the transaction: nothing is written and the gallery is not
touched. After the commit succeeds the gallery changes are applied on the writer thread,
before the awaiting coroutine resumes, so a face is searchable the moment its write returns.
A write function may run more than once (it is retried after the map grows), so it must not
have effects outside the transaction.

Other in-memory indexes follow the store the same way as the gallery (the event index of
searchbyimage and getevents): an ``Index`` names the change types it takes, is loaded at
open and gets its changes after each commit, on the writer thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import mmap
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import (TYPE_CHECKING, Any, Callable, Iterator, Optional, Protocol, Sequence, Tuple,
                    TypeVar)

import lmdb

from sophon_face.errors import InsufficientSpaceLeft
from sophon_face.store import meta

if TYPE_CHECKING:
    from sophon_face.store.gallery import Gallery, GalleryChange

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Named sub-databases. ``permission_order`` mirrors ``identity_order`` so that groups page
#: in creation order without loading and sorting every group. ``group_members`` lets
#: deletepermission, group filters and the gallery load touch only a group's members
#: instead of unpacking every identity.
DB_NAMES: Tuple[str, ...] = (
    "identities",        # identity key -> identity record
    "identity_order",    # seq key -> identity key (creation order, for getidentities)
    "group_members",     # permission key -> identity keys (dupsort; identities.py keeps it)
    "faces",             # face key (16-byte UUID) -> face record (its feature's slot)
    "features",          # dim + block number -> feature rows of that block (feature_blocks.py)
    "feature_free",      # dim + slot number -> b"" for each free feature slot (feature_blocks.py)
    "images",            # register image key (16-byte UUID) -> JPEG bytes as received
    "permissions",       # permission key -> permission record
    "permission_names",  # permission name key -> permission key (names are unique)
    "permission_order",  # seq key -> permission key (creation order, for getpermissions)
    "devices",           # device key -> media device record (devices.py)
    "preview",           # one record: the preview layout (device.md 7-8)
    "events",            # event key (8-byte id) -> event record (events.py)
    "push_queue",        # event key -> history-push delivery state (push_queue.py)
    "settings",          # runtime key name -> value (the 62 keys of config.md)
    "meta",              # counters, the layout version, the login hash (meta.py)
)

LMDB_SUBDIR = "lmdb"
DEFAULT_MAP_SIZE_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_MAP_SIZE_BYTES = 32 * 1024 * 1024 * 1024
DEFAULT_MIN_FREE_BYTES = 64 * 1024 * 1024
DEFAULT_READ_THREADS = 2
#: Databases holding several sorted values per key.
DUPSORT_DBS = frozenset({"group_members"})
#: Reader slots beyond our own read threads: other processes opening the same directory
#: (the ``import``/``export`` CLI) and the gallery load at start.
READER_SLOT_HEADROOM = 30
#: A MapResizedError (another process grew the map) is adopted at most this many times in a
#: row before giving up; one adoption is enough unless the other process keeps growing.
_MAX_RESIZE_ADOPTIONS = 3

_DISK_FULL_ERRNOS = tuple(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)
_DISK_FULL_TEXTS = tuple(os.strerror(code) for code in _DISK_FULL_ERRNOS)
#: LMDB reports a *short* write at commit as EIO, and that is what a disk filling up in the
#: middle of a commit produces (observed on a full tmpfs: "mdb_txn_commit: Input/output
#: error", never ENOSPC). An EIO with less than this much space left counts as disk full.
_SHORT_WRITE_TEXT = os.strerror(errno.EIO)
DISK_NEARLY_FULL_BYTES = 16 * 1024 * 1024
#: Room past ``max_map_size_bytes`` for writes that only remove data (deletes, wipes): in a
#: map full to its last page even a delete cannot commit, since it copies the pages it
#: changes (a face's whole 128 KiB feature block), and the operator's way out of a full map
#: is to delete. The map is shrunk back to the cap (or to what is used, if more) at once,
#: after one more commit: LMDB lets only transactions after the NEXT commit reuse the pages
#: a transaction freed, and in a full map no other write could commit to get there.
MAP_REMOVAL_RESERVE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Databases:
    """Handles of the named sub-databases, valid for the life of the environment."""

    identities: Any
    identity_order: Any
    group_members: Any
    faces: Any
    features: Any
    feature_free: Any
    images: Any
    permissions: Any
    permission_names: Any
    permission_order: Any
    devices: Any
    preview: Any
    events: Any
    push_queue: Any
    settings: Any
    meta: Any


class Txn:
    """One LMDB transaction and the database handles: what every repository function takes.

    ``raw`` is the ``lmdb.Transaction``; values come back as ``bytes`` (never buffers, which
    would dangle once the transaction ends or the map is replaced).
    """

    __slots__ = ("raw", "dbs", "write")

    def __init__(self, raw: lmdb.Transaction, dbs: Databases, write: bool) -> None:
        self.raw = raw
        self.dbs = dbs
        self.write = write

    def entries(self, db: Any) -> int:
        """Exact number of records in ``db`` as this transaction sees it (O(1))."""
        return int(self.raw.stat(db)["entries"])


class _ResizeGate:
    """A readers/writer gate: read transactions share it, map growth takes it alone.

    A pending growth blocks new readers, so a steady stream of reads cannot starve it.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive:
                self._cond.wait()
            self._exclusive = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


class Index(Protocol):
    """An in-memory index kept in step with LMDB, like the gallery (events.EventIndex)."""

    #: The change classes this index applies; others in a write's list are not for it.
    CHANGE_TYPES: Tuple[type, ...]

    def load_from_txn(self, txn: Txn) -> None: ...

    def apply(self, changes: Sequence[Any]) -> None: ...


class ReloadAll:
    """A change meaning "rebuild the gallery and every index from LMDB" (bulk erasure,
    wipedata): cheaper and safer than one removal per record, and still on the writer
    thread right after the commit, so no search sees the old library afterwards."""


RELOAD_ALL = ReloadAll()


def _touch(txn: Txn) -> Tuple[None, None]:
    meta.touch(txn)
    return None, None


class StoreClosed(RuntimeError):
    """The store is not open (used before ``open()`` or after ``close()``)."""


class Store:
    """The LMDB environment with its writer thread, read pool and (optional) gallery.

    ``gallery`` is loaded from LMDB by ``open()`` and kept in step by ``write()``; a tool
    that never searches (export) may leave it out, and then gallery changes are dropped.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        gallery: Optional[Gallery] = None,
        indexes: Sequence[Index] = (),
        map_size_bytes: int = DEFAULT_MAP_SIZE_BYTES,
        max_map_size_bytes: int = DEFAULT_MAX_MAP_SIZE_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
        read_threads: int = DEFAULT_READ_THREADS,
    ) -> None:
        if read_threads < 1:
            raise ValueError("read_threads must be >= 1")
        # LMDB wants map sizes in whole OS pages; round the cap down and the start up.
        page = mmap.PAGESIZE
        self._max_map_size_bytes = max(page, max_map_size_bytes // page * page)
        self._initial_map_size_bytes = min(
            self._max_map_size_bytes, -(-map_size_bytes // page) * page)
        self._data_dir = os.fspath(data_dir)
        self._path = os.path.join(self._data_dir, LMDB_SUBDIR)
        self._gallery = gallery
        self._indexes = tuple(indexes)
        self._min_free_bytes = min_free_bytes
        self._read_threads = read_threads
        self._gate = _ResizeGate()
        self._env: Optional[lmdb.Environment] = None
        self._dbs: Optional[Databases] = None
        self._writer: Optional[ThreadPoolExecutor] = None
        self._reader: Optional[ThreadPoolExecutor] = None
        self._writer_thread_id: Optional[int] = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def path(self) -> str:
        """Directory of the LMDB files (``<data_dir>/lmdb``)."""
        return self._path

    @property
    def gallery(self) -> Optional[Gallery]:
        return self._gallery

    @property
    def is_open(self) -> bool:
        return self._env is not None

    @property
    def map_size_bytes(self) -> int:
        """The current size of the memory map (grows on demand up to the configured cap)."""
        env = self._require_env()
        return int(env.info()["map_size"])

    async def open(self) -> None:
        """Open (creating if needed) the environment, then load the gallery from it."""
        if self._writer is not None:
            raise RuntimeError("store is already open")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer")
        self._reader = ThreadPoolExecutor(
            max_workers=self._read_threads, thread_name_prefix="store-read")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._writer, self._open_env)
            if self._gallery is not None:
                await self.read(self._gallery.load_from_txn)
            for index in self._indexes:
                await self.read(index.load_from_txn)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Finish queued writes, wait for running reads, close the environment."""
        writer, self._writer = self._writer, None
        if writer is None:
            return
        loop = asyncio.get_running_loop()
        try:
            # Queued behind every write already submitted: they all finish first.
            await loop.run_in_executor(writer, self._close_env)
        finally:
            writer.shutdown(wait=False)

    # ------------------------------------------------------------------ facade

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(txn, *args)`` in a read transaction on the read pool."""
        reader = self._require_pool(self._reader)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            reader, functools.partial(self._read_sync, fn, args))

    async def write(self, fn: Callable[..., Tuple[T, Optional[Sequence[GalleryChange]]]],
                    *args: Any, check_free_space: bool = True) -> T:
        """Run ``fn(txn, *args)`` in one write transaction on the writer thread.

        ``fn`` returns ``(result, gallery_changes)``; ``result`` is returned once the commit
        is durable and the changes are applied to the gallery. ``check_free_space=False``
        skips the free-space reserve, for changes that only remove data: an operator must be
        able to delete identities to get out of a full disk.

        Cancelling the awaiting coroutine does not cancel the write: it commits or not as a
        whole, whether or not anyone is still waiting.
        """
        writer = self._require_pool(self._writer)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            writer, functools.partial(self._write_sync, fn, args, check_free_space))

    async def run_in_read_pool(self, fn: Callable[..., T], *args: Any) -> T:
        """Run CPU work that does not touch LMDB (gallery search) off the event loop."""
        reader = self._require_pool(self._reader)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(reader, functools.partial(fn, *args))

    async def reload_gallery(self) -> None:
        """Rebuild the gallery from LMDB (after a bulk import by another process, say)."""
        if self._gallery is None:
            return
        writer = self._require_pool(self._writer)
        loop = asyncio.get_running_loop()
        # On the writer thread, so no write commits between the snapshot and the swap.
        await loop.run_in_executor(writer, self._reload_gallery_sync)

    # ------------------------------------------------------------------ worker threads

    def _open_env(self) -> None:
        self._writer_thread_id = threading.get_ident()
        os.makedirs(self._path, mode=0o700, exist_ok=True)
        # A layout change that rewrites the file (migrations.py); a no-op for current stores.
        from sophon_face.store import migrations  # imports this module
        migrations.upgrade_layout(self._path)
        env = lmdb.open(
            self._path,
            map_size=self._initial_map_size_bytes,
            max_dbs=len(DB_NAMES),
            max_readers=self._read_threads + READER_SLOT_HEADROOM,
            # writemap=False: with a writable map, a full disk surfaces as SIGBUS on a page
            # store instead of an ENOSPC error from write(); it also keeps stray pointer
            # writes from corrupting the file.
            writemap=False,
            # sync + metasync: fsync on commit, so an answered write survives power loss.
            sync=True,
            metasync=True,
            # Faces are biometric data: owner-only files.
            mode=0o600,
        )
        try:
            # Free reader slots left behind by a crashed earlier process.
            stale = env.reader_check()
            if stale:
                log.warning("cleared %d stale LMDB reader slot(s)", stale)
            with env.begin(write=True) as raw:
                handles = {name: env.open_db(name.encode("ascii"), txn=raw, create=True,
                                             dupsort=name in DUPSORT_DBS)
                           for name in DB_NAMES}
                dbs = Databases(**handles)
                meta.check_layout(Txn(raw, dbs, True))
        except BaseException:
            env.close()
            raise
        self._env, self._dbs = env, dbs
        log.info("store open at %s (map %d MiB, cap %d MiB)", self._path,
                 env.info()["map_size"] >> 20, self._max_map_size_bytes >> 20)

    def _close_env(self) -> None:
        with self._gate.exclusive():
            env, self._env, self._dbs = self._env, None, None
            if env is not None:
                env.close()
        reader, self._reader = self._reader, None
        if reader is not None:
            # No wait: the gate already drained running reads, and a read still queued
            # finds the environment gone and raises StoreClosed.
            reader.shutdown(wait=False)
        log.info("store closed")

    def _read_sync(self, fn: Callable[..., T], args: Tuple[Any, ...]) -> T:
        for _ in range(_MAX_RESIZE_ADOPTIONS):
            with self._gate.shared():
                env = self._require_env()
                try:
                    with env.begin(write=False, buffers=False) as raw:
                        return fn(Txn(raw, self._dbs, False), *args)
                except lmdb.MapResizedError:
                    pass
            # Adopt the other process's map size outside the shared gate (growth needs it
            # exclusively) and on the writer thread (no write transaction may be active).
            if threading.get_ident() == self._writer_thread_id:
                self._adopt_map_size()
            else:
                self._require_pool(self._writer).submit(self._adopt_map_size).result()
        raise lmdb.MapResizedError("the map keeps being resized by another process")

    def _write_sync(self, fn: Callable[..., Any], args: Tuple[Any, ...],
                    check_free_space: bool) -> Any:
        env = self._require_env()
        if check_free_space:
            self._check_free_space()
        try:
            return self._write_retrying(env, fn, args, removal=not check_free_space)
        finally:
            if not check_free_space and int(env.info()["map_size"]) > self._max_map_size_bytes:
                self._leave_reserve(env)

    def _write_retrying(self, env: lmdb.Environment, fn: Callable[..., Any],
                        args: Tuple[Any, ...], removal: bool) -> Any:
        adoptions = 0
        while True:
            try:
                result, changes = self._commit_once(env, fn, args)
            except lmdb.MapFullError:
                self._grow_map(env, removal)
                continue
            except lmdb.MapResizedError:
                adoptions += 1
                if adoptions > _MAX_RESIZE_ADOPTIONS:
                    raise
                self._adopt_map_size()
                continue
            except lmdb.Error as exc:
                if self._is_disk_full(exc):
                    log.error("write refused, disk full: %s", exc)
                    raise InsufficientSpaceLeft() from exc
                raise
            self._apply_changes(changes)
            return result

    def _commit_once(self, env: lmdb.Environment, fn: Callable[..., Any],
                     args: Tuple[Any, ...]) -> Tuple[Any, Any]:
        raw = env.begin(write=True, buffers=False)
        try:
            outcome = fn(Txn(raw, self._dbs, True), *args)
            if not (isinstance(outcome, tuple) and len(outcome) == 2):
                raise TypeError(
                    f"write function {getattr(fn, '__name__', fn)!r} must return "
                    f"(result, gallery_changes), got {type(outcome).__name__}")
            raw.commit()
        except BaseException:
            # After a failed commit the transaction is already gone and abort() is a no-op;
            # after any other failure this drops every change the function made.
            raw.abort()
            raise
        return outcome

    def _grow_map(self, env: lmdb.Environment, removal: bool = False) -> None:
        current = int(env.info()["map_size"])
        cap = self._max_map_size_bytes + (MAP_REMOVAL_RESERVE_BYTES if removal else 0)
        if current >= cap:
            log.error("LMDB map is at its configured maximum (%d MiB); refusing the write",
                      current >> 20)
            raise InsufficientSpaceLeft()
        new_size = min(current * 2, cap)
        with self._gate.exclusive():
            env.set_mapsize(new_size)
        log.info("LMDB map grown from %d MiB to %d MiB", current >> 20, new_size >> 20)

    def _leave_reserve(self, env: lmdb.Environment) -> None:
        """After a removal grew the map into its reserve: one more (empty-looking) commit
        so the next write may reuse what the removal freed, then the map back to the cap,
        so other writes cannot use the reserve (LMDB keeps at least the pages in use)."""
        try:
            self._write_retrying(env, _touch, (), removal=True)
        except Exception:
            log.exception("the commit after a removal in a full map failed")
        with self._gate.exclusive():
            env.set_mapsize(self._max_map_size_bytes)
        log.info("LMDB map back to %d MiB after a removal used its reserve",
                 env.info()["map_size"] >> 20)

    def _adopt_map_size(self) -> None:
        env = self._require_env()
        with self._gate.exclusive():
            env.set_mapsize(0)  # 0 = take the size another process recorded
        log.info("adopted LMDB map size %d MiB set by another process",
                 env.info()["map_size"] >> 20)

    def _check_free_space(self) -> None:
        free = shutil.disk_usage(self._path).free
        if free < self._min_free_bytes:
            log.error("write refused: %d MiB free on %s, reserve is %d MiB",
                      free >> 20, self._path, self._min_free_bytes >> 20)
            raise InsufficientSpaceLeft()

    def _apply_changes(self, changes: Optional[Sequence[Any]]) -> None:
        if not changes:
            return
        if any(isinstance(c, ReloadAll) for c in changes):
            self._reload_gallery_sync()
            for index in self._indexes:
                self._read_sync(index.load_from_txn, ())
            return
        for index in self._indexes:
            mine = [c for c in changes if isinstance(c, index.CHANGE_TYPES)]
            if mine:
                try:
                    index.apply(mine)
                except Exception:
                    log.exception("%s update failed after commit; reloading it from LMDB",
                                  type(index).__name__)
                    self._read_sync(index.load_from_txn, ())
        changes = [c for c in changes
                   if not any(isinstance(c, index.CHANGE_TYPES) for index in self._indexes)]
        if not changes or self._gallery is None:
            return
        try:
            self._gallery.apply(changes)
        except Exception:
            # The commit stands, so the gallery must follow it: rebuild from what LMDB
            # holds rather than leave searches answering from a stale library.
            log.exception("gallery update failed after commit; rebuilding from LMDB")
            self._reload_gallery_sync()

    def _reload_gallery_sync(self) -> None:
        if self._gallery is not None:
            self._read_sync(self._gallery.load_from_txn, ())

    def _is_disk_full(self, exc: lmdb.Error) -> bool:
        """ENOSPC / EDQUOT from LMDB, or a short write (EIO) on a disk that is now full.

        py-lmdb maps ENOSPC to ``DiskError``; newer releases also carry ``code``; older C
        builds only put ``strerror`` into the message, so the text is the last resort.
        """
        if isinstance(exc, lmdb.DiskError):
            return True
        code = getattr(exc, "code", None)
        if code in _DISK_FULL_ERRNOS:
            return True
        text = str(exc)
        if any(reason in text for reason in _DISK_FULL_TEXTS):
            return True
        if code == errno.EIO or _SHORT_WRITE_TEXT in text:
            free = shutil.disk_usage(self._path).free
            return free < max(self._min_free_bytes, DISK_NEARLY_FULL_BYTES)
        return False

    def _require_env(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            raise StoreClosed("store is not open")
        return env

    @staticmethod
    def _require_pool(pool: Optional[ThreadPoolExecutor]) -> ThreadPoolExecutor:
        if pool is None:
            raise StoreClosed("store is not open")
        return pool

