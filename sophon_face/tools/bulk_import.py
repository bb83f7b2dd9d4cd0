"""``sophon-face import``: register a folder tree or a CSV of photos, resumably.

    sophon-face import SOURCE [--url URL | --data-dir DIR [--config FILE]] [--group NAME]
                       [--workers N] [--fiqa-level L] [--resume] [--retry-failed]
                       [--journal FILE] [--failures FILE]

SOURCE is read by ``import_sources.py`` (formats there). Every photo goes through the API's
own use case: ``createidentity`` for the first photo of an identity that succeeds, then
``addface`` for the others, with the photo as ``register_image`` and ``--fiqa-level``;
``--url`` sends them to a running daemon, ``--data-dir`` runs the daemon's services in this
process on a stopped daemon's data directory (``targets.py``). Identities are imported in
parallel, up to ``--workers`` at a time; the photos of one identity one after the other, so
its faces keep the source's order.

Resuming. Each settled photo is journaled (``journal.py``). ``--resume`` skips the photos
the journal has, and first reconciles each identity it still has photos for: a face the
target holds but the journal does not (the run died between the write and its journal line,
or the daemon finished a request its client no longer waited for) is matched to its photo
by content -- the daemon stores a JPEG photo byte for byte and re-encodes other formats with
the same code this process runs (``jpeg_for_storage``) -- and journaled instead of being
registered a second time. The same check runs within a run whenever a request's outcome is
unknown (a dropped connection, a timeout, INTERNAL_ERROR) before it is sent again, and
before ``createidentity``'s ID_REPEAT_ERROR is taken to mean "someone else's identity".

Outcomes: spec client errors (NO_FACE_ERROR, LOW_QUALITY_ERROR with the failing items,
IMAGE_DECODE_ERROR, ...) are lasting and journaled; ``--retry-failed`` tries them again. A
busy daemon is retried with back-off; a full library (GROUP_LEN_ERROR), a full disk
(INSUFFICIENT_SPACE_LEFT) or a daemon that stays unreachable stop the run, resumable later.
The run ends with a summary and, when anything failed, a CSV of the failures
(``FAILURE_COLUMNS``) over the whole import, earlier runs included.

Exit status: 0 every photo imported; 1 finished, some photos failed; 2 could not start
(source, journal, target); 3 stopped early (Ctrl-C / SIGTERM, full library or disk,
unreachable daemon): run again with ``--resume``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import hashlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ApiError, ServiceBusy
from .import_sources import (ImportPlan, IdentityPlan, Photo, SourceError, read_source,
                             write_csv)
from .journal import Journal, JournalError
from .progress import Progress
from .targets import DEFAULT_URL, Target, TargetRefused, TargetUnavailable

log = logging.getLogger(__name__)

FAILURE_COLUMNS = ("identity_id", "photo", "error_code", "error_message")
FIQA_LEVEL_CHOICES = ("no", "low", "normal", "middle", "high")
#: Codes after which nothing else can be registered: the run stops (resumable).
STOPPING_CODES = frozenset({"GROUP_LEN_ERROR", "INSUFFICIENT_SPACE_LEFT"})
#: Our code in the failures CSV for a daemon that could not be reached (not a spec code).
UNREACHABLE = "CONNECTION_ERROR"
DEFAULT_ATTEMPTS = 4
RETRY_BASE_S = 0.5
#: A busy daemon's Retry-After is honoured up to this (the daemon's own is under its
#: workers.max_wait_s, 30 s by default).
MAX_RETRY_AFTER_S = 120.0

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_CANNOT_START = 2
EXIT_STOPPED = 3


@dataclass(frozen=True)
class ImportOptions:
    fiqa_level: str = "high"
    #: Permission group (by name) every imported identity joins; created when missing.
    group_name: Optional[str] = None
    concurrency: int = 1
    resume: bool = False
    retry_failed: bool = False
    attempts: int = DEFAULT_ATTEMPTS
    retry_base_s: float = RETRY_BASE_S
    #: How long to wait for requests a previous run (or a lost connection) left running
    #: in the daemon: a little more than its worker timeout (workers.timeout_s, 60 s).
    settle_timeout_s: float = 90.0


@dataclass(frozen=True)
class Failure:
    identity_id: str
    photo: str
    code: str
    message: str


@dataclass
class ImportSummary:
    source: str
    target: str
    identities: int
    photos: int
    created: int = 0  # identities created (first photos)
    added: int = 0  # faces added to an identity
    reconciled: int = 0  # found on the target by content (an interrupted run's writes)
    done_before: int = 0  # journaled as imported by an earlier run
    failed_before: int = 0  # journaled as failed by an earlier run, not retried
    failures: List[Failure] = field(default_factory=list)  # the whole import's
    failures_path: Optional[Path] = None
    stopped: str = ""  # why the run stopped early ("" = it did not)
    elapsed_s: float = 0.0

    @property
    def registered(self) -> int:
        """Faces this run registered."""
        return self.created + self.added

    @property
    def faces_per_s(self) -> float:
        return self.registered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        if self.stopped:
            return EXIT_STOPPED
        return EXIT_FAILURES if self.failures else EXIT_OK

    def lines(self) -> List[str]:
        by_code = collections.Counter(f.code for f in self.failures)
        lines = [
            f"import of {self.source} into {self.target}: {self.identities} identities, "
            f"{self.photos} photos",
            f"  this run: {self.registered} faces registered ({self.created} identities "
            f"created, {self.added} faces added) in {self.elapsed_s:.1f} s "
            f"({self.faces_per_s:.2f} faces/s)",
        ]
        if self.reconciled:
            lines.append(f"  found already registered (by photo content, not journaled): "
                         f"{self.reconciled}")
        if self.done_before or self.failed_before:
            lines.append(f"  earlier runs: {self.done_before} photos imported, "
                         f"{self.failed_before} failed (not retried)")
        if by_code:
            lines.append(f"  failed: {len(self.failures)} photos ("
                         + ", ".join(f"{code} {n}" for code, n in by_code.most_common())
                         + f"); see {self.failures_path}")
        else:
            lines.append("  failed: none")
        if self.stopped:
            lines.append(f"  STOPPED EARLY: {self.stopped}; run again with --resume")
        return lines


class ImportAborted(Exception):
    """The import cannot go on (its groups cannot be set up, ...)."""


def _read_photo_base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def stored_photo_digest(data: bytes) -> Optional[str]:
    """SHA-256 of the bytes the daemon stores for this photo (None: it would store none).

    A JPEG is stored byte for byte; anything else is re-encoded by ``jpeg_for_storage``,
    the code this process runs too (over HTTP: the same as long as both ends run the same
    release of this package and OpenCV).
    """
    from ..pipeline.images import decode_image_bytes, jpeg_for_storage
    from ..pipeline.types import ImageLimits

    if data.startswith(b"\xff\xd8\xff"):  # pipeline.images' JPEG signature
        return hashlib.sha256(data).hexdigest()
    limits = ImageLimits(max_encoded_bytes=max(len(data), 1), max_side_px=1 << 16,
                         max_pixels=1 << 32)
    try:
        stored = jpeg_for_storage(decode_image_bytes(data, "register_image", limits))
    except (ApiError, RuntimeError):
        return None
    return hashlib.sha256(stored).hexdigest()


def _photo_digest(path: Path) -> Optional[str]:
    try:
        return stored_photo_digest(path.read_bytes())
    except OSError:
        return None


class _Attempt:
    """Outcome of registering one photo."""

    OK = "ok"
    FAILED = "failed"
    NOT_OURS = "not ours"  # createidentity: the id belongs to an identity we did not make


@dataclass
class _IdentityRun:
    """One identity's photos in this run, and whether the target's identity is ours."""

    identity: IdentityPlan
    pending: List[Photo]
    ours: bool


class Importer:
    """One run of an import plan against a target."""

    def __init__(self, plan: ImportPlan, target: Target, journal: Journal,
                 options: ImportOptions, progress: Optional[Progress] = None) -> None:
        self.plan = plan
        self.target = target
        self.journal = journal
        self.options = options
        self.summary = ImportSummary(str(plan.source), target.name, len(plan.identities),
                                     plan.photo_count)
        self._run_failures: List[Failure] = []  # not journaled: busy, unreachable, stopping
        self._stop_reason = ""
        self._progress = progress
        self._extra_groups: Tuple[str, ...] = ()
        # Registrations pass the gate; it is closed while an unknown outcome is settled.
        # (Made in run(): before Python 3.10 they bind to the loop current at creation.)
        self._gate: Optional[asyncio.Event] = None
        self._drain: Optional[asyncio.Lock] = None
        self._in_flight = 0

    # -- control ------------------------------------------------------------------

    def stop(self, reason: str) -> None:
        """Finish the photos in progress, start no other (idempotent: the first reason wins)."""
        if not self._stop_reason:
            self._stop_reason = reason
            log.warning("stopping: %s (finishing the photos in progress)", reason)

    @property
    def stopping(self) -> bool:
        return bool(self._stop_reason)

    def _pending(self, photos: Sequence[Photo]) -> List[Photo]:
        return pending_photos(photos, self.journal, self.options.retry_failed)

    # -- the run ------------------------------------------------------------------

    async def run(self) -> ImportSummary:
        started = time.monotonic()
        self._gate, self._drain = asyncio.Event(), asyncio.Lock()
        self._gate.set()
        for identity in self.plan.identities:
            for photo in identity.photos:
                outcome = self.journal.outcome(photo)
                if outcome is not None and outcome.ok:
                    self.summary.done_before += 1
                elif outcome is not None and not self.options.retry_failed:
                    self.summary.failed_before += 1
        try:
            if self.options.resume:
                # A killed run's last requests may still be running in the daemon: they
                # must have committed (or failed) before they can be found by content.
                await self._settle("requests an interrupted run left running")
            self._extra_groups = await self._prepare_groups()
            identities = iter(self.plan.identities)

            async def worker() -> None:
                for identity in identities:  # shared: each identity goes to one worker
                    if self.stopping:
                        return
                    try:
                        await self._import_identity(identity)
                    except Exception as exc:  # a bug: keep what is done, stop cleanly
                        log.exception("importing %s failed unexpectedly", identity.identity_id)
                        self.stop(f"unexpected {type(exc).__name__} at {identity.identity_id}")

            await asyncio.gather(*(worker() for _ in range(max(1, self.options.concurrency))))
        finally:
            self.summary.elapsed_s = time.monotonic() - started
            self.summary.stopped = self._stop_reason
            self.summary.failures = self._all_failures()
        return self.summary

    def _all_failures(self) -> List[Failure]:
        failures = [Failure(o.identity_id, o.photo, o.code, o.message)
                    for o in self.journal.failures()]
        journaled = {(f.identity_id, f.photo) for f in failures}
        failures += [f for f in self._run_failures if (f.identity_id, f.photo) not in journaled]
        return failures

    async def _prepare_groups(self) -> Tuple[str, ...]:
        """Create the groups the source describes or names; the --group id for everyone."""
        target = self.target
        described = {g.permission_id: g for g in self.plan.groups}
        for permission_id in dict.fromkeys([*described, *self.plan.referenced_groups()]):
            group = described.get(permission_id)
            existing = await target.get_group({"permission_id": permission_id})
            if existing is not None:
                if group is not None and existing["permission_name"] != group.permission_name:
                    log.warning("group %s exists as %r (the source calls it %r); kept as is",
                                permission_id, existing["permission_name"], group.permission_name)
                continue
            body = {"permission_id": permission_id,
                    "permission_name": group.permission_name if group else permission_id,
                    "description": group.description if group else ""}
            try:
                await target.create_group(body)
            except ApiError as exc:
                raise ImportAborted(f"cannot create permission group {permission_id!r} "
                                    f"({body['permission_name']!r}): {exc.code}: {exc.message}")
            log.info("created permission group %s (%s)", permission_id, body["permission_name"])
        if not self.options.group_name:
            return ()
        return (await self._group_by_name(self.options.group_name),)

    async def _group_by_name(self, name: str) -> str:
        for _ in range(2):  # another import may create it between our read and our write
            existing = await self.target.get_group({"permission_name": name})
            if existing is not None:
                return str(existing["permission_id"])
            try:
                created = await self.target.create_group({"permission_name": name})
            except ApiError as exc:
                if exc.code == "NAME_REPEAT_ERROR":
                    continue
                raise ImportAborted(f"cannot create permission group {name!r}: "
                                    f"{exc.code}: {exc.message}")
            log.info("created permission group %s (%s)", created["permission_id"], name)
            self.journal.mark_run(group={"permission_id": created["permission_id"],
                                         "permission_name": name})
            return str(created["permission_id"])
        raise ImportAborted(f"permission group {name!r} could not be read or created")

    # -- one identity -------------------------------------------------------------

    async def _import_identity(self, identity: IdentityPlan) -> None:
        pending = self._pending(identity.photos)
        if not pending:
            return
        run = _IdentityRun(identity, pending, self.journal.has_success(identity.identity_id))
        if self.options.resume:
            try:
                run.ours = await self._reconcile(run) or run.ours
            except TargetUnavailable as exc:
                self.stop(f"target unreachable: {exc}")
                return
        for index, photo in enumerate(pending):
            if self.stopping:
                return
            if self._ok(photo):
                continue  # found registered meanwhile
            if await self._register(run, photo) == _Attempt.NOT_OURS:
                message = (f"identity {identity.identity_id!r} exists on the target and was "
                           f"not created by this import")
                for rest in pending[index:]:
                    self._failed(rest, "ID_REPEAT_ERROR", message, lasting=True)
                return

    def _ok(self, photo: Photo) -> bool:
        outcome = self.journal.outcome(photo)
        return outcome is not None and outcome.ok

    async def _reconcile(self, run: _IdentityRun) -> bool:
        """Journal the photos of ``run`` still to do that the target already holds,
        matched by stored content; each face of the target matches one photo at most.

        True when the identity is this import's own: the journal has a face of it, or one
        of the photos was found registered.
        """
        record = await self.target.get_identity(run.identity.identity_id)
        if record is None:
            return False
        claimed = self.journal.image_ids(run.identity.identity_id)
        unclaimed = [(face_id, image_id) for face_id, image_id
                     in zip(record["face_ids"], record["register_image_ids"])
                     if image_id not in claimed]
        if not unclaimed:
            return bool(claimed)
        loop = asyncio.get_running_loop()
        stored: Dict[str, List[Tuple[str, str]]] = {}
        for face_id, image_id in unclaimed:
            blob = await self.target.register_image(image_id)
            if blob:
                stored.setdefault(hashlib.sha256(blob).hexdigest(), []).append((face_id, image_id))
        found = False
        for photo in run.pending:
            if self._ok(photo):
                continue
            digest = await loop.run_in_executor(None, _photo_digest, photo.path)
            matches = stored.get(digest or "")
            if matches:
                face_id, image_id = matches.pop(0)
                self.journal.record_ok(photo, face_id, image_id, reconciled=True)
                self.summary.reconciled += 1
                self._advance()
                found = True
                log.info("%s: already registered as face %s (found by content)",
                         photo.label, face_id)
        return bool(claimed) or found

    async def _settle(self, what: str) -> None:
        log.info("waiting for the target to finish %s", what)
        if not await self.target.settle(self.options.settle_timeout_s):
            log.warning("could not see the target finish %s within %.0f s; going on",
                        what, self.options.settle_timeout_s)

    async def _send(self, body: Dict[str, Any], ours: bool) -> Tuple[str, str]:
        """One registration request: (face_id, register_image_id)."""
        assert self._gate is not None
        await self._gate.wait()
        self._in_flight += 1
        try:
            if ours:
                reply = await self.target.add_face(body)
                return reply["face_ids"][-1], reply["register_image_ids"][-1]
            reply = await self.target.create_identity(body)
            return reply["face_id"], reply["register_image_id"]
        finally:
            self._in_flight -= 1

    async def _look_again(self, run: _IdentityRun, photo: Photo) -> None:
        """After an unknown outcome or ID_REPEAT_ERROR: hold every other registration, let
        the target finish what it was doing (a lost request included), then look for the
        identity's photos on it (``run.ours`` and the journal follow what is found)."""
        assert self._gate is not None and self._drain is not None
        async with self._drain:
            self._gate.clear()
            try:
                while self._in_flight:
                    await asyncio.sleep(0.02)
                await self._settle(f"the request for {photo.label}")
                run.ours = await self._reconcile(run) or run.ours
            except (TargetUnavailable, ApiError) as exc:
                log.info("%s: cannot check the target yet: %s", photo.label, exc)
            finally:
                self._gate.set()

    async def _register(self, run: _IdentityRun, photo: Photo) -> str:
        loop = asyncio.get_running_loop()
        try:
            image_b64 = await loop.run_in_executor(None, _read_photo_base64, photo.path)
        except OSError as exc:
            self._failed(photo, "IMAGE_NOT_OPENED", f"{photo.label}: {exc.strerror or exc}",
                         lasting=True)
            return _Attempt.FAILED
        level = self.options.fiqa_level
        code, message = "", ""
        retry_after_s = 0.0  # a busy daemon's Retry-After: wait at least that long
        for attempt in range(self.options.attempts):
            if attempt:
                await asyncio.sleep(max(self.options.retry_base_s * 2 ** (attempt - 1),
                                        retry_after_s))
                retry_after_s = 0.0
            ours = run.ours
            if ours:
                body = {"identity_id": run.identity.identity_id}
            else:
                body = run.identity.create_fields(self._extra_groups)
            body.update(register_image=image_b64, fiqa_level=level)
            try:
                face_id, image_id = await self._send(body, ours)
            except ServiceBusy as exc:
                code, message = exc.code, exc.message
                retry_after_s = min(exc.retry_after_s or 0.0, MAX_RETRY_AFTER_S)
                continue
            except TargetUnavailable as exc:
                code, message = UNREACHABLE, str(exc)
                if exc.sent:
                    await self._look_again(run, photo)
            except ApiError as exc:
                code, message = exc.code, exc.message
                if code in STOPPING_CODES:
                    self._failed(photo, code, message, lasting=False)
                    self.stop(f"{code}: {message}")
                    return _Attempt.FAILED
                if code == "ID_REPEAT_ERROR" and not ours:
                    # Ours after all if an earlier attempt or run registered its photos.
                    await self._look_again(run, photo)
                    if not run.ours:
                        return _Attempt.NOT_OURS
                elif code == "INTERNAL_ERROR":
                    await self._look_again(run, photo)
                else:
                    self._failed(photo, code, message, lasting=True)
                    return _Attempt.FAILED
            else:
                self.journal.record_ok(photo, face_id, image_id)
                if ours:
                    self.summary.added += 1
                else:
                    self.summary.created += 1
                run.ours = True
                self._advance()
                return _Attempt.OK
            if self._ok(photo):
                return _Attempt.OK  # the lost request had registered it
            log.info("%s: %s (%s), attempt %d of %d", photo.label, code, message,
                     attempt + 1, self.options.attempts)
        self._failed(photo, code, message, lasting=False)
        if code == UNREACHABLE:
            self.stop(f"target unreachable: {message}")
        return _Attempt.FAILED

    def _failed(self, photo: Photo, code: str, message: str, lasting: bool) -> None:
        if lasting:
            self.journal.record_failed(photo, code, message)
        else:
            self._run_failures.append(Failure(photo.identity_id, photo.label, code, message))
        log.debug("%s: %s %s", photo.label, code, message)
        self._advance(failed=True)

    def _advance(self, failed: bool = False) -> None:
        if self._progress is not None:
            self._progress.advance(failed=failed)


def pending_photos(photos: Sequence[Photo], journal: Journal, retry_failed: bool) -> List[Photo]:
    """The photos a run still has to register: not journaled, or failed and retried."""
    pending = []
    for photo in photos:
        outcome = journal.outcome(photo)
        if outcome is None or (not outcome.ok and retry_failed):
            pending.append(photo)
    return pending


def write_failures(path: Path, failures: Sequence[Failure]) -> None:
    write_csv(path, FAILURE_COLUMNS,
              ((f.identity_id, f.photo, f.code, f.message) for f in failures))


# --------------------------------------------------------------------------- CLI

def add_import_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="folder tree <identity>/<photos>, a CSV file, or a "
                                       "folder written by 'export'")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"a running daemon (default {DEFAULT_URL})")
    where.add_argument("--data-dir", dest="data_dir",
                       help="a STOPPED daemon's data directory, written in this process")
    parser.add_argument("--config", help="with --data-dir: the daemon's configuration file "
                                         "(models, storage, capacity)")
    parser.add_argument("--group", help="permission group (name) every identity joins; "
                                        "created when missing")
    parser.add_argument("--workers", type=int, help="identities imported at once (default: "
                                                    "the daemon's inference workers)")
    parser.add_argument("--fiqa-level", dest="fiqa_level", choices=FIQA_LEVEL_CHOICES,
                        help="quality check of each photo (default high, as the API; "
                             "'no' for a folder written by export, whose photos all "
                             "passed a check when first registered)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted import: skip what its journal has, "
                             "never register a photo twice")
    parser.add_argument("--retry-failed", dest="retry_failed", action="store_true",
                        help="with --resume: try photos that failed before again")
    parser.add_argument("--journal", help="journal file (default SOURCE.import-journal.jsonl)")
    parser.add_argument("--failures", help="failures CSV (default SOURCE.import-failures.csv)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="with --url: seconds per request (default 120)")


def _default_beside(source: Path, suffix: str) -> Path:
    source = source.resolve()
    return source.with_name(source.name + suffix)


def _failures_path(args: argparse.Namespace, source: Path) -> Path:
    if args.failures:
        return Path(args.failures)
    if args.journal:
        journal = Path(args.journal)
        stem = journal.name[:-len(".jsonl")] if journal.name.endswith(".jsonl") else journal.name
        return journal.with_name(stem + ".failures.csv")
    return _default_beside(source, ".import-failures.csv")


def _direct_config(args: argparse.Namespace) -> Any:
    """The daemon's configuration with --data-dir and --workers applied (workers x
    intra-op threads stay within the cores, as the configuration asks)."""
    from ..config import load_config, with_overrides

    config = with_overrides(load_config(args.config), data_dir=args.data_dir)
    workers = config.workers
    if args.workers:
        cores = os.cpu_count() or 1
        threads = max(1, min(workers.intra_op_threads, cores // args.workers))
        workers = dataclasses.replace(workers, count=args.workers, intra_op_threads=threads)
        config = dataclasses.replace(config, workers=workers)
    return config


def _configure_logging() -> None:
    # The CLI's: a no-op when the caller (a test, the serve command) already configured it.
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def import_main(args: argparse.Namespace) -> int:
    """The ``import`` command: returns the exit status (see the module doc)."""
    _configure_logging()
    source = Path(args.source)
    if args.retry_failed and not args.resume:
        print("sophon-face import: --retry-failed needs --resume", file=sys.stderr)
        return EXIT_CANNOT_START
    if args.workers is not None and args.workers < 1:
        print("sophon-face import: --workers must be at least 1", file=sys.stderr)
        return EXIT_CANNOT_START
    try:
        plan = read_source(source)
    except SourceError as exc:
        print(f"sophon-face import: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    for entry in plan.ignored:
        log.info("ignored %s", entry)
    log.info("%s %s: %d identities, %d photos", plan.kind, plan.source,
             len(plan.identities), plan.photo_count)
    try:
        summary = asyncio.run(_import(args, plan))
    except (JournalError, TargetRefused, ImportAborted) as exc:
        print(f"sophon-face import: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except TargetUnavailable as exc:
        print(f"sophon-face import: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("sophon-face import: aborted; run again with --resume", file=sys.stderr)
        return EXIT_STOPPED
    for line in summary.lines():
        print(line)
    return summary.exit_code


async def _import(args: argparse.Namespace, plan: ImportPlan) -> ImportSummary:
    source = Path(args.source)
    if args.data_dir:
        from ..config import ConfigError
        from .targets import open_direct

        try:
            config = _direct_config(args)
        except ConfigError as exc:
            raise TargetRefused(f"configuration error: {exc}") from None
        async with open_direct(config) as direct:
            return await _run_cli(args, plan, source, direct, direct.worker_count)
    from .targets import HttpTarget

    url = args.url or DEFAULT_URL
    async with HttpTarget(url, 1, timeout_s=30.0) as probe:
        health = await probe.health()  # unreachable: refused before any journal is written
    if health.get("status") != "ok":
        log.warning("%s reports status %r: registrations may fail", url, health.get("status"))
    workers = args.workers
    if workers is None:
        workers = int(health.get("workers", {}).get("count") or 1)
        log.info("%s has %d inference worker(s): importing %d identities at once", url,
                 workers, workers)
    async with HttpTarget(url, workers, timeout_s=args.timeout) as http:
        return await _run_cli(args, plan, source, http, workers)


async def _run_cli(args: argparse.Namespace, plan: ImportPlan, source: Path, target: Target,
                   workers: int) -> ImportSummary:
    journal_path = Path(args.journal) if args.journal else _default_beside(
        source, ".import-journal.jsonl")
    fiqa_level = args.fiqa_level or ("no" if plan.from_export else "high")
    if plan.from_export and not args.fiqa_level:
        log.info("%s was written by export: registering with fiqa_level 'no' (the gallery "
                 "it came from accepted every photo; --fiqa-level overrides)", plan.source)
    options = ImportOptions(fiqa_level=fiqa_level, group_name=args.group,
                            concurrency=workers, resume=args.resume,
                            retry_failed=args.retry_failed)
    journal = Journal.open(journal_path, str(plan.source.resolve()), target.name, args.resume)
    failures_path = _failures_path(args, source)
    try:
        journal.mark_run(resume=args.resume, fiqa_level=fiqa_level, group=args.group,
                         workers=workers)
        left = sum(len(pending_photos(i.photos, journal, options.retry_failed))
                   for i in plan.identities)
        progress = Progress("import", plan.photo_count, plan.photo_count - left)
        importer = Importer(plan, target, journal, options, progress)
        loop = asyncio.get_running_loop()
        interrupts = _Interrupts(loop, importer)
        try:
            with progress.logging_redirected():
                summary = await importer.run()
        finally:
            interrupts.remove()
            progress.close()
    finally:
        journal.close()
    summary.failures_path = failures_path
    if summary.failures:
        write_failures(failures_path, summary.failures)
    elif failures_path.exists():
        failures_path.unlink()  # an earlier run's list, all settled now
    log.info("journal: %s", journal_path)
    return summary


class _Interrupts:
    """The first Ctrl-C / SIGTERM stops the import after the photos in progress (they are
    journaled); a second one cancels it at once (resumable too)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, importer: Importer) -> None:
        self._loop = loop
        self._importer = importer
        self._task = asyncio.current_task()
        self._installed: List[int] = []
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(signum, self._on_signal, signum)
                self._installed.append(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (a test calling import_main from a thread)

    def _on_signal(self, signum: int) -> None:
        if not self._importer.stopping:
            self._importer.stop(f"{signal.Signals(signum).name} received; press Ctrl-C "
                                f"again to abort at once")
        elif self._task is not None:
            self._task.cancel()

    def remove(self) -> None:
        for signum in self._installed:
            self._loop.remove_signal_handler(signum)


if __name__ == "__main__":  # ``python -m sophon_face.tools.bulk_import`` (tests, scripts)
    _parser = argparse.ArgumentParser(prog="sophon-face import",
                                      description=__doc__.splitlines()[0])
    add_import_arguments(_parser)
    sys.exit(import_main(_parser.parse_args()))
