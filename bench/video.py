"""Video devices: frames analysed per second, per-stage time, CPU and memory for 1, 2 and 4
simultaneous 720p devices; events per person passage and the latency to each event; API
latency while cameras run.

Every figure sits beside its baseline from the same run:

1. Throughput: N ``file`` devices (looping a generated 1280x720, 15 fps scene with one or
   two people in view) at ``analysis_fps`` 8, for 1, 2 and 4 devices; the baseline is one
   device analysing EVERY decoded frame (analysis_fps 60 > the native 15), the naive
   reader without sampling.
2. Fairness: ``detect`` over HTTP on a real photo while the N devices run vs with no
   device (the worker pool serves API jobs before frames).
3. Events: the scene played once (4 passages: 3 registered people, 1 stranger; two of
   them at once): events per passage and the time from a person's first frame in the
   video to their event (``recognition_timestamp`` minus the first frame's wall time).

Run (from the project root):
    .venv/bin/python bench/video.py            # 20 s per throughput run
    .venv/bin/python bench/video.py --quick    # 8 s per run
Prints markdown; writes bench/results/video-*.json.
"""

from __future__ import annotations

import argparse
import base64
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import cv2

from inprocess import InProcessDaemon
from measure import (PROJECT_DIR, RESULTS_DIR, TEST_DATA_DIR, CpuShare, Stats, describe_machine,
                     machine, markdown_table, memory_of, mib, progress, ratio, save_results)

from sophon_face.backends.onnx import OnnxBackend
from sophon_face.config import config_from_mapping
from sophon_face.pipeline.detector import Detector
from sophon_face.workers.models import prepare_models
from tests.video_media import REGISTERED, SCENE, SCENE_S, head_factory, write_video

MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"
MODEL_CACHE = RESULTS_DIR / "models"
log = logging.getLogger("bench.video")


class _Daemon(InProcessDaemon):
    def __init__(self, data_dir: Path, video_dir: Path, **video: Any) -> None:
        super().__init__(config_from_mapping({
            "server": {"ws_port": 0}, "preview": {"port": 0, "control_port": 0},
            "storage": {"data_dir": str(data_dir), "min_free_bytes": 0},
            "images": {"roots": [str(TEST_DATA_DIR), str(video_dir)]},
            "workers": {"count": 1, "intra_op_threads": 2}, "video": video}))

    def devices(self) -> Dict[str, Any]:
        return self.request("GET", "/health")["devices"]


def make_scene(models: Any, video_dir: Path) -> Path:
    backend = OnnxBackend(str(models.detector_path), intra_op_threads=2)
    detector = Detector(backend, models.manifest.detector)
    try:
        heads = head_factory(lambda image: detector.detect(image)[0].bbox,
                             lambda name: cv2.imread(str(TEST_DATA_DIR / name)))
        return write_video(video_dir / "scene.avi", SCENE, SCENE_S,
                           {p.photo: heads(p.photo) for p in SCENE})
    finally:
        backend.close()


def register(daemon: _Daemon) -> None:
    for identity_id, photo in REGISTERED.items():
        image = base64.b64encode((TEST_DATA_DIR / photo).read_bytes()).decode("ascii")
        daemon.post("createidentity", {"register_image": image, "identity_id": identity_id,
                                       "fiqa_level": "no"})


def add_devices(daemon: _Daemon, video: Path, video_dir: Path, count: int) -> List[str]:
    ids = []
    for n in range(count):  # a URL is unique per device: each plays its own link
        link = video_dir / f"cam{n}-{time.monotonic_ns()}.avi"
        os.symlink(video, link)
        ids.append(daemon.post("addmediadevice", {
            "media_device_type": "file", "media_device_name": f"cam{n}",
            "media_device_url": str(link)})["media_device_id"])
    return ids


def detect_latencies(daemon: _Daemon, calls: int) -> Stats:
    image = base64.b64encode((TEST_DATA_DIR / "obama_senate.jpg").read_bytes()).decode("ascii")
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        daemon.post("detect", {"image_base64_str": image})
        samples.append((time.perf_counter() - started) * 1000.0)
    return Stats.of(samples)


def throughput(models: Any, work: Path, video: Path, devices: int, analysis_fps: float,
               seconds: float, api_calls: int) -> Dict[str, Any]:
    data_dir = work / f"data-{devices}-{analysis_fps}"
    daemon = _Daemon(data_dir, video.parent, analysis_fps=analysis_fps, loop_files=True).start(models)
    try:
        idle = detect_latencies(daemon, api_calls) if api_calls else None
        rss_before = memory_of().get("rss", 0)
        ids = add_devices(daemon, video, video.parent, devices)
        time.sleep(3.0)  # decoders open, first frames analysed
        before = daemon.devices()
        cpu = CpuShare().start()
        time.sleep(seconds)
        usage = cpu.stop()
        after = daemon.devices()
        rss = memory_of()
        busy = detect_latencies(daemon, api_calls) if api_calls else None
    finally:
        daemon.stop()
    wall = usage["wall_s"]
    per_device = []
    stage_totals: Dict[str, float] = {}
    analysed_total = 0
    for device_id in ids:
        a, b = before[device_id], after[device_id]
        analysed = b["frames_analysed"] - a["frames_analysed"]
        analysed_total += analysed
        per_device.append({
            "analysed_per_s": round(analysed / wall, 2),
            "read_per_s": round((b["frames_read"] - a["frames_read"]) / wall, 2),
            "dropped_per_s": round((b["frames_dropped"] - a["frames_dropped"]) / wall, 2)})
        for stage, ms in b["stage_ms"].items():
            stage_totals[stage] = stage_totals.get(stage, 0.0) + ms - a["stage_ms"].get(stage, 0.0)
    result: Dict[str, Any] = {
        "devices": devices, "analysis_fps": analysis_fps, "seconds": wall,
        "analysed_per_s_total": round(analysed_total / wall, 2),
        "per_device": per_device,
        "stage_ms_per_frame": {k: round(v / max(1, analysed_total), 2)
                               for k, v in stage_totals.items()},
        "cpu": usage, "cores_per_device": round(usage["ours_cores"] / devices, 2),
        "rss_mib_per_device": round(mib(rss.get("rss", 0) - rss_before) / devices, 1),
    }
    if idle is not None and busy is not None:
        result["detect_ms_idle"] = idle.as_dict(2)
        result["detect_ms_busy"] = busy.as_dict(2)
    return result


def events_run(models: Any, work: Path, video: Path) -> Dict[str, Any]:
    daemon = _Daemon(work / "data-events", video.parent, analysis_fps=8.0).start(models)
    try:
        register(daemon)
        started = time.time()
        device = add_devices(daemon, video, video.parent, 1)[0]
        deadline = time.monotonic() + SCENE_S + 60
        while daemon.devices()[device].get("state") != "finished" and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)
        events = daemon.post("getevents", {"limit": 100})["events"]
    finally:
        daemon.stop()
    # Which passage each event belongs to: the one whose person it names (the stranger
    # is Sunak's passage), and its latency from that person's first frame.
    starts = {"ardern": 0.5, "stranger": 4.0, "obama": 7.5, "macron": 7.5}
    latencies: Dict[str, float] = {}
    names = []
    for event in events:
        name = event["identity_id"] or "stranger"
        names.append(name)
        if name in starts:
            latencies[name] = round(event["ext_data"]["recognition_timestamp"] - started
                                    - starts[name], 2)
    return {"passages": len(SCENE), "events": len(events), "names": sorted(names),
            "events_per_passage": round(len(events) / len(SCENE), 2),
            "latency_s": latencies}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    seconds = 8.0 if args.quick else 20.0
    api_calls = 10 if args.quick else 30
    work = Path(tempfile.mkdtemp(prefix="bench-video-"))
    facts = machine()
    runs: List[Dict[str, Any]] = []
    try:
        models = prepare_models(MANIFEST, MODEL_CACHE)
        (work / "videos").mkdir()
        video = make_scene(models, work / "videos")
        plan = [(1, 60.0), (1, 8.0), (2, 8.0), (4, 8.0)]
        for i, (devices, fps) in enumerate(plan):
            progress(log, "throughput runs", i, len(plan))
            runs.append(throughput(models, work, video, devices, fps, seconds, api_calls))
        progress(log, "throughput runs", len(plan), len(plan))
        events = events_run(models, work, video)
    finally:
        shutil.rmtree(str(work), ignore_errors=True)
    baseline = runs[0]
    print(f"\n{describe_machine(facts)}\n")
    print("throughput: 1280x720 15 fps files, one worker (2 ONNX threads)\n")
    rows = []
    for run in runs:
        label = f"{run['devices']} x {'every frame' if run['analysis_fps'] > 15 else '8 fps'}"
        per = run["per_device"]
        rows.append([label, run["analysed_per_s_total"],
                     round(sum(d["dropped_per_s"] for d in per) / len(per), 2),
                     run["stage_ms_per_frame"].get("detect", 0.0),
                     run["stage_ms_per_frame"].get("quality", 0.0),
                     run["stage_ms_per_frame"].get("embed", 0.0),
                     run["cpu"]["ours_cores"], run["cores_per_device"], run["rss_mib_per_device"],
                     ratio(run["cpu"]["ours_cores"], baseline["cpu"]["ours_cores"])])
    print(markdown_table(["devices x analysis", "analysed/s (all)", "dropped/s per device",
                          "detect ms", "quality ms", "embed ms", "CPU cores", "cores/device",
                          "RSS MiB/device", "CPU vs every-frame"], rows))
    print("\ndetect over HTTP while devices run (ms): idle vs busy\n")
    print(markdown_table(["devices", "idle median", "busy median", "busy p90", "busy / idle"], [
        [f"{r['devices']} x {r['analysis_fps']:g} fps", r["detect_ms_idle"]["median"],
         r["detect_ms_busy"]["median"], r["detect_ms_busy"]["p90"],
         ratio(r["detect_ms_busy"]["median"], r["detect_ms_idle"]["median"])]
        for r in runs if "detect_ms_busy" in r]))
    print(f"\nevents: {events['events']} for {events['passages']} passages "
          f"({events['events_per_passage']} per passage): {events['names']}; seconds from "
          f"the person's first frame to the event: {events['latency_s']} (a stranger's event "
          f"comes when the track ends: the passage lasts 3 s, plus the 1 s track timeout)")
    path = save_results("video", {"machine": facts, "throughput": runs, "events": events})
    print(f"\nresults: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
