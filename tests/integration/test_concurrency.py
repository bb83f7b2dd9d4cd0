"""Concurrency: one real daemon process, ~140 mixed requests all in flight together.

Many requests deliberately collide (two deletes of the same face, a replace racing a delete,
two creations of the same id or group name, additions to an identity being deleted), so
the losers must fail with the error the spec names for that situation, never with a 5xx.
Afterwards the library must be consistent as seen through the API and in the store itself.
"""

from __future__ import annotations

import base64
import itertools
import json
import random
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest

from sophon_face.errors import error_class
from sophon_face.service.identities import render_identity

from .crash_harness import (
    Connection, Daemon, Reply, read_store, store_violations, write_config,
)

DATA = Path(__file__).resolve().parents[1] / "data"
#: Every request of the mix is in flight at once. Admission's time budget is far above what
#: they need even on a loaded machine, so SERVICE_BUSY (503, the designed answer to
#: overload) is never legitimate here.
THREADS = 160
MAX_WAIT_S = 55.0
BASE_IDENTITIES = 10
REGISTRATION_PHOTOS = ("sunak.jpg", "ardern_2018.jpg", "obama_senate.jpg",
                       "astronaut_collins.jpg", "ardern_2022.jpg", "macron_2014.jpg")


def _b64(name: str) -> str:
    return base64.b64encode((DATA / name).read_bytes()).decode("ascii")


@dataclass
class Served:
    daemon: Daemon
    data_dir: Path


@pytest.fixture()
def served(tmp_path: Path, prepared_models: Dict[str, Path]) -> Iterator[Served]:
    # The daemon finds the session's already folded models in this folder.
    config = write_config(tmp_path / "conf.yaml", tmp_path / "data",
                          prepared_models["detector"].parent, max_wait_s=MAX_WAIT_S)
    daemon = Daemon(config, tmp_path / "daemon.log")
    daemon.start()
    yield Served(daemon, tmp_path / "data")
    daemon.kill()


@dataclass
class Call:
    """One request of the mix, with the error codes its collisions may legitimately cause."""

    endpoint: str
    payload: Dict[str, Any]
    allowed: Tuple[str, ...] = ()
    #: Checks a 200 answer; returns a problem description or None.
    check: Optional[Callable[[Any], Optional[str]]] = None
    #: Registration photo sent (file name), or "" for a feature registration, or None.
    registers: Optional[str] = None
    #: Where the new face sits in an addface/replaceface answer (-1: last).
    new_index: int = -1
    reply: Optional[Reply] = field(default=None, repr=False)


def _feature(rng: random.Random, dim: int) -> List[float]:
    return [round(rng.gauss(0.0, 1.0), 6) for _ in range(dim)]


def _parallel(body: Any) -> Optional[str]:
    face_ids, image_ids = body.get("face_ids"), body.get("register_image_ids")
    if not isinstance(face_ids, list) or not isinstance(image_ids, list) \
            or len(face_ids) != len(image_ids):
        return f"face_ids / register_image_ids not parallel: {body!r}"
    if "total_face_cnt" in body and body["total_face_cnt"] != len(face_ids):
        return f"total_face_cnt {body['total_face_cnt']} for {len(face_ids)} faces"
    return None


def _check_search(body: Any) -> Optional[str]:
    if not isinstance(body.get("result"), bool) or not isinstance(body.get("score"), float):
        return f"search answer without result/score: {str(body)[:300]}"
    if body["identity_info"]["identity_id"] != body["identity_id"]:
        return "search identity_info is about another identity"
    return _parallel(body["identity_info"])


def _check_listing(body: Any) -> Optional[str]:
    for item in body["identities"]:
        problem = _parallel(item)
        if problem:
            return problem
    return None


def _build_mix(rng: random.Random, dim: int, base: Dict[str, Dict[str, Any]]) -> List[Call]:
    photos = {name: _b64(name) for name in REGISTRATION_PHOTOS}
    base_ids = sorted(base)
    gone = ("ID_NOT_FOUND",)  # the identity (or face) was deleted by a concurrent request
    calls: List[Call] = []

    # Permission groups: one name created twice at once, exactly one may win.
    for k in range(6):
        calls.append(Call("createpermission", {"permission_name": f"conc-group-{k}",
                                               "permission_id": f"conc-g{k}"}))
    calls += [Call("createpermission", {"permission_name": "conc-dup"}, ("NAME_REPEAT_ERROR",))
              for _ in range(2)]

    # Identities from features, some in a group created concurrently (it may not exist yet).
    for k in range(20):
        payload: Dict[str, Any] = {"identity_id": f"new-{k}", "register_feature": _feature(rng, dim)}
        allowed: Tuple[str, ...] = ()
        if k % 4 == 0:
            payload["permission_ids"] = ["conc-a"]
        elif k % 4 == 1:
            payload["permission_ids"] = [f"conc-g{k % 6}"]
            allowed = ("PERMISSION_ID_NOT_FOUND",)
        calls.append(Call("createidentity", payload, allowed, registers=""))
    calls += [Call("createidentity", {"identity_id": "dup-id", "register_feature": _feature(rng, dim)},
                   ("ID_REPEAT_ERROR",), registers="") for _ in range(2)]
    calls.append(Call("createidentity", {"identity_id": base_ids[9], "force_replace": True,
                                         "register_feature": _feature(rng, dim)}, registers=""))
    # Identities from photos; macron is the one searched for at the end, so nothing deletes
    # or replaces its faces (additions are fine: its photo face still matches).
    for name in REGISTRATION_PHOTOS[:4] + ("macron_2014.jpg",):
        person = name.split("_")[0].split(".")[0]
        calls.append(Call("createidentity", {"identity_id": f"photo-{person}",
                                             "register_image": photos[name], "fiqa_level": "no"},
                          registers=name))

    # Faces of the base identities, which are concurrently deleted, replaced and removed.
    for k in range(25):
        target = rng.choice(base_ids + ["photo-macron"])
        allowed = gone if target != "photo-macron" else ("ID_NOT_FOUND",)  # may not exist yet
        calls.append(Call("addface", {"identity_id": target, "register_feature": _feature(rng, dim)},
                          allowed, _parallel, registers=""))
    for k in range(4):
        calls.append(Call("addface", {"identity_id": rng.choice(base_ids),
                                      "register_image": photos["ardern_2022.jpg"],
                                      "fiqa_level": "no"}, gone, _parallel,
                          registers="ardern_2022.jpg"))
    for k in range(15):
        identity_id = rng.choice(base_ids[:9])
        face = rng.randrange(2)
        how = rng.choice(("register_image_index", "face_id", "register_image_id"))
        payload = {"identity_id": identity_id, "register_feature": _feature(rng, dim)}
        if how == "register_image_index":
            payload[how] = face
        else:
            column = "face_ids" if how == "face_id" else "register_image_ids"
            payload[how] = base[identity_id][column][face]
        # A face already gone is ID_NOT_FOUND; an index past the end (faces were deleted)
        # is INVALID_ARGUMENTS (identity.md 9).
        calls.append(Call("replaceface", payload, gone + ("INVALID_ARGUMENTS",), _parallel,
                          registers="" if how == "register_image_index" else None,
                          new_index=face if how == "register_image_index" else -1))
    for k in range(2):
        calls.append(Call("replaceface", {"identity_id": rng.choice(base_ids[:9]),
                                          "register_image_index": 0,
                                          "register_image": photos["sunak.jpg"],
                                          "fiqa_level": "no"},
                          gone + ("INVALID_ARGUMENTS",), _parallel, registers="sunak.jpg",
                          new_index=0))
    for k in range(12):
        identity_id = rng.choice(base_ids[:9])
        face = rng.randrange(2)
        if rng.random() < 0.5:
            payload = {"identity_id": identity_id, "face_id": base[identity_id]["face_ids"][face]}
        else:
            payload = {"identity_id": identity_id,
                       "register_image_id": base[identity_id]["register_image_ids"][face]}
        calls.append(Call("deleteface", payload, gone, _parallel))
    # The same identity deleted twice at once: one call reports it deleted, the other failed.
    calls += [Call("deleteidentities", {"identity_ids": [base_ids[7]]}) for _ in range(2)]
    calls.append(Call("deleteidentities", {"identity_ids": [base_ids[8], "never-existed"]},
                      check=lambda body: None if body == {
                          "failed_identity_ids": ["never-existed"],
                          "success_identity_ids": [base_ids[8]]} else f"deleteidentities {body}"))

    # Reads and analysis.
    for k in range(15):
        target = rng.choice(base_ids + ["photo-macron", f"new-{k}"])
        calls.append(Call("getidentity", {"identity_id": target}, gone, _parallel))
    for k in range(5):
        filters = {"permission_id_list": ["conc-a"]} if k % 2 else {}
        calls.append(Call("getidentities", {"filters": filters, "page_limit": 1000},
                          check=_check_listing))
    for k in range(10):
        payload = ({"rgb_image_base64": photos["macron_2014.jpg"]} if k % 3 == 0
                   else {"rgb_image_path": str(DATA / "macron_2025.jpg")})
        payload["with_register_photo"] = k % 2 == 0
        payload["with_result_modification"] = k % 4 != 0
        allowed = ()
        if k % 5 == 4:  # a group whose members' faces may all be deleted meanwhile
            payload["permission_name"] = "conc-a-name"
            allowed = ("EMPTY_GROUP_ERROR",)
        calls.append(Call("search", payload, allowed, _check_search))
    for k in range(5):
        calls.append(Call("compare", {"image_1_path": str(DATA / "macron_2014.jpg"),
                                      "image_2_path": str(DATA / "macron_2025.jpg")},
                          check=lambda body: None if body["score"] >= 82 else f"compare {body}"))
    for k in range(5):
        calls.append(Call("detect", {"image_path": str(DATA / "sunak.jpg"), "with_feature": True},
                          check=lambda body: None if len(body["faces"]) >= 1 else f"detect {body}"))
    rng.shuffle(calls)
    return calls


def _setup_library(daemon: Daemon, rng: random.Random, dim: int) -> Dict[str, Dict[str, Any]]:
    """A group and ten identities with two faces each, registered before the storm."""
    reply = daemon.post("createpermission", {"permission_name": "conc-a-name",
                                             "permission_id": "conc-a"})
    assert reply.status == 200, reply
    base: Dict[str, Dict[str, Any]] = {}
    for k in range(BASE_IDENTITIES):
        identity_id = f"base-{k}"
        reply = daemon.post("createidentity", {
            "identity_id": identity_id, "register_feature": _feature(rng, dim),
            "permission_ids": ["conc-a"] if k < 5 else []})
        assert reply.status == 200, reply
        reply = daemon.post("addface", {"identity_id": identity_id,
                                        "register_feature": _feature(rng, dim)})
        assert reply.status == 200, reply
        base[identity_id] = reply.json
    return base


def _run(daemon: Daemon, call: Call) -> Call:
    call.reply = daemon.post(call.endpoint, call.payload)
    return call


def _list_all(daemon: Daemon) -> List[Dict[str, Any]]:
    reply = daemon.post("getidentities", {"page_limit": 1000})
    assert reply.status == 200, reply
    body = reply.json
    assert body["pagination"]["total_count"] == len(body["identities"]), body["pagination"]
    return body["identities"]


def test_concurrent_mixed_requests_stay_consistent(served: Served) -> None:
    daemon = served.daemon
    rng = random.Random(20240611)
    dim = int(daemon.health()["feature_dim"])
    base = _setup_library(daemon, rng, dim)
    calls = _build_mix(rng, dim, base)
    assert len(calls) >= 100

    assert len(calls) <= THREADS
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        done = list(pool.map(lambda c: _run(daemon, c), calls))

    # 1. No 5xx at all; every failure is a spec envelope with a code this collision allows.
    problems: List[str] = []
    for call in done:
        reply = call.reply
        assert reply is not None
        if reply.status >= 500:
            problems.append(f"{call.endpoint} {str(call.payload)[:120]} -> {reply!r}")
            continue
        if reply.status == 200:
            problem = call.check(reply.json) if call.check else None
            if problem:
                problems.append(f"{call.endpoint}: {problem}")
            continue
        body = reply.json
        code = body.get("error", {}).get("code") if isinstance(body, dict) else None
        if set(body) != {"error"} or set(body["error"]) != {"code", "message"} \
                or code not in call.allowed or error_class(code).http_status != reply.status:
            problems.append(f"{call.endpoint} {str(call.payload)[:120]} -> unexpected {reply!r}")
    assert not problems, "\n".join(problems)
    statuses = Counter((c.endpoint, c.reply.status) for c in done if c.reply is not None)
    # The storm must not have degenerated into errors only.
    assert sum(n for (_, status), n in statuses.items() if status == 200) >= 0.6 * len(done), statuses

    # 2. Races with exactly one winner.
    def outcomes(endpoint: str, key: str, value: str) -> List[int]:
        return sorted(c.reply.status for c in done if c.endpoint == endpoint
                      and c.payload.get(key) == value and c.reply is not None)
    assert outcomes("createpermission", "permission_name", "conc-dup") == [200, 409]
    assert outcomes("createidentity", "identity_id", "dup-id") == [200, 409]
    double_delete = [c.reply.json for c in done if c.endpoint == "deleteidentities"
                     and c.payload["identity_ids"] == ["base-7"] and c.reply is not None]
    assert sorted(json.dumps(b, sort_keys=True) for b in double_delete) == sorted([
        '{"failed_identity_ids": [], "success_identity_ids": ["base-7"]}',
        '{"failed_identity_ids": ["base-7"], "success_identity_ids": []}']), double_delete

    # 3. The final library, through the API.
    listed = _list_all(daemon)
    by_id = {item["identity_id"]: item for item in listed}
    assert len(by_id) == len(listed)
    assert "base-7" not in by_id and "base-8" not in by_id
    seen_faces: Set[str] = set()
    seen_images: Set[str] = set()
    for item in listed:
        assert _parallel(item) is None, item
        assert seen_faces.isdisjoint(item["face_ids"]), item
        assert seen_images.isdisjoint(item["register_image_ids"]), item
        seen_faces.update(item["face_ids"])
        seen_images.update(item["register_image_ids"])
        single = daemon.post("getidentity", {"identity_id": item["identity_id"]})
        assert single.status == 200 and single.json == item, (single, item)
    assert daemon.health()["store"]["faces"] == len(seen_faces)

    # Every registration photo still in use downloads byte for byte; every feature face and
    # every face that is gone has none (no orphan blobs behind the API either).
    photo_bytes = {name: (DATA / name).read_bytes() for name in REGISTRATION_PHOTOS}
    registered: Dict[str, str] = {}  # register_image_id -> photo name ("" = feature)
    ever_seen: Set[str] = {i for b in base.values() for i in b["register_image_ids"]}
    for call in done:
        if call.reply is None or call.reply.status != 200:
            continue
        body = call.reply.json
        if call.endpoint in ("addface", "deleteface", "replaceface", "getidentity"):
            ever_seen.update(body["register_image_ids"])
        if call.registers is None:
            continue
        image_id = (body["register_image_id"] if call.endpoint == "createidentity"
                    else body["register_image_ids"][call.new_index])
        registered[image_id] = call.registers
    ever_seen.update(registered)
    downloaded: Set[str] = set()
    for image_id in sorted(ever_seen | seen_images):
        reply = daemon.get(f"/sophon/v2/face/getregisterimage/{image_id}")
        assert reply.headers.get("content-type") == "image/jpeg", reply
        name = registered.get(image_id)
        if reply.status == 200:
            downloaded.add(image_id)
        if image_id in seen_images and name:
            assert reply.status == 200 and reply.body == photo_bytes[name], (image_id, name, reply)
        elif image_id in seen_images and name is None:
            assert (reply.status == 200 and reply.body in photo_bytes.values()) or \
                (reply.status == 404 and reply.body == b""), (image_id, reply)
        else:
            assert reply.status == 404 and reply.body == b"", (image_id, name, reply)
    assert any(name for image_id, name in registered.items() if image_id in seen_images)

    # The person registered from macron_2014.jpg is recognised in macron_2025.jpg.
    reply = daemon.post("search", {"rgb_image_path": str(DATA / "macron_2025.jpg"),
                                   "with_register_photo": True})
    assert reply.status == 200, reply
    found = reply.json
    assert found["result"] is True and found["identity_id"] == "photo-macron", found
    assert found["identity_info"] == by_id["photo-macron"]
    assert base64.b64decode(found["register_image"]) == photo_bytes["macron_2014.jpg"]

    # 4. The same library in the store itself, after a clean shutdown.
    assert daemon.stop() == 0
    contents = read_store(served.data_dir, dim)
    assert store_violations(contents, dim) == []
    assert {i: render_identity(r) for i, r in contents.identities.items()} == by_id
    assert set(contents.images) == downloaded
    # Logged at WARNING: an ERROR (say, a gallery update that failed after its commit) is a
    # fault even though every answer looked right.
    logged = daemon.log_since(0)
    assert " ERROR " not in logged and "Traceback" not in logged, logged[-3000:]


def test_search_while_the_matched_face_is_replaced(served: Served) -> None:
    """search must answer from one consistent state while the face it matches changes."""
    daemon = served.daemon
    photo = DATA / "macron_2014.jpg"
    detected = daemon.post("detect", {"image_path": str(photo), "with_feature": True})
    assert detected.status == 200, detected
    # Replacing with the photo's own feature keeps the match, changes its face id, and costs
    # no inference, so the face id changes hundreds of times per second.
    feature = base64.b64encode(base64.b64decode(
        detected.json["faces"][0]["feature_base64_str"])).decode("ascii")
    created = daemon.post("createidentity", {"identity_id": "moving", "register_image": _b64(photo.name),
                                             "fiqa_level": "no"})
    assert created.status == 200, created
    stop = threading.Event()

    def churn() -> None:
        conn = Connection(daemon.port)
        try:
            for k in itertools.count():
                if stop.is_set():
                    return
                if k % 10 == 9:  # now and then the whole identity goes and comes back
                    conn.post("deleteidentities", {"identity_ids": ["moving"]})
                    conn.post("createidentity", {"identity_id": "moving", "register_feature": feature})
                else:
                    conn.post("replaceface", {"identity_id": "moving", "register_image_index": 0,
                                              "register_feature": feature})
        finally:
            conn.close()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    conn = Connection(daemon.port)
    try:
        answers = Counter()
        for _ in range(80):
            reply = conn.post("search", {"rgb_image_path": str(DATA / "macron_2025.jpg"),
                                         "with_register_photo": True,
                                         "with_result_modification": False})
            code = reply.json["error"]["code"] if reply.status != 200 else ""
            answers[(reply.status, code)] += 1
    finally:
        stop.set()
        thread.join(timeout=30)
        conn.close()
    # While the identity is momentarily deleted the library is empty: EMPTY_GROUP_ERROR.
    assert set(answers) <= {(200, ""), (409, "EMPTY_GROUP_ERROR")}, answers
