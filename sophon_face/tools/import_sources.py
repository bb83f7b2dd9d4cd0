"""What a bulk import reads, and the CSV formats that ``import`` and ``export`` share.

A source becomes an ``ImportPlan``: identities in source order, each with its photos in
registration order (the first photo that succeeds creates the identity, the rest are
added to it, one after the other, so the face order is the source's).

Folder tree (``SOURCE/<identity>/<photo>``)
    The folder name is the identity id and the identity name. Photos are the files ending in
    .jpg .jpeg .png .bmp .webp (any case), in name order. Hidden entries, files at the top
    level, other files and deeper folders are ignored and listed in ``ImportPlan.ignored``.

CSV (``IDENTITY_COLUMNS``, UTF-8, a BOM is accepted, one row per photo)
    ``identity_id,identity_name,user_type,permission_ids,photo,ext_user_info[,face_id,register_image_id]``

    * ``identity_id`` and ``photo`` are required in every row; the other columns may be
      left out of the file. An unknown column is an error (a typo never passes silently).
    * ``photo``: a path, relative to the CSV's folder or absolute.
    * The identity's fields come from its first row: ``identity_name`` is taken literally
      (an empty cell is the empty name; without the column the API default applies);
      ``user_type`` empty = the API default (employee); ``permission_ids`` is a list of
      permission group ids, ``;``-separated or a JSON array, empty = none;
      ``ext_user_info`` is a JSON object, empty = ``{}``. Later rows of the same identity
      may leave these cells empty or repeat them; a different value is an error.
    * ``face_id`` and ``register_image_id`` are what ``export`` wrote: the ids on the box
      the photo came from. The API cannot set them on a new box; the journal records them
      beside the new ids.

    ``groups.csv`` beside the CSV (``GROUP_COLUMNS``), if present, describes permission
    groups to create with their ids, names and descriptions before the identities. A
    group id used in ``permission_ids`` but neither on the target nor in ``groups.csv`` is
    created with that id as its name.

A folder that holds ``identities.csv`` (what ``export`` writes) is read as that CSV.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, Tuple

IDENTITY_COLUMNS = ("identity_id", "identity_name", "user_type", "permission_ids", "photo",
                    "ext_user_info", "face_id", "register_image_id")
REQUIRED_COLUMNS = ("identity_id", "photo")
GROUP_COLUMNS = ("permission_id", "permission_name", "description")
IDENTITIES_CSV = "identities.csv"
GROUPS_CSV = "groups.csv"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: Folder names ``export`` writes stay well below the 255-byte limit of common filesystems.
MAX_FOLDER_NAME_BYTES = 120
_UNSAFE_IN_FOLDER_NAMES = frozenset('/\\\0:*?"<>|')


class SourceError(ValueError):
    """A source that cannot be read as a whole; ``str()`` names the file (and line)."""


@dataclass(frozen=True)
class Photo:
    """One photo to register. ``key`` identifies it across runs (the journal's key)."""

    identity_id: str
    path: Path
    #: As the source names it: the path below the tree's root, or the CSV cell.
    label: str
    #: How many earlier photos of this identity have the same label (a photo may be
    #: registered twice, as the API allows).
    occurrence: int = 0
    #: ``face_id`` of the CSV row (the exporting box's id), "" when none.
    source_face_id: str = ""

    @property
    def key(self) -> Tuple[str, str, int]:
        return (self.identity_id, self.label, self.occurrence)


@dataclass(frozen=True)
class IdentityPlan:
    identity_id: str
    #: None: not given (the API's default applies).
    identity_name: Optional[str] = None
    user_type: Optional[str] = None
    permission_ids: Tuple[str, ...] = ()
    ext_user_info: Optional[Dict[str, Any]] = None
    photos: Tuple[Photo, ...] = ()

    def create_fields(self, extra_groups: Sequence[str] = ()) -> Dict[str, Any]:
        """The identity fields of its ``createidentity`` body (no image, no fiqa_level)."""
        fields: Dict[str, Any] = {"identity_id": self.identity_id}
        if self.identity_name is not None:
            fields["identity_name"] = self.identity_name
        if self.user_type is not None:
            fields["user_type"] = self.user_type
        groups = list(dict.fromkeys([*self.permission_ids, *extra_groups]))
        if groups:
            fields["permission_ids"] = groups
        if self.ext_user_info is not None:
            fields["ext_user_info"] = self.ext_user_info
        return fields


@dataclass(frozen=True)
class Group:
    permission_id: str
    permission_name: str
    description: str = ""


@dataclass(frozen=True)
class ImportPlan:
    kind: str  # "folder tree" or "csv"
    source: Path
    identities: Tuple[IdentityPlan, ...]
    groups: Tuple[Group, ...] = ()
    #: Written by ``export`` (the CSV has ``register_image_id``): every photo passed a
    #: daemon's checks once already.
    from_export: bool = False
    #: Entries of the source that are not photos to import, with the reason (for the log).
    ignored: Tuple[str, ...] = field(default=(), compare=False)

    @property
    def photo_count(self) -> int:
        return sum(len(identity.photos) for identity in self.identities)

    def referenced_groups(self) -> List[str]:
        """Every group id the identities name, in first-use order."""
        return list(dict.fromkeys(g for i in self.identities for g in i.permission_ids))


def read_source(path: Path) -> ImportPlan:
    """A folder tree, a CSV file, or a folder with ``identities.csv`` (an export)."""
    path = Path(path)
    if path.is_dir():
        if (path / IDENTITIES_CSV).is_file():
            return read_identities_csv(path / IDENTITIES_CSV)
        return read_folder_tree(path)
    if path.is_file():
        return read_identities_csv(path)
    raise SourceError(f"{path}: no such folder or CSV file")


# --------------------------------------------------------------------------- folder tree

def _is_photo(name: str) -> bool:
    return name.lower().endswith(PHOTO_SUFFIXES)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes kept as surrogates by os.fsdecode
        return False
    return True


def read_folder_tree(root: Path) -> ImportPlan:
    root = Path(root)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        raise SourceError(f"{root}: {exc.strerror or exc}") from None
    identities: List[IdentityPlan] = []
    ignored: List[str] = []
    for entry in entries:
        if entry.name.startswith("."):
            ignored.append(f"{entry.name}: hidden")
            continue
        if not entry.is_dir():
            ignored.append(f"{entry.name}: not a folder (photos go in <identity>/<photo>)")
            continue
        if not _utf8(entry.name):
            ignored.append(f"{entry.name!r}: folder name is not valid UTF-8")
            continue
        photos: List[Photo] = []
        for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
            label = f"{entry.name}/{item.name}"
            if item.name.startswith("."):
                ignored.append(f"{label}: hidden")
            elif item.is_dir():
                ignored.append(f"{label}: folder below an identity folder")
            elif not _is_photo(item.name):
                ignored.append(f"{label}: not a photo ({', '.join(PHOTO_SUFFIXES)})")
            elif not _utf8(item.name):
                ignored.append(f"{label!r}: file name is not valid UTF-8")
            else:
                photos.append(Photo(entry.name, Path(item.path), label))
        if not photos:
            ignored.append(f"{entry.name}: no photos")
            continue
        identities.append(IdentityPlan(entry.name, identity_name=entry.name,
                                       photos=tuple(photos)))
    return ImportPlan("folder tree", root, tuple(identities), ignored=tuple(ignored))


# --------------------------------------------------------------------------- CSV

def parse_permission_ids(cell: str) -> Tuple[str, ...]:
    """``a;b`` or a JSON array of strings; ``ValueError`` when neither."""
    text = cell.strip()
    if not text:
        return ()
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError("permission_ids: a JSON array must hold strings only")
        return tuple(dict.fromkeys(value))
    return tuple(dict.fromkeys(part.strip() for part in text.split(";") if part.strip()))


def format_permission_ids(ids: Iterable[str]) -> str:
    """``a;b``, or a JSON array when an id would not survive the ``;`` form."""
    ids = list(ids)
    if any(";" in i or i != i.strip() or not i for i in ids) or (ids and ids[0].startswith("[")):
        return json.dumps(ids, ensure_ascii=False)
    return ";".join(ids)


def _parse_ext(cell: str) -> Optional[Dict[str, Any]]:
    if not cell.strip():
        return None
    value = json.loads(cell)
    if not isinstance(value, dict):
        raise ValueError("ext_user_info: must be a JSON object")
    return value


def _header(reader: Any, path: Path, allowed: Sequence[str], required: Sequence[str]) -> List[str]:
    try:
        header = next(reader)
    except StopIteration:
        raise SourceError(f"{path}: empty file (expected the header {','.join(allowed)})") from None
    columns = [c.strip() for c in header]
    unknown = [c for c in columns if c not in allowed]
    if unknown:
        raise SourceError(f"{path}: line 1: unknown column {unknown[0]!r} "
                          f"(columns: {','.join(allowed)})")
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise SourceError(f"{path}: line 1: column {duplicated[0]!r} appears twice")
    missing = [c for c in required if c not in columns]
    if missing:
        raise SourceError(f"{path}: line 1: missing column {missing[0]!r}")
    return columns


def _rows(path: Path, allowed: Sequence[str],
          required: Sequence[str]) -> Iterable[Tuple[int, Dict[str, str], List[str]]]:
    """(line number, {column: cell}, columns) for every non-blank row after the header."""
    try:
        handle = open(path, "r", encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise SourceError(f"{path}: {exc.strerror or exc}") from None
    with handle:
        reader = csv.reader(handle)
        try:
            columns = _header(reader, path, allowed, required)
            for cells in reader:
                line = reader.line_num
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) > len(columns):
                    raise SourceError(f"{path}: line {line}: {len(cells)} cells, the header "
                                      f"has {len(columns)} columns")
                cells += [""] * (len(columns) - len(cells))
                yield line, dict(zip(columns, cells)), columns
        except csv.Error as exc:
            raise SourceError(f"{path}: line {reader.line_num}: {exc}") from None
        except UnicodeDecodeError as exc:
            raise SourceError(f"{path}: not UTF-8 text ({exc.reason})") from None


class _CsvIdentity:
    """An identity being assembled from its rows."""

    def __init__(self, identity_id: str, first_line: int, fields: Dict[str, Any]) -> None:
        self.identity_id = identity_id
        self.first_line = first_line
        self.fields = fields
        self.photos: List[Photo] = []
        self.labels: Dict[str, int] = {}

    def check_same(self, line: int, fields: Dict[str, Any], path: Path) -> None:
        for name, value in fields.items():
            if name == "identity_name" and value == "":
                continue  # an empty cell on a later row means "as above"
            if value is not None and value != () and value != self.fields.get(name):
                raise SourceError(
                    f"{path}: line {line}: {name} of {self.identity_id!r} differs from its "
                    f"first row (line {self.first_line})")

    def plan(self) -> IdentityPlan:
        f = self.fields
        return IdentityPlan(self.identity_id, f.get("identity_name"), f.get("user_type"),
                            f.get("permission_ids") or (), f.get("ext_user_info"),
                            tuple(self.photos))


def read_identities_csv(path: Path) -> ImportPlan:
    path = Path(path)
    base = path.parent
    assembled: Dict[str, _CsvIdentity] = {}
    from_export = False
    for line, row, columns in _rows(path, IDENTITY_COLUMNS, REQUIRED_COLUMNS):
        from_export = "register_image_id" in columns
        identity_id = row["identity_id"]
        label = row["photo"]
        if not identity_id:
            raise SourceError(f"{path}: line {line}: identity_id is empty")
        if not label.strip():
            raise SourceError(f"{path}: line {line}: photo is empty")
        try:
            fields: Dict[str, Any] = {
                "identity_name": row["identity_name"] if "identity_name" in columns else None,
                "user_type": row.get("user_type", "").strip() or None,
                "permission_ids": parse_permission_ids(row.get("permission_ids", "")),
                "ext_user_info": _parse_ext(row.get("ext_user_info", "")),
            }
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            raise SourceError(f"{path}: line {line}: {exc}") from None
        identity = assembled.get(identity_id)
        if identity is None:
            identity = assembled[identity_id] = _CsvIdentity(identity_id, line, fields)
        else:
            identity.check_same(line, fields, path)
        occurrence = identity.labels.get(label, 0)
        identity.labels[label] = occurrence + 1
        identity.photos.append(Photo(identity_id, base / label, label, occurrence,
                                     row.get("face_id", "")))
    groups_path = base / GROUPS_CSV
    groups = read_groups_csv(groups_path) if groups_path.is_file() else ()
    return ImportPlan("csv", path, tuple(i.plan() for i in assembled.values()), groups,
                      from_export=from_export)


def read_groups_csv(path: Path) -> Tuple[Group, ...]:
    groups: Dict[str, Group] = {}
    for line, row, _columns in _rows(path, GROUP_COLUMNS, ("permission_id", "permission_name")):
        permission_id, name = row["permission_id"], row["permission_name"]
        if not permission_id or not name:
            raise SourceError(f"{path}: line {line}: permission_id and permission_name "
                              f"must not be empty")
        if permission_id in groups:
            raise SourceError(f"{path}: line {line}: group {permission_id!r} listed twice")
        groups[permission_id] = Group(permission_id, name, row.get("description", ""))
    return tuple(groups.values())


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a whole CSV beside its final name, then rename: never a half-written file."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    os.replace(partial, path)


# --------------------------------------------------------------------------- export names

def export_folder_name(identity_id: str, taken: Set[str]) -> str:
    """A folder name for an identity: the id itself when it is a safe, unique name (so the
    export also reads as a plain folder tree), else a cleaned name with a hash of the id.
    The CSV carries the true id either way. ``taken`` holds the lower-cased names given so
    far (no two may differ only in case, for case-insensitive filesystems)."""
    cleaned = "".join("_" if (c in _UNSAFE_IN_FOLDER_NAMES or ord(c) < 32) else c
                      for c in identity_id)
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    name = cleaned
    if (cleaned != identity_id or not cleaned or cleaned.lower() in taken
            or len(cleaned.encode("utf-8")) > MAX_FOLDER_NAME_BYTES):
        digest = hashlib.sha1(identity_id.encode("utf-8")).hexdigest()[:10]
        stem = cleaned.encode("utf-8")[:MAX_FOLDER_NAME_BYTES - 12].decode("utf-8", "ignore")
        name = f"{stem}~{digest}"
    while name.lower() in taken:  # a hash collision or a case clash
        name += "_"
    taken.add(name.lower())
    return name
