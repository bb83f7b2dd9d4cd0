"""Soak: the daemon for a long run (default one hour) with a video device playing a scene of
walking faces in a loop plus a moderate API load; its resident memory, open file
descriptors, threads and the events it recorded, sampled every minute.

1. A daemon subprocess (bench/load.py's ``Daemon``: its RSS and fds are its own) with
   ``video.loop_files``; the gallery of bench/load.py (devset identities plus
   ``--synthetic`` ones) and the three people of the test scene (tests/video_media.py).
2. One ``file`` device plays the generated 1280x720, 15 fps, 11 s scene (Ardern, a
   stranger, then Obama and Macron crossing; bench/video.py) over and over at the
   default ``analysis_fps`` 8: each loop records events (a person is seen again after
   the 6 s duplicate window).
3. The API load: ``--clients`` threads sharing ``--api-rps`` requests/s of bench/load.py's
   mix, except that every ``createidentity`` is followed by ``deleteidentities`` of the
   identity it made, so the library stays the same size and the run tests the
   create/delete cycle rather than the growth of the store.
4. Retention: ``events.max_events`` is ``--max-events`` (default 800). The run records
   about 2,900 events an hour (the device's ~1,300, one per ``search``), so retention
   starts deleting the oldest events (and their images) within the first 20 minutes:
   the judged part of the run is a store at steady size, where any growth is a leak.
   With ``--max-events 0`` (the daemon's 100,000) the run shows instead what the
   growing event store costs in memory.
5. Every ``--sample-s``: VmRSS and its anon / file parts (``/proc/<pid>/status``), open fds
   (``/proc/<pid>/fd``), threads, the data directory's bytes, the device's frames and
   events, all events, the API's ok/error counts and p50/p99, and the CPU other processes
   used in that minute (``others_cores``). The curve so far is rewritten to
   ``bench/results/soak-running.json`` after every sample.

Verdict (after warm-up = the first third of the run):
* memory flat: the least-squares slope of RSS over the last two thirds of the samples
  is below ``--max-rss-slope-mib-h`` (default 8 MiB/h, i.e. under 200 MiB a day);
  the anon part's slope is judged beside it (``anon_flat``): file pages are the LMDB
  map (which the events written during the run touch) and libraries, clean page cache
  the kernel may drop, while a leak of the process's own allocations shows in anon;
* fds flat: over the last two thirds the open-fd count varies by at most
  ``--max-fd-range`` (default 4) and ends no higher than it started + 2.

Run (from the project root):
    nohup .venv/bin/python bench/soak.py > bench/results/soak.log 2>&1 &   # one hour
    .venv/bin/python bench/soak.py --duration-s 300 --sample-s 20         # a quick look
Prints markdown (every ~5 min of the curve); writes bench/results/soak-*.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from load import (BASE, MANIFEST, MIX, MODEL_CACHE, Daemon, b64, candidate_photos,
                  outcome_key, pick, populate, pool_admission, source_tree, tree_facts,
                  workload)
from measure import (RESULTS_DIR, TEST_DATA_DIR, CpuShare, describe_machine, machine,
                     markdown_table, mib, save_results)

RUNNING_PATH = RESULTS_DIR / "soak-running.json"
log = logging.getLogger("bench.soak")


# ---------------------------------------------------------------- /proc

def proc_status(pid: int) -> Dict[str, int]:
    """VmRSS, RssAnon, RssFile in bytes and Threads of ``pid``."""
    wanted = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "Threads": "threads",
              "VmHWM": "peak_rss"}
    out: Dict[str, int] = {}
    with open(f"/proc/{pid}/status", "r", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in wanted:
                value = int(rest.split()[0])
                out[wanted[key]] = value if key == "Threads" else value * 1024
    return out


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tree_bytes(root: Path) -> int:
    total = 0
    for folder, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


# ---------------------------------------------------------------- the API load

class ApiLoad:
    """``clients`` threads sending ``rps`` requests/s in all, paced, of the mix."""

    def __init__(self, daemon: Daemon, bodies: Dict[str, List[str]], rps: float,
                 clients: int) -> None:
        self.daemon = daemon
        self.bodies = {k: [t.encode("utf-8") for t in v] for k, v in bodies.items()}
        self.interval_s = clients / rps if rps > 0 else 0.0
        self.clients = clients if rps > 0 else 0
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.outcomes: Dict[str, int] = {}
        self.latencies_ms: List[float] = []
        self.threads: List[threading.Thread] = []

    def start(self) -> "ApiLoad":
        for n in range(self.clients):
            thread = threading.Thread(target=self._client, args=(n,), daemon=True,
                                      name=f"soak-client-{n}")
            thread.start()
            self.threads.append(thread)
        return self

    def _call(self, endpoint: str, body: bytes) -> Dict[str, Any]:
        started = time.perf_counter()
        try:
            status, answer = self.daemon.request("POST", BASE + endpoint, body)
            key = outcome_key(status, answer)
        except Exception as exc:  # connection trouble is a finding, not a crash
            answer, key = {}, f"client {type(exc).__name__}"
        ms = (time.perf_counter() - started) * 1000.0
        with self.lock:
            name = f"{endpoint}: {key}"
            self.outcomes[name] = self.outcomes.get(name, 0) + 1
            if key == "ok":
                self.latencies_ms.append(ms)
        return answer if key == "ok" else {}

    def _client(self, n: int) -> None:
        rng = random.Random(n)
        next_at = time.monotonic() + rng.random() * self.interval_s
        while not self.stopping.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self.stopping.wait(delay):
                break
            next_at = max(next_at + self.interval_s, time.monotonic() - self.interval_s)
            endpoint = pick(rng)
            answer = self._call(endpoint, rng.choice(self.bodies[endpoint]))
            if endpoint == "createidentity" and answer.get("identity_id"):
                self._call("deleteidentities", json.dumps(
                    {"identity_ids": [answer["identity_id"]]}).encode())

    def take(self) -> Dict[str, Any]:
        """Counts and latency since the last call."""
        with self.lock:
            outcomes, self.outcomes = self.outcomes, {}
            latencies, self.latencies_ms = self.latencies_ms, []
        ok = sum(v for k, v in outcomes.items() if k.endswith(": ok"))
        return {"ok": ok, "errors": {k: v for k, v in outcomes.items() if not k.endswith(": ok")},
                "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
                "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None}

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(120)


# ---------------------------------------------------------------- verdict

def slope_per_h(points: List[Dict[str, Any]], key: str) -> float:
    """Least-squares slope of ``key`` (MiB) against time, in MiB per hour."""
    if len(points) < 2:
        return float("nan")
    t_h = np.array([p["t_s"] for p in points], dtype=float) / 3600.0
    y = np.array([p[key] for p in points], dtype=float)
    return float(np.polyfit(t_h, y, 1)[0])


def verdict(samples: List[Dict[str, Any]], max_slope: float, max_fd_range: int
            ) -> Dict[str, Any]:
    if len(samples) < 4:
        return {"judged": False, "why": f"{len(samples)} samples: too few"}
    end_s = samples[-1]["t_s"]
    after = [s for s in samples if s["t_s"] >= end_s / 3.0]
    fds = [s["fds"] for s in after]
    rss_slope = slope_per_h(after, "rss_mib")
    out = {
        "judged": True, "samples_judged": len(after), "from_s": after[0]["t_s"], "to_s": end_s,
        "rss_slope_mib_per_h": round(rss_slope, 2),
        "anon_slope_mib_per_h": round(slope_per_h(after, "anon_mib"), 2),
        "file_slope_mib_per_h": round(slope_per_h(after, "file_mib"), 2),
        "rss_first_last_mib": [after[0]["rss_mib"], after[-1]["rss_mib"]],
        "fd_min_max": [min(fds), max(fds)], "fd_first_last": [fds[0], fds[-1]],
        "max_rss_slope_mib_per_h": max_slope, "max_fd_range": max_fd_range,
    }
    out["memory_flat"] = bool(rss_slope < max_slope)
    out["anon_flat"] = bool(out["anon_slope_mib_per_h"] < max_slope)  # leaks show here
    out["fds_flat"] = bool(max(fds) - min(fds) <= max_fd_range and fds[-1] <= fds[0] + 2)
    return out


# ---------------------------------------------------------------- the run

def register_scene_people(daemon: Daemon) -> None:
    from tests.video_media import REGISTERED
    for identity_id, photo in REGISTERED.items():
        daemon.post("createidentity", {"register_image": b64((TEST_DATA_DIR / photo).read_bytes()),
                                       "identity_id": identity_id, "identity_name": identity_id,
                                       "fiqa_level": "no"})


def event_total(daemon: Daemon, device: Optional[str] = None) -> int:
    body: Dict[str, Any] = {"page_limit": 1}
    if device:
        body["filters"] = {"media_device_ids": [device]}
    return int(daemon.post("getevents", body)["pagination"]["total_count"])


def write_running(payload: Dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tmp = RUNNING_PATH.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(str(tmp), str(RUNNING_PATH))


def curve_table(samples: List[Dict[str, Any]], every_s: float) -> str:
    rows, next_t = [], 0.0
    for i, s in enumerate(samples):
        if s["t_s"] + 1e-6 < next_t and i != len(samples) - 1:
            continue
        next_t = s["t_s"] + every_s
        rows.append([f"{s['t_s'] / 60:.0f}", s["rss_mib"], s["anon_mib"], s["file_mib"],
                     s["fds"], s["threads"], s.get("device_events_recorded"), s["events_device"],
                     s["events_all"],
                     s["api"]["ok"], sum(s["api"]["errors"].values()),
                     s["frames_analysed"], s["data_mib"], s.get("lmdb_mib"),
                     s["cpu"].get("others_cores")])
    return markdown_table(["min", "RSS MiB", "anon MiB", "file MiB", "fds", "threads",
                           "device events recorded", "device events stored", "events stored",
                           "API ok (interval)",
                           "API errors (interval)", "frames analysed", "data MiB", "LMDB file MiB",
                           "others' cores"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--sample-s", type=float, default=60.0)
    parser.add_argument("--api-rps", type=float, default=1.0)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--synthetic", type=int, default=1000)
    parser.add_argument("--analysis-fps", type=float, default=8.0)
    parser.add_argument("--max-events", type=int, default=800,
                        help="events.max_events: retention reached during warm-up, so the "
                             "judged part runs at a steady store size (0: the default 100000)")
    parser.add_argument("--max-rss-slope-mib-h", type=float, default=8.0)
    parser.add_argument("--max-fd-range", type=int, default=4)
    parser.add_argument("--table-every-s", type=float, default=300.0)
    parser.add_argument("--tree", choices=("working", "head"), default="working",
                        help="run the working tree or a snapshot of the last commit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    logging.getLogger("bench.load").setLevel(logging.INFO)
    work = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    src = source_tree(args.tree, work)
    from sophon_face.workers.models import prepare_models
    from video import make_scene

    facts = machine()
    facts["pool_admission"] = pool_admission(src)
    facts.update(tree_facts(args.tree))
    models = prepare_models(MANIFEST, MODEL_CACHE)
    video_dir = work / "videos"
    video_dir.mkdir()
    video = make_scene(models, video_dir)
    daemon = Daemon(work, {"images": {"roots": [str(TEST_DATA_DIR), str(video_dir)]},
                           "video": {"loop_files": True, "analysis_fps": args.analysis_fps},
                           "events": {"max_events": args.max_events or 100_000}},
                    src=src)
    samples: List[Dict[str, Any]] = []
    header: Dict[str, Any] = {"machine": facts, "args": vars(args), "mix": MIX,
                              "daemon_pid": daemon.pid, "work_dir": str(work),
                              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    load: Optional[ApiLoad] = None
    result: Dict[str, Any] = {}
    try:
        gallery = populate(daemon, args.synthetic, models.feature_dim, candidate_photos())
        kept, persons = gallery.pop("_kept"), gallery.pop("_persons")
        register_scene_people(daemon)
        header["gallery"] = gallery
        device = daemon.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": "soak-loop",
            "media_device_url": str(video)})["media_device_id"]
        load = ApiLoad(daemon, workload(kept, persons), args.api_rps, args.clients).start()
        began = time.monotonic()
        log.info("soak: pid %d, %d s, a sample every %d s; API %.1f req/s over %d clients; "
                 "curve so far in %s", daemon.pid, args.duration_s, args.sample_s,
                 args.api_rps, args.clients, RUNNING_PATH)
        cpu = CpuShare([daemon.pid]).start()
        n = 0
        while True:
            status = proc_status(daemon.pid)
            health = daemon.request("GET", "/health")[1]
            dev = health.get("devices", {}).get(device, {})
            usage = cpu.stop()
            cpu = CpuShare([daemon.pid]).start()
            sample = {
                "t_s": round(time.monotonic() - began, 1),
                "rss_mib": round(mib(status.get("rss", 0)), 1),
                "anon_mib": round(mib(status.get("anon", 0)), 1),
                "file_mib": round(mib(status.get("file", 0)), 1),
                "peak_rss_mib": round(mib(status.get("peak_rss", 0)), 1),
                "threads": status.get("threads", 0), "fds": fd_count(daemon.pid),
                "events_device": event_total(daemon, device), "events_all": event_total(daemon),
                "frames_analysed": dev.get("frames_analysed", 0),
                "device_events_recorded": dev.get("events"),  # since start; never capped
                "device_state": dev.get("state"),
                "data_mib": round(mib(tree_bytes(daemon.data_dir)), 1),
                # The LMDB file: its touched pages are most of the file-backed RSS growth.
                "lmdb_mib": round(mib(tree_bytes(daemon.data_dir / "lmdb")), 1),
                "api": load.take(), "cpu": usage,
            }
            samples.append(sample)
            log.info("%5.1f min: RSS %.1f MiB (anon %.1f), fds %d, threads %d, events %d "
                     "(device %d), API ok %d errors %s, others' cores %s", sample["t_s"] / 60,
                     sample["rss_mib"], sample["anon_mib"], sample["fds"], sample["threads"],
                     sample["events_all"], sample["events_device"], sample["api"]["ok"],
                     sample["api"]["errors"] or 0, usage.get("others_cores"))
            write_running(dict(header, samples=samples, finished=False,
                               verdict=verdict(samples, args.max_rss_slope_mib_h,
                                               args.max_fd_range)))
            if daemon.process.poll() is not None:
                raise RuntimeError(f"daemon exited with {daemon.process.returncode}")
            n += 1
            if sample["t_s"] >= args.duration_s:
                break
            time.sleep(max(0.0, began + n * args.sample_s - time.monotonic()))
    finally:
        if load is not None:
            load.stop()
        daemon.stop()
        log.info("daemon log: %s", daemon.log_path)
        if samples:
            judged = verdict(samples, args.max_rss_slope_mib_h, args.max_fd_range)
            result = dict(header, samples=samples, finished=True, verdict=judged,
                          stopped=time.strftime("%Y-%m-%d %H:%M:%S"))
            write_running(result)
        shutil.rmtree(str(work), ignore_errors=True)
    print(f"\n{describe_machine(facts)}\n")
    print(f"soak {args.duration_s / 60:.0f} min: 1 looping 1280x720 file device at "
          f"{args.analysis_fps:g} fps + {args.api_rps:g} API req/s; pool admission "
          f"{facts['pool_admission']}\n")
    print(curve_table(samples, args.table_every_s))
    judged = result["verdict"]
    api_errors: Dict[str, int] = {}
    for s in samples:
        for key, count in s["api"]["errors"].items():
            api_errors[key] = api_errors.get(key, 0) + count
    print(f"\nverdict: {json.dumps(judged)}\nAPI errors over the run: {api_errors or 0}")
    path = save_results("soak", result)
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop: clean up the daemon
    sys.exit(main())
