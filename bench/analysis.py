"""Face analysis: time per face of each optional model (age + gender, mask, RGB liveness),
and what ``search`` costs with ``with_attribute`` and with ``liveness_rgb`` beside plain
``search`` in the same run.

1. Per model: the tests/data portraits' faces (found by the profile's detector), each model
   through the same ``Backend`` seam the daemon uses (ONNX Runtime, 2 threads), median and
   p90 per face over several rounds.
2. ``search`` over HTTP (the daemon in this process, a registered person, duplicate
   suppression off): plain, ``with_attribute: true`` and ``with_liveness_check:
   "liveness_rgb"`` in rotation, call by call, so all three see the same machine.

Run (from the project root):
    .venv/bin/python bench/analysis.py            # 10 rounds, 100 searches each
    .venv/bin/python bench/analysis.py --quick    # 3 rounds, 20 searches each
Prints markdown; writes bench/results/analysis-*.json.
"""

from __future__ import annotations

import argparse
import base64
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

import cv2

from inprocess import InProcessDaemon
from measure import (PROJECT_DIR, RESULTS_DIR, TEST_DATA_DIR, CpuShare, Stats, describe_machine,
                     machine, markdown_table, ratio, save_results)

from sophon_face.backends.onnx import OnnxBackend
from sophon_face.config import config_from_mapping
from sophon_face.pipeline.detector import Detector
from sophon_face.pipeline.extras import build_extras
from sophon_face.workers.models import prepare_models

MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"
MODEL_CACHE = RESULTS_DIR / "models"
PORTRAITS = ["ardern_2018.jpg", "ardern_2022.jpg", "astronaut_collins.jpg", "macron_2014.jpg",
             "macron_2025.jpg", "obama_senate.jpg", "sunak.jpg"]
log = logging.getLogger("bench.analysis")


def per_model(models: Any, rounds: int) -> Dict[str, Any]:
    detector_backend = OnnxBackend(str(models.detector_path), intra_op_threads=2)
    detector = Detector(detector_backend, models.manifest.detector)
    faces = []
    for name in PORTRAITS:
        image = cv2.imread(str(TEST_DATA_DIR / name))
        found = detector.detect(image)
        if found:
            faces.append((image, found[0]))
    detector_backend.close()
    backends = {role: (OnnxBackend(str(path), intra_op_threads=2), spec)
                for role, (spec, path) in models.optional_models().items()}
    extras = build_extras(backends)
    runs: Dict[str, Callable[[Any, Any], Any]] = {}
    if extras.attributes is not None:
        runs["age + gender"] = lambda image, face: extras.attributes.estimate(image, [face])
    if extras.mask is not None:
        runs["mask"] = lambda image, face: extras.mask.mask_scores(image, [face])
    if extras.liveness is not None:
        runs["liveness (2 models)"] = lambda image, face: extras.liveness.live_score(image, face)
    results: Dict[str, Any] = {}
    try:
        for name, run in runs.items():
            for image, face in faces:  # warm
                run(image, face)
            samples: List[float] = []
            for _ in range(rounds):
                for image, face in faces:
                    started = time.perf_counter()
                    run(image, face)
                    samples.append((time.perf_counter() - started) * 1000.0)
            results[name] = Stats.of(samples).as_dict(2)
            log.info("%s: median %.2f ms per face", name, results[name]["median"])
    finally:
        extras.close()
    return {"faces": len(faces), "per_face_ms": results}


def searches(models: Any, work: Path, calls: int) -> Dict[str, Any]:
    daemon = InProcessDaemon(config_from_mapping({
        "server": {"ws_port": 0}, "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(work / "daemon"), "min_free_bytes": 0},
        "images": {"roots": [str(TEST_DATA_DIR)]}, "workers": {"count": 1}})).start(models)
    try:
        b64 = lambda name: base64.b64encode((TEST_DATA_DIR / name).read_bytes()).decode()  # noqa: E731
        daemon.post("createidentity", {"register_image": b64("ardern_2018.jpg"),
                                       "fiqa_level": "no"})
        daemon.post("setconfigs", {"config_dict": {"GATE_DUPLICATE_REMOVAL_TIMEOUT": 0}})
        probe = {"rgb_image_base64": b64("ardern_2022.jpg")}
        modes = {"plain": {}, "with_attribute": {"with_attribute": True},
                 "liveness_rgb": {"with_liveness_check": "liveness_rgb"}}
        for extra in modes.values():  # warm every path
            for _ in range(3):
                daemon.post("search", dict(probe, **extra))
        samples: Dict[str, List[float]] = {name: [] for name in modes}
        cpu = CpuShare().start()
        names = list(modes)
        for i in range(calls):
            for name in names[i % 3:] + names[:i % 3]:  # rotate the order call by call
                started = time.perf_counter()
                daemon.post("search", dict(probe, **modes[name]))
                samples[name].append((time.perf_counter() - started) * 1000.0)
            if (i + 1) % max(1, calls // 5) == 0:
                log.info("searches: %d/%d", i + 1, calls)
        stats = {name: Stats.of(values) for name, values in samples.items()}
        return {"ms": {name: s.as_dict(2) for name, s in stats.items()},
                "ratio_vs_plain": {name: ratio(s.median, stats["plain"].median)
                                   for name, s in stats.items()},
                "cpu": cpu.stop()}
    finally:
        daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    work = Path(tempfile.mkdtemp(prefix="bench-analysis-"))
    facts = machine()
    try:
        models = prepare_models(MANIFEST, MODEL_CACHE)
        model_times = per_model(models, 3 if args.quick else 10)
        search = searches(models, work, 20 if args.quick else 100)
    finally:
        shutil.rmtree(str(work), ignore_errors=True)
    print(f"\n{describe_machine(facts)}\n")
    print(f"time per face ({model_times['faces']} portrait faces, ONNX Runtime, 2 threads, ms)\n")
    print(markdown_table(["model", "median", "p90", "n"], [
        [name, s["median"], s["p90"], s["n"]] for name, s in model_times["per_face_ms"].items()]))
    print("\nsearch over HTTP (ms)\n")
    print(markdown_table(["search", "median", "p90", "vs plain"], [
        [name, s["median"], s["p90"], search["ratio_vs_plain"][name]]
        for name, s in search["ms"].items()]))
    path = save_results("analysis", {"machine": facts, "models": model_times, "search": search})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
