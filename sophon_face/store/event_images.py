"""Event images on disk: the face crop and the scene image of each event, as JPEG files.

api/README.md 4.7 puts event images in the event-image directory (GATE_EVENT_IMAGE_PATH
chooses the "local" or the "remote" one; checkeventimagepath reports it), not in the
database: they are most of an event's bytes and a platform may read them as files.

Layout: ``<dir>/<YYYYMMDD>/<image_id>.jpg`` with the UTC day of the event, so retention
and wipes remove whole days and no folder grows past a day of traffic. An image id names
its event and its kind (``face-<event_id>`` / ``spot-<event_id>``, distinct as R57 wants),
so ``getspotimage`` finds the file from the id alone, in either directory.

Crash safety: a file is written to a temporary name, fsynced and renamed, and its folder
fsynced, BEFORE the event that names it commits. A crash in between leaves an orphan file
and no event; ``sweep_orphans`` removes such files at start. An event never names a
missing file (unless an operator deleted it).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Set, Tuple

from sophon_face.durable import fsync_dir

log = logging.getLogger(__name__)

FACE = "face"
SPOT = "spot"
_ID_PATTERN = re.compile(r"^(face|spot)-([0-9]{1,20})$")
_DAY_PATTERN = re.compile(r"^[0-9]{8}$")


def image_id(kind: str, event_id: str) -> str:
    return f"{kind}-{event_id}"


def event_id_of(image_id_: str) -> Optional[str]:
    """The event an image id belongs to, or None for a string we never issued."""
    match = _ID_PATTERN.match(image_id_) if isinstance(image_id_, str) else None
    return match.group(2) if match else None


def _day_of(event_id: str) -> str:
    return time.strftime("%Y%m%d", time.gmtime(int(event_id) / 1e6))


class EventImageFiles:
    """Reads and writes event images under the selected directory.

    ``current_dir`` returns the directory new images go to (it follows the live setting
    GATE_EVENT_IMAGE_PATH); reads look in every configured directory, so images written
    before the setting changed stay readable.
    """

    def __init__(self, dirs: Sequence[Path], current_dir: Callable[[], Path]) -> None:
        self._dirs = tuple(Path(d) for d in dirs)
        self._current_dir = current_dir

    @property
    def dirs(self) -> Tuple[Path, ...]:
        return self._dirs

    def current_dir(self) -> Path:
        return self._current_dir()

    def path_of(self, base: Path, image_id_: str) -> Path:
        event_id = event_id_of(image_id_)
        if event_id is None:
            raise ValueError(f"not an event image id: {image_id_!r}")
        return base / _day_of(event_id) / f"{image_id_}.jpg"

    def write(self, image_id_: str, jpeg: bytes) -> bool:
        """Store one image durably; False (logged) when the directory is not usable, so
        the event is still recorded, with an empty image id (event.md 9)."""
        path = self.path_of(self.current_dir(), image_id_)
        tmp = path.with_name(path.name + ".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(jpeg)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(str(tmp), str(path))
            fsync_dir(path.parent)
            return True
        except OSError as exc:
            log.warning("event image %s not stored in %s: %s", image_id_, path.parent, exc)
            try:
                tmp.unlink()
            except OSError:
                pass
            return False

    def read(self, image_id_: str) -> Optional[bytes]:
        if event_id_of(image_id_) is None:
            return None
        for base in self._dirs:
            try:
                return self.path_of(base, image_id_).read_bytes()
            except OSError:
                continue
        return None

    def delete(self, image_ids: Iterable[str]) -> None:
        """Remove images (after the events naming them were deleted and committed)."""
        for image_id_ in image_ids:
            if not image_id_ or event_id_of(image_id_) is None:
                continue
            for base in self._dirs:
                try:
                    self.path_of(base, image_id_).unlink()
                except OSError:
                    pass

    def delete_all(self) -> None:
        """Remove every day folder we created (wipedata events); foreign files stay."""
        for base in self._dirs:
            for day in _day_dirs(base):
                shutil.rmtree(str(day), ignore_errors=True)

    def iter_files(self) -> Iterator[Tuple[str, Path]]:
        """(event id, path) of every stored image file, for the orphan sweep."""
        for base in self._dirs:
            for day in _day_dirs(base):
                for entry in os.scandir(str(day)):
                    name = entry.name
                    if name.endswith(".tmp"):
                        yield "", Path(entry.path)
                        continue
                    event_id = event_id_of(name[:-4]) if name.endswith(".jpg") else None
                    if event_id is not None:
                        yield event_id, Path(entry.path)

    def sweep_orphans(self, event_ids: Set[str]) -> int:
        """Remove files whose event is not in ``event_ids`` (a crash between file and
        commit, or a retention delete interrupted before its files went); run it while no
        event is being written. Returns the count."""
        removed = 0
        for event_id, path in list(self.iter_files()):
            if event_id in event_ids:
                continue
            try:
                path.unlink()
                removed += 1
            except OSError:
                pass
        if removed:
            log.info("removed %d event image file(s) without an event", removed)
        return removed


def directory_usable(path: Path) -> bool:
    """checkeventimagepath's test: the folder exists and we can create, read and delete a
    file in it."""
    if not path.is_dir():
        return False
    probe = path / f".probe-{os.getpid()}-{time.monotonic_ns()}"
    try:
        probe.write_bytes(b"ok")
        ok = probe.read_bytes() == b"ok"
        probe.unlink()
        return ok
    except OSError:
        try:
            probe.unlink()
        except OSError:
            pass
        return False


def _day_dirs(base: Path) -> Iterator[Path]:
    try:
        entries = list(os.scandir(str(base)))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False) and _DAY_PATTERN.match(entry.name):
            yield Path(entry.path)


