"""Prototypes of alternatives to today's Gallery, measured beside it (evidence for proposals).

Nothing here is used by the daemon. Three sections:

``search``     top-1 search variants on the same data and probes, taking turns probe by probe,
               each once on an otherwise idle process and once while one ONNX Runtime
               inference loop (the daemon's worker, 2 intra-op threads) keeps the cores busy:
                 gallery        today's ``Gallery.search``
                 blas2 / blas1  ``np.dot(matrix, probe, out=scores)`` + argmax with OpenBLAS
                                on 2 threads / on 1 thread (set at run time, as threadpoolctl
                                would)
                 split2         two Python threads, each a BLAS-1-thread gemv over half the
                                rows, best of the two halves
                 faiss_flat     faiss IndexFlatIP (float32)
                 faiss_fp16     faiss IndexScalarQuantizer QT_fp16: half the bytes to stream
                 faiss_sq8      faiss IndexScalarQuantizer QT_8bit (trained per dimension): a
                                quarter of the bytes, no longer exact (agreement reported)
``memory``     the cold-start fixture of bench/search.py loaded in a fresh process: its
               RssAnon delta, and the bytes reachable from each attribute of the gallery's
               library (whatever attributes it has today; diagnostics only).
``coldstart``  the same fixture: a bare cursor walk over the face records (the floor for
               any loader reading this layout) against ``load_from_txn``, and a cProfile
               of the load by own time.
``prototype``  ``CompactGallery``: what a leaner library (16-byte face keys, int32 identity
               index per row, groups as int32 arrays) costs to rebuild from the same
               fixture and how much memory it keeps, with its answers checked against
               today's Gallery.

Run: .venv/bin/python bench/gallery_variants.py [--only search,memory,coldstart]
     [--sizes 50k,1M] [--dims 128,512] [--probes 100] [--fixture-faces 1M]
(memory and coldstart need the fixture: bench/search.py --only coldstart builds it.)
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from measure import (PROJECT_DIR, RESULTS_DIR, CpuShare, Stats, describe_machine, machine,
                     markdown_table, memory_of, mib, save_results)
from search import (fixture_dir, gallery_from_matrix, parse_size, probes_for, random_unit_rows,
                    size_label, take_turns)


class BlasThreads:
    """OpenBLAS's thread count, read and set at run time through its C API."""

    SETTERS = ("openblas_set_num_threads", "openblas_set_num_threads64_",
               "scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads")
    GETTERS = ("openblas_get_num_threads", "openblas_get_num_threads64_",
               "scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads")

    def __init__(self) -> None:
        self._set: Optional[Callable[[int], None]] = None
        self._get: Optional[Callable[[], int]] = None
        with open("/proc/self/maps", "r", encoding="utf-8") as fh:
            libs = sorted({line.split()[-1] for line in fh if "openblas" in line.lower()})
        for path in libs:
            lib = ctypes.CDLL(path)
            for name in self.SETTERS:
                if hasattr(lib, name) and self._set is None:
                    self._set = getattr(lib, name)
            for name in self.GETTERS:
                if hasattr(lib, name) and self._get is None:
                    self._get = getattr(lib, name)

    @property
    def available(self) -> bool:
        return self._set is not None

    def get(self) -> int:
        return int(self._get()) if self._get is not None else -1

    def set(self, threads: int) -> None:
        if self._set is not None:
            self._set(int(threads))


class InferenceLoad:
    """The daemon's inference worker, busy: YuNet on a 640x640 blob in a loop."""

    def __init__(self, threads: int = 2) -> None:
        import onnxruntime as ort

        from sophon_face.workers.models import prepare_models

        models = prepare_models(PROJECT_DIR / "models" / "cpu.yaml", RESULTS_DIR / "models")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(models.detector_path), sess_options=options,
                                            providers=["CPUExecutionProvider"])
        self.feed = {self.session.get_inputs()[0].name:
                     np.random.default_rng(0).uniform(0, 255, (1, 3, 640, 640)).astype(np.float32)}
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.runs = 0

    def __enter__(self) -> "InferenceLoad":
        self._stop.clear()
        self.runs = 0
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        time.sleep(0.3)
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.session.run(None, self.feed)
            self.runs += 1

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# ============================================================== search variants

def search_variants(matrix: np.ndarray, blas: BlasThreads) -> Dict[str, Callable[[np.ndarray], int]]:
    import faiss

    n, dim = matrix.shape
    gallery = gallery_from_matrix(matrix)
    scores = np.empty(n, dtype=np.float32)
    flat = faiss.IndexFlatIP(dim)
    flat.add(matrix)
    fp16 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    fp16.train(matrix[:1000])
    fp16.add(matrix)
    sq8 = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
    sq8.train(matrix[:min(n, 20_000)])
    sq8.add(matrix)
    halves = [(0, n // 2), (n // 2, n)]
    half_scores = [np.empty(b - a, dtype=np.float32) for a, b in halves]
    pool = ThreadPoolExecutor(max_workers=2)

    def ours(p: np.ndarray) -> int:
        match = gallery.search(p)
        assert match is not None
        return int(uuid.UUID(match.face_id))

    def gemv(threads: int) -> Callable[[np.ndarray], int]:
        def run(p: np.ndarray) -> int:
            blas.set(threads)
            np.dot(matrix, p, out=scores)
            return int(np.argmax(scores))
        return run

    def split2(p: np.ndarray) -> int:
        blas.set(1)

        def half(i: int) -> Tuple[float, int]:
            a, b = halves[i]
            out = half_scores[i]
            np.dot(matrix[a:b], p, out=out)
            j = int(np.argmax(out))
            return float(out[j]), a + j

        return max(pool.map(half, (0, 1)))[1]

    def faiss_search(index: Any) -> Callable[[np.ndarray], int]:
        def run(p: np.ndarray) -> int:
            return int(index.search(p.reshape(1, -1), 1)[1][0, 0])
        return run

    def with_default_blas(fn: Callable[[np.ndarray], int]) -> Callable[[np.ndarray], int]:
        def run(p: np.ndarray) -> int:
            blas.set(os.cpu_count() or 1)  # OpenBLAS's default: every core
            return fn(p)
        return run

    return {"gallery": with_default_blas(ours), "blas2": gemv(os.cpu_count() or 1),
            "blas1": gemv(1), "split2": split2,
            "faiss_flat": with_default_blas(faiss_search(flat)),
            "faiss_fp16": with_default_blas(faiss_search(fp16)),
            "faiss_sq8": with_default_blas(faiss_search(sq8))}


def time_variants(variants: Dict[str, Callable[[np.ndarray], int]], probes: np.ndarray) -> Dict[str, Any]:
    times, answers = take_turns(list(variants.items()), probes)
    reference = np.array(answers["blas1"])
    return {name: {"ms": Stats.of(times[name]).as_dict(),
                   "agrees": float((np.array(answers[name]) == reference).mean())}
            for name in variants}


def run_search(sizes: Sequence[int], dims: Sequence[int], probe_count: int) -> Dict[str, Any]:
    blas = BlasThreads()
    load = InferenceLoad()
    rows = []
    for dim in dims:
        biggest = random_unit_rows(max(sizes), dim, seed=dim)
        for n in sorted(sizes):
            matrix = biggest[:n]
            probes, _ = probes_for(matrix, probe_count, seed=n + dim)
            variants = search_variants(matrix, blas)
            share = CpuShare().start()
            idle = time_variants(variants, probes)
            idle_cpu = share.stop()
            with load:
                share = CpuShare().start()
                busy = time_variants(variants, probes)
                busy_cpu = share.stop()
            rows.append({"dim": dim, "n": n, "idle": idle, "busy": busy, "idle_cpu": idle_cpu,
                         "busy_cpu": busy_cpu, "inference_runs_during_busy": load.runs})
            print(f"  variants d{dim} {size_label(n)} done", file=sys.stderr)
            del variants
            gc.collect()
        del biggest
        gc.collect()
    blas.set(os.cpu_count() or 1)
    return {"rows": rows, "blas_settable": blas.available}


def search_tables(result: Dict[str, Any]) -> str:
    names = ("gallery", "blas2", "blas1", "split2", "faiss_flat", "faiss_fp16", "faiss_sq8")
    parts = []
    for condition, title in (("idle", "nothing else running in this process"),
                             ("busy", "while one inference loop (2 ORT threads) runs")):
        rows = []
        for r in result["rows"]:
            cells = [r["dim"], size_label(r["n"])]
            for name in names:
                v = r[condition][name]
                cells.append(f"{v['ms']['median']:.3g} / {v['ms']['p90']:.3g}"
                             + ("" if v["agrees"] == 1.0 else f" ({100 * v['agrees']:.0f}% same)"))
            cells.append(r[f"{condition}_cpu"].get("others_cores"))
            rows.append(cells)
        parts.append(f"Median / p90 ms per probe, {title}:\n\n" + markdown_table(
            ("dim", "faces", *names, "others' cores"), rows))
    return "\n\n".join(parts)


# ============================================================== memory breakdown

def deep_size(obj: Any, seen: set) -> int:
    """Bytes reachable from ``obj`` not yet counted in ``seen`` (shared objects count once,
    for the first attribute that reaches them)."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, np.ndarray):
        return size if obj.base is None else size + deep_size(obj.base, seen)
    if isinstance(obj, (str, bytes, bytearray, int, float, bool)) or obj is None:
        return size
    if isinstance(obj, dict):
        return size + sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return size + sum(deep_size(x, seen) for x in obj)
    for slot in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, slot):
            size += deep_size(getattr(obj, slot), seen)
    if hasattr(obj, "__dict__"):
        size += deep_size(vars(obj), seen)
    return size


def memory_child(data_dir: str, dim: int) -> None:
    """In a fresh process: load the fixture's gallery; RssAnon delta and where it goes."""
    import asyncio

    from sophon_face.store.env import Store
    from sophon_face.store.gallery import Gallery

    gc.collect()
    before = memory_of()["anon"]
    gallery = Gallery(dim)
    store = Store(data_dir, gallery=gallery, min_free_bytes=0)

    async def cycle() -> None:
        await store.open()
        await store.close()

    asyncio.run(cycle())
    gc.collect()
    anon = memory_of()["anon"] - before
    library = gallery._lib  # diagnostics only: whatever attributes the library has today
    seen: set = set()
    parts = {name: deep_size(value, seen) for name, value in vars(library).items()}
    print(json.dumps({"n": gallery.count(), "dim": dim, "anon_bytes": anon, "parts": parts}))


def run_memory(n: int, dims: Sequence[int]) -> Dict[str, Any]:
    rows = []
    for dim in dims:
        data_dir = fixture_dir(n, dim)
        if not (data_dir / "complete.json").is_file():
            print(f"  no fixture at {data_dir}; run bench/search.py --only coldstart first",
                  file=sys.stderr)
            continue
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--memory-child",
                               str(data_dir), str(dim)],
                              check=True, capture_output=True, text=True)
        child = json.loads(done.stdout.strip().splitlines()[-1])
        child["raw_bytes"] = child["n"] * dim * 4
        rows.append(child)
        print(f"  memory breakdown d{dim} done", file=sys.stderr)
    return {"rows": rows}


def memory_table(result: Dict[str, Any]) -> str:
    parts = []
    for r in result["rows"]:
        n = r["n"]
        rows = [(name, mib(size), size / n) for name, size in
                sorted(r["parts"].items(), key=lambda kv: -kv[1]) if size >= 1 << 20]
        counted = sum(r["parts"].values())
        rows.append(("sum of the above (getsizeof)", mib(counted), counted / n))
        rows.append(("RssAnon delta of the load", mib(r["anon_bytes"]), r["anon_bytes"] / n))
        rows.append(("raw features (n x D x 4)", mib(r["raw_bytes"]), r["raw_bytes"] / n))
        parts.append(f"d{r['dim']}, {size_label(n)} faces:\n\n" + markdown_table(
            ("Library attribute", "MiB", "bytes/face"), rows))
    return "\n\n".join(parts) or "(no fixture)"


# ============================================================== cold-start profile

def coldstart_child(data_dir: str, dim: int) -> None:
    """In a fresh process: a bare cursor walk over the faces, then ``load_from_txn`` under
    cProfile, in read transactions of the real Store."""
    import asyncio
    import cProfile
    import io
    import pstats

    from sophon_face.store.env import Store, Txn
    from sophon_face.store.gallery import Gallery

    store = Store(data_dir, gallery=None, min_free_bytes=0)
    gallery = Gallery(dim)
    out: Dict[str, Any] = {}

    def walk(txn: Txn) -> int:
        total = 0
        for value in txn.raw.cursor(db=txn.dbs.faces).iternext(keys=False, values=True):
            total += len(value)
        return total

    def timed_load(txn: Txn) -> None:
        started = time.perf_counter()
        gallery.load_from_txn(txn)
        out["load_s"] = time.perf_counter() - started

    def profiled_load(txn: Txn) -> str:
        profile = cProfile.Profile()
        profile.enable()
        gallery.load_from_txn(txn)
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
        return text.getvalue()

    async def cycle() -> None:
        await store.open()
        started = time.perf_counter()
        out["face_bytes"] = await store.read(walk)
        out["walk_s"] = time.perf_counter() - started
        await store.read(timed_load)
        out["profile"] = await store.read(profiled_load)
        await store.close()

    asyncio.run(cycle())
    print(json.dumps(out))


def run_coldstart(n: int, dims: Sequence[int]) -> Dict[str, Any]:
    rows = []
    for dim in dims:
        data_dir = fixture_dir(n, dim)
        if not (data_dir / "complete.json").is_file():
            continue
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--coldstart-child",
                               str(data_dir), str(dim)],
                              check=True, capture_output=True, text=True)
        child = json.loads(done.stdout.strip().splitlines()[-1])
        child.update({"dim": dim, "n": n})
        rows.append(child)
        print(f"  cold-start profile d{dim} done", file=sys.stderr)
    return {"rows": rows}


def coldstart_report(result: Dict[str, Any]) -> str:
    parts = []
    for r in result["rows"]:
        parts.append(f"d{r['dim']}, {size_label(r['n'])} faces: bare cursor walk over the face "
                     f"records {r['walk_s']:.2f} s ({mib(r['face_bytes']):.0f} MiB of values); "
                     f"load_from_txn {r['load_s']:.2f} s (page cache warm). cProfile of the "
                     f"load, by own time:\n\n```\n{_trim_profile(r['profile'])}\n```")
    return "\n\n".join(parts) or "(no fixture)"


def _trim_profile(text: str) -> str:
    lines = text.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


# ============================================================== compact prototype

class CompactGallery:
    """Prototype of a leaner library: per face only its feature row, its 16-byte UUID key
    and an int32 identity index; identity ids once; each group as a sorted int32 array of
    identity indices (no per-identity Python set); face lookups by a sorted key index."""

    def __init__(self, matrix: np.ndarray, face_keys: np.ndarray, row_ident: np.ndarray,
                 ident_ids: List[str], groups: Dict[str, np.ndarray]) -> None:
        self.matrix = matrix
        self.face_keys = face_keys  # (n, 2) big-endian uint64: the UUID, sortable
        self.key_order = np.lexsort((face_keys[:, 1], face_keys[:, 0]))  # for face lookups
        self.row_ident = row_ident
        self.ident_ids = ident_ids
        self.groups = groups

    def search(self, probe: np.ndarray, permission_id: Optional[str] = None) -> Tuple[str, str, float]:
        scores = self.matrix @ probe
        if permission_id is not None:
            scores = np.where(np.isin(self.row_ident, self.groups[permission_id]), scores, -2.0)
        row = int(np.argmax(scores))
        face_id = str(uuid.UUID(bytes=self.face_keys[row].astype(">u8").tobytes()))
        return face_id, self.ident_ids[int(self.row_ident[row])], float(scores[row])


def prototype_load(txn: Any, dim: int) -> CompactGallery:
    """The rebuild a CompactGallery needs, over today's LMDB layout (faces.py: records,
    then the feature blocks in slot order)."""
    from sophon_face.store import faces, feature_blocks, keys

    index = faces.gallery_index(txn)
    order = np.argsort(index.slots, kind="stable")
    order = order[index.dims[order] == dim]
    matrix = np.empty((len(order), dim), dtype=np.float32)
    i = 0
    for chunk in feature_blocks.iter_feature_rows(txn, dim, index.slots[order]):
        matrix[i:i + len(chunk)] = chunk
        i += len(chunk)
    key_bytes = b"".join(index.keys[j] for j in order.tolist())
    identity_of: List[str] = [index.identity_ids[index.identities[j]] for j in order.tolist()]
    rows = memoryview(matrix).cast("B")
    rows.release()
    matrix /= np.sqrt(np.einsum("ij,ij->i", matrix, matrix))[:, None]
    index_of: Dict[str, int] = {}
    row_ident = np.fromiter((index_of.setdefault(x, len(index_of)) for x in identity_of),
                            dtype=np.int32, count=len(identity_of))
    del identity_of
    members: Dict[bytes, List[bytes]] = {}
    db = getattr(txn.dbs, "group_members", None)
    if db is not None:
        for permission_key, identity_key in txn.raw.cursor(db=db).iternext(keys=True, values=True):
            members.setdefault(permission_key, []).append(identity_key)
    groups: Dict[str, np.ndarray] = {}
    for permission_key, identity_keys in members.items():
        permission_id = keys.client_string_from_key(permission_key)
        found = (index_of.get(keys.client_string_from_key(k) or "") for k in identity_keys)
        groups[str(permission_id)] = np.unique(np.fromiter(
            (x for x in found if x is not None), dtype=np.int32))
    face_keys = np.frombuffer(bytes(key_bytes[:i * 16]), dtype=">u8").reshape(-1, 2).astype(np.uint64)
    return CompactGallery(matrix[:i], face_keys, row_ident, list(index_of), groups)


def prototype_child(data_dir: str, dim: int) -> None:
    """In a fresh process: the prototype rebuild of the fixture; time, RssAnon delta, and
    its answers against today's Gallery on a few probes."""
    import asyncio

    from sophon_face.store.env import Store, Txn
    from sophon_face.store.gallery import Gallery

    store = Store(data_dir, gallery=None, min_free_bytes=0)
    out: Dict[str, Any] = {}

    async def cycle() -> CompactGallery:
        await store.open()
        gc.collect()
        before = memory_of()["anon"]
        started = time.perf_counter()
        compact = await store.read(prototype_load, dim)
        out["load_s"] = time.perf_counter() - started
        gc.collect()
        out["anon_bytes"] = memory_of()["anon"] - before
        out["n"] = int(compact.matrix.shape[0])
        reference = Gallery(dim)

        def load_reference(txn: Txn) -> None:
            reference.load_from_txn(txn)

        await store.read(load_reference)
        probes = random_unit_rows(20, dim, seed=5)
        same = 0
        for p in probes:
            mine = compact.search(p, "bench-group-3")
            theirs = await store.read(reference.search_in, p, "bench-group-3")
            same += theirs is not None and mine[0] == theirs.face_id and mine[1] == theirs.identity_id
        out["same_answers_of_20_group_searches"] = same
        await store.close()
        return compact

    asyncio.run(cycle())
    print(json.dumps(out))


def run_prototype(n: int, dims: Sequence[int]) -> Dict[str, Any]:
    rows = []
    for dim in dims:
        data_dir = fixture_dir(n, dim)
        if not (data_dir / "complete.json").is_file():
            continue
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--prototype-child",
                               str(data_dir), str(dim)],
                              check=True, capture_output=True, text=True)
        child = json.loads(done.stdout.strip().splitlines()[-1])
        child.update({"dim": dim, "raw_bytes": child["n"] * dim * 4})
        child["ratio"] = child["anon_bytes"] / child["raw_bytes"]
        rows.append(child)
        print(f"  compact prototype d{dim}: {child['load_s']:.2f} s, {child['ratio']:.2f}x raw",
              file=sys.stderr)
    return {"rows": rows}


def prototype_table(result: Dict[str, Any]) -> str:
    rows = [(r["dim"], size_label(r["n"]), r["load_s"], mib(r["anon_bytes"]), r["ratio"],
             (r["anon_bytes"] - r["raw_bytes"]) / r["n"], f"{r['same_answers_of_20_group_searches']}/20")
            for r in result["rows"]]
    return markdown_table(("dim", "faces", "rebuild s (cache warm)", "resident MiB", "× raw",
                           "bytes/face beyond the feature", "same top-1 as Gallery (group)"), rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="search,memory,coldstart,prototype")
    parser.add_argument("--sizes", default="50k,1M")
    parser.add_argument("--dims", default="128,512")
    parser.add_argument("--probes", type=int, default=100)
    parser.add_argument("--fixture-faces", default="1M",
                        help="the bench/search.py cold-start fixture to analyse")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--coldstart-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--prototype-child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prototype_child:
        prototype_child(args.prototype_child[0], int(args.prototype_child[1]))
        return 0
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return 0
    if args.coldstart_child:
        coldstart_child(args.coldstart_child[0], int(args.coldstart_child[1]))
        return 0
    sections = {s.strip() for s in args.only.split(",")}
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    dims = [int(d) for d in args.dims.split(",")]
    facts = machine()
    payload: Dict[str, Any] = {"machine": facts, "args": vars(args)}
    print(f"# Gallery variants\n\nMachine: {describe_machine(facts)}\n")
    if "search" in sections:
        payload["search"] = run_search(sizes, dims, args.probes)
        print("## Search variants\n")
        print(search_tables(payload["search"]) + "\n")
    fixture_faces = parse_size(args.fixture_faces)
    if "memory" in sections:
        payload["memory"] = run_memory(fixture_faces, dims)
        print("## Where the gallery's memory goes (fixture loaded in a fresh process)\n")
        print(memory_table(payload["memory"]) + "\n")
    if "coldstart" in sections:
        payload["coldstart"] = run_coldstart(fixture_faces, dims)
        print("## Where the gallery rebuild spends its time\n")
        print(coldstart_report(payload["coldstart"]) + "\n")
    if "prototype" in sections:
        payload["prototype"] = run_prototype(fixture_faces, dims)
        print("## Prototype: a compact library rebuilt from today's LMDB layout\n")
        print(prototype_table(payload["prototype"]) + "\n")
    path = save_results("gallery-variants", payload)
    print(f"Results: {path.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
