"""``sophon-face restore``: putting a backup back (the daemon stopped).

    sophon-face restore FILE [--data-dir DIR] [--config FILE] [--discard-old]
                        [--ignore-recognizer-model]

FILE is an archive of ``sophon-face backup`` (``backup.py``; its format:
``backup_manifest.py``).

1. An exclusive lock on byte 0 of ``lmdb/lock.mdb`` - the byte every LMDB process holds a
   shared lock on while it has the environment open - is taken without waiting. If a process
   holds the store (a running daemon, an import), the restore is refused. The lock is held to
   the end, so a daemon started meanwhile waits instead of opening the store half-restored.
2. ``manifest.json`` (the archive's first member) is checked before anything is written: a
   newer store layout or record schema than this release reads, or a recognizer whose
   features cannot be compared with the stored ones (another dimension; another model, by
   sha256 or else by family and file), refuses the restore with a message that says which.
3. ``data.mdb`` is written beside the live one (``lmdb/data.mdb.restoring``), hashed on the
   way and synced; a checksum or size mismatch refuses. The copy is opened and described
   again and must match its manifest (layout, counts, dimensions).
4. The swap: the live file is kept as ``lmdb/data.mdb.bak`` (a hard link, so the old store
   stays whole whatever happens next), then ``os.replace`` puts the new file in place of
   ``data.mdb`` in one atomic step, and the folder is synced. A failure or a crash before
   this step leaves the live store exactly as it was (a leftover ``.restoring`` file is
   removed by the next restore). With ``--discard-old`` no link is made and an earlier
   ``data.mdb.bak`` is deleted after the swap; by default the replaced store is kept
   (rolling back = stop the daemon, rename ``data.mdb.bak`` to ``data.mdb``).
5. LMDB's lock file describes the environment it was last opened with (the last transaction
   id, the reader table), and an opener that finds it in use trusts it. It is emptied while
   our lock is still held: the next opener finds no one else, takes it exclusively and
   rebuilds it from the restored file; a daemon that was waiting for our lock finds an
   empty lock file and fails to open (systemd starts it again) instead of running with the
   replaced file's transaction id.
6. Event images in the archive are then moved into the event-image directory
   (``events.image_dir``, by default ``<data_dir>/events``), replacing files of the same
   name. Images of events that are not in the restored store are removed by the daemon's
   orphan sweep at its next start. Without event images in the archive, the image folder is
   not touched: restored events whose files are gone answer without images.

Lock semantics are those of ``fcntl`` record locks: valid between processes of one machine on
a local file system (not over NFS), which is how the daemon runs.

Exit status: 0 restored; 1 refused or failed (the store is unchanged unless the message says
otherwise); 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import gzip
import hashlib
import logging
import os
import shutil
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, List, Optional, Sequence, Tuple

from ..durable import fsync_dir, remove_if_present
from .backup_manifest import (COPY_CHUNK_BYTES, DATA_FILE, DATA_MEMBER, EVENT_MEMBER,
                              EXIT_FAILED, EXIT_OK, EXIT_USAGE, MANIFEST_MEMBER,
                              MAX_MANIFEST_BYTES, BackupError, BackupManifest, ManifestError,
                              RecognizerInfo, RestoreRefused, check_compatible,
                              open_store_file, start_command, summarize)

# The store (LMDB, numpy, msgpack) is imported where it is used: the CLI imports this module
# for every command, and ``sophon-face health`` must stay stdlib-only.

log = logging.getLogger(__name__)

#: Free space kept beyond the restored file (LMDB grows the file after a restore).
RESTORE_FREE_MARGIN_BYTES = 64 * 1024 * 1024
LOCK_FILE = "lock.mdb"
STAGED_SUFFIX = ".restoring"
KEPT_SUFFIX = ".bak"
EVENTS_STAGING_DIR = ".restoring"


@dataclass
class RestoreResult:
    store_dir: Path
    manifest: BackupManifest
    kept_old: Optional[Path]
    event_images: int
    elapsed_s: float

    def lines(self) -> List[str]:
        m = self.manifest
        lines = [f"restored into {self.store_dir} in {self.elapsed_s:.1f} s: "
                 f"backup of {m.created_at} ({m.created_by}), store layout "
                 f"{m.store.layout_version}",
                 m.store.counts_text()]
        if m.event_images is not None:
            lines.append(f"event images: {self.event_images} restored")
        lines.append(f"previous store kept as {self.kept_old}" if self.kept_old else
                     "no previous store kept")
        return lines


def read_manifest(archive: Path) -> BackupManifest:
    """The manifest of an archive (its first member), without reading the rest."""
    with _open_archive(Path(archive)) as tar:
        return _next_manifest(tar)


def restore_backup(archive: Path, data_dir: Path, recognizer: RecognizerInfo, *,
                   event_image_dir: Optional[Path] = None, keep_old: bool = True,
                   ignore_recognizer_model: bool = False,
                   before_swap: Optional[Callable[[], None]] = None) -> RestoreResult:
    """Replace the store in ``data_dir`` (its daemon stopped) with the archive's, atomically
    (see the module doc). ``event_image_dir``: where the archive's event images go (None:
    ``<data_dir>/events``). ``before_swap`` is a test hook (a failure just before the swap).
    """
    from ..store.env import LMDB_SUBDIR

    started = time.monotonic()
    archive, data_dir = Path(archive), Path(data_dir)
    if not archive.is_file():
        raise BackupError(f"{archive}: no such archive")
    lmdb_dir = data_dir / LMDB_SUBDIR
    lmdb_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    image_dir = Path(event_image_dir) if event_image_dir is not None else data_dir / "events"
    live = lmdb_dir / DATA_FILE
    staged = lmdb_dir / (DATA_FILE + STAGED_SUFFIX)
    kept = lmdb_dir / (DATA_FILE + KEPT_SUFFIX)
    image_staging = image_dir / EVENTS_STAGING_DIR
    with _StoreLock(lmdb_dir) as lock:
        remove_if_present(staged)  # a crashed earlier restore's
        shutil.rmtree(str(image_staging), ignore_errors=True)
        keeping = keep_old and live.exists()
        try:
            with _open_archive(archive) as tar:
                manifest = _next_manifest(tar)
                check_compatible(manifest, recognizer,
                                 ignore_recognizer_model=ignore_recognizer_model)
                _check_free_space(lmdb_dir, manifest.data_bytes + RESTORE_FREE_MARGIN_BYTES)
                if manifest.event_images is not None:
                    image_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                    _check_free_space(image_dir, manifest.event_images.bytes)
                _stage_data(tar, staged, manifest)
                staged_images = _stage_event_images(tar, image_staging, manifest)
            _verify_staged(staged, manifest)
            if before_swap is not None:
                before_swap()
            if keeping:
                # A second name for the live file: whatever happens from here on, the old
                # store stays whole (a link, not a copy: no time, no space).
                remove_if_present(kept)
                os.link(str(live), str(kept))
        except BaseException:
            remove_if_present(staged)
            shutil.rmtree(str(image_staging), ignore_errors=True)
            raise
        # ---- the swap, one atomic rename: from here on the restored store is the store
        os.replace(str(staged), str(live))
        try:
            fsync_dir(lmdb_dir)
            lock.invalidate_lock_file()
            log.info("restored the store of %s in %s", archive, lmdb_dir)
            restored_images = _move_event_images(image_staging, image_dir, staged_images)
            if not keep_old:
                remove_if_present(kept)  # an earlier restore's: no replaced store stays on the disk
        except OSError as exc:
            raise BackupError(
                f"the store WAS restored, but finishing failed: {exc}; run the restore "
                "again before starting the daemon") from exc
    return RestoreResult(lmdb_dir, manifest, kept if keeping else None,
                         restored_images, time.monotonic() - started)


class _StoreLock:
    """An exclusive fcntl lock on byte 0 of ``lock.mdb``: LMDB's own "is the environment
    open anywhere" byte (every opener holds it shared; an opener that finds it exclusively
    held waits). Taken without waiting: a holder means a running daemon."""

    def __init__(self, lmdb_dir: Path) -> None:
        self._path = lmdb_dir / LOCK_FILE
        self._fd: Optional[int] = None

    def __enter__(self) -> _StoreLock:
        fd = os.open(str(self._path), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 0)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            from .targets import lmdb_holder  # the pid, for the message

            holder = lmdb_holder(self._path.parent.parent)
            who = f"process {holder}" if holder else "another process"
            raise RestoreRefused(
                f"{who} has the store in {self._path.parent.parent} open (is the daemon "
                "running?): stop it before restoring") from None
        self._fd = fd
        return self

    def invalidate_lock_file(self) -> None:
        """Empty ``lock.mdb`` while holding it: its reader table and transaction id are the
        previous file's. The next opener finds it empty, takes it exclusively and rebuilds
        it; one that was already waiting for us fails to open (see the module doc)."""
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    def __exit__(self, *exc_info: Any) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the lock
            self._fd = None


@contextlib.contextmanager
def _open_archive(archive: Path) -> Iterator[tarfile.TarFile]:
    try:
        # Stream mode: members in order, plain or gzip, never a seek.
        tar = tarfile.open(str(archive), mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise RestoreRefused(f"{archive} is not a readable backup archive: {exc}") from None
    try:
        yield tar
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        # Truncated: tarfile's "unexpected end of data", gzip's EOFError; corrupt: the rest.
        raise RestoreRefused(f"{archive} is damaged or truncated: {exc}") from None
    finally:
        tar.close()


def _next_manifest(tar: tarfile.TarFile) -> BackupManifest:
    member = tar.next()
    if member is None or member.name != MANIFEST_MEMBER or not member.isfile():
        raise ManifestError(f"the archive does not start with {MANIFEST_MEMBER}: not a "
                            "sophon-face backup")
    if member.size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST_MEMBER} of {member.size} bytes is not a manifest")
    source = tar.extractfile(member)
    assert source is not None
    return BackupManifest.from_json(source.read())


def _stage_data(tar: tarfile.TarFile, staged: Path, manifest: BackupManifest) -> None:
    member = tar.next()
    if member is None or member.name != DATA_MEMBER or not member.isfile():
        raise RestoreRefused(f"the archive has no {DATA_MEMBER} after its manifest")
    if member.size != manifest.data_bytes:
        raise RestoreRefused(f"{DATA_MEMBER} has {member.size} bytes, the manifest says "
                             f"{manifest.data_bytes}: the archive is damaged")
    source = tar.extractfile(member)
    assert source is not None
    digest = hashlib.sha256()
    fd = os.open(str(staged), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as out:
        _copy_hashing(source, out, digest)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != manifest.data_sha256:
        raise RestoreRefused(
            f"checksum mismatch: {DATA_MEMBER} has sha256 {digest.hexdigest()}, the manifest "
            f"says {manifest.data_sha256}: the archive is damaged; nothing was changed")


def _stage_event_images(tar: tarfile.TarFile, staging: Path,
                        manifest: BackupManifest) -> List[Tuple[str, str]]:
    """Write the archive's event images under ``staging``; (day, file name) of each."""
    staged: List[Tuple[str, str]] = []
    # tar.next(), not iteration: iterating a TarFile starts over at its first member.
    for member in iter(tar.next, None):
        match = EVENT_MEMBER.match(member.name)
        if manifest.event_images is None or match is None or not member.isfile():
            raise RestoreRefused(f"unexpected member {member.name!r} in the archive")
        day, name = match.group(1), match.group(2) + ".jpg"
        folder = staging / day
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        source = tar.extractfile(member)
        assert source is not None
        fd = os.open(str(folder / name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as out:
            shutil.copyfileobj(source, out, COPY_CHUNK_BYTES)
            out.flush()
            os.fsync(out.fileno())
        staged.append((day, name))
    return staged


def _verify_staged(staged: Path, manifest: BackupManifest) -> None:
    """The staged file opens and holds what its manifest says (a manifest edited to pass
    the compatibility check does not get a store of another layout or dimension in)."""
    import lmdb

    from ..store.codec import StoreFormatError

    try:
        with open_store_file(staged) as txn:
            found = summarize(txn)
    except (lmdb.Error, StoreFormatError) as exc:
        raise RestoreRefused(f"the archive's {DATA_MEMBER} is not a readable store: "
                             f"{exc}") from None
    expected = manifest.store
    if (found.layout_version, dict(found.counts), found.feature_dims) != (
            expected.layout_version, dict(expected.counts), expected.feature_dims):
        raise RestoreRefused(
            f"the archive's {DATA_MEMBER} does not match its manifest (layout "
            f"{found.layout_version}, {dict(found.counts)}, {found.feature_dims}-d; manifest: "
            f"layout {expected.layout_version}, {dict(expected.counts)}, "
            f"{expected.feature_dims}-d)")


def _move_event_images(staging: Path, image_dir: Path,
                       staged: Sequence[Tuple[str, str]]) -> int:
    days = set()
    for day, name in staged:
        target = image_dir / day
        if day not in days:
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            days.add(day)
        os.replace(str(staging / day / name), str(target / name))
    for day in days:
        fsync_dir(image_dir / day)
    shutil.rmtree(str(staging), ignore_errors=True)
    return len(staged)


def _check_free_space(path: Path, needed: int) -> None:
    free = shutil.disk_usage(str(path)).free
    if free < needed:
        raise RestoreRefused(f"restoring needs about {needed >> 20} MiB free on {path}, "
                             f"{free >> 20} MiB are: the new store is written beside the "
                             "old one; free some space")


# ================================================================== files

def _copy_hashing(source: IO[bytes], out: IO[bytes], digest: Any) -> None:
    while True:
        chunk = source.read(COPY_CHUNK_BYTES)
        if not chunk:
            return
        digest.update(chunk)
        out.write(chunk)




# ================================================================== CLI

def add_restore_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="archive written by 'sophon-face backup'")
    parser.add_argument("--data-dir", dest="data_dir",
                        help="the data directory to restore into (default: the "
                             "configuration's); its daemon must be stopped")
    parser.add_argument("--config", help="the daemon's configuration file: the backup must "
                                         "fit its recognizer; event images go to its folder")
    parser.add_argument("--discard-old", dest="discard_old", action="store_true",
                        help=f"delete the replaced store after the swap (default: kept as "
                             f"lmdb/{DATA_FILE}{KEPT_SUFFIX})")
    parser.add_argument("--ignore-recognizer-model", dest="ignore_recognizer_model",
                        action="store_true",
                        help="accept features of another model file of the same dimension "
                             "(only when known to give the same features)")


def restore_main(args: argparse.Namespace) -> int:
    """The ``restore`` command: 0 restored, 1 refused or failed (the store is unchanged
    unless the message says otherwise), 2 bad usage."""
    import lmdb

    configured = start_command(args, "restore")
    if configured is None:
        return EXIT_USAGE
    config, recognizer = configured
    try:
        result = restore_backup(Path(args.file), config.data_dir, recognizer,
                                event_image_dir=config.event_image_dir,
                                keep_old=not args.discard_old,
                                ignore_recognizer_model=args.ignore_recognizer_model)
    except RestoreRefused as exc:
        print(f"sophon-face restore: refused: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (BackupError, lmdb.Error, OSError) as exc:
        print(f"sophon-face restore: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in result.lines():
        print(line)
    return EXIT_OK
