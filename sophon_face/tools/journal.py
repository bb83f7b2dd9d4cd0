"""The import journal: one JSON line per settled photo, so a second run repeats nothing.

The file (default ``<SOURCE>.import-journal.jsonl``) starts with a header naming the source
and the target; ``--resume`` refuses a journal written for another target. Each settled
photo appends one line, flushed at once (a SIGKILL loses nothing that was written; a power
cut may lose the last lines, which the importer's reconciliation by photo content repairs):

    {"photo": "anna/1.jpg", "identity_id": "anna", "n": 0, "status": "ok",
     "face_id": "...", "register_image_id": "...", "source_face_id": "", "reconciled": false}
    {"photo": "bob/2.jpg", "identity_id": "bob", "n": 0, "status": "failed",
     "code": "NO_FACE_ERROR", "message": "register_image"}

The last line about a photo wins (a failed photo retried with ``--retry-failed`` may
succeed). Only lasting outcomes are journaled: successes and the spec's client errors;
a busy or unreachable daemon or a full library is not, so the next run tries again.
A line cut short by a crash is skipped when read.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Dict, Iterator, List, Optional, Set, Tuple

from .import_sources import Photo

log = logging.getLogger(__name__)

JOURNAL_FORMAT = "sophon-face-import-journal"
JOURNAL_VERSION = 1

Key = Tuple[str, str, int]


class JournalError(ValueError):
    """The journal cannot be used for this run; ``str()`` says why and what to do."""


@dataclass(frozen=True)
class Outcome:
    identity_id: str
    photo: str
    occurrence: int
    status: str  # "ok" or "failed"
    face_id: str = ""
    register_image_id: str = ""
    code: str = ""
    message: str = ""
    reconciled: bool = False

    @property
    def key(self) -> Key:
        return (self.identity_id, self.photo, self.occurrence)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read(path: Path) -> Tuple[Dict[str, Any], Dict[Key, Outcome]]:
    header: Optional[Dict[str, Any]] = None
    outcomes: Dict[Key, Outcome] = {}
    skipped = 0
    with open(path, "r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                skipped += 1  # cut short by a crash
                continue
            if header is None:
                if not isinstance(entry, dict) or entry.get("format") != JOURNAL_FORMAT:
                    raise JournalError(f"{path}: not an import journal (line {number})")
                if entry.get("version") != JOURNAL_VERSION:
                    raise JournalError(f"{path}: journal version {entry.get('version')!r}, "
                                       f"this tool writes {JOURNAL_VERSION}")
                header = entry
                continue
            if not isinstance(entry, dict) or entry.get("status") not in ("ok", "failed"):
                continue  # run markers and the like
            outcome = Outcome(
                identity_id=str(entry["identity_id"]), photo=str(entry["photo"]),
                occurrence=int(entry.get("n", 0)), status=entry["status"],
                face_id=entry.get("face_id", ""),
                register_image_id=entry.get("register_image_id", ""),
                code=entry.get("code", ""), message=entry.get("message", ""),
                reconciled=bool(entry.get("reconciled", False)))
            outcomes[outcome.key] = outcome
    if header is None:
        raise JournalError(f"{path}: empty or not an import journal")
    if skipped:
        log.warning("journal %s: skipped %d line(s) cut short by an interruption", path, skipped)
    return header, outcomes


def _ends_inside_a_line(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return False
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except FileNotFoundError:
        return False


class Journal:
    """The outcomes of earlier runs, and the file this run appends its own to."""

    def __init__(self, path: Path, handle: IO[str], header: Dict[str, Any],
                 outcomes: Dict[Key, Outcome], resumed: bool) -> None:
        self.path = path
        self.header = header
        self.resumed = resumed
        self._handle = handle
        self._outcomes = outcomes
        self._images: Dict[str, Set[str]] = {}
        for outcome in outcomes.values():
            if outcome.ok:
                self._images.setdefault(outcome.identity_id, set()).add(outcome.register_image_id)

    @classmethod
    def open(cls, path: Path, source: str, target: str, resume: bool) -> "Journal":
        """Start a journal, or continue one with ``resume`` (refused for another target)."""
        path = Path(path)
        if path.exists():
            if not resume:
                raise JournalError(
                    f"a journal of an earlier import exists: {path}; pass --resume to "
                    f"continue that import, or delete the file to start over")
            header, outcomes = _read(path)
            if header.get("target") != target:
                raise JournalError(f"{path} belongs to an import into {header.get('target')}, "
                                   f"not {target}; pass another --journal")
            if header.get("source") != source:
                log.warning("journal %s was written for source %s; continuing with %s",
                            path, header.get("source"), source)
        else:
            header = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "source": source,
                      "target": target, "created": _now()}
            outcomes = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torn = _ends_inside_a_line(path)
            handle = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise JournalError(f"cannot write the journal {path}: {exc.strerror or exc}; "
                               f"pass --journal FILE") from None
        journal = cls(path, handle, header, outcomes, resumed=resume)
        if handle.tell() == 0:
            journal._append(header)
        elif torn:  # the previous run died inside a line: start on a fresh one
            journal._handle.write("\n")
        return journal

    # -- what earlier runs did ----------------------------------------------------

    def outcome(self, photo: Photo) -> Optional[Outcome]:
        return self._outcomes.get(photo.key)

    def has_success(self, identity_id: str) -> bool:
        """Whether this import registered a face of the identity (so it created it)."""
        return bool(self._images.get(identity_id))

    def image_ids(self, identity_id: str) -> Set[str]:
        """Register image ids this import journaled for the identity."""
        return set(self._images.get(identity_id, ()))

    def failures(self) -> List[Outcome]:
        return [o for o in self._outcomes.values() if not o.ok]

    def __iter__(self) -> Iterator[Outcome]:
        return iter(self._outcomes.values())

    # -- this run -----------------------------------------------------------------

    def mark_run(self, **details: Any) -> None:
        self._append({"run": dict(details, started=_now())})

    def record_ok(self, photo: Photo, face_id: str, register_image_id: str,
                  reconciled: bool = False) -> None:
        outcome = Outcome(photo.identity_id, photo.label, photo.occurrence, "ok",
                          face_id=face_id, register_image_id=register_image_id,
                          reconciled=reconciled)
        self._outcomes[outcome.key] = outcome
        self._images.setdefault(photo.identity_id, set()).add(register_image_id)
        self._append({"photo": photo.label, "identity_id": photo.identity_id,
                      "n": photo.occurrence, "status": "ok", "face_id": face_id,
                      "register_image_id": register_image_id,
                      "source_face_id": photo.source_face_id, "reconciled": reconciled})

    def record_failed(self, photo: Photo, code: str, message: str) -> None:
        outcome = Outcome(photo.identity_id, photo.label, photo.occurrence, "failed",
                          code=code, message=message)
        self._outcomes[outcome.key] = outcome
        self._append({"photo": photo.label, "identity_id": photo.identity_id,
                      "n": photo.occurrence, "status": "failed", "code": code,
                      "message": message})

    def _append(self, entry: Dict[str, Any]) -> None:
        # One write per line, flushed: after a SIGKILL the kernel still has it.
        self._handle.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if self._handle.closed:
            return
        try:
            self._handle.flush()
            os.fsync(self._handle.fileno())
        finally:
            self._handle.close()
