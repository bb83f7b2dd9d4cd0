"""Bulk import and export throughput: ``sophon-face import`` / ``export`` as an operator runs them.

Galleries:

``devset``      /work/shared/data/devset as it lies (16 people, 63 photos, 400x400 up to
                3061x4600 px, one WebP among the JPEGs), read in place.
``generated``   1,000 identities with one photo each, made from the six tests/data portraits
                that pass the default quality check: mirrored or not, cropped by 0-9 % a side,
                brightness -24..+24, re-encoded at JPEG quality 85/90/95, so no two photos are
                the same bytes. Written to a temporary folder and deleted afterwards.

Modes, each with 1 and N inference workers (N = the cores; workers x ONNX Runtime intra-op
threads = the cores, as conf.yaml asks):

``http``        a daemon subprocess on a fresh data directory, the import in this process over
                HTTP with as many requests in flight as the daemon has workers (the CLI's
                default); the client shares the cores with the daemon, as on a box.
``direct``      the importer builds the daemon's services in this process on a fresh data
                directory (``--data-dir``): model load and warm-up are timed apart ("setup").

Every import runs with the CLI's defaults (``fiqa_level`` high, a journal). faces/s counts
registered faces over the import's own wall time (source read, groups, every photo; not the
daemon's or the models' start). Then each generated gallery is exported, over HTTP from the
daemon and directly from a stopped store: time and size on disk.

Run (from the project root):
    .venv/bin/python bench/import_export.py            # devset + 1,000 identities, ~5 min
    .venv/bin/python bench/import_export.py --quick    # devset + 200 identities, ~2 min
    .venv/bin/python bench/import_export.py --identities 500 --workers 1,2
Prints markdown; writes bench/results/import_export-*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np

from daemon import DaemonProcess
from measure import (DEVSET_DIR, MODEL_CACHE, RESULTS_DIR, TEST_DATA_DIR, CpuShare,
                     describe_machine, machine, markdown_table, mib, save_results)

from sophon_face.config import Config, config_from_mapping
from sophon_face.tools.bulk_import import Importer, ImportOptions
from sophon_face.tools.export import run_export
from sophon_face.tools.import_sources import read_source
from sophon_face.tools.journal import Journal
from sophon_face.tools.progress import Progress
from sophon_face.tools.targets import HttpTarget, open_direct

#: tests/data portraits that pass fiqa_level high (the others are too small or faceless).
PORTRAITS = ("ardern_2018.jpg", "ardern_2022.jpg", "macron_2025.jpg", "obama_senate.jpg",
             "sunak.jpg", "gauss.png")
log = logging.getLogger("bench.import_export")


# ---------------------------------------------------------------- galleries

def generate(root: Path, count: int) -> Path:
    """``count`` identities of one distinct photo each, from the portraits."""
    images = [cv2.imread(str(TEST_DATA_DIR / name), cv2.IMREAD_COLOR) for name in PORTRAITS]
    for index in range(count):
        image = images[index % len(images)]
        variant = index // len(images)
        if variant % 2:
            image = cv2.flip(image, 1)
        margin = (variant // 2) % 4 * 0.03
        h, w = image.shape[:2]
        image = image[int(h * margin):h - int(h * margin), int(w * margin):w - int(w * margin)]
        shift = ((variant // 8) % 5 - 2) * 12
        image = np.clip(image.astype(np.int16) + shift, 0, 255).astype(np.uint8)
        quality = (85, 90, 95)[(variant // 40) % 3]
        ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        folder = root / f"gen{index:05d}"
        folder.mkdir(parents=True)
        (folder / "0.jpg").write_bytes(data.tobytes())
    return root


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- the daemon

def daemon_settings(data_dir: Path, workers: int, threads: int) -> Dict[str, Any]:
    """The daemon's settings in both modes (over HTTP, DaemonProcess adds the port)."""
    return {
        "server": {"ws_port": 0},
        "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
        "models": {"cache_dir": str(MODEL_CACHE)},
        "workers": {"count": workers, "intra_op_threads": threads},
        "logging": {"level": "WARNING"},
    }


def direct_config(data_dir: Path, workers: int, threads: int) -> Config:
    return config_from_mapping(daemon_settings(data_dir, workers, threads))


# ---------------------------------------------------------------- one run

async def _import(source: Path, target: Any, workers: int, journal_path: Path) -> Dict[str, Any]:
    started = time.perf_counter()
    plan = read_source(source)
    journal = Journal.open(journal_path, str(source), target.name, resume=False)
    try:
        progress = Progress("import", plan.photo_count, bar=False, interval_s=1e9)
        summary = await Importer(plan, target, journal, ImportOptions(concurrency=workers),
                                 progress).run()
    finally:
        journal.close()
    wall_s = time.perf_counter() - started
    codes: Dict[str, int] = {}
    for failure in summary.failures:
        codes[failure.code] = codes.get(failure.code, 0) + 1
    return {"photos": plan.photo_count, "faces": summary.registered, "failed": codes,
            "wall_s": round(wall_s, 2), "faces_per_s": round(summary.registered / wall_s, 2),
            "photos_per_s": round(plan.photo_count / wall_s, 2)}


async def _export(target: Any, out_dir: Path, workers: int) -> Dict[str, Any]:
    started = time.perf_counter()
    summary = await run_export(target, out_dir, workers,
                               Progress("export", 0, bar=False, interval_s=1e9))
    wall_s = time.perf_counter() - started
    return {"identities": summary.identities, "faces": summary.faces,
            "photo_mib": round(mib(summary.photo_bytes), 2),
            "directory_mib": round(mib(summary.directory_bytes), 2),
            "wall_s": round(wall_s, 2), "faces_per_s": round(summary.faces / wall_s, 1)}


def run_http(name: str, source: Path, workers: int, threads: int, work: Path,
             export: bool) -> Dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"http-{name}-{workers}-", dir=work))
    started = time.perf_counter()
    daemon = DaemonProcess(root, daemon_settings(root / "data", workers, threads))
    setup_s = time.perf_counter() - started
    try:
        async def go() -> Dict[str, Any]:
            async with HttpTarget(daemon.url, workers) as target:
                share = CpuShare([daemon.process.pid]).start()
                result = await _import(source, target, workers, root / "journal.jsonl")
                result["cpu"] = share.stop()
                if export:
                    result["export"] = await _export(target, root / "export", 4)
                return result
        result = asyncio.run(go())
    finally:
        daemon.stop()
    if export:
        async def export_direct() -> Dict[str, Any]:
            async with open_direct(direct_config(daemon.data_dir, 1, threads),
                                   inference=False) as target:
                return await _export(target, root / "export-direct", 4)
        result["export_direct"] = asyncio.run(export_direct())
        result["store_mib"] = round(mib(tree_bytes(daemon.data_dir / "lmdb")), 2)
    shutil.rmtree(root, ignore_errors=True)
    return dict(result, gallery=name, mode="http", workers=workers, threads=threads,
                setup_s=round(setup_s, 2))


def run_direct(name: str, source: Path, workers: int, threads: int, work: Path) -> Dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"direct-{name}-{workers}-", dir=work))

    async def go() -> Dict[str, Any]:
        started = time.perf_counter()
        async with open_direct(direct_config(root / "data", workers, threads)) as target:
            setup_s = time.perf_counter() - started
            share = CpuShare().start()
            result = await _import(source, target, workers, root / "journal.jsonl")
            result["cpu"] = share.stop()
        return dict(result, setup_s=round(setup_s, 2))

    try:
        result = asyncio.run(go())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return dict(result, gallery=name, mode="direct", workers=workers, threads=threads)


# ---------------------------------------------------------------- report

def import_table(rows: Sequence[Dict[str, Any]]) -> str:
    return markdown_table(
        ("gallery", "mode", "workers x threads", "photos", "faces", "failed", "import s",
         "faces/s", "photos/s", "setup s", "others' cores"),
        [(r["gallery"], r["mode"], f"{r['workers']} x {r['threads']}", r["photos"], r["faces"],
          ", ".join(f"{k} {v}" for k, v in r["failed"].items()) or "—", r["wall_s"],
          r["faces_per_s"], r["photos_per_s"], r["setup_s"], r["cpu"].get("others_cores"))
         for r in rows])


def export_table(rows: Sequence[Dict[str, Any]]) -> str:
    out = []
    for r in rows:
        for mode, key in (("http", "export"), ("direct", "export_direct")):
            if key in r:
                e = r[key]
                out.append((r["gallery"], mode, e["identities"], e["faces"], e["photo_mib"],
                            e["directory_mib"], r.get("store_mib"), e["wall_s"],
                            e["faces_per_s"]))
    return markdown_table(("gallery", "export", "identities", "photos", "photos MiB",
                           "export folder MiB", "LMDB store MiB", "s", "photos/s"), out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=1000,
                        help="generated identities (default 1000)")
    parser.add_argument("--workers", default=f"1,{os.cpu_count() or 2}",
                        help="inference worker counts to compare (default 1,<cores>)")
    parser.add_argument("--devset", type=Path, default=DEVSET_DIR)
    parser.add_argument("--quick", action="store_true", help="200 generated identities")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    count = 200 if args.quick else args.identities
    cores = os.cpu_count() or 2
    worker_counts = [int(w) for w in args.workers.split(",")]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    facts = machine()
    print(describe_machine(facts), file=sys.stderr)

    rows: List[Dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-import-", dir=RESULTS_DIR))
    try:
        galleries = []
        if args.devset.is_dir():
            galleries.append(("devset", args.devset))
        else:
            print(f"devset not found at {args.devset}: skipped", file=sys.stderr)
        started = time.perf_counter()
        generated = generate(work / "generated", count)
        print(f"generated {count} photos ({mib(tree_bytes(generated)):.1f} MiB) in "
              f"{time.perf_counter() - started:.1f} s", file=sys.stderr)
        galleries.append((f"generated {count}", generated))
        for name, source in galleries:
            for workers in worker_counts:
                threads = max(1, cores // workers)
                for mode in ("http", "direct"):
                    if mode == "http":
                        row = run_http(name, source, workers, threads, work,
                                       export=name.startswith("generated") and workers == max(
                                           worker_counts))
                    else:
                        row = run_direct(name, source, workers, threads, work)
                    rows.append(row)
                    print(f"  {name} {mode} {workers}x{threads}: {row['faces']} faces in "
                          f"{row['wall_s']} s, {row['faces_per_s']} faces/s", file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    payload = {"machine": facts, "identities": count, "imports": rows}
    path = save_results("import_export", payload)
    print("\n## Import\n\n" + import_table(rows))
    print("\n## Export\n\n" + export_table(rows))
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
