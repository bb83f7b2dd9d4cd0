"""The backup archive's format: its members, its ``manifest.json``, and which backups a release
can restore (``check_compatible``).

``backup.py`` writes archives (``sophon-face backup``), ``restore.py`` puts them back
(``sophon-face restore``). Both read a store file's summary through this module: the backup
to describe its copy, the restore to check the file it staged against the copy's manifest.
The two commands' exit codes, errors and configuration loading are here too.

The archive is a tar (gzip-compressed when FILE ends in ``.gz`` or ``.tgz``): first
``manifest.json``, then ``data.mdb``, then ``events/<YYYYMMDD>/<image id>.jpg``.
``manifest.json`` names its ``ARCHIVE_FORMAT_VERSION``; a reader refuses newer ones. What the
manifest records, and from what: backup.py, step 3. What a restore accepts: restore.py,
step 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Mapping, Optional, Tuple

# The store (LMDB, numpy, msgpack) is imported where it is used: the CLI builds its parser
# from the backup and restore modules for every command, and ``sophon-face health`` must
# stay stdlib-only.
if TYPE_CHECKING:
    import lmdb

    from ..store.env import Txn

log = logging.getLogger(__name__)

#: Version of the archive layout (member names, manifest fields). A reader refuses newer ones.
ARCHIVE_FORMAT_VERSION = 1
ARCHIVE_FORMAT = "sophon-face-backup"
MANIFEST_MEMBER = "manifest.json"
DATA_MEMBER = "data.mdb"
EVENTS_MEMBER_DIR = "events"
#: The oldest store layout this release can open (and upgrade: meta.py, migrations.py).
MIN_LAYOUT_VERSION = 1
#: A manifest is a few hundred bytes; anything this large is not one of ours.
MAX_MANIFEST_BYTES = 1 << 20
COPY_CHUNK_BYTES = 1 << 20
#: The store's file in ``<data_dir>/lmdb`` (what the archive's ``data.mdb`` replaces).
DATA_FILE = "data.mdb"

#: Manifest count name -> the database whose entry count it is.
COUNTED_DATABASES: Tuple[Tuple[str, str], ...] = (
    ("identities", "identities"),
    ("faces", "faces"),
    ("groups", "permissions"),
    ("events", "events"),
    ("devices", "devices"),
    ("register_images", "images"),
    ("pending_pushes", "push_queue"),
)

#: An event image's member name: ``events/<YYYYMMDD>/<image id>.jpg``.
EVENT_MEMBER = re.compile(r"^events/([0-9]{8})/((?:face|spot)-[0-9]{1,20})\.jpg$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

EXIT_OK = 0
#: Refused or failed; the archive (backup) or the live store (restore) is unchanged.
EXIT_FAILED = 1
#: Bad arguments or configuration: nothing was tried.
EXIT_USAGE = 2


class BackupError(Exception):
    """The backup or restore could not be done; the message says why, for an operator."""


class RestoreRefused(BackupError):
    """The archive must not be restored here (incompatible, damaged, or the store in use);
    nothing was changed."""


class ManifestError(RestoreRefused):
    """``manifest.json`` is missing, malformed, or of an unknown format version."""


# ================================================================== manifest

@dataclass(frozen=True)
class RecognizerInfo:
    """The model that makes the features: what the configuration's model manifest names."""

    family: str
    file: str
    feature_dim: int
    sha256: Optional[str] = None
    package: Optional[str] = None

    @classmethod
    def from_spec(cls, spec: Any) -> RecognizerInfo:
        """From a ``manifest.schema.ModelSpec`` of the recognizer role."""
        source = spec.source
        return cls(family=spec.family, file=source.file, feature_dim=int(spec.feature_dim or 0),
                   sha256=source.sha256, package=source.package)

    def same_model(self, other: RecognizerInfo) -> bool:
        """Whether both name the same weights: by sha256 when both have one, else by family
        and file name (the folder may differ between boxes)."""
        if self.sha256 and other.sha256:
            return self.sha256 == other.sha256
        return (self.family, os.path.basename(self.file)) == (
            other.family, os.path.basename(other.file))

    def describe(self) -> str:
        digest = f", sha256 {self.sha256[:16]}..." if self.sha256 else ""
        return f"{self.family} {os.path.basename(self.file)} ({self.feature_dim}-d{digest})"


@dataclass(frozen=True)
class StoreSummary:
    """What a store file holds, read in one read transaction of it."""

    layout_version: Optional[int]
    counts: Mapping[str, int]
    feature_dims: Tuple[int, ...]

    def counts_text(self) -> str:
        """``10 identities, 12 faces, ...``: for the commands' output."""
        return ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.counts.items())


@dataclass(frozen=True)
class EventImagesInfo:
    files: int = 0
    bytes: int = 0
    #: Image ids named by events in the copy whose file was gone when it was read.
    missing: int = 0


@dataclass(frozen=True)
class BackupManifest:
    created_at: str  # ISO 8601, UTC
    created_by: str
    store: StoreSummary
    #: codec.SCHEMA_VERSIONS of the release that made the backup.
    record_schemas: Mapping[str, int]
    recognizer: Optional[RecognizerInfo]
    data_bytes: int
    data_sha256: str
    #: None when the archive holds no event images.
    event_images: Optional[EventImagesInfo] = None
    format_version: int = ARCHIVE_FORMAT_VERSION

    def to_json(self) -> bytes:
        body = {
            "format": ARCHIVE_FORMAT,
            "format_version": self.format_version,
            "created_at": self.created_at,
            "created_by": self.created_by,
            "store": {
                "layout_version": self.store.layout_version,
                "record_schemas": dict(self.record_schemas),
                "counts": dict(self.store.counts),
                "feature_dims": list(self.store.feature_dims),
            },
            "recognizer": None if self.recognizer is None else asdict(self.recognizer),
            "data": {"name": DATA_MEMBER, "bytes": self.data_bytes, "sha256": self.data_sha256},
            "event_images": None if self.event_images is None else asdict(self.event_images),
        }
        return json.dumps(body, indent=2, sort_keys=True).encode("utf-8") + b"\n"

    @classmethod
    def from_json(cls, data: bytes) -> BackupManifest:
        """Parse and validate; ``ManifestError`` names the offending key."""
        try:
            body = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ManifestError(f"{MANIFEST_MEMBER} is not JSON: {exc}") from None
        reader = _Fields(body, "")
        if reader.text("format") != ARCHIVE_FORMAT:
            raise ManifestError(f"{MANIFEST_MEMBER}: not a sophon-face backup")
        version = reader.integer("format_version")
        if version > ARCHIVE_FORMAT_VERSION or version < 1:
            raise ManifestError(
                f"archive format version {version}: this sophon-face reads version "
                f"{ARCHIVE_FORMAT_VERSION} (the backup was made by a newer release)")
        store = reader.section("store")
        layout = store.optional_integer("layout_version")
        counts = store.section("counts")
        summary = StoreSummary(
            layout_version=layout,
            counts={name: counts.integer(name) for name, _ in COUNTED_DATABASES},
            feature_dims=tuple(sorted(store.integers("feature_dims"))))
        schemas = store.section("record_schemas")
        record_schemas = {kind: schemas.integer(kind) for kind in schemas.keys()}
        payload = reader.section("data")
        if payload.text("name") != DATA_MEMBER:
            raise ManifestError(f"data.name: expected {DATA_MEMBER!r}")
        sha = payload.text("sha256")
        if not _SHA256.match(sha):
            raise ManifestError("data.sha256: not a lower-case hex sha256")
        recognizer = None
        if reader.has("recognizer"):
            rec = reader.section("recognizer")
            recognizer = RecognizerInfo(
                family=rec.text("family"), file=rec.text("file"),
                feature_dim=rec.integer("feature_dim"), sha256=rec.optional_text("sha256"),
                package=rec.optional_text("package"))
        images = None
        if reader.has("event_images"):
            img = reader.section("event_images")
            images = EventImagesInfo(files=img.integer("files"), bytes=img.integer("bytes"),
                                     missing=img.integer("missing"))
        return cls(created_at=reader.text("created_at"), created_by=reader.text("created_by"),
                   store=summary, record_schemas=record_schemas, recognizer=recognizer,
                   data_bytes=payload.integer("bytes"), data_sha256=sha, event_images=images,
                   format_version=version)


class _Fields:
    """Typed access to one JSON object of the manifest, errors naming the key path."""

    def __init__(self, body: Any, path: str) -> None:
        if not isinstance(body, dict):
            raise ManifestError(f"{MANIFEST_MEMBER}{' ' + path if path else ''}: expected an "
                                "object")
        self._body = body
        self._path = path

    def _where(self, key: str) -> str:
        return f"{self._path}.{key}" if self._path else key

    def keys(self) -> List[str]:
        return list(self._body)

    def has(self, key: str) -> bool:
        return self._body.get(key) is not None

    def _get(self, key: str) -> Any:
        if key not in self._body:
            raise ManifestError(f"{MANIFEST_MEMBER}: {self._where(key)} is missing")
        return self._body[key]

    def section(self, key: str) -> _Fields:
        return _Fields(self._get(key), self._where(key))

    def text(self, key: str) -> str:
        value = self._get(key)
        if not isinstance(value, str):
            raise ManifestError(f"{MANIFEST_MEMBER}: {self._where(key)} must be a string")
        return value

    def optional_text(self, key: str) -> Optional[str]:
        return self.text(key) if self.has(key) else None

    def integer(self, key: str) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ManifestError(
                f"{MANIFEST_MEMBER}: {self._where(key)} must be a non-negative integer")
        return value

    def optional_integer(self, key: str) -> Optional[int]:
        return self.integer(key) if self.has(key) else None

    def integers(self, key: str) -> List[int]:
        value = self._get(key)
        if not isinstance(value, list) or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
            raise ManifestError(
                f"{MANIFEST_MEMBER}: {self._where(key)} must be a list of positive integers")
        return list(value)


def check_compatible(manifest: BackupManifest, recognizer: RecognizerInfo, *,
                     ignore_recognizer_model: bool = False) -> None:
    """Raise ``RestoreRefused`` unless this release, running ``recognizer``, can use the
    backup: a store layout and record schemas it reads, and features it can compare with
    its own probes (the same dimension always; the same model unless told to ignore it).
    A backup without faces fits any recognizer."""
    from ..store import codec, meta

    layout = manifest.store.layout_version
    if layout is not None and layout > meta.LAYOUT_VERSION:
        raise RestoreRefused(
            f"the backup's store layout is version {layout}; this sophon-face reads up to "
            f"{meta.LAYOUT_VERSION} (the backup was made by a newer release)")
    if layout is not None and layout < MIN_LAYOUT_VERSION:
        raise RestoreRefused(f"the backup's store layout version {layout} is not one any "
                             "sophon-face wrote")
    known = codec.SCHEMA_VERSIONS
    newer = sorted(f"{kind} schema {version} (reads {known.get(kind) or 'none'})"
                   for kind, version in manifest.record_schemas.items()
                   if version > known.get(kind, 0))
    if newer:
        raise RestoreRefused("the backup was made by a newer release whose records this "
                             f"sophon-face cannot read: {', '.join(newer)}")
    if manifest.store.counts.get("faces", 0) == 0:
        return
    dims = manifest.store.feature_dims
    if dims != (recognizer.feature_dim,):
        stored = "/".join(str(d) for d in dims) or "?"
        raise RestoreRefused(
            f"the backup's faces are {stored}-d features, the configured recognizer "
            f"{recognizer.describe()} makes {recognizer.feature_dim}-d ones: searches "
            "against them would be meaningless; restore on a box with the backup's "
            "recognizer")
    saved = manifest.recognizer
    if saved is None:
        log.warning("the backup does not name the recognizer its features came from; only "
                    "their dimension (%d) was checked", recognizer.feature_dim)
        return
    if not saved.same_model(recognizer):
        if ignore_recognizer_model:
            log.warning("restoring features of %s for recognizer %s "
                        "(--ignore-recognizer-model)", saved.describe(), recognizer.describe())
            return
        raise RestoreRefused(
            f"the backup's features were extracted by {saved.describe()}, the configured "
            f"recognizer is {recognizer.describe()}: features of different models cannot "
            "be compared (--ignore-recognizer-model if they are known to be the same "
            "weights, e.g. a recompiled model)")


# ================================================================== reading a store file

@contextlib.contextmanager
def _snapshot(env: lmdb.Environment) -> Iterator[Txn]:
    """One read transaction over ``env`` with the handles of the databases it has."""
    import lmdb

    from ..store.env import DB_NAMES, DUPSORT_DBS, Databases, Txn

    with env.begin(write=False, buffers=False) as raw:
        handles: Dict[str, Any] = {}
        for name in DB_NAMES:
            try:
                handles[name] = env.open_db(name.encode("ascii"), txn=raw, create=False,
                                            dupsort=name in DUPSORT_DBS)
            except lmdb.NotFoundError:
                handles[name] = None  # an older layout without this database
        yield Txn(raw, Databases(**handles), False)


@contextlib.contextmanager
def open_store_file(path: Path) -> Iterator[Txn]:
    """A store file no other process uses (a copy, a staged restore), read-only."""
    import lmdb

    from ..store.env import DB_NAMES

    env = lmdb.open(str(path), subdir=False, readonly=True, lock=False,
                    max_dbs=len(DB_NAMES), map_size=max(os.path.getsize(path), 1 << 20))
    try:
        with _snapshot(env) as txn:
            yield txn
    finally:
        env.close()


def summarize(txn: Txn) -> StoreSummary:
    """Layout, record counts and the stored feature dimensions, in one transaction."""
    from ..store import meta

    counts = {}
    for label, name in COUNTED_DATABASES:
        db = getattr(txn.dbs, name)
        counts[label] = 0 if db is None else txn.entries(db)
    layout = meta.layout_version(txn) if txn.dbs.meta is not None else None
    return StoreSummary(layout, counts, _feature_dims(txn))


def _feature_dims(txn: Txn) -> Tuple[int, ...]:
    """The distinct dimensions of the stored features (one pass over the face records)."""
    import numpy as np

    from ..store import codec, faces

    if txn.dbs.faces is None:
        return ()
    try:
        # The gallery rebuild's pass: the fast one, for stores in the current layout.
        return tuple(int(d) for d in np.unique(faces.gallery_index(txn).dims))
    except codec.StoreFormatError:
        pass  # an older layout (faces with inline features): every record decoded
    cursor = txn.raw.cursor(db=txn.dbs.faces)
    return tuple(sorted({faces.decode(data).dim
                         for data in cursor.iternext(keys=False, values=True)}))


# ================================================================== files



# ================================================================== the commands

def start_command(args: argparse.Namespace, command: str) -> Optional[Tuple[Any, RecognizerInfo]]:
    """What ``backup`` and ``restore`` do first: configure logging, load the configuration of
    ``--config`` with ``--data-dir`` and its recognizer. None when that fails (said on
    stderr; the command exits with EXIT_USAGE)."""
    from ..config import ConfigError, load_config, with_overrides
    from ..manifest.schema import ManifestError as ModelManifestError
    from ..manifest.schema import load_manifest

    # The CLI's: a no-op when the caller (a test, another command) already configured it.
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = with_overrides(load_config(args.config), data_dir=args.data_dir)
        recognizer = RecognizerInfo.from_spec(load_manifest(config.manifest_path()).recognizer)
    except (ConfigError, ModelManifestError, OSError) as exc:
        print(f"sophon-face {command}: configuration error: {exc}", file=sys.stderr)
        return None
    return config, recognizer
