"""``sophon-face backup``: a consistent copy of a live store (the daemon keeps running).

    sophon-face backup FILE [--data-dir DIR] [--config FILE] [--with-event-images]

The archive's format and its manifest: ``backup_manifest.py``; putting a backup back:
``restore.py``.

Backup (the daemon keeps running)
---------------------------------
1. The store's environment is opened read-only beside the daemon. LMDB allows that: every
   process, readers included, takes a shared lock on ``lock.mdb`` and a slot in its reader
   table (the daemon leaves ``env.READER_SLOT_HEADROOM`` slots for such tools).
2. LMDB's compacting copy (``mdb_env_copyfd2`` with ``MDB_CP_COMPACT``) writes the database
   into a file beside the archive. It runs inside ONE read transaction, so every write
   transaction the daemon commits meanwhile is either wholly in the copy or not at all, and
   the daemon's writes never wait for it. Compacting leaves out free pages and writes the
   live ones in order: the copy is what ``data.mdb`` would be if it had been written once.
   While the copy runs, pages the daemon frees cannot be reused, so its file grows by about
   what it writes meanwhile (bench/backup.py). FILE's folder needs room for the copy and the
   archive at once (about twice the store) until the copy is deleted.
3. The manifest is read from the copy itself (so it describes exactly the copied data, not a
   moment before or after): the store layout version, the record schema versions of this
   release, the number of identities, faces, groups, events and devices, the dimension of the
   stored features; plus the recognizer of the configuration's model manifest (family, file,
   sha256, dimension) and the sha256 of the copy. The store does not record which model
   extracted its features, so the recognizer is taken from the configuration; one whose
   dimension disagrees with the stored features is not recorded (and a warning says so).
4. With ``--with-event-images``, the image files of the events IN THE COPY are added, from
   the local and the remote event-image folders (event images live outside LMDB,
   api/README.md 4.7). They are written before their event commits
   and deleted after its deletion commits, so every event in the copy had its files when the
   copy was taken; a file the daemon deleted since (retention) is counted as missing. Files
   of events not in the copy are left out.
5. The archive (its members: ``backup_manifest.py``) is written to a temporary name and
   renamed, so FILE is either the previous archive or the complete new one. It holds
   biometric data: it is created owner-only (0600).

The copy and the partial archive live in a work folder beside FILE named after FILE and
the backup's pid (``.FILE.<pid>.<random>``), removed at the end. A backup that was killed
(SIGKILL, power) cannot remove its own; the next backup to the same FILE removes those of
processes that no longer exist, so a killed backup never leaves a copy of the store behind
for good (tests/integration/test_faults.py).

Exit status: 0 written; 1 failed (no archive written); 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import logging
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from .. import __version__
from ..durable import fsync_dir
from .backup_manifest import (COPY_CHUNK_BYTES, DATA_FILE, DATA_MEMBER, EVENTS_MEMBER_DIR,
                              EXIT_FAILED, EXIT_OK, EXIT_USAGE, MANIFEST_MEMBER, BackupError,
                              BackupManifest, EventImagesInfo, RecognizerInfo, StoreSummary,
                              open_store_file, start_command, summarize)

# The store (LMDB, numpy, msgpack) is imported where it is used: the CLI imports this module
# for every command, and ``sophon-face health`` must stay stdlib-only.
if TYPE_CHECKING:
    from ..store.env import Txn

log = logging.getLogger(__name__)

#: gzip level when FILE asks for compression: features are random-looking floats and photos
#: are JPEG, so a stronger level costs much more time for little size (bench/backup.py).
GZIP_LEVEL = 1
#: A read transaction can find the map grown by the daemon (MDB_MAP_RESIZED): adopt the new
#: size and try again, this many times.
MAX_MAP_ADOPTIONS = 3


@dataclass
class BackupResult:
    archive: Path
    manifest: BackupManifest
    archive_bytes: int
    copy_s: float
    elapsed_s: float

    def lines(self) -> List[str]:
        m = self.manifest
        lines = [f"backup written: {self.archive} ({self.archive_bytes / 1e6:.1f} MB, "
                 f"{self.elapsed_s:.1f} s; store copy {m.data_bytes / 1e6:.1f} MB in "
                 f"{self.copy_s:.1f} s)",
                 f"store layout {m.store.layout_version}: {m.store.counts_text()}",
                 f"features: {_dims_text(m.store.feature_dims)}; "
                 f"recognizer: {m.recognizer.describe() if m.recognizer else 'not recorded'}",
                 f"data.mdb sha256 {m.data_sha256}"]
        if m.event_images is not None:
            lines.append(f"event images: {m.event_images.files} files "
                         f"({m.event_images.bytes / 1e6:.1f} MB), {m.event_images.missing} "
                         "named by events but gone")
        return lines


def _dims_text(dims: Sequence[int]) -> str:
    return "/".join(str(d) for d in dims) + "-d" if dims else "none"


def create_backup(data_dir: Path, archive: Path, *,
                  recognizer: Optional[RecognizerInfo] = None,
                  event_image_dirs: Optional[Sequence[Path]] = None,
                  compress: Optional[bool] = None) -> BackupResult:
    """Write a backup of the store in ``data_dir`` (its daemon may be running) to
    ``archive``. ``event_image_dirs``: include the event images found there (the daemon's
    local and remote folders), None for none. ``compress``: gzip; by default when the
    archive's name ends in .gz or .tgz."""
    from ..store import codec
    from ..store.env import LMDB_SUBDIR

    started = time.monotonic()
    lmdb_dir = Path(data_dir) / LMDB_SUBDIR
    if not (lmdb_dir / DATA_FILE).is_file():
        raise BackupError(f"{data_dir} holds no store (no {LMDB_SUBDIR}/{DATA_FILE})")
    archive = Path(archive)
    if compress is None:
        compress = archive.name.endswith((".gz", ".tgz"))
    archive.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(archive)
    work = Path(tempfile.mkdtemp(prefix=f".{archive.name}.{os.getpid()}.",
                                 dir=str(archive.parent)))
    try:
        copy = work / DATA_FILE
        copy_started = time.monotonic()
        _compact_copy(lmdb_dir, copy)
        copy_s = time.monotonic() - copy_started
        data_sha256 = _sha256_of(copy)
        with open_store_file(copy) as txn:
            summary = summarize(txn)
            image_ids = _event_image_ids(txn) if event_image_dirs is not None else []
        recognizer = _recognizer_for(summary, recognizer)
        images = (_locate_event_images(image_ids, event_image_dirs)
                  if event_image_dirs is not None else None)
        manifest = BackupManifest(
            created_at=datetime.datetime.now(datetime.timezone.utc).strftime(
                "%Y-%m-%dT%H:%M:%SZ"),
            created_by=f"sophon-face {__version__}", store=summary,
            record_schemas=dict(codec.SCHEMA_VERSIONS), recognizer=recognizer,
            data_bytes=copy.stat().st_size, data_sha256=data_sha256,
            event_images=None if images is None else images.info)
        partial = work / archive.name
        _write_archive(partial, manifest, copy, images, compress)
        copy.unlink()  # before the rename: the disk holds one copy less at the end
        os.replace(str(partial), str(archive))
        fsync_dir(archive.parent)
    finally:
        shutil.rmtree(str(work), ignore_errors=True)
    result = BackupResult(archive, manifest, archive.stat().st_size, copy_s,
                          time.monotonic() - started)
    log.info("backup of %s: %d faces, %d identities, %d events -> %s (%d bytes) in %.1f s",
             data_dir, summary.counts["faces"], summary.counts["identities"],
             summary.counts["events"], archive, result.archive_bytes, result.elapsed_s)
    return result


def _remove_abandoned_work(archive: Path) -> None:
    """Remove the work folders of earlier backups to ``archive`` whose process is gone."""
    prefix = f".{archive.name}."
    try:
        entries = list(os.scandir(str(archive.parent)))
    except OSError:
        return
    for entry in entries:
        pid_text = entry.name[len(prefix):].partition(".")[0]
        if not (entry.name.startswith(prefix) and pid_text.isdigit()
                and entry.is_dir(follow_symlinks=False)) or _process_exists(int(pid_text)):
            continue
        log.warning("removing %s, left by a backup that did not finish", entry.path)
        shutil.rmtree(entry.path, ignore_errors=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists, as another user
        return True
    return True


def _compact_copy(lmdb_dir: Path, target: Path) -> None:
    """LMDB's compacting copy of the environment in ``lmdb_dir`` into the new file
    ``target``, taken inside one read transaction (see the module doc)."""
    import lmdb

    from ..store.env import DB_NAMES

    # Mapped larger than the file (read-only: no space is taken) so that the daemon growing
    # the map during the copy rarely makes us start over.
    size = os.path.getsize(str(lmdb_dir / DATA_FILE))
    env = lmdb.open(str(lmdb_dir), readonly=True, lock=True, max_dbs=len(DB_NAMES),
                    map_size=max(2 * size, 1 << 20))
    try:
        fd = os.open(str(target), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            for attempt in range(MAX_MAP_ADOPTIONS + 1):
                try:
                    env.copyfd(fd, compact=True)
                    break
                except lmdb.MapResizedError:
                    # The daemon grew the map since we opened it: take its size, start over.
                    if attempt == MAX_MAP_ADOPTIONS:
                        raise BackupError("the store's map keeps growing under the copy; "
                                          "try again") from None
                    env.set_mapsize(0)
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)
            # No fsync: a scratch file, read back at once and deleted; the archive is synced.
        finally:
            os.close(fd)
    finally:
        env.close()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(str(path), "rb") as fh:
        while True:
            chunk = fh.read(COPY_CHUNK_BYTES)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def _recognizer_for(summary: StoreSummary,
                    recognizer: Optional[RecognizerInfo]) -> Optional[RecognizerInfo]:
    """The configured recognizer, unless the stored features show it did not make them."""
    if recognizer is None:
        log.warning("no recognizer configured: the backup records only the features' "
                    "dimension")
        return None
    if summary.feature_dims and summary.feature_dims != (recognizer.feature_dim,):
        log.warning("the stored features are %s-d but the configured recognizer %s makes "
                    "%d-d ones: the recognizer is not recorded (is --config the daemon's?)",
                    "/".join(str(d) for d in summary.feature_dims), recognizer.describe(),
                    recognizer.feature_dim)
        return None
    return recognizer


def _event_image_ids(txn: Txn) -> List[str]:
    from ..store import events

    if txn.dbs.events is None:
        return []
    return [image_id for record in events.iter_all(txn) for image_id in events.image_ids(record)]


@dataclass
class _EventImages:
    #: (member name, path) of each image file found.
    files: List[Tuple[str, Path]] = field(default_factory=list)
    info: EventImagesInfo = field(default_factory=EventImagesInfo)


def _locate_event_images(image_ids: Sequence[str], dirs: Sequence[Path]) -> _EventImages:
    from ..store.event_images import EventImageFiles

    dirs = [Path(d) for d in dirs]
    files = EventImageFiles(dirs, current_dir=lambda: dirs[0]) if dirs else None
    found: List[Tuple[str, Path]] = []
    total = missing = 0
    for image_id in image_ids:
        path = None
        if files is not None:
            for base in dirs:
                candidate = files.path_of(base, image_id)
                if candidate.is_file():
                    path = candidate
                    break
        if path is None:
            missing += 1
            continue
        found.append((f"{EVENTS_MEMBER_DIR}/{path.parent.name}/{path.name}", path))
        total += path.stat().st_size
    if missing:
        log.warning("%d event image(s) named by events in the copy were not found (deleted "
                    "by retention since, or removed by hand)", missing)
    return _EventImages(found, EventImagesInfo(len(found), total, missing))


def _write_archive(path: Path, manifest: BackupManifest, data_file: Path,
                   images: Optional[_EventImages], compress: bool) -> None:
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "wb") as out:
        tar_kwargs: Dict[str, Any] = {"compresslevel": GZIP_LEVEL} if compress else {}
        with tarfile.open(fileobj=out, mode="w:gz" if compress else "w",
                          format=tarfile.PAX_FORMAT, copybufsize=COPY_CHUNK_BYTES,
                          **tar_kwargs) as tar:
            now = time.time()
            body = manifest.to_json()
            tar.addfile(_member(MANIFEST_MEMBER, len(body), now), io.BytesIO(body))
            with open(str(data_file), "rb") as data:
                tar.addfile(_member(DATA_MEMBER, manifest.data_bytes, now), data)
            missing = 0
            for name, image in (images.files if images is not None else ()):
                try:
                    with open(str(image), "rb") as fh:
                        blob = fh.read()
                except FileNotFoundError:  # deleted since it was located
                    missing += 1
                    continue
                tar.addfile(_member(name, len(blob), now), io.BytesIO(blob))
            if missing:
                # The manifest is already written; the restore counts what it finds.
                log.warning("%d event image(s) disappeared while the archive was written",
                            missing)
        out.flush()
        os.fsync(out.fileno())


def _member(name: str, size: int, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o600
    info.mtime = int(mtime)
    return info


# ================================================================== CLI

def add_backup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="archive to write (a tar; gzip when it ends in .gz or "
                                     ".tgz); replaced atomically if it exists")
    parser.add_argument("--data-dir", dest="data_dir",
                        help="the daemon's data directory (default: the configuration's); "
                             "the daemon may be running")
    parser.add_argument("--config", help="the daemon's configuration file: its recognizer is "
                                         "recorded, its event-image folders are read")
    parser.add_argument("--with-event-images", dest="with_event_images", action="store_true",
                        help="include the image files of the events in the backup")


def backup_main(args: argparse.Namespace) -> int:
    """The ``backup`` command: 0 written, 1 failed (no archive written), 2 bad usage."""
    import lmdb

    from ..store.codec import StoreFormatError

    configured = start_command(args, "backup")
    if configured is None:
        return EXIT_USAGE
    config, recognizer = configured
    dirs = ([config.event_image_dir, config.remote_event_image_dir]
            if args.with_event_images else None)
    try:
        result = create_backup(config.data_dir, Path(args.file), recognizer=recognizer,
                               event_image_dirs=dirs)
    except (BackupError, lmdb.Error, StoreFormatError, OSError) as exc:
        print(f"sophon-face backup: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for line in result.lines():
        print(line)
    return EXIT_OK
