"""Backup and restore of a 100k-face store: time, size, and what a backup costs the writer.

Sections, per feature dimension (512: the SE5's ArcFace; 128: the CPU profile's SFace):

``backup``   ``create_backup`` of the cold-start fixture of bench/search.py (N faces, one
             identity each, in 10 permission groups, written with the store's own
             repositories): wall time (and the compacting copy's share), archive size against
             the live ``data.mdb``; warm page cache (median of ``--repeats``) and once with
             the store evicted from the page cache; plain tar and gzip (levels 1 and 6).
``restore``  ``restore_backup`` of that archive into an empty data directory (median of
             ``--repeats``) and over an existing store (the old one kept as ``.bak``).
``writes``   a Store with its writer thread (as in the daemon) adds one identity with one
             face per fsynced transaction on a restored copy, for a few seconds alone and
             then while ``python -m sophon_face backup`` (the CLI) copies the same store
             from another process: write latency and throughput, both ways, and the backup's
             wall time under that load (the CLI's start-up included).

Run (from the project root):
    .venv/bin/python bench/backup.py                 # 100k faces, dims 512 and 128 (~2 min)
    .venv/bin/python bench/backup.py --quick         # 20k faces, dim 128
    .venv/bin/python bench/backup.py --faces 1M --dims 512 --repeats 1
Prints markdown; writes bench/results/backup-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from measure import (PROJECT_DIR, RESULTS_DIR, CpuShare, Stats, describe_machine, machine,
                     markdown_table, mib, save_results)
from search import ensure_fixture, evict_from_page_cache, parse_size, size_label

from sophon_face.store import faces, identities
from sophon_face.store.env import LMDB_SUBDIR, Store, Txn
from sophon_face.tools import backup
from sophon_face.tools.backup import create_backup
from sophon_face.tools.backup_manifest import RecognizerInfo
from sophon_face.tools.restore import restore_backup

WRITE_PHASE_S = 4.0


def recognizer_for(dim: int) -> RecognizerInfo:
    family = "arcface" if dim == 512 else "sface"
    return RecognizerInfo(family, f"bench-{family}-{dim}.model", dim)


def timed(fn: Any, *args: Any, **kwargs: Any) -> Tuple[float, Any]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - started, result


# ============================================================== backup and restore

def run_backup(data_dir: Path, work: Path, dim: int, repeats: int) -> Dict[str, Any]:
    live_bytes = (data_dir / LMDB_SUBDIR / "data.mdb").stat().st_size
    recognizer = recognizer_for(dim)
    rows: Dict[str, Any] = {"live_data_bytes": live_bytes}

    def once(name: str, level: Optional[int] = None) -> Tuple[float, Any]:
        archive = work / name
        if archive.exists():
            archive.unlink()
        saved = backup.GZIP_LEVEL
        if level is not None:
            backup.GZIP_LEVEL = level
        try:
            return timed(create_backup, data_dir, archive, recognizer=recognizer)
        finally:
            backup.GZIP_LEVEL = saved

    evicted = evict_from_page_cache(data_dir)
    cold_s, cold = once("cold.tar")
    rows["cold"] = {"s": round(cold_s, 3), "copy_s": round(cold.copy_s, 3),
                    "evicted": evicted}
    warm = [once("plain.tar") for _ in range(repeats)]
    result = warm[-1][1]
    rows["plain"] = {"s": Stats.of(s for s, _ in warm).as_dict(),
                     "copy_s": Stats.of(r.copy_s for _, r in warm).as_dict(),
                     "archive_bytes": result.archive_bytes,
                     "data_bytes": result.manifest.data_bytes}
    for level in (1, 6):
        took, gz = once(f"level{level}.tgz", level)
        rows[f"gzip{level}"] = {"s": round(took, 3), "archive_bytes": gz.archive_bytes}
    rows["manifest_counts"] = dict(result.manifest.store.counts)
    rows["archive"] = str(work / "plain.tar")
    return rows


def run_restore(archive: Path, work: Path, dim: int, repeats: int) -> Dict[str, Any]:
    recognizer = recognizer_for(dim)
    fresh: List[float] = []
    for k in range(repeats):
        target = work / f"fresh-{k}"
        took, _ = timed(restore_backup, archive, target, recognizer)
        fresh.append(took)
        if k < repeats - 1:
            shutil.rmtree(str(target))
    over_s, result = timed(restore_backup, archive, work / f"fresh-{repeats - 1}", recognizer)
    took_gz, _ = timed(restore_backup, work / "level1.tgz", work / "from-gzip", recognizer)
    return {"fresh_s": Stats.of(fresh).as_dict(), "over_existing_s": round(over_s, 3),
            "kept_old": str(result.kept_old), "gzip1_s": round(took_gz, 3),
            "restored_dir": str(work / f"fresh-{repeats - 1}")}


# ============================================================== a backup beside a writer

class _Writer:
    """Adds one identity with one face per write transaction, timing each."""

    def __init__(self, store: Store, dim: int) -> None:
        self._store = store
        self._dim = dim
        self._rng = np.random.default_rng(11)
        self._n = 0

    def _add(self, txn: Txn, feature: np.ndarray) -> Tuple[None, None]:
        face_id, image_id = str(uuid.uuid4()), str(uuid.uuid4())
        identity_id = f"bench-writer-{self._n}"
        faces.put(txn, faces.make_record(face_id, identity_id, image_id, feature))
        identities.put(txn, {"identity_id": identity_id, "identity_name": "writer",
                             "user_type": "employee", "permission_ids": [],
                             "ext_user_info": {}, "face_ids": [face_id],
                             "register_image_ids": [image_id]})
        return None, None

    async def run_until(self, done: Any) -> List[float]:
        latencies = []
        while not done():
            feature = self._rng.standard_normal(self._dim).astype(np.float32)
            feature /= np.linalg.norm(feature)
            self._n += 1
            started = time.perf_counter()
            await self._store.write(self._add, feature)
            latencies.append(time.perf_counter() - started)
        return latencies


def _latency_row(latencies: Sequence[float], wall_s: float) -> Dict[str, Any]:
    ms = [x * 1000 for x in latencies]
    return {"writes": len(ms), "per_s": round(len(ms) / wall_s, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "max_ms": round(max(ms), 2)}


async def _writes(data_dir: Path, dim: int, archive: Path) -> Dict[str, Any]:
    store = Store(data_dir, min_free_bytes=0)
    await store.open()
    try:
        writer = _Writer(store, dim)
        size_start = (data_dir / LMDB_SUBDIR / "data.mdb").stat().st_size
        alone_started = time.perf_counter()
        alone = await writer.run_until(lambda: time.perf_counter() - alone_started > WRITE_PHASE_S)
        alone_s = time.perf_counter() - alone_started
        size_before = (data_dir / LMDB_SUBDIR / "data.mdb").stat().st_size
        proc_done = threading.Event()
        outcome: Dict[str, Any] = {}

        def backup_process() -> None:
            started = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "sophon_face", "backup", str(archive),
                 "--data-dir", str(data_dir)], cwd=str(PROJECT_DIR), capture_output=True)
            outcome.update(s=time.perf_counter() - started, code=proc.returncode,
                           out=proc.stdout.decode()[-2000:], err=proc.stderr.decode()[-2000:])
            proc_done.set()

        thread = threading.Thread(target=backup_process)
        during_started = time.perf_counter()
        thread.start()
        during = await writer.run_until(proc_done.is_set)
        during_s = time.perf_counter() - during_started
        thread.join()
        size_after = (data_dir / LMDB_SUBDIR / "data.mdb").stat().st_size
    finally:
        await store.close()
    if outcome.get("code") != 0:
        raise RuntimeError(f"backup under writes failed: {outcome}")
    return {"alone": _latency_row(alone, alone_s), "during_backup": _latency_row(during, during_s),
            "backup_cli_s": round(outcome["s"], 3), "backup_output": outcome["out"],
            "file_growth_bytes": size_after - size_before,
            "file_growth_alone_bytes": size_before - size_start}


def run_writes(restored: Path, dim: int, work: Path) -> Dict[str, Any]:
    return asyncio.run(_writes(restored, dim, work / "under-writes.tar"))


# ============================================================== report

def backup_table(results: Dict[int, Dict[str, Any]]) -> str:
    rows = []
    for dim, r in results.items():
        b, rs = r["backup"], r["restore"]
        rows.append((
            f"{dim}-d", f"{mib(b['live_data_bytes']):.0f}",
            f"{mib(b['plain']['archive_bytes']):.0f}",
            b["plain"]["s"]["median"], b["plain"]["copy_s"]["median"], b["cold"]["s"],
            f"{mib(b['gzip1']['archive_bytes']):.0f} / {b['gzip1']['s']:.1f}",
            f"{mib(b['gzip6']['archive_bytes']):.0f} / {b['gzip6']['s']:.1f}",
            rs["fresh_s"]["median"], rs["over_existing_s"], rs["gzip1_s"]))
    return markdown_table(
        ("faces", "live data.mdb MiB", "archive MiB", "backup s", "of which copy s",
         "backup s (cold cache)", "gzip -1 MiB / s", "gzip -6 MiB / s", "restore s (empty dir)",
         "restore s (over a store)", "restore s (gzip -1)"), rows)


def writes_table(results: Dict[int, Dict[str, Any]]) -> str:
    rows = []
    for dim, r in results.items():
        w = r.get("writes")
        if not w:
            continue
        for phase in ("alone", "during_backup"):
            p = w[phase]
            rows.append((f"{dim}-d", phase.replace("_", " "), p["writes"], p["per_s"],
                         p["p50_ms"], p["p99_ms"], p["max_ms"],
                         w["backup_cli_s"] if phase == "during_backup" else "—"))
    return markdown_table(("faces", "writer", "writes", "per s", "p50 ms", "p99 ms", "max ms",
                           "backup CLI s"), rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--faces", default="100k")
    parser.add_argument("--dims", default="512,128")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-writes", dest="writes", action="store_false",
                        help="skip the section with a concurrent writer")
    parser.add_argument("--quick", action="store_true", help="20k faces, dim 128, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.faces, args.dims, args.repeats = "20k", "128", 1
    n = parse_size(args.faces)
    dims = [int(d) for d in args.dims.split(",")]

    facts = machine()
    payload: Dict[str, Any] = {"machine": facts, "args": vars(args), "dims": {}}
    print(f"# Backup and restore benchmark\n\nMachine: {describe_machine(facts)}\n")
    results: Dict[int, Dict[str, Any]] = {}
    for dim in dims:
        data_dir, built_s = ensure_fixture(n, dim)
        if built_s is not None:
            print(f"(fixture {size_label(n)} x {dim} written in {built_s:.1f} s)\n")
        work = Path(tempfile.mkdtemp(prefix=f"backup-bench-d{dim}-", dir=str(RESULTS_DIR)))
        try:
            cpu = CpuShare().start()
            r: Dict[str, Any] = {"faces": n}
            r["backup"] = run_backup(data_dir, work, dim, args.repeats)
            r["restore"] = run_restore(work / "plain.tar", work, dim, args.repeats)
            if args.writes:
                r["writes"] = run_writes(Path(r["restore"]["restored_dir"]), dim, work)
            r["cpu"] = cpu.stop()
        finally:
            shutil.rmtree(str(work), ignore_errors=True)
        results[dim] = r
        payload["dims"][str(dim)] = r
    print(f"## {size_label(n)} faces (one identity each, 10 groups; no photos, no events)\n")
    print(backup_table(results) + "\n")
    others = [r["cpu"].get("others_cores") for r in results.values()]
    print(f"Medians of {args.repeats} warm runs; other processes used {others} cores.\n")
    if args.writes:
        print("## A writer (one fsynced face per transaction) while another process backs up\n")
        print(writes_table(results) + "\n")
        for dim, r in results.items():
            w = r["writes"]
            print(f"{dim}-d: data.mdb grew {mib(w['file_growth_bytes']):.1f} MiB during the "
                  f"backup ({w['during_backup']['writes']} writes), "
                  f"{mib(w['file_growth_alone_bytes']):.1f} MiB before it "
                  f"({w['alone']['writes']} writes)")
        print()
    path = save_results("backup", payload)
    print(f"Results: {path.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
