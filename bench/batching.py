"""Batching: throughput and latency of cross-request micro-batching (``BatchingBackend``)
against one run per call (batch 1), for 1, 4 and 16 concurrent clients, on the CPU
profile's real models.

The CPU models ship with a fixed batch of 1, so this script first writes a copy of each
prepared ONNX file with a dynamic batch axis (graph inputs and outputs get a symbolic
first dimension, the recorded intermediate shapes are dropped, and Reshape targets that
spell out a batch of 1, as YuNet's heads do, take the input's batch instead). The copy is
checked: a batch of 4 must give the same outputs as 4 runs of 1, and a batch of 1 the
same as the shipped model.

Contenders, same session settings (ONNX Runtime, ``--threads`` intra-op threads, no
spinning, as the daemon's ``OnnxBackend``), same inputs (real letterboxed photos for the
detector, real aligned faces for the recognizer, from tests/data):

* per call: every client calls one shared session with its own sample (batch 1);
  ONNX Runtime runs concurrent calls side by side.
* one at a time: the same, but one call at a time (a lock), as the daemon's CPU default of
  one worker serves requests; the fair baseline for batching, which also runs one
  inference at a time.
* batched: every client calls a ``BatchingBackend`` (one attached client each) around one
  session: up to ``--max-batch`` samples per run, waiting at most ``--max-wait-ms`` for
  company while calls overlap (the daemon's settings).

Each client is a thread in a closed loop (next request as soon as the last answered).
Per cell (model x clients) the contenders take turns for ``--rounds`` rounds of
``--seconds`` each, the order reversed every round, after an untimed warm-up.

Run (from the project root):
    .venv/bin/python bench/batching.py              # both models, 2 rounds x 4 s per cell
    .venv/bin/python bench/batching.py --quick      # 1 round x 1.5 s
    .venv/bin/python bench/batching.py --models recognizer --clients 1,4,16,32
Prints markdown; writes bench/results/batching-*.json.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import cv2
import numpy as np

from measure import (PROJECT_DIR, RESULTS_DIR, TEST_DATA_DIR, CpuShare, Stats, describe_machine,
                     machine, markdown_table, ratio, save_results)

from sophon_face.backends.base import Backend
from sophon_face.backends.batching import BatchingBackend
from sophon_face.backends.onnx import OnnxBackend
from sophon_face.manifest.schema import ModelSpec
from sophon_face.pipeline.align import align_face
from sophon_face.pipeline.detector import Detector, blob_from_bgr, letterbox
from sophon_face.workers.models import prepare_models

MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"
MODEL_CACHE = RESULTS_DIR / "models"
PHOTOS = ["ardern_2018.jpg", "ardern_2022.jpg", "astronaut_collins.jpg", "macron_2014.jpg",
          "macron_2025.jpg", "obama_senate.jpg", "sunak.jpg", "solvay_1927_group.jpg"]
#: Pause between contenders, so neither pays for the other's last runs.
PAUSE_S = 0.1
log = logging.getLogger("bench.batching")


# ---------------------------------------------------------------- the dynamic-batch copy

def dynamic_batch_copy(source: Path, out_dir: Path) -> Path:
    """``source`` with a symbolic batch axis, written to ``out_dir`` (see the module doc)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if not dims:
            raise ValueError(f"{source.name}: {value.name} has no shape")
        dims[0].ClearField("dim_value")
        dims[0].dim_param = "batch"
    # Shapes inferred at export time for batch 1; ONNX Runtime infers them again.
    del graph.value_info[:]
    reshape_targets = {node.input[1] for node in graph.node
                       if node.op_type == "Reshape" and len(node.input) > 1}
    changed = []
    for i, init in enumerate(graph.initializer):
        if init.name not in reshape_targets:
            continue
        shape = numpy_helper.to_array(init)
        # [1, -1, 4]: the batch written out as 1. 0 copies the input's dimension (Reshape's
        # allowzero defaults to 0); weight reshapes have no -1 and are left alone.
        if shape.ndim == 1 and len(shape) >= 2 and shape[0] == 1 and -1 in shape[1:]:
            fixed = shape.copy()
            fixed[0] = 0
            graph.initializer[i].CopyFrom(numpy_helper.from_array(fixed, init.name))
            changed.append(init.name)
    onnx.checker.check_model(model)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.dynbatch.onnx"
    onnx.save(model, str(target))
    log.info("%s: dynamic batch axis; Reshape targets now batch-preserving: %s",
             target.name, changed or "none")
    return target


def check_dynamic_copy(fixed: Path, dynamic: Path, samples: np.ndarray, threads: int) -> Dict[str, float]:
    """Largest relative difference: batch 4 vs 4 x batch 1 of the copy; the copy's batch 1
    vs the shipped model."""
    shipped, copy = OnnxBackend(str(fixed), threads), OnnxBackend(str(dynamic), threads)
    name = copy.input_specs()[0].name
    batch = samples[:4]
    together = copy.run({name: batch})
    alone = [copy.run({name: batch[i:i + 1]}) for i in range(len(batch))]
    original = [shipped.run({name: batch[i:i + 1]}) for i in range(len(batch))]

    def worst(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-12))

    result = {
        "batch4_vs_1x4": max(worst(together[o], np.concatenate([r[o] for r in alone]))
                             for o in together),
        "batch1_vs_shipped": max(worst(np.concatenate([r[o] for r in alone]),
                                       np.concatenate([r[o] for r in original])) for o in together),
        "batch": len(batch),
    }
    shipped.close()
    copy.close()
    return result


def per_image_ms(model_path: Path, samples: np.ndarray, threads: int, repeats: int) -> Dict[str, Any]:
    """Milliseconds per image of one run at batch 1, 2 and 4, the sizes taking turns run by
    run: what batching can gain at best on this runtime."""
    backend = OnnxBackend(str(model_path), threads)
    name = backend.input_specs()[0].name
    batches = {n: np.ascontiguousarray(np.resize(samples, (n,) + samples.shape[1:])) for n in (1, 2, 4)}
    for feeds in batches.values():
        backend.run({name: feeds})  # warm: the first run of a shape plans its memory
    times: Dict[int, List[float]] = {n: [] for n in batches}
    cpu = CpuShare().start()
    for _ in range(repeats):
        for n, feeds in batches.items():
            started = time.perf_counter()
            backend.run({name: feeds})
            times[n].append((time.perf_counter() - started) * 1000.0 / n)
    share = cpu.stop()
    backend.close()
    return {"ms_per_image": {str(n): Stats.of(v).as_dict(3) for n, v in times.items()}, "cpu": share}


# ---------------------------------------------------------------- inputs

def real_inputs(models: Any) -> Dict[str, np.ndarray]:
    """Letterboxed photos (detector) and aligned faces (recognizer), as model blobs."""
    det_spec: ModelSpec = models.manifest.detector
    rec_spec: ModelSpec = models.manifest.recognizer
    detector = Detector(OnnxBackend(str(models.detector_path), 2), det_spec)
    photos, faces = [], []
    for name in PHOTOS:
        image = cv2.imread(str(TEST_DATA_DIR / name))
        canvas, _sx, _sy = letterbox(image, det_spec.input_size)
        photos.append(canvas)
        faces += [align_face(image, face.landmarks) for face in detector.detect(image)[:4]]
    detector.close()
    size = tuple(rec_spec.input_size)
    faces = [f if f.shape[1::-1] == size else cv2.resize(f, size) for f in faces]
    return {"detector": blob_from_bgr(photos, det_spec), "recognizer": blob_from_bgr(faces, rec_spec)}


# ---------------------------------------------------------------- the load

def closed_loop(call: Callable[[int, np.ndarray], Any], clients: int, samples: np.ndarray,
                seconds: float) -> Tuple[List[float], float]:
    """``clients`` threads calling back to back for ``seconds``; latencies (ms) and the
    wall time from the common start to the last answer."""
    latencies: List[List[float]] = [[] for _ in range(clients)]
    errors: List[BaseException] = []
    barrier = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        mine = latencies[i]
        k = i
        barrier.wait()
        try:
            while time.perf_counter() < stop_at[0]:
                sample = samples[k % len(samples)][None]
                k += clients
                started = time.perf_counter()
                call(i, sample)
                mine.append((time.perf_counter() - started) * 1000.0)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,), name=f"client-{i}") for i in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    wall_s = time.perf_counter() - started
    if errors:
        raise errors[0]
    return [v for per_client in latencies for v in per_client], wall_s


class OneAtATime:
    """A backend whose calls take turns: the daemon's single worker, without batching."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._lock = threading.Lock()
        self.runtime = backend.runtime

    def input_specs(self) -> Any:
        return self._backend.input_specs()

    def output_names(self) -> Any:
        return self._backend.output_names()

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        with self._lock:
            return self._backend.run(feeds)

    def close(self) -> None:
        self._backend.close()


class Contender:
    """One way of serving the clients' calls: ``call(client_index, sample)``."""

    def __init__(self, name: str, backend: Backend, clients: int) -> None:
        self.name = name
        self.backend = backend
        self.input_name = backend.input_specs()[0].name
        self.views: List[Backend] = ([backend.attach() for _ in range(clients)]  # type: ignore[attr-defined]
                                     if isinstance(backend, BatchingBackend) else [backend] * clients)

    def call(self, i: int, sample: np.ndarray) -> Any:
        return self.views[i].run({self.input_name: sample})

    def batches(self) -> Tuple[int, int]:
        if isinstance(self.backend, BatchingBackend):
            stats = self.backend.stats()
            return stats.batches, stats.samples
        return 0, 0

    def close(self) -> None:
        for view in self.views:
            if view is not self.backend:
                view.close()
        self.backend.close()


def bench_cell(model_path: Path, samples: np.ndarray, clients: int, args: argparse.Namespace) -> Dict[str, Any]:
    threads = args.threads
    contenders = [
        Contender("per call", OnnxBackend(str(model_path), threads), clients),
        Contender("one at a time", OneAtATime(OnnxBackend(str(model_path), threads)), clients),
        Contender("batched", BatchingBackend(lambda: OnnxBackend(str(model_path), threads),
                                             max_batch=args.max_batch,
                                             max_wait_s=args.max_wait_ms / 1000.0,
                                             name=model_path.stem), clients),
    ]
    samples_ms: Dict[str, List[float]] = {c.name: [] for c in contenders}
    wall: Dict[str, float] = {c.name: 0.0 for c in contenders}
    batch_counts: Dict[str, List[int]] = {c.name: [0, 0] for c in contenders}
    cpu = CpuShare().start()
    try:
        for round_index in range(args.rounds):
            # Rotate who goes first, so no contender always follows the same neighbour.
            shift = round_index % len(contenders)
            order = contenders[shift:] + contenders[:shift]
            for contender in order:
                closed_loop(contender.call, clients, samples, args.warmup_s)
                before = contender.batches()
                latencies, wall_s = closed_loop(contender.call, clients, samples, args.seconds)
                after = contender.batches()
                samples_ms[contender.name] += latencies
                wall[contender.name] += wall_s
                batch_counts[contender.name][0] += after[0] - before[0]
                batch_counts[contender.name][1] += after[1] - before[1]
                time.sleep(PAUSE_S)
        share = cpu.stop()
    finally:
        for contender in contenders:
            contender.close()
    result: Dict[str, Any] = {"clients": clients, "cpu": share}
    for name, latencies in samples_ms.items():
        batches, batched_samples = batch_counts[name]
        result[name] = {
            "requests": len(latencies),
            "throughput_per_s": len(latencies) / wall[name] if wall[name] else float("nan"),
            "latency_ms": Stats.of(latencies).as_dict(3),
            "p50_ms": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "p99_ms": float(np.percentile(latencies, 99)) if latencies else float("nan"),
            "mean_batch": ratio(batched_samples, batches) if batches else 1.0,
        }
    for name in samples_ms:
        result[name]["vs_per_call"] = ratio(result[name]["throughput_per_s"],
                                            result["per call"]["throughput_per_s"])
    log.info("%s, %d clients: per call %.1f/s, one at a time %.1f/s, batched %.1f/s, mean "
             "batch %.2f, others' cores %.2f", model_path.stem.split(".")[0], clients,
             result["per call"]["throughput_per_s"], result["one at a time"]["throughput_per_s"],
             result["batched"]["throughput_per_s"], result["batched"]["mean_batch"],
             share.get("others_cores", float("nan")))
    return result


def same_answers(model_path: Path, samples: np.ndarray, args: argparse.Namespace) -> float:
    """Largest relative difference between a batched and a per-call run of each sample,
    with 4 clients at once (so the batched ones really share runs)."""
    per_call = OnnxBackend(str(model_path), args.threads)
    batched = BatchingBackend(lambda: OnnxBackend(str(model_path), args.threads),
                              max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000.0)
    name = per_call.input_specs()[0].name
    worst = [0.0]

    def client(i: int, sample: np.ndarray) -> None:
        got = batched.run({name: sample})
        want = per_call.run({name: sample})
        for out in want:
            scale = max(float(np.max(np.abs(want[out]))), 1e-12)
            worst[0] = max(worst[0], float(np.max(np.abs(got[out] - want[out]))) / scale)

    try:
        closed_loop(client, 4, samples, 0.5)
    finally:
        batched.close()
        per_call.close()
    return worst[0]


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--models", default="recognizer,detector")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None)
    parser.add_argument("--warmup-s", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2,
                        help="ONNX Runtime intra-op threads per session (default: the cores)")
    parser.add_argument("--max-batch", type=int, default=4, help="the SE5 bmodels' largest stage")
    parser.add_argument("--max-wait-ms", type=float, default=3.0, help="the daemon's batch_wait_ms")
    args = parser.parse_args()
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.seconds = args.seconds or (1.5 if args.quick else 4.0)
    roles = [r.strip() for r in args.models.split(",") if r.strip()]
    client_counts = [int(c) for c in args.clients.split(",")]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    facts = machine()

    models = prepare_models(MANIFEST, MODEL_CACHE)
    inputs = real_inputs(models)
    shipped = {"detector": models.detector_path, "recognizer": models.recognizer_path}
    results: Dict[str, Any] = {}
    for role in roles:
        samples = inputs[role]
        dynamic = dynamic_batch_copy(shipped[role], MODEL_CACHE)
        check = check_dynamic_copy(shipped[role], dynamic, samples, args.threads)
        agree = same_answers(dynamic, samples, args)
        sizes = per_image_ms(dynamic, samples, args.threads, 5 if args.quick else 20)
        log.info("%s: %d inputs %s; dynamic copy: batch 4 vs 4 x 1 differ by %.2g, batch 1 vs "
                 "shipped by %.2g (relative); batched vs per call by %.2g", role, len(samples),
                 samples.shape[1:], check["batch4_vs_1x4"], check["batch1_vs_shipped"], agree)
        cells = []
        for clients in client_counts:
            cells.append(bench_cell(dynamic, samples, clients, args))
        results[role] = {"inputs": len(samples), "input_shape": list(samples.shape[1:]),
                         "dynamic_copy": dynamic.name, "dynamic_check": check,
                         "batch_sizes": sizes,
                         "batched_vs_per_call_max_rel_diff": agree, "cells": cells}

    print(f"\n{describe_machine(facts)}\n")
    print(f"ONNX Runtime {args.threads} intra-op threads per session; batched: max batch "
          f"{args.max_batch}, max wait {args.max_wait_ms:g} ms; {args.rounds} round(s) x "
          f"{args.seconds:g} s per contender and cell; closed-loop clients\n")
    rows = []
    for role, result in results.items():
        for cell in result["cells"]:
            for name in ("per call", "one at a time", "batched"):
                r = cell[name]
                rows.append([role, cell["clients"], name, r["throughput_per_s"], r["p50_ms"],
                             r["p99_ms"], r["mean_batch"],
                             r["vs_per_call"] if name != "per call" else "",
                             cell["cpu"].get("others_cores", float("nan"))])
    print(markdown_table(["model", "clients", "contender", "requests/s", "p50 ms", "p99 ms",
                          "mean batch", "× per call", "others' cores"], rows))
    print("\none run at batch 1, 2, 4, sizes taking turns (ms per image, median / p90)\n")
    print(markdown_table(["model", "batch 1", "batch 2", "batch 4", "batch 4 / batch 1", "others' cores"], [
        [role] + [f"{r['batch_sizes']['ms_per_image'][n]['median']:.1f} / "
                  f"{r['batch_sizes']['ms_per_image'][n]['p90']:.1f}" for n in ("1", "2", "4")]
        + [ratio(r["batch_sizes"]["ms_per_image"]["4"]["median"],
                 r["batch_sizes"]["ms_per_image"]["1"]["median"]),
           r["batch_sizes"]["cpu"].get("others_cores", float("nan"))]
        for role, r in results.items()]))
    for role, result in results.items():
        check = result["dynamic_check"]
        print(f"\n{role}: {result['inputs']} real inputs {tuple(result['input_shape'])}; dynamic "
              f"copy: batch 4 vs 4 x 1 max rel. diff {check['batch4_vs_1x4']:.2g}, batch 1 vs "
              f"shipped {check['batch1_vs_shipped']:.2g}; batched vs per-call answers "
              f"{result['batched_vs_per_call_max_rel_diff']:.2g}")
    path = save_results("batching", {"machine": facts, "settings": vars(args), "results": results})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
