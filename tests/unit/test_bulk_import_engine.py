"""The importer's decisions at the Target seam: retries, unknown outcomes, stopping codes,
identities that are not its own. The target here is an in-memory gallery through the same
protocol as the HTTP and in-process targets; the real ones are exercised end to end in
tests/integration/test_bulk_import.py."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest

from sophon_face.errors import (GroupLenError, IdNotFound, IdRepeatError, InternalError,
                                ServiceBusy)
from sophon_face.tools.bulk_import import (EXIT_FAILURES, EXIT_OK, EXIT_STOPPED, Importer,
                                           ImportOptions)
from sophon_face.tools.import_sources import read_source
from sophon_face.tools.journal import Journal
from sophon_face.tools.targets import TargetUnavailable, _error_of

TEST_DATA = Path(__file__).resolve().parents[1] / "data"


class MemoryTarget:
    """A gallery in a dict. ``faults`` lists what the next registrations do instead of
    succeeding: "busy" (refused), "lost" (committed, then the reply is lost),
    "internal" (committed, then INTERNAL_ERROR), "down" (never reached)."""

    name = "memory"

    def __init__(self) -> None:
        self.identities: Dict[str, Dict[str, Any]] = {}
        self.images: Dict[str, bytes] = {}
        self.groups: Dict[str, Dict[str, Any]] = {}
        self.faults: List[str] = []
        self.calls = 0
        self.call_times: List[float] = []
        self.settled = 0
        self._ids = itertools.count(1)

    def _fault(self) -> Optional[str]:
        self.calls += 1
        self.call_times.append(time.monotonic())
        return self.faults.pop(0) if self.faults else None

    def _face(self, body: Dict[str, Any]) -> Tuple[str, str]:
        data = base64.b64decode(body["register_image"])
        n = next(self._ids)
        self.images[f"r{n}"] = data
        return f"f{n}", f"r{n}"

    def _after_commit(self, fault: Optional[str]) -> None:
        if fault == "lost":
            raise TargetUnavailable("connection reset", sent=True)
        if fault == "internal":
            raise InternalError("worker crashed after the write")

    def _before(self, fault: Optional[str]) -> None:
        if fault == "busy":
            raise ServiceBusy()
        if fault == "busy, retry after 0.4 s":
            raise ServiceBusy(retry_after_s=0.4)
        if fault == "down":
            raise TargetUnavailable("connection refused", sent=False)
        if fault == "full":
            raise GroupLenError()

    async def create_identity(self, body: Dict[str, Any]) -> Dict[str, Any]:
        fault = self._fault()
        self._before(fault)
        if body["identity_id"] in self.identities:
            raise IdRepeatError(body["identity_id"])
        face_id, image_id = self._face(body)
        self.identities[body["identity_id"]] = {
            "identity_id": body["identity_id"], "face_ids": [face_id],
            "register_image_ids": [image_id],
            "permission_ids": body.get("permission_ids", [])}
        self._after_commit(fault)
        return {"identity_id": body["identity_id"], "face_id": face_id,
                "register_image_id": image_id}

    async def add_face(self, body: Dict[str, Any]) -> Dict[str, Any]:
        fault = self._fault()
        self._before(fault)
        record = self.identities.get(body["identity_id"])
        if record is None:
            raise IdNotFound(body["identity_id"])
        face_id, image_id = self._face(body)
        record["face_ids"].append(face_id)
        record["register_image_ids"].append(image_id)
        self._after_commit(fault)
        return dict(record, total_face_cnt=len(record["face_ids"]))

    async def settle(self, timeout_s: float) -> bool:
        self.settled += 1
        return True

    async def get_identity(self, identity_id: str) -> Optional[Dict[str, Any]]:
        record = self.identities.get(identity_id)
        return None if record is None else dict(record)

    async def register_image(self, image_id: str) -> Optional[bytes]:
        return self.images.get(image_id)

    async def list_identities(self, page_index: int, page_limit: int) -> Dict[str, Any]:
        raise NotImplementedError

    async def list_groups(self, page_index: int, page_limit: int) -> Dict[str, Any]:
        raise NotImplementedError

    async def get_group(self, body: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        for group in self.groups.values():
            if group["permission_id"] == body.get("permission_id") or (
                    group["permission_name"] == body.get("permission_name")):
                return group
        return None

    async def create_group(self, body: Dict[str, Any]) -> Dict[str, Any]:
        group = {"permission_id": body.get("permission_id") or f"g{len(self.groups)}",
                 "permission_name": body["permission_name"],
                 "description": body.get("description", "")}
        self.groups[group["permission_id"]] = group
        return group


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    for person, names in {"anna": ["1.jpg", "2.jpg", "3.jpg"], "bob": ["1.jpg", "2.jpg"]}.items():
        (root / person).mkdir(parents=True)
        for index, name in enumerate(names):
            (root / person / name).write_bytes(b"\xff\xd8\xff" + f"{person}{index}".encode())
    return root


def _run(tree: Path, target: MemoryTarget, journal_path: Path, **options: Any):
    plan = read_source(tree)
    resume = options.pop("resume", False)
    journal = Journal.open(journal_path, str(tree), target.name, resume)
    try:
        importer = Importer(plan, target, journal, ImportOptions(
            retry_base_s=0.0, resume=resume, **options))
        return asyncio.run(importer.run())
    finally:
        journal.close()


def _faces(target: MemoryTarget) -> Dict[str, List[bytes]]:
    return {i: [target.images[r] for r in rec["register_image_ids"]]
            for i, rec in target.identities.items()}


def _expected(tree: Path) -> Dict[str, List[bytes]]:
    return {p.name: [f.read_bytes() for f in sorted(p.iterdir())] for p in sorted(tree.iterdir())}


@pytest.mark.parametrize("fault", ["lost", "internal"])
def test_an_unknown_outcome_is_checked_before_sending_again(tree, tmp_path, fault):
    target = MemoryTarget()
    target.faults = [fault, "ok", fault]  # anna's create and anna's second addface
    summary = _run(tree, target, tmp_path / "j.jsonl")
    assert _faces(target) == _expected(tree)  # nothing registered twice
    assert summary.exit_code == EXIT_OK
    assert summary.reconciled == 2 and summary.registered == 3
    assert target.settled == 2  # each unknown outcome waited for the target first


def test_a_busy_daemon_is_retried(tree, tmp_path):
    target = MemoryTarget()
    target.faults = ["busy", "busy", "down"]
    summary = _run(tree, target, tmp_path / "j.jsonl", concurrency=2)
    assert _faces(target) == _expected(tree)
    assert summary.exit_code == EXIT_OK and summary.reconciled == 0


def test_a_busy_daemons_retry_after_is_honoured(tree, tmp_path):
    target = MemoryTarget()
    target.faults = ["busy, retry after 0.4 s"]
    summary = _run(tree, target, tmp_path / "j.jsonl")  # back-off of 0 s: Retry-After rules
    assert summary.exit_code == EXIT_OK and _faces(target) == _expected(tree)
    assert target.call_times[1] - target.call_times[0] >= 0.4


def test_retry_after_reaches_the_importer_from_a_503():
    envelope = b'{"error": {"code": "INTERNAL_ERROR", "message": "server busy"}}'
    assert _error_of(503, envelope, "3").retry_after_s == 3.0
    for header in (None, "Wed, 21 Oct 2026 07:28:00 GMT", "-1", "nan", "inf"):
        busy = _error_of(503, envelope, header)
        assert isinstance(busy, ServiceBusy) and busy.retry_after_s is None


def test_an_unreachable_daemon_stops_the_run_and_resume_finishes(tree, tmp_path):
    target = MemoryTarget()
    target.faults = ["ok"] + ["down"] * 4
    summary = _run(tree, target, tmp_path / "j.jsonl", attempts=4)
    assert summary.exit_code == EXIT_STOPPED and "unreachable" in summary.stopped
    assert [f.code for f in summary.failures] == ["CONNECTION_ERROR"]  # not journaled
    summary = _run(tree, target, tmp_path / "j.jsonl", resume=True)
    assert summary.exit_code == EXIT_OK and summary.done_before == 1
    assert _faces(target) == _expected(tree)


def test_a_full_library_stops_the_run(tree, tmp_path):
    target = MemoryTarget()
    target.faults = ["ok", "full"]
    summary = _run(tree, target, tmp_path / "j.jsonl")
    assert summary.exit_code == EXIT_STOPPED and summary.stopped.startswith("GROUP_LEN_ERROR")
    assert summary.registered == 1


def test_an_identity_this_import_did_not_create_is_left_alone(tree, tmp_path):
    target = MemoryTarget()
    target.identities["bob"] = {"identity_id": "bob", "face_ids": ["x"],
                                "register_image_ids": ["rx"], "permission_ids": []}
    target.images["rx"] = b"someone else's photo"
    summary = _run(tree, target, tmp_path / "j.jsonl")
    assert summary.exit_code == EXIT_FAILURES
    assert {(f.photo, f.code) for f in summary.failures} == {
        ("bob/1.jpg", "ID_REPEAT_ERROR"), ("bob/2.jpg", "ID_REPEAT_ERROR")}
    assert target.identities["bob"]["face_ids"] == ["x"]


def test_resume_adopts_an_identity_holding_the_photos(tree, tmp_path):
    """The first run died after its createidentity committed, before the journal line."""
    target = MemoryTarget()
    target.faults = ["lost"]
    first = read_source(tree).identities[0]
    photo_b64 = base64.b64encode(first.photos[0].path.read_bytes()).decode()
    with pytest.raises(TargetUnavailable):
        asyncio.run(target.create_identity(dict(first.create_fields(), register_image=photo_b64)))
    summary = _run(tree, target, tmp_path / "j.jsonl", resume=True)
    assert summary.reconciled == 1 and summary.exit_code == EXIT_OK
    assert _faces(target) == _expected(tree)


def test_group_by_name_is_created_once_and_joined(tree, tmp_path):
    target = MemoryTarget()
    _run(tree, target, tmp_path / "j.jsonl", group_name="staff")
    (group,) = target.groups.values()
    assert all(r["permission_ids"] == [group["permission_id"]]
               for r in target.identities.values())


def test_a_fresh_journal_on_a_target_holding_the_photos_adds_nothing(tree, tmp_path):
    target = MemoryTarget()
    _run(tree, target, tmp_path / "first.jsonl", concurrency=2)
    summary = _run(tree, target, tmp_path / "second.jsonl", concurrency=2)
    assert _faces(target) == _expected(tree)
    assert summary.registered == 0 and summary.reconciled == 5 and not summary.failures


def test_an_identity_holding_one_of_the_photos_is_completed_in_order(tree, tmp_path):
    target = MemoryTarget()
    second = read_source(tree).identities[0].photos[1]
    target.identities["anna"] = {"identity_id": "anna", "face_ids": ["x"],
                                 "register_image_ids": ["rx"], "permission_ids": []}
    target.images["rx"] = second.path.read_bytes()
    summary = _run(tree, target, tmp_path / "j.jsonl")
    assert summary.exit_code == EXIT_OK and summary.reconciled == 1
    anna = _expected(tree)["anna"]
    assert _faces(target)["anna"] == [anna[1], anna[0], anna[2]]  # the found one stays first
