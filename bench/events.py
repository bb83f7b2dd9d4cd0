"""Events: what recording costs a search, listing and searching 100k stored events, the
history push's throughput, and the store's size per event.

Four measurements, each beside its baseline in the same run:

1. ``search`` over HTTP (the daemon in this process, on a real socket, a photo device, a
   recognised person, duplicate suppression off so every call records) with event
   recording on vs off (the search service's event sink swapped for one that stores
   nothing), alternating call by call.
2. ``getevents`` with filters over 100k stored events: the service (column scan over the
   event index, then the page's records from LMDB) vs the naive way (unpack every LMDB
   record and filter in Python).
3. ``searchbyimage``'s scan over 100k events: the index's one matrix product vs scoring
   record by record out of LMDB.
4. History push throughput to a receiver on loopback (aiohttp), events per second, and
   the LMDB bytes per stored event (without images) next to the image bytes of a real
   event (face crop + scene image).

Run (from the project root):
    .venv/bin/python bench/events.py             # 100k events, 200 searches
    .venv/bin/python bench/events.py --quick     # 20k events, 40 searches
Prints markdown; writes bench/results/events-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from inprocess import InProcessDaemon
from measure import (PROJECT_DIR, RESULTS_DIR, TEST_DATA_DIR, CpuShare, Stats, describe_machine,
                     machine, markdown_table, ratio, save_results)

from aiohttp import web

from sophon_face.api.keys import SERVICES
from sophon_face.config import config_from_mapping
from sophon_face.service.events import EventService, Retention
from sophon_face.service.scoring import cosines_to_scores
from sophon_face.store import codec, events, push_queue
from sophon_face.store.env import Store
from sophon_face.store.event_images import EventImageFiles
from sophon_face.store.event_index import AddEvent, EventFilter, EventIndex
from sophon_face.workers.models import prepare_models

DIM = 128
MATCH_COSINE = 0.363
MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"
MODEL_CACHE = RESULTS_DIR / "models"
log = logging.getLogger("bench.events")


def progress(label: str, done: int, total: int, started: float) -> None:
    """A progress line on a terminal (rewritten in place), a log line otherwise."""
    if sys.stderr.isatty():
        print(f"\r{label}: {done}/{total} ({time.perf_counter() - started:.0f} s)", end="",
              file=sys.stderr, flush=done == total)
        if done == total:
            print(file=sys.stderr)
    elif done == total or done % max(1, total // 10) == 0:
        log.info("%s: %d/%d", label, done, total)


# ---------------------------------------------------------------- 1. search, recording on/off

def _daemon(data_dir: Path) -> InProcessDaemon:
    return InProcessDaemon(config_from_mapping({
        "server": {"ws_port": 0}, "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR)]}, "workers": {"count": 1}}))


class _NoEvents:
    """The "recording off" contender: the search service's event sink stores nothing."""

    async def record(self, draft: Any) -> None:
        return None


def bench_search(models: Any, work: Path, calls: int) -> Dict[str, Any]:
    daemon = _daemon(work / "daemon").start(models)
    try:
        b64 = lambda name: base64.b64encode((TEST_DATA_DIR / name).read_bytes()).decode()  # noqa: E731
        group = daemon.post("createpermission", {"permission_name": "bench"})["permission_id"]
        daemon.post("createidentity", {"register_image": b64("macron_2014.jpg"),
                                       "permission_ids": [group], "fiqa_level": "no"})
        daemon.post("addmediadevice", {"media_device_type": "photo", "media_device_name": "gate",
                                       "media_device_url": "10.0.0.9", "permission_id": group})
        daemon.post("setconfigs", {"config_dict": {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 0}})
        probe = {"rgb_image_base64": b64("macron_2025.jpg"), "media_device_ip": "10.0.0.9"}
        assert daemon.app is not None
        search = daemon.app[SERVICES].search
        real_events = search._events  # noqa: SLF001 (the benchmark swaps the sink)
        samples: Dict[str, List[float]] = {"on": [], "off": []}
        for _ in range(5):  # warm both paths
            daemon.post("search", probe)
        started = time.perf_counter()
        cpu = CpuShare().start()
        for i in range(calls):
            for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                search._events = real_events if mode == "on" else _NoEvents()  # noqa: SLF001
                t0 = time.perf_counter()
                daemon.post("search", probe)
                samples[mode].append((time.perf_counter() - t0) * 1000.0)
            progress("search on/off", i + 1, calls, started)
        search._events = real_events  # noqa: SLF001
        listed = daemon.post("getevents", {"page_limit": 1})
        event = listed["events"][0]
        face = (work / "daemon" / "events").rglob(f"{event['recognize_face_image_id']}.jpg")
        spot = (work / "daemon" / "events").rglob(f"{event['spot_image_id']}.jpg")
        image_bytes = sum(p.stat().st_size for p in list(face) + list(spot))
        on, off = Stats.of(samples["on"]), Stats.of(samples["off"])
        return {"on_ms": on.as_dict(), "off_ms": off.as_dict(),
                "ratio_median": ratio(on.median, off.median),
                "events_recorded": listed["pagination"]["total_count"],
                "image_bytes_per_event": image_bytes, "cpu": cpu.stop()}
    finally:
        daemon.stop()


# ---------------------------------------------------------------- 2-4. a store of N events

def synthetic_record(event_id: int, rng: np.random.Generator, people: int) -> Dict[str, Any]:
    person = int(rng.integers(0, people))
    known = person % 4 != 0
    feature = rng.standard_normal(DIM).astype(np.float32)
    feature /= np.linalg.norm(feature)
    return {
        "event_id": str(event_id), "timestamp": event_id / 1e6,
        "identity_id": f"p{person}" if known else "", "identity_name": f"Person {person}" if known else "",
        "register_image_id": "", "recognize_face_image_id": "", "spot_image_id": "",
        "permission_id": "", "permission_name": "", "user_type": "employee" if known else "stranger",
        "score": float(rng.uniform(20, 99)), "post_action": "0", "frame_id": 0,
        "media_device_info": {"media_device_id": f"dev{person % 8}", "media_device_ip": "",
                              "media_device_name": "", "media_device_type": "photo"},
        "media_device_url": "",
        "recognize_face_attr": {"age": None, "box": [1.0, 2.0, 3.0, 4.0], "expression": None,
                                "gender": None, "glasses": None, "hat": None, "mask": None,
                                "point": [1.0] * 10},
        "feature": feature.astype("<f4").tobytes(), "ext_data": {"in_timestamp": event_id / 1e6,
                                                                 "recognition_timestamp": event_id / 1e6},
        "image_bytes": 0,
    }


async def fill(store: Store, count: int, queue: bool) -> None:
    rng = np.random.default_rng(7)
    base = 1_700_000_000_000_000
    started = time.perf_counter()
    batch = 5000
    for first in range(0, count, batch):
        rows = [synthetic_record(base + (first + i) * 1000, rng, 500)
                for i in range(min(batch, count - first))]

        def write(txn: Any, rows: List[Dict[str, Any]] = rows) -> Any:
            for row in rows:
                events.put(txn, row)
                if queue:
                    push_queue.enqueue(txn, row["event_id"])
            return None, [AddEvent(row) for row in rows]

        await store.write(write)
        progress("writing events", first + len(rows), count, started)


def naive_list(txn: Any, flt: EventFilter, limit: int) -> int:
    """The baseline: unpack every record, filter in Python, sort newest first."""
    hits = []
    for record in events.iter_all(txn):
        if flt.identity_name is not None and flt.identity_name.lower() not in record["identity_name"].lower():
            continue
        if flt.score_min is not None and record["score"] < flt.score_min:
            continue
        if flt.media_device_ids and record["media_device_info"]["media_device_id"] not in flt.media_device_ids:
            continue
        if flt.user_type is not None and record["user_type"].lower() != flt.user_type.lower():
            continue
        hits.append(record)
    hits.sort(key=lambda r: (r["timestamp"], int(r["event_id"])), reverse=True)
    return len(hits[:limit])


def naive_scan(txn: Any, probe: np.ndarray, limit: int) -> int:
    """The baseline: score each record's feature one by one, newest first."""
    matches = 0
    cursor = txn.raw.cursor(db=txn.dbs.events)
    scanned = 0
    for value in cursor.iterprev(keys=False, values=True):
        record = codec.unpack("event", value)
        cosine = float(np.frombuffer(record["feature"], "<f4") @ probe)
        matches += int(cosines_to_scores(np.array([cosine]), MATCH_COSINE)[0] >= 82.0)
        scanned += 1
        if scanned >= limit:
            break
    return matches


async def bench_store(work: Path, count: int, repeats: int) -> Dict[str, Any]:
    index = EventIndex(DIM)
    store = Store(work / "store", indexes=(index,), min_free_bytes=0,
                  map_size_bytes=1 << 30)
    await store.open()
    try:
        await fill(store, count, queue=False)
        lmdb_bytes = sum(p.stat().st_size for p in (work / "store" / "lmdb").iterdir())
        service = EventService(store, index, EventImageFiles((work / "img",), lambda: work / "img"),
                               None, Retention(10 ** 9, 10 ** 15))  # type: ignore[arg-type]
        filters = {
            "none": EventFilter(),
            "name": EventFilter(identity_name="person 1"),
            "device+score": EventFilter(media_device_ids=["dev3"], score_min=82.0),
            "user_type+window": EventFilter(user_type="EMPLOYEE",
                                            datetime_gte=1_700_000_000 + count / 2000.0),
        }
        listing: Dict[str, Any] = {}
        for name, flt in filters.items():
            ours, naive = [], []
            body = {"datetime_gte": flt.datetime_gte, "datetime_lte": None,
                    "identity_name": flt.identity_name, "identity_id": None,
                    "score_min": flt.score_min, "score_max": None, "user_type": flt.user_type,
                    "media_device_ids": flt.media_device_ids}
            for _ in range(repeats):
                t0 = time.perf_counter()
                await service.list(body, 10, 0)
                ours.append((time.perf_counter() - t0) * 1000.0)
                t0 = time.perf_counter()
                await store.read(naive_list, flt, 10)
                naive.append((time.perf_counter() - t0) * 1000.0)
            listing[name] = {"ours_ms": Stats.of(ours).as_dict(), "naive_ms": Stats.of(naive).as_dict(),
                             "speedup": ratio(Stats.of(naive).median, Stats.of(ours).median)}
        rng = np.random.default_rng(3)
        probe = rng.standard_normal(DIM).astype(np.float32)
        probe /= np.linalg.norm(probe)
        to_score = lambda c: cosines_to_scores(c, MATCH_COSINE)  # noqa: E731
        ours, naive = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            index.scan(probe, 0.0, 1e12, None, None, True, to_score, 82.0, 50000, 1000)
            ours.append((time.perf_counter() - t0) * 1000.0)
            t0 = time.perf_counter()
            await store.read(naive_scan, probe, 50000)
            naive.append((time.perf_counter() - t0) * 1000.0)
        scan = {"ours_ms": Stats.of(ours).as_dict(), "naive_ms": Stats.of(naive).as_dict(),
                "speedup": ratio(Stats.of(naive).median, Stats.of(ours).median),
                "scanned": min(count, 50000)}
        return {"events": count, "lmdb_bytes_per_event": lmdb_bytes / count,
                "getevents": listing, "searchbyimage_scan": scan}
    finally:
        await store.close()


async def bench_push(work: Path, count: int) -> Dict[str, Any]:
    """Events per second from the durable queue to an aiohttp receiver on loopback."""
    from sophon_face.push.history import HistoryPusher

    received: List[str] = []
    done = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        received.append((await request.json())["event_id"])
        if len(received) >= count:
            done.set()
        return web.Response(status=200)

    receiver = web.Application()
    receiver.router.add_post("/events", receive)
    runner = web.AppRunner(receiver, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/events"

    class Settings:
        def value(self, name: str) -> Any:
            return {"HISTORY_REPORT_PEROID": 1, "MQ_LICENSE_KEY": ""}[name]

        def urls(self, name: str) -> List[str]:
            return [url]

        def subscribe(self, callback: Any) -> None:
            pass

    store = Store(work / "push", min_free_bytes=0)
    await store.open()
    try:
        await fill(store, count, queue=True)
        images = EventImageFiles((work / "img",), lambda: work / "img")
        pusher = HistoryPusher(store, Settings(), images, batch=100, timeout_s=10.0)
        started = time.perf_counter()
        await pusher.start()
        await asyncio.wait_for(done.wait(), timeout=600)
        elapsed = time.perf_counter() - started
        await pusher.stop()
        in_order = received == sorted(received, key=int)
        return {"events": count, "seconds": elapsed, "events_per_s": count / elapsed,
                "in_order": in_order, "period_s": 1}
    finally:
        await store.close()
        await runner.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=None)
    parser.add_argument("--searches", type=int, default=None)
    parser.add_argument("--push-events", type=int, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    count = args.events or (20000 if args.quick else 100000)
    calls = args.searches or (40 if args.quick else 200)
    push_count = args.push_events or (500 if args.quick else 2000)
    work = Path(tempfile.mkdtemp(prefix="bench-events-"))
    facts = machine()
    try:
        models = prepare_models(MANIFEST, MODEL_CACHE)
        search = bench_search(models, work, calls)
        stored = asyncio.run(bench_store(work, count, repeats=5 if args.quick else 15))
        push = asyncio.run(bench_push(work, push_count))
    finally:
        shutil.rmtree(str(work), ignore_errors=True)
    print(f"\n{describe_machine(facts)}\n")
    print("search over HTTP, event recording on vs off (ms)\n")
    print(markdown_table(["recording", "median", "p90", "n"], [
        ["on", search["on_ms"]["median"], search["on_ms"]["p90"], search["on_ms"]["n"]],
        ["off", search["off_ms"]["median"], search["off_ms"]["p90"], search["off_ms"]["n"]],
        ["on / off", search["ratio_median"], "", ""]]))
    print(f"\ngetevents over {count} events (ms, median): service vs unpack-every-record\n")
    print(markdown_table(["filters", "ours", "naive", "speedup"], [
        [name, r["ours_ms"]["median"], r["naive_ms"]["median"], r["speedup"]]
        for name, r in stored["getevents"].items()]))
    scan = stored["searchbyimage_scan"]
    print(f"\nsearchbyimage scan of {scan['scanned']} events (ms, median)\n")
    print(markdown_table(["ours", "naive", "speedup"],
                         [[scan["ours_ms"]["median"], scan["naive_ms"]["median"], scan["speedup"]]]))
    print(f"\nhistory push: {push['events']} events in {push['seconds']:.1f} s = "
          f"{push['events_per_s']:.0f} events/s (in order: {push['in_order']})")
    print(f"store: {stored['lmdb_bytes_per_event']:.0f} LMDB bytes per event without images; "
          f"a real event's images: {search['image_bytes_per_event']} bytes")
    path = save_results("events", {"machine": facts, "search": search, "store": stored,
                                   "push": push})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
