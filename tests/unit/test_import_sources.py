"""Reading import sources (folder tree, CSV, groups.csv), the shared CSV helpers, export
folder names, the import journal and the data-directory lock probe."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sophon_face.tools.import_sources import (GROUPS_CSV, IDENTITIES_CSV, IDENTITY_COLUMNS,
                                              Group, Photo, SourceError, export_folder_name,
                                              format_permission_ids, parse_permission_ids,
                                              read_identities_csv, read_source, write_csv)
from sophon_face.tools.journal import Journal, JournalError
from sophon_face.tools.progress import Progress
from sophon_face.tools.targets import lmdb_holder

TEST_DATA = Path(__file__).resolve().parents[1] / "data"


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- folder tree

def test_folder_tree_identities_photos_and_what_is_ignored(tmp_path):
    root = tmp_path / "staff"
    _touch(root / "bob" / "2.JPG")
    _touch(root / "bob" / "1.jpeg")
    _touch(root / "bob" / "notes.txt")
    _touch(root / "bob" / ".hidden.jpg")
    _touch(root / "bob" / "old" / "x.jpg")
    _touch(root / "anna" / "a.webp")
    _touch(root / "小王" / "p.png")
    _touch(root / "empty" / "readme.md")
    _touch(root / ".git" / "x.jpg")
    _touch(root / "loose.jpg")
    plan = read_source(root)
    assert plan.kind == "folder tree" and not plan.from_export
    assert [i.identity_id for i in plan.identities] == ["anna", "bob", "小王"]
    bob = plan.identities[1]
    assert bob.identity_name == "bob"  # the folder names the person too
    assert [p.label for p in bob.photos] == ["bob/1.jpeg", "bob/2.JPG"]  # name order
    assert bob.photos[0].path == root / "bob" / "1.jpeg"
    assert plan.photo_count == 4
    ignored = "\n".join(plan.ignored)
    for entry in ("bob/notes.txt", "bob/.hidden.jpg", "bob/old", "empty: no photos", ".git",
                  "loose.jpg"):
        assert entry in ignored
    assert bob.create_fields(["g1"]) == {"identity_id": "bob", "identity_name": "bob",
                                         "permission_ids": ["g1"]}


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="no such folder"):
        read_source(tmp_path / "nope")


# --------------------------------------------------------------------------- CSV

HEADER = ",".join(IDENTITY_COLUMNS[:6])


def test_csv_rows_make_identities_with_their_fields(tmp_path):
    photo = _touch(tmp_path / "elsewhere" / "abs.jpg")
    csv_path = tmp_path / "staff.csv"
    csv_path.write_text(
        "\ufeff" + HEADER + "\n"
        'e1,小王,visitor,night;day,photos/a.jpg,"{""room"": ""101""}"\n'
        "e1,,,,photos/b.jpg,\n"
        "e1,小王,visitor,night;day,photos/a.jpg,\n"  # the same photo again: allowed
        f'e2,,,"[""x;y"", ""z""]",{photo},\n'
        ",,,,,\n", encoding="utf-8")
    _touch(tmp_path / GROUPS_CSV)
    (tmp_path / GROUPS_CSV).write_text("permission_id,permission_name,description\n"
                                       "night,Night shift,after 22:00\n", encoding="utf-8")
    plan = read_source(csv_path)
    assert plan.kind == "csv" and not plan.from_export
    e1, e2 = plan.identities
    assert (e1.identity_name, e1.user_type, e1.permission_ids, e1.ext_user_info) == (
        "小王", "visitor", ("night", "day"), {"room": "101"})
    assert [(p.label, p.occurrence) for p in e1.photos] == [
        ("photos/a.jpg", 0), ("photos/b.jpg", 0), ("photos/a.jpg", 1)]
    assert e1.photos[0].path == tmp_path / "photos" / "a.jpg"
    assert e1.photos[0].key != e1.photos[2].key
    assert e2.photos[0].path == photo
    assert e2.identity_name == ""  # an empty cell is the empty name, taken literally
    assert e2.user_type is None and e2.ext_user_info is None
    assert e2.permission_ids == ("x;y", "z")
    assert plan.groups == (Group("night", "Night shift", "after 22:00"),)
    assert plan.referenced_groups() == ["night", "day", "x;y", "z"]
    assert e2.create_fields(["g"]) == {"identity_id": "e2", "identity_name": "",
                                       "permission_ids": ["x;y", "z", "g"]}


def test_csv_without_optional_columns_uses_api_defaults(tmp_path):
    csv_path = tmp_path / "min.csv"
    csv_path.write_text("photo,identity_id\na.jpg,p1\n", encoding="utf-8")
    (identity,) = read_identities_csv(csv_path).identities
    assert identity.create_fields() == {"identity_id": "p1"}  # name, type, groups: defaults


@pytest.mark.parametrize("text, message", [
    ("", "empty file"),
    ("identity_id,photo,nmae\n", "line 1: unknown column 'nmae'"),
    ("identity_id,identity_id,photo\n", "appears twice"),
    ("identity_id,identity_name\n", "missing column 'photo'"),
    (HEADER + "\n,n,,,a.jpg,\n", "line 2: identity_id is empty"),
    (HEADER + "\np,n,,,,\n", "line 2: photo is empty"),
    (HEADER + "\np,n,,,a.jpg,{not json\n", "line 2:"),
    (HEADER + "\np,n,,,a.jpg,[1]\n", "line 2: ext_user_info: must be a JSON object"),
    (HEADER + '\np,n,,"[1]",a.jpg,\n', "line 2: permission_ids"),
    (HEADER + "\np,n,,,a.jpg,,extra\n", "line 2: 7 cells"),
    (HEADER + "\np,Anna,,,a.jpg,\np,Bob,,,b.jpg,\n", "line 3: identity_name of 'p' differs "
                                                    "from its first row (line 2)"),
    (HEADER + "\np,,visitor,,a.jpg,\np,,vip,,b.jpg,\n", "line 3: user_type"),
])
def test_csv_errors_name_file_and_line(tmp_path, text, message):
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(text, encoding="utf-8")
    with pytest.raises(SourceError) as info:
        read_identities_csv(csv_path)
    assert str(csv_path) in str(info.value) and message in str(info.value)


def test_csv_that_is_not_utf8(tmp_path):
    csv_path = tmp_path / "latin1.csv"
    csv_path.write_bytes(b"identity_id,photo\n\xe9t\xe9,a.jpg\n")
    with pytest.raises(SourceError, match="not UTF-8"):
        read_identities_csv(csv_path)


@pytest.mark.parametrize("text, message", [
    ("permission_id,permission_name\n,x\n", "line 2: permission_id and permission_name"),
    ("permission_id,permission_name\na,x\na,y\n", "line 3: group 'a' listed twice"),
    ("permission_id\n", "missing column 'permission_name'"),
])
def test_groups_csv_errors(tmp_path, text, message):
    (tmp_path / GROUPS_CSV).write_text(text, encoding="utf-8")
    csv_path = tmp_path / "ids.csv"
    csv_path.write_text("identity_id,photo\np,a.jpg\n", encoding="utf-8")
    with pytest.raises(SourceError, match=message):
        read_identities_csv(csv_path)


def test_a_folder_with_identities_csv_is_an_export(tmp_path):
    write_csv(tmp_path / IDENTITIES_CSV, IDENTITY_COLUMNS,
              [("p1", "Anna", "employee", "g1", "p1/001.jpg", "", "f-1", "r-1")])
    _touch(tmp_path / "p1" / "001.jpg")
    plan = read_source(tmp_path)
    assert plan.kind == "csv" and plan.from_export
    assert plan.identities[0].photos[0].source_face_id == "f-1"
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("ids", [[], ["a"], ["a", "b c"], ["x;y", "z"], [" pad"], ["[a"], [""]])
def test_permission_ids_cell_round_trip(ids):
    assert list(parse_permission_ids(format_permission_ids(ids))) == ids


def test_permission_ids_cell_forms():
    assert format_permission_ids(["a", "b"]) == "a;b"
    assert parse_permission_ids(" a ; b ;; a ") == ("a", "b")  # trimmed, deduplicated
    with pytest.raises(ValueError):
        parse_permission_ids('["a", 1]')


# --------------------------------------------------------------------------- export names

def test_export_folder_names_are_safe_and_unique():
    taken: set = set()
    assert export_folder_name("100000", taken) == "100000"  # kept: a plain folder tree
    assert export_folder_name("小王", taken) == "小王"
    slash = export_folder_name("a/b", taken)
    assert "/" not in slash and slash.startswith("a_b~")
    assert export_folder_name("a_b", taken) == "a_b"  # the cleaned name is not the id
    hidden = export_folder_name(".x", taken)
    assert not hidden.startswith(".")
    empty = export_folder_name("", taken)
    assert empty.startswith("~")
    clash = export_folder_name("ANNA", {"anna"})
    assert clash.lower() != "anna"
    long = export_folder_name("é" * 128, taken)
    assert len(long.encode("utf-8")) <= 120
    assert len(taken) == 7


# --------------------------------------------------------------------------- journal

def _photo(identity: str, label: str, n: int = 0) -> Photo:
    return Photo(identity, Path("/nowhere") / label, label, n)


def test_journal_records_and_resumes(tmp_path):
    path = tmp_path / "j.jsonl"
    journal = Journal.open(path, "/src", "http://box:5555", resume=False)
    a1, a2, b1 = _photo("a", "a/1.jpg"), _photo("a", "a/2.jpg"), _photo("b", "b/1.jpg")
    journal.record_ok(a1, "f1", "r1")
    journal.record_failed(b1, "NO_FACE_ERROR", "register_image")
    journal.close()

    with pytest.raises(JournalError, match="--resume"):
        Journal.open(path, "/src", "http://box:5555", resume=False)
    with pytest.raises(JournalError, match="belongs to an import into http://box:5555"):
        Journal.open(path, "/src", "/data", resume=True)

    journal = Journal.open(path, "/src", "http://box:5555", resume=True)
    assert journal.outcome(a1).ok and journal.outcome(a1).face_id == "f1"
    assert journal.outcome(a2) is None
    assert journal.outcome(b1).code == "NO_FACE_ERROR"
    assert journal.has_success("a") and not journal.has_success("b")
    assert journal.image_ids("a") == {"r1"}
    journal.record_ok(b1, "f2", "r2", reconciled=True)  # the last line about a photo wins
    journal.close()
    journal = Journal.open(path, "/src", "http://box:5555", resume=True)
    assert journal.outcome(b1).ok and journal.outcome(b1).reconciled
    assert journal.failures() == []
    journal.close()


def test_journal_survives_a_line_cut_short(tmp_path, caplog):
    path = tmp_path / "j.jsonl"
    journal = Journal.open(path, "/src", "t", resume=False)
    journal.record_ok(_photo("a", "a/1.jpg"), "f1", "r1")
    journal.close()
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"photo": "a/2.jpg", "identity_id": "a", "n": 0, "sta')  # SIGKILL here
    with caplog.at_level(logging.WARNING):
        journal = Journal.open(path, "/src", "t", resume=True)
    assert "cut short" in caplog.text
    assert journal.outcome(_photo("a", "a/2.jpg")) is None
    journal.record_ok(_photo("a", "a/2.jpg"), "f2", "r2")
    journal.close()
    journal = Journal.open(path, "/src", "t", resume=True)  # the new line is whole
    assert journal.outcome(_photo("a", "a/2.jpg")).ok
    journal.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert json.loads(lines[0])["format"] == "sophon-face-import-journal"


def test_journal_refuses_a_file_that_is_not_one(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"something": "else"}\n', encoding="utf-8")
    with pytest.raises(JournalError, match="not an import journal"):
        Journal.open(path, "/src", "t", resume=True)


# --------------------------------------------------------------------------- lock probe

def test_lmdb_holder_sees_another_process(tmp_path):
    assert lmdb_holder(tmp_path) is None  # no store at all
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import lmdb, sys, time; env = lmdb.open(sys.argv[1], max_dbs=2); print('open', flush=True);"
         " time.sleep(60)", str(tmp_path / "lmdb")], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"open"
        assert lmdb_holder(tmp_path) in (holder.pid, 0)
    finally:
        holder.kill()
        holder.wait()
    deadline = time.monotonic() + 5
    while lmdb_holder(tmp_path) is not None and time.monotonic() < deadline:
        time.sleep(0.05)  # the kernel drops a dead process's locks
    assert lmdb_holder(tmp_path) is None


# --------------------------------------------------------------------------- digests

def test_stored_photo_digest():
    from sophon_face.pipeline.images import decode_image_bytes, jpeg_for_storage
    from sophon_face.pipeline.types import ImageLimits
    from sophon_face.tools.bulk_import import stored_photo_digest

    jpeg = (TEST_DATA / "sunak.jpg").read_bytes()
    assert stored_photo_digest(jpeg) == hashlib.sha256(jpeg).hexdigest()  # kept as sent
    png = (TEST_DATA / "gauss.png").read_bytes()
    stored = jpeg_for_storage(decode_image_bytes(png, "register_image", ImageLimits()))
    assert stored_photo_digest(png) == hashlib.sha256(stored).hexdigest()  # re-encoded
    assert stored_photo_digest(b"not an image") is None


# --------------------------------------------------------------------------- progress

def test_progress_logs_lines_when_not_on_a_terminal(caplog):
    progress = Progress("import", total=4, done=1, interval_s=0.0, bar=False)
    with caplog.at_level(logging.INFO, logger="sophon_face.tools.progress"):
        with progress.logging_redirected():
            progress.advance()
            progress.advance(failed=True)
    progress.close()
    assert "import: 3/4 photos (75%), 1 failed" in caplog.text


def test_progress_bar_on_a_terminal(tmp_path):
    pytest.importorskip("tqdm")
    with open(tmp_path / "bar.txt", "w", encoding="utf-8") as stream:
        progress = Progress("import", total=2, stream=stream, bar=True)
        progress.advance()
        progress.advance(failed=True)
        progress.close()
    assert "2/2" in (tmp_path / "bar.txt").read_text(encoding="utf-8")


def test_write_csv_replaces_whole_files(tmp_path):
    path = tmp_path / "out.csv"
    write_csv(path, ("a", "b"), [("1", "x,y"), ("2", 'q"')])
    write_csv(path, ("a", "b"), [("3", "\n")])
    assert path.read_bytes() == b'a,b\r\n3,"\n"\r\n'
    assert os.listdir(tmp_path) == ["out.csv"]
