"""Load: the HTTP API under a real load generator (locust, headless) at 1, 16, 64 and 200
clients, beside the model-bound throughput of the same mix measured in the same run.

1. A daemon subprocess (``python -m sophon_face serve``) on loopback, a fresh data
   directory, the daemon's default workers (1 x 2 ONNX threads). Its gallery: one
   identity per devset person (their first photo, over HTTP) plus ``--synthetic``
   identities registered from random unit features (default 3000). Every candidate photo
   (devset + tests/data) is searched once; the photos that answer 200 form the workload.
2. The mix (``MIX``; weights of a gate deployment: recognition dominates, the back office
   lists people and events, enrolment and 1:1 checks are occasional):

   ============== ====== ===========================================================
   endpoint       weight body
   ============== ====== ===========================================================
   search         45     ``rgb_image_base64`` of a workload photo
   compare        10     two workload photos (neighbours in the list: often the
                         same person)
   createidentity 10     ``register_image`` of a workload photo, ``fiqa_level`` no
                         (a new identity each time: the gallery grows during the run)
   getidentities  20     page 0-49 of 10, one call in four filtered by a part of a devset
                         person's name, upper-cased (``OBAMA``, ``P02``)
   getevents      15     page 0-4 of 10, one call in four filtered by a devset id
   ============== ====== ===========================================================

   Images travel base64 in JSON, as the API specifies. Clients are closed-loop: each
   sends its next request as soon as the previous answer is in (no think time).
3. Model-bound throughput, the baseline: the same mix drawn with the same weights, its
   model work (decode, detect, align, quality, embed, the event and registration JPEGs;
   two images for compare; nothing for the two listing calls) run directly on a
   ``WorkerPool`` of the daemon's size in this process, by 16 concurrent callers: no
   HTTP, no JSON, no LMDB. At the 16-client level the two take turns, ``--rounds``
   times (model-bound block, then a locust run while the pool idles), so both see the
   same neighbours; the ratio is over the joined windows, per round beside it.
4. Per level: ok requests/s over the measurement window (after a warm-up), p50/p99
   latency of the ok requests, and every non-200 answer counted by status and error
   code (``503 INTERNAL_ERROR``: the pool's ServiceBusy; ``400 NO_FACE``...) or by the
   client's exception. The pool refuses what it cannot start in time: with the old
   count-bounded queue, beyond 32 waiting; with admission by waiting time
   (workers/admission.py), beyond ``workers.max_wait_s``. Either way the 64- and
   200-client levels meet it, and the error columns show it. A refused
   client tries again at once (it ignores ``Retry-After``): the worst case for the
   daemon, and why ok req/s at those levels is mostly the cheap listing calls (the
   "model calls/s" column counts search, compare and createidentity only).

Every level records the CPU of the daemon, of locust and of every other process
(``others_cores``): on two cores the client itself competes with the server.

Run (from the project root; locust is a bench-only dependency: ``pip install -e .[bench]``):
    .venv/bin/python bench/load.py                     # 1, 16, 64, 200 clients, ~9 min
    .venv/bin/python bench/load.py --levels 16 --measure-s 30 --rounds 1
    .venv/bin/python bench/load.py --tree head         # the last commit, not the work tree
Prints markdown; writes bench/results/load-*.json. ``bench/soak.py`` reuses the daemon,
the gallery and the workload of this module.

This file is also the locustfile: locust imports it (``locust -f bench/load.py``) and
finds ``MixUser``; the workload comes from ``$LOAD_WORKLOAD`` and each request's outcome
goes to ``$LOAD_RECORDS`` when locust quits.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from daemon import BASE, DaemonProcess, git_snapshot, merged_settings
from measure import (DEVSET_DIR, IMAGE_SUFFIXES, MODEL_CACHE, PROJECT_DIR, TEST_DATA_DIR,
                     CpuShare, describe_machine, machine, markdown_table, process_cpu_s,
                     progress, ratio, save_results)

MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"
#: Request weights of the mix (see the module docstring).
MIX: Dict[str, int] = {"search": 45, "compare": 10, "createidentity": 10, "getidentities": 20,
                       "getevents": 15}
MODEL_ENDPOINTS = ("search", "compare", "createidentity")
LEVELS = (1, 16, 64, 200)
log = logging.getLogger("bench.load")


# ---------------------------------------------------------------- the daemon process

class Daemon(DaemonProcess):
    """The daemon of this benchmark and bench/soak.py under ``work``: the daemon's default
    workers (1 x 2 ONNX threads, stated so that the model-bound baseline can read them from
    ``config``), ``settings`` merged over them."""

    def __init__(self, work: Path, settings: Optional[Dict[str, Any]] = None,
                 src: Path = PROJECT_DIR) -> None:
        super().__init__(work, merged_settings({"workers": {"count": 1, "intra_op_threads": 2}},
                                               settings or {}), src=src)


def source_tree(which: str, work: Path) -> Path:
    """The code the daemon and this process run: the working tree, or ``head``: a snapshot
    of the last commit (``git archive``), for when other changes are half-made in the
    working tree. Call it before anything imports ``sophon_face``."""
    if which == "working":
        return PROJECT_DIR
    dest = git_snapshot("HEAD", work / "src")
    sys.path.insert(0, str(dest))
    return dest


def tree_facts(which: str) -> Dict[str, Any]:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=str(PROJECT_DIR), capture_output=True,
                              text=True)
        return done.stdout.rstrip("\n")  # porcelain lines start with a status column

    changed = [line[3:] for line in git("status", "--porcelain", "--", "sophon_face").splitlines()]
    return {"tree": which, "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_in_sophon_face": changed if which == "working" else []}


def outcome_key(status: int, payload: Dict[str, Any]) -> str:
    """``"ok"`` or how a request failed: ``"503 SERVICE_BUSY"``, ``"400 NO_FACE..."``."""
    if status == 200:
        return "ok"
    error = payload.get("error") if isinstance(payload, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    if not code:
        return f"HTTP {status}"
    if status >= 500 and status != 503:  # unexpected: keep what the daemon said
        return f"{status} {code} ({str(error.get('message', ''))[:60]})"
    return f"{status} {code}"


def pool_admission(src: Path = PROJECT_DIR) -> str:
    """Which back-pressure the worker pool in this tree uses (another change replaces
    the count-bounded queue): reported beside the error counts."""
    text = (src / "sophon_face" / "workers" / "pool.py").read_text(encoding="utf-8")
    return "waiting time (workers/admission.py)" if "Admission(" in text else \
        "count-bounded queue (503 beyond queue_size waiting)"


# ---------------------------------------------------------------- photos, gallery, workload

def candidate_photos() -> List[Tuple[str, bytes]]:
    """(name, bytes): the devset (every person's photos) and the tests/data photos."""
    found: List[Tuple[str, bytes]] = []
    if DEVSET_DIR.is_dir():
        for person in sorted(p for p in DEVSET_DIR.iterdir() if p.is_dir()):
            for photo in sorted(person.iterdir()):
                if photo.suffix.lower() in IMAGE_SUFFIXES:
                    found.append((f"{person.name}/{photo.name}", photo.read_bytes()))
    for photo in sorted(TEST_DATA_DIR.iterdir()):
        if photo.is_file() and photo.suffix.lower() in IMAGE_SUFFIXES:
            found.append((photo.name, photo.read_bytes()))
    return found


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def populate(daemon: Daemon, synthetic: int, feature_dim: int,
             photos: Sequence[Tuple[str, bytes]]) -> Dict[str, Any]:
    """The gallery and the workload photos; returns what it did and kept."""
    started = time.perf_counter()
    enrolled, refused = [], {}
    seen = set()
    for name, data in photos:  # a devset person's first photo registers them
        person = name.split("/")[0] if "/" in name else ""
        if not person or person in seen:
            continue
        seen.add(person)
        status, answer = daemon.request("POST", BASE + "createidentity", json.dumps({
            "register_image": b64(data), "identity_id": f"devset-{person}",
            "identity_name": person, "fiqa_level": "no"}).encode())
        if status == 200:
            enrolled.append(person)
        else:
            refused[name] = outcome_key(status, answer)
    rng = np.random.default_rng(12)
    rows = rng.standard_normal((synthetic, feature_dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)

    def enrol(i: int) -> str:
        status, answer = daemon.request("POST", BASE + "createidentity", json.dumps({
            "register_feature": b64(rows[i].astype("<f4").tobytes()),
            "identity_id": f"synthetic-{i:06d}", "identity_name": f"synthetic {i}"}).encode())
        return outcome_key(status, answer)

    with ThreadPoolExecutor(4) as executor:
        synthetic_outcomes = list(executor.map(enrol, range(synthetic)))
    kept: List[Tuple[str, bytes]] = []
    for i, (name, data) in enumerate(photos):  # the photos that search answers 200
        status, answer = daemon.request("POST", BASE + "search", json.dumps(
            {"rgb_image_base64": b64(data)}).encode())
        if status == 200:
            kept.append((name, data))
        else:
            refused[name] = outcome_key(status, answer)
        progress(log, "workload photos", i + 1, len(photos), every=25)
    return {"devset_identities": len(enrolled),
            "synthetic_identities": synthetic_outcomes.count("ok"),
            "synthetic_refused": len(synthetic_outcomes) - synthetic_outcomes.count("ok"),
            "photos": [name for name, _ in kept], "photos_refused": refused,
            "photo_mib": round(sum(len(d) for _, d in kept) / 2 ** 20, 1),
            "seconds": round(time.perf_counter() - started, 1),
            "_kept": kept, "_persons": enrolled}


def workload(kept: Sequence[Tuple[str, bytes]], persons: Sequence[str]) -> Dict[str, List[str]]:
    """Request bodies (JSON text) per endpoint, drawn from at random by the clients."""
    encoded = [b64(data) for _, data in kept]
    n = len(encoded)
    bodies: Dict[str, List[str]] = {
        "search": [json.dumps({"rgb_image_base64": e}) for e in encoded],
        "compare": [json.dumps({"image_1_base64": encoded[i],
                                "image_2_base64": encoded[(i + 1) % n]}) for i in range(n)],
        "createidentity": [json.dumps({"register_image": e, "fiqa_level": "no",
                                       "identity_name": "load"}) for e in encoded],
        "getidentities": [], "getevents": []}
    for page in range(50):  # a name filter: the part of a person's name a clerk would type
        person = persons[page % len(persons)] if persons else "nobody"
        bodies["getidentities"].append(json.dumps(
            {"filters": {"identity_name": person.rsplit("_", 1)[-1].upper()}, "page_limit": 10,
             "page_index": 0}
            if page % 4 == 3 else {"page_limit": 10, "page_index": page}))
    for page in range(20):
        person = persons[page % len(persons)] if persons else "nobody"
        bodies["getevents"].append(json.dumps(
            {"filters": {"identity_id": f"devset-{person}"}, "page_limit": 10}
            if page % 4 == 3 else {"page_limit": 10, "page_index": page % 5}))
    return bodies


def pick(rng: random.Random) -> str:
    return rng.choices(list(MIX), weights=list(MIX.values()))[0]


Record = Tuple[float, float, str, str]  # start (epoch s), ms, endpoint, outcome


def summarise(records: Sequence[Record], windows: Sequence[Tuple[float, float]]
              ) -> Dict[str, Any]:
    """Throughput, latency and errors of (start, ms, endpoint, outcome) records: ok
    completions inside the ``windows`` for the rates and percentiles, errors over the
    whole run (warm-up included)."""

    def within(r: Record) -> bool:
        done = r[0] + r[1] / 1000.0
        return any(lo <= done < hi for lo, hi in windows)

    def pct(values: Sequence[float], q: float) -> Optional[float]:
        return round(float(np.percentile(values, q)), 1) if values else None

    inside = [r for r in records if within(r)]
    ok_ms = [r[1] for r in inside if r[3] == "ok"]
    errors: Dict[str, int] = {}
    errors_inside: Dict[str, int] = {}
    for _start, _ms, endpoint, key in records:
        if key != "ok":
            errors[f"{endpoint}: {key}"] = errors.get(f"{endpoint}: {key}", 0) + 1
    for _start, _ms, endpoint, key in inside:
        if key != "ok":
            errors_inside[key] = errors_inside.get(key, 0) + 1
    per_endpoint: Dict[str, Any] = {}
    for endpoint in MIX:
        mine = [r[1] for r in inside if r[2] == endpoint and r[3] == "ok"]
        per_endpoint[endpoint] = {"ok": len(mine), "p50_ms": pct(mine, 50),
                                  "p99_ms": pct(mine, 99)}
    seconds = sum(hi - lo for lo, hi in windows)
    model_ok = sum(per_endpoint[e]["ok"] for e in MODEL_ENDPOINTS)
    model_ok_run = sum(1 for r in records if r[2] in MODEL_ENDPOINTS and r[3] == "ok")
    return {"window_s": round(seconds, 1), "requests": len(records),
            "ok_in_window": len(ok_ms), "ok_per_s": round(len(ok_ms) / seconds, 2),
            "model_calls_ok_per_s": round(model_ok / seconds, 2),
            "model_calls_ok_in_run": model_ok_run,
            "p50_ms": pct(ok_ms, 50), "p99_ms": pct(ok_ms, 99),
            "errors": errors, "errors_in_window": errors_inside,
            "error_count": sum(errors.values()), "per_endpoint": per_endpoint}


# ---------------------------------------------------------------- the model-bound baseline

def _load(b64_text: str, param: str) -> Any:
    from sophon_face.pipeline.images import load_image
    from sophon_face.pipeline.types import ImageInput, ImageLimits
    return load_image(ImageInput(param, base64_text=b64_text), ImageLimits(), [])


def _search_job(pipeline: Any, b64_text: str) -> None:
    from sophon_face.pipeline.images import jpeg_for_storage
    from sophon_face.service.search import face_crop_jpeg
    image = _load(b64_text, "rgb_image_base64")
    analyzed = pipeline.analyze_largest(image, "no", with_feature=True, min_face_size=40.0)
    face_crop_jpeg(image.image_bgr, analyzed.face.bbox, 90)  # REGN_IMAGE_TYPE "all"
    jpeg_for_storage(image, 90)


def _compare_job(pipeline: Any, first: str, second: str) -> None:
    images = [_load(first, "image_1_base64"), _load(second, "image_2_base64")]
    for image in images:
        pipeline.analyze_largest(image, "no", with_feature=True, faces=pipeline.detect(image))


def _register_job(pipeline: Any, b64_text: str) -> None:
    from sophon_face.pipeline.images import jpeg_for_storage
    image = _load(b64_text, "register_image")
    pipeline.analyze_largest(image, "no", with_feature=True)
    jpeg_for_storage(image)


def model_bound(models: Any, images: Sequence[str], clients: int, seconds: float,
                warm_s: float, workers: int, threads: int, rounds: int,
                between: Callable[[int], Any], seed: int = 5) -> Tuple[Dict[str, Any], List[Any]]:
    """Mix requests/s when a request costs only its model work on the worker pool.

    ``rounds`` blocks of ``warm_s + seconds`` each; after each block, ``between(round)``
    runs (the HTTP contender) while the pool idles, so the two take turns on the same
    machine. Returns the model-bound summary over all blocks and what ``between`` gave.
    """
    import asyncio

    from sophon_face.backends.registry import BackendOptions
    from sophon_face.pipeline.face_pipeline import FacePipeline
    from sophon_face.pipeline.quality import QualityThresholds
    from sophon_face.workers.models import pipeline_factory
    from sophon_face.workers.pool import WorkerPool

    async def block(pool: Any, rng: random.Random, records: List[Record]) -> Tuple[float, float]:
        began = time.time()
        stop_at = began + warm_s + seconds

        async def client() -> None:
            while time.time() < stop_at:
                endpoint = pick(rng)
                n = rng.randrange(len(images))
                started = time.time()
                key = "ok"
                try:
                    if endpoint == "search":
                        await pool.run(_search_job, images[n])
                    elif endpoint == "compare":
                        await pool.run(_compare_job, images[n], images[(n + 1) % len(images)])
                    elif endpoint == "createidentity":
                        await pool.run(_register_job, images[n])
                    else:
                        await asyncio.sleep(0)  # no model work
                except Exception as exc:  # reported, like an HTTP error
                    key = type(exc).__name__
                records.append((started, (time.time() - started) * 1000.0, endpoint, key))

        await asyncio.gather(*(client() for _ in range(clients)))
        return began + warm_s, began + warm_s + seconds

    async def run() -> Tuple[Dict[str, Any], List[Any]]:
        loop = asyncio.get_running_loop()
        factory = pipeline_factory(models, BackendOptions(intra_op_threads=threads),
                                   QualityThresholds())
        await loop.run_in_executor(None, factory.open)
        pool = WorkerPool(factory, warm_up=FacePipeline.warm_up, close=FacePipeline.close,
                          count=workers, timeout_s=600.0)
        await pool.start()
        rng = random.Random(seed)
        records: List[Record] = []
        windows: List[Tuple[float, float]] = []
        per_round: List[Dict[str, Any]] = []
        others: List[Any] = []
        cpu_s = 0.0
        others_s = 0.0
        try:
            for n in range(rounds):
                cpu = CpuShare().start()
                mine: List[Record] = []
                window = await block(pool, rng, mine)
                usage = cpu.stop()
                cpu_s += usage["ours_cores"] * usage["wall_s"]
                others_s += usage["others_cores"] * usage["wall_s"]
                records += mine
                windows.append(window)
                per_round.append(dict(summarise(mine, [window]), cpu=usage))
                await asyncio.sleep(0.5)  # ORT's spinning threads settle before the turn
                others.append(await loop.run_in_executor(None, between, n))
        finally:
            await pool.close()
            await loop.run_in_executor(None, factory.close)
        result = summarise(records, windows)
        wall = sum(r["cpu"]["wall_s"] for r in per_round)
        result.update({
            "clients": clients, "rounds": per_round,
            "cpu": {"wall_s": round(wall, 1), "ours_cores": round(cpu_s / wall, 2),
                    "others_cores": round(others_s / wall, 2)},
            "cpu_ms_per_model_call": round(1000.0 * cpu_s
                                           / max(1, result["model_calls_ok_in_run"]), 1)})
        return result, others

    return asyncio.run(run())


# ---------------------------------------------------------------- locust (the locustfile part)

if __name__ != "__main__" and "locust" in sys.modules:
    from locust import FastHttpUser, constant, events

    _RECORDS: List[Tuple[float, float, str, str]] = []
    _BODIES: Dict[str, List[bytes]] = {}

    def _bodies() -> Dict[str, List[bytes]]:
        if not _BODIES:
            with open(os.environ["LOAD_WORKLOAD"], "r", encoding="utf-8") as fh:
                for endpoint, texts in json.load(fh).items():
                    _BODIES[endpoint] = [t.encode("utf-8") for t in texts]
        return _BODIES

    def _task(endpoint: str) -> Callable[[Any], None]:
        def call(user: Any) -> None:
            body = user.rng.choice(_bodies()[endpoint])
            started = time.time()
            with user.client.post(BASE + endpoint, data=body, name=endpoint,
                                  headers={"Content-Type": "application/json"},
                                  catch_response=True) as response:
                if response.status_code == 200:
                    key = "ok"
                    response.success()
                elif not response.status_code:  # no answer: the client's exception
                    key = f"client {type(response.error).__name__}"
                    response.failure(key)
                else:
                    try:
                        payload = json.loads(response.content or b"{}")
                    except ValueError:
                        payload = {}
                    key = outcome_key(response.status_code, payload)
                    response.failure(key)
            _RECORDS.append((started, (time.time() - started) * 1000.0, endpoint, key))
        call.__name__ = endpoint
        return call

    class MixUser(FastHttpUser):
        """One closed-loop client of the mix."""

        wait_time = constant(0)
        network_timeout = 600.0
        connection_timeout = 60.0
        max_retries = 0
        tasks = {_task(endpoint): weight for endpoint, weight in MIX.items()}

        def on_start(self) -> None:
            self.rng = random.Random(id(self))

    @events.quitting.add_listener
    def _write_records(environment: Any, **_kwargs: Any) -> None:
        with open(os.environ["LOAD_RECORDS"], "w", encoding="utf-8") as fh:
            json.dump(_RECORDS, fh)


def locust_version() -> str:
    done = subprocess.run([sys.executable, "-m", "locust", "--version"], capture_output=True,
                          text=True, cwd=str(PROJECT_DIR))
    if done.returncode != 0:
        return "not installed"
    return " ".join(done.stdout.split()[:2])  # "locust 2.47.0"


def http_level(daemon: Daemon, work: Path, workload_path: Path, clients: int, warm_s: float,
               measure_s: float, tag: str = "") -> Dict[str, Any]:
    """One locust run of ``clients`` users; the records it leaves, summarised (and, under
    ``_records`` and ``_window``, the raw material to merge runs)."""
    records_path = work / f"records-{clients}{tag}.json"
    env = dict(os.environ, LOAD_WORKLOAD=str(workload_path), LOAD_RECORDS=str(records_path))
    run_s = int(round(warm_s + measure_s))
    cmd = [sys.executable, "-m", "locust", "-f", str(Path(__file__).resolve()), "--headless",
           "-u", str(clients), "-r", str(min(clients, 50)), "-t", f"{run_s}s",
           "--host", daemon.url,
           "--stop-timeout", "600", "--only-summary", "--loglevel", "WARNING"]
    cpu = CpuShare([daemon.pid]).start()
    daemon_cpu0 = process_cpu_s(daemon.pid)
    with open(work / f"locust-{clients}{tag}.log", "wb") as log_file:
        began = time.time()
        locust = subprocess.Popen(cmd, cwd=str(PROJECT_DIR), env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT)
        cpu.add_pid(locust.pid)
        locust_cpu = 0.0
        while locust.poll() is None:  # its CPU, read while /proc still has it
            locust_cpu = process_cpu_s(locust.pid) or locust_cpu
            time.sleep(0.5)
        ended = time.time()
    usage = cpu.stop()
    if not records_path.exists():
        raise RuntimeError(f"locust left no records (exit {locust.returncode}); see "
                           f"{work / f'locust-{clients}{tag}.log'}")
    records = [tuple(r) for r in json.loads(records_path.read_text(encoding="utf-8"))]
    first = min((r[0] for r in records), default=began)
    window = (first + warm_s, first + warm_s + measure_s)
    result = summarise(records, [window])  # type: ignore[arg-type]
    result.update({"_records": records, "_window": window, "clients": clients, "cpu": usage,
                   "locust_exit": locust.returncode,
                   "run_wall_s": round(ended - began, 1),
                   "daemon_cpu_s": round(process_cpu_s(daemon.pid) - daemon_cpu0, 2),
                   "daemon_cores": round((process_cpu_s(daemon.pid) - daemon_cpu0)
                                         / max(1e-9, ended - began), 2),
                   "locust_cores": round(locust_cpu / max(1e-9, ended - began), 2)})
    result["daemon_cpu_ms_per_model_call"] = round(
        1000.0 * result["daemon_cpu_s"] / max(1, result["model_calls_ok_in_run"]), 1)
    result["daemon_log_tail"] = daemon.log_tail()
    return result


def merged(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """One summary of several locust runs at the same level (their windows joined)."""
    records = [r for run in runs for r in run.pop("_records")]
    windows = [run.pop("_window") for run in runs]
    result = summarise(records, windows)
    wall = sum(run["run_wall_s"] for run in runs)

    def mean(key: str, cpu: bool = False) -> float:
        return round(sum((run["cpu"].get(key, 0.0) if cpu else run[key]) * run["run_wall_s"]
                         for run in runs) / wall, 2)

    result.update({"clients": runs[0]["clients"], "rounds": list(runs), "run_wall_s": wall,
                   "daemon_cores": mean("daemon_cores"), "locust_cores": mean("locust_cores"),
                   "cpu": {"others_cores": mean("others_cores", cpu=True),
                           "ours_cores": mean("ours_cores", cpu=True), "wall_s": wall},
                   "locust_exit": [run["locust_exit"] for run in runs],
                   "daemon_cpu_s": round(sum(run["daemon_cpu_s"] for run in runs), 2)})
    result["daemon_cpu_ms_per_model_call"] = round(
        1000.0 * result["daemon_cpu_s"] / max(1, result["model_calls_ok_in_run"]), 1)
    return result


def _errors_text(errors: Dict[str, int]) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{k} x{v}" for k, v in sorted(errors.items(), key=lambda kv: -kv[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default=",".join(str(n) for n in LEVELS))
    parser.add_argument("--warm-s", type=float, default=15.0)
    parser.add_argument("--measure-s", type=float, default=60.0)
    parser.add_argument("--synthetic", type=int, default=3000)
    parser.add_argument("--model-bound-clients", type=int, default=16,
                        help="the level measured beside the model-bound baseline")
    parser.add_argument("--rounds", type=int, default=3,
                        help="turns of model-bound and HTTP at that level")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, records)")
    parser.add_argument("--tree", choices=("working", "head"), default="working",
                        help="run the working tree or a snapshot of the last commit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    levels = [int(n) for n in args.levels.split(",") if n]
    work = Path(tempfile.mkdtemp(prefix="bench-load-"))
    src = source_tree(args.tree, work)
    from sophon_face.workers.models import prepare_models

    facts = machine()
    facts["locust"] = locust_version()
    facts["pool_admission"] = pool_admission(src)
    facts.update(tree_facts(args.tree))
    log.info("load generator: %s; worker pool admission: %s", facts["locust"],
             facts["pool_admission"])
    models = prepare_models(MANIFEST, MODEL_CACHE)
    daemon = Daemon(work, src=src)
    levels_out: List[Dict[str, Any]] = []
    baseline: Dict[str, Any] = {}
    try:
        log.info("populating: %d synthetic identities, devset persons, workload photos",
                 args.synthetic)
        gallery = populate(daemon, args.synthetic, models.feature_dim, candidate_photos())
        kept, persons = gallery.pop("_kept"), gallery.pop("_persons")
        bodies = workload(kept, persons)
        workload_path = work / "workload.json"
        workload_path.write_text(json.dumps(bodies), encoding="utf-8")
        log.info("gallery: %d devset + %d synthetic identities; %d workload photos (%s MiB)",
                 gallery["devset_identities"], gallery["synthetic_identities"],
                 len(kept), gallery["photo_mib"])
        for i, clients in enumerate(levels):
            log.info("level %d/%d: %d clients", i + 1, len(levels), clients)
            if clients == args.model_bound_clients:
                # Side by side: model-bound blocks and HTTP runs take turns, round by round.
                def http_turn(n: int, clients: int = clients) -> Dict[str, Any]:
                    log.info("  round %d/%d: HTTP, %d clients", n + 1, args.rounds, clients)
                    return http_level(daemon, work, workload_path, clients, args.warm_s,
                                      args.measure_s / args.rounds, tag=f"-r{n}")

                log.info("  model-bound and HTTP take turns: %d rounds of %.0f s each",
                         args.rounds, args.measure_s / args.rounds)
                baseline, runs = model_bound(
                    models, [b64(d) for _, d in kept], clients, args.measure_s / args.rounds,
                    5.0, daemon.config["workers"]["count"],
                    daemon.config["workers"]["intra_op_threads"], args.rounds, http_turn)
                result = merged(runs)
                result["model_bound_ratio"] = round(ratio(result["ok_per_s"],
                                                          baseline["ok_per_s"]), 3)
                result["model_bound_ratio_per_round"] = [
                    round(ratio(run["ok_per_s"], mb["ok_per_s"]), 3)
                    for run, mb in zip(result["rounds"], baseline["rounds"])]
                log.info("model-bound: %.2f mix req/s (others' cores %.2f); HTTP / model-bound "
                         "%.3f (per round %s)", baseline["ok_per_s"],
                         baseline["cpu"]["others_cores"], result["model_bound_ratio"],
                         result["model_bound_ratio_per_round"])
            else:
                result = http_level(daemon, work, workload_path, clients, args.warm_s,
                                    args.measure_s)
                del result["_records"], result["_window"]
            levels_out.append(result)
            log.info("%d clients: %.2f ok/s, p50 %s ms, p99 %s ms, errors %s, others' cores "
                     "%.2f", clients, result["ok_per_s"], result["p50_ms"], result["p99_ms"],
                     _errors_text(result["errors_in_window"]),
                     result["cpu"].get("others_cores", -1))
    finally:
        daemon.stop()
        if args.keep:
            log.info("kept %s", work)
        else:
            shutil.rmtree(str(work), ignore_errors=True)
    print(f"\n{describe_machine(facts)}; {facts['locust']}\n")
    print(f"daemon: 1 worker x 2 ONNX threads; pool admission: {facts['pool_admission']}; "
          f"gallery {gallery['devset_identities']} devset + {gallery['synthetic_identities']} "
          f"synthetic identities; {len(gallery['photos'])} photos; mix {MIX}\n")
    rows = []
    for r in levels_out:
        rows.append([r["clients"], r["ok_per_s"], r["model_calls_ok_per_s"], r["p50_ms"],
                     r["p99_ms"],
                     _errors_text(r["errors"]), r["requests"],
                     r.get("model_bound_ratio", ""), r["daemon_cpu_ms_per_model_call"],
                     r["daemon_cores"], r["locust_cores"], r["cpu"].get("others_cores")])
    if baseline:
        rows.append([f"model-bound ({baseline['clients']} callers, no HTTP)", baseline["ok_per_s"],
                     baseline["model_calls_ok_per_s"], baseline["p50_ms"], baseline["p99_ms"],
                     _errors_text(baseline["errors"]),
                     baseline["requests"], 1.0, baseline["cpu_ms_per_model_call"],
                     baseline["cpu"].get("ours_cores"), "",
                     baseline["cpu"].get("others_cores")])
    print(markdown_table(["clients", "ok req/s", "of which model calls/s", "p50 ms", "p99 ms",
                          "errors (whole run)", "requests", "÷ model-bound",
                          "CPU ms per model call", "daemon cores", "locust cores",
                          "others' cores"], rows))
    path = save_results("load", {"machine": facts, "mix": MIX, "gallery": gallery,
                                 "args": vars(args), "model_bound": baseline,
                                 "levels": levels_out})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop: clean up the daemon
    sys.exit(main())
