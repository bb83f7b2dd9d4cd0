"""``sophon-face export``: write a gallery out as photos and CSV, ready for ``import``.

    sophon-face export DIR [--url URL | --data-dir DIR [--config FILE]] [--workers N]

DIR (new, or empty) gets the layout ``import`` reads (formats in ``import_sources.py``):

    DIR/identities.csv           one row per face: identity fields, photo, face_id,
                                 register_image_id (the ids on this box)
    DIR/groups.csv               every permission group: id, name, description
    DIR/<identity>/001.jpg ...   each face's registration photo as stored
                                 (getregisterimage's bytes), in face order
    DIR/not-exported.csv         faces without a photo (registered from a feature vector,
                                 R19) and identities without faces: import cannot
                                 recreate them from photos (only written when there are any)

``sophon-face import DIR`` on a fresh box then recreates the groups with their ids and the
identities with their ids and fields, and registers the same photo bytes in the same order,
so the features and every search answer are the same. Face and register image ids are new
(the API gives no way to choose them); the import journal maps each exported ``face_id``
to the new one.

Over ``--url`` the daemon keeps serving; identities written while the export pages through
them may be missed or listed twice (paging is by creation order). ``--data-dir`` reads a
stopped daemon's store in this process, without loading any model.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import ApiError
from .import_sources import (GROUP_COLUMNS, GROUPS_CSV, IDENTITIES_CSV, IDENTITY_COLUMNS,
                             export_folder_name, format_permission_ids, write_csv)
from .progress import Progress
from .targets import (DEFAULT_URL, MAX_PAGE_LIMIT, Target, TargetRefused, TargetUnavailable)

log = logging.getLogger(__name__)

NOT_EXPORTED_CSV = "not-exported.csv"
NOT_EXPORTED_COLUMNS = ("identity_id", "face_id", "register_image_id", "reason")
DEFAULT_EXPORT_WORKERS = 4

EXIT_OK = 0
EXIT_INCOMPLETE = 1  # some faces could not be exported as photos
EXIT_CANNOT_START = 2


class ExportError(Exception):
    """The export cannot start or go on; ``str()`` says why."""


@dataclass
class ExportSummary:
    directory: Path
    target: str
    groups: int = 0
    identities: int = 0  # identities with at least one exported photo
    faces: int = 0  # photos written
    photo_bytes: int = 0
    not_exported: int = 0  # rows of not-exported.csv
    elapsed_s: float = 0.0

    @property
    def directory_bytes(self) -> int:
        total = 0
        for folder, _dirs, files in os.walk(self.directory):
            total += sum(os.path.getsize(os.path.join(folder, f)) for f in files)
        return total

    @property
    def exit_code(self) -> int:
        return EXIT_INCOMPLETE if self.not_exported else EXIT_OK

    def lines(self) -> List[str]:
        lines = [f"export of {self.target} to {self.directory}: {self.groups} groups, "
                 f"{self.identities} identities, {self.faces} photos "
                 f"({self.photo_bytes / 1e6:.1f} MB of photos, "
                 f"{self.directory_bytes / 1e6:.1f} MB in all) in {self.elapsed_s:.1f} s"]
        if self.not_exported:
            lines.append(f"  not exported: {self.not_exported} (see "
                         f"{self.directory / NOT_EXPORTED_CSV})")
        return lines


async def _all_pages(fetch: Any, key: str) -> List[Dict[str, Any]]:
    items: List[Dict[str, Any]] = []
    page = 0
    while True:
        reply = await fetch(page, MAX_PAGE_LIMIT)
        batch = reply[key]
        items += batch
        if not batch or len(items) >= reply["pagination"]["total_count"]:
            return items
        page += 1


def _prepare_directory(directory: Path) -> None:
    if directory.exists():
        if not directory.is_dir():
            raise ExportError(f"{directory} exists and is not a folder")
        if any(directory.iterdir()):
            raise ExportError(f"{directory} is not empty: export into a new or empty folder")
    directory.mkdir(parents=True, exist_ok=True)


def _write_photo(path: Path, data: bytes) -> None:
    path.parent.mkdir(exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


async def run_export(target: Target, directory: Path, concurrency: int = DEFAULT_EXPORT_WORKERS,
                     progress: Optional[Progress] = None) -> ExportSummary:
    """Export everything ``target`` holds into ``directory`` (new or empty)."""
    started = time.monotonic()
    directory = Path(directory)
    _prepare_directory(directory)
    summary = ExportSummary(directory, target.name)
    groups = await _all_pages(target.list_groups, "permissions")
    identities = await _all_pages(target.list_identities, "identities")
    summary.groups = len(groups)
    total_faces = sum(len(i["face_ids"]) for i in identities)
    if progress is None:
        progress = Progress("export", total_faces, unit="face")
    else:
        progress.total = total_faces

    taken: set = set()
    jobs: List[Tuple[Dict[str, Any], int, str, str, Path]] = []
    for identity in identities:
        folder = export_folder_name(identity["identity_id"], taken)
        width = max(3, len(str(len(identity["face_ids"]))))
        for index, (face_id, image_id) in enumerate(
                zip(identity["face_ids"], identity["register_image_ids"]), 1):
            jobs.append((identity, index, face_id, image_id,
                         Path(folder) / f"{index:0{width}d}.jpg"))

    written: Dict[str, int] = {}  # register image id -> bytes written
    loop = asyncio.get_running_loop()
    queue = iter(jobs)

    async def worker() -> None:
        for _identity, _index, _face_id, image_id, relative in queue:
            data = await target.register_image(image_id)
            if data:
                await loop.run_in_executor(None, _write_photo, directory / relative, data)
                written[image_id] = len(data)
            progress.advance(failed=not data)

    with progress.logging_redirected():
        try:
            await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        finally:
            progress.close()

    rows: List[Sequence[Any]] = []
    missing: List[Sequence[Any]] = []
    exported_ids = set()
    for identity, _index, face_id, image_id, relative in jobs:
        if image_id not in written:
            missing.append((identity["identity_id"], face_id, image_id,
                            "no registration photo (registered from a feature vector)"))
            continue
        exported_ids.add(identity["identity_id"])
        rows.append((identity["identity_id"], identity["identity_name"], identity["user_type"],
                     format_permission_ids(identity["permission_ids"]), relative.as_posix(),
                     json.dumps(identity["ext_user_info"], ensure_ascii=False)
                     if identity["ext_user_info"] else "",
                     face_id, image_id))
    for identity in identities:
        if not identity["face_ids"]:
            missing.append((identity["identity_id"], "", "", "identity has no faces"))
    write_csv(directory / GROUPS_CSV, GROUP_COLUMNS,
              ((g["permission_id"], g["permission_name"], g["description"]) for g in groups))
    if missing:
        write_csv(directory / NOT_EXPORTED_CSV, NOT_EXPORTED_COLUMNS, missing)
    # Last: a folder with identities.csv is a finished export.
    write_csv(directory / IDENTITIES_CSV, IDENTITY_COLUMNS, rows)
    summary.identities = len(exported_ids)
    summary.faces = len(written)
    summary.photo_bytes = sum(written.values())
    summary.not_exported = len(missing)
    summary.elapsed_s = time.monotonic() - started
    return summary


# --------------------------------------------------------------------------- CLI

def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", help="new or empty folder to write to")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"a running daemon (default {DEFAULT_URL})")
    where.add_argument("--data-dir", dest="data_dir",
                       help="a STOPPED daemon's data directory, read in this process")
    parser.add_argument("--config", help="with --data-dir: the daemon's configuration file")
    parser.add_argument("--workers", type=int, default=DEFAULT_EXPORT_WORKERS,
                        help=f"photos fetched at once (default {DEFAULT_EXPORT_WORKERS})")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="with --url: seconds per request (default 120)")


def export_main(args: argparse.Namespace) -> int:
    """The ``export`` command: 0 done, 1 some faces had no photo to export, 2 failed."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.workers < 1:
        print("sophon-face export: --workers must be at least 1", file=sys.stderr)
        return EXIT_CANNOT_START
    try:
        summary = asyncio.run(_export(args))
    except (ExportError, TargetRefused, TargetUnavailable, ApiError) as exc:
        print(f"sophon-face export: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    except OSError as exc:
        print(f"sophon-face export: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    for line in summary.lines():
        print(line)
    return summary.exit_code


async def _export(args: argparse.Namespace) -> ExportSummary:
    directory = Path(args.directory)
    if args.data_dir:
        from ..config import ConfigError, load_config, with_overrides
        from .targets import open_direct

        try:
            config = with_overrides(load_config(args.config), data_dir=args.data_dir)
        except ConfigError as exc:
            raise TargetRefused(f"configuration error: {exc}") from None
        async with open_direct(config, inference=False) as direct:
            return await run_export(direct, directory, args.workers)
    from .targets import HttpTarget

    async with HttpTarget(args.url or DEFAULT_URL, args.workers, args.timeout) as http:
        return await run_export(http, directory, args.workers)


if __name__ == "__main__":  # ``python -m sophon_face.tools.export`` (tests, scripts)
    _parser = argparse.ArgumentParser(prog="sophon-face export",
                                      description=__doc__.splitlines()[0])
    add_export_arguments(_parser)
    sys.exit(export_main(_parser.parse_args()))
