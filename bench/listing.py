"""getidentities on a large library: the daemon's CPU and latency per call, for each way a
platform lists people, against a baseline commit run side by side on a copy of the same
data directory.

1. A daemon of the working tree registers ``--identities`` identities from random unit
   features (``register_feature``: no model work), each in one of ``--groups`` permission
   groups. A name in three is Chinese (``王伟 1234``), the others ASCII
   (``Zhang Wei 1234``): the name filter skips ASCII records without the needle
   undecoded, while CJK records are always decoded (store/name_filter.py).
2. The daemon stops; its data directory is copied, and two daemons start: one of the
   working tree, one of ``--baseline`` (a git ref, extracted with ``git archive``; by
   default the last commit before the listing's fast paths). Both stores hold the same
   identities in the same order.
3. Each query below runs ``--repeat`` times on one daemon, then on the other, in turns:
   the daemon's CPU time per call (``/proc/<pid>/stat``, all its threads) and the
   client's wall-clock p50 per call. Both daemons' answers must be equal.

   ============ ================================================================
   query        body
   ============ ================================================================
   first page   ``{}`` (page 0 of 10)
   last page    the last page of 10 of the whole library
   one group    ``filters.permission_id_list`` of one group (~1/groups of them)
   one id       ``filters.identity_id`` of an identity in the middle
   name ascii   ``filters.identity_name`` ``"ZHANG"`` (1 ASCII name in 8 has it)
   name cjk     ``filters.identity_name`` ``"王"`` (every Chinese name has it)
   name none    ``filters.identity_name`` ``"nobody"`` (no name has it)
   name digits  ``filters.identity_name`` ``"123"`` (about 1 name in 90; every id and
                face id holds digits, so only the name's own bytes can tell)
   ============ ================================================================

Run (from the project root):
    .venv/bin/python bench/listing.py                        # 20,000 identities, ~4 min
    .venv/bin/python bench/listing.py --identities 2000 --repeat 10
Prints markdown; writes bench/results/listing-*.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np

from daemon import BASE, DaemonProcess, git_snapshot
from measure import (MODEL_CACHE, PROJECT_DIR, CpuShare, machine, markdown_table, process_cpu_s,
                     progress, ratio, save_results)

#: The last commit before getidentities read pages by position, groups through their
#: index and names through the byte filter.
DEFAULT_BASELINE = "35f560a"
SURNAMES = ["Zhang", "Wang", "Li", "Liu", "Chen", "Yang", "Huang", "Zhao"]
log = logging.getLogger("bench.listing")


def populate(daemon: DaemonProcess, count: int, groups: int, dim: int) -> List[str]:
    """Registers the library; returns the group ids."""
    group_ids = [daemon.post("createpermission", {"permission_name": f"group {g}"})
                 ["permission_id"] for g in range(groups)]
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((count, dim)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    done = [0]

    def enrol(i: int) -> None:
        name = f"王伟 {i}" if i % 3 == 0 else f"{SURNAMES[i % 8]} Wei {i}"
        daemon.post("createidentity", {
            "register_feature": rows[i].tolist(), "identity_id": f"person-{i:06d}",
            "identity_name": name, "permission_ids": [group_ids[i % groups]]})
        done[0] += 1
        progress(log, "identities", done[0], count, every=2000)

    with ThreadPoolExecutor(4) as executor:
        list(executor.map(enrol, range(count)))
    return group_ids


def queries(count: int, group_ids: List[str]) -> Dict[str, Dict[str, Any]]:
    return {
        "first page": {},
        "last page": {"page_limit": 10, "page_index": (count - 1) // 10},
        "one group": {"filters": {"permission_id_list": [group_ids[1]]}, "page_limit": 10},
        "one id": {"filters": {"identity_id": f"person-{count // 2:06d}"}},
        "name ascii": {"filters": {"identity_name": "ZHANG"}, "page_limit": 10},
        "name cjk": {"filters": {"identity_name": "王"}, "page_limit": 10},
        "name none": {"filters": {"identity_name": "nobody"}, "page_limit": 10},
        "name digits": {"filters": {"identity_name": "123"}, "page_limit": 10},
    }


def measure(daemon: DaemonProcess, body: Dict[str, Any], repeat: int) -> Tuple[float, float, Any]:
    """(daemon CPU ms per call, wall p50 ms, the answer)."""
    data = json.dumps(body).encode()
    daemon.request("POST", BASE + "getidentities", data)  # warm: caches, the name table
    walls = []
    cpu_start = process_cpu_s(daemon.pid)
    answer: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        status, answer = daemon.request("POST", BASE + "getidentities", data)
        walls.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"getidentities {body}: {status} {answer}")
    cpu_ms = (process_cpu_s(daemon.pid) - cpu_start) * 1000 / repeat
    return cpu_ms, statistics.median(walls), answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=20000)
    parser.add_argument("--groups", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git ref of the baseline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    from sophon_face.workers.models import prepare_models

    work = Path(tempfile.mkdtemp(prefix="bench-listing-"))
    dim = prepare_models(PROJECT_DIR / "models" / "cpu.yaml", MODEL_CACHE).feature_dim
    daemons: Dict[str, DaemonProcess] = {}
    try:
        started = time.perf_counter()
        for tree in ("working", "baseline"):
            (work / tree).mkdir()
        filler = DaemonProcess(work / "working")
        group_ids = populate(filler, args.identities, args.groups, dim)
        filler.stop()
        log.info("library of %d identities in %.0f s", args.identities,
                 time.perf_counter() - started)
        shutil.copytree(str(work / "working" / "data"), str(work / "baseline" / "data"))
        daemons["working"] = DaemonProcess(work / "working")
        daemons["baseline"] = DaemonProcess(work / "baseline", src=git_snapshot(args.baseline, work / "baseline-src"))
        cpu = CpuShare([d.pid for d in daemons.values()]).start()
        results: Dict[str, Dict[str, List[Tuple[float, float]]]] = {}
        for round_ in range(args.rounds):
            log.info("round %d/%d", round_ + 1, args.rounds)
            for name, body in queries(args.identities, group_ids).items():
                answers = {}
                for tree, daemon in daemons.items():
                    cpu_ms, wall_ms, answers[tree] = measure(daemon, body, args.repeat)
                    results.setdefault(name, {}).setdefault(tree, []).append((cpu_ms, wall_ms))
                if answers["working"] != answers["baseline"]:
                    raise RuntimeError(f"{name}: the two trees answer differently")
        neighbours = cpu.stop()
    finally:
        for daemon in daemons.values():
            daemon.stop()
        shutil.rmtree(work, ignore_errors=True)

    rows, table = [], []
    for name, by_tree in results.items():
        row: Dict[str, Any] = {"query": name}
        for tree, samples in by_tree.items():
            row[f"{tree}_cpu_ms"] = round(statistics.median(c for c, _ in samples), 2)
            row[f"{tree}_p50_ms"] = round(statistics.median(w for _, w in samples), 2)
        row["cpu_ratio"] = round(ratio(row["working_cpu_ms"], row["baseline_cpu_ms"]), 3)
        rows.append(row)
        table.append([name, row["baseline_cpu_ms"], row["working_cpu_ms"], row["cpu_ratio"],
                      row["baseline_p50_ms"], row["working_p50_ms"]])
    print(f"\ngetidentities, {args.identities} identities in {args.groups} groups "
          f"(baseline {args.baseline}); others' cores {neighbours.get('others_cores')}\n")
    print(markdown_table(["query", "baseline CPU ms/call", "working CPU ms/call",
                          "working / baseline", "baseline p50 ms", "working p50 ms"], table))
    path = save_results("listing", {"machine": machine(), "args": vars(args), "rows": rows,
                                    "cpu": neighbours})
    print(f"\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
