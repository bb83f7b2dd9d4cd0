"""Pipeline latency and recognition scores on real photos.

Three measurements, side by side in one run, on the same photos and thread settings:

1. Per-stage times of our pipeline (decode, detect, align, quality, embed), in process.
2. One ``compare`` request over HTTP (the daemon in this process, on a real socket) against
   the raw ONNX Runtime inference of the same two images (``session.run`` of the detector
   on the letterboxed blob plus the recognizer on the aligned crop, nothing else), against
   our pipeline called in process for both images, and against OpenCV's own
   ``FaceDetectorYN`` + ``FaceRecognizerSF`` running the original int8 model files (the
   peer a user would otherwise pick; each image is shrunk to fit 640x640 like ours, the
   crop is taken from the full-size image).
3. Same-person vs different-person scores over every pair of devset photos: cosine and
   the API's 0-100 score, TAR/FAR at the default MATCH_THRESHOLD 82, the best threshold.

Three more contenders measure a proposal: the daemon over HTTP, our pipeline and the raw
runs on ONNX Runtime sessions whose intra-op threads do not spin-wait
(``session.intra_op.allow_spinning=0``);
with the default, each of the daemon's two sessions keeps both cores spinning for 20-50 ms
after its run, which slows the other session's next run (detector -> recognizer, and
image 1 -> image 2 in compare).

The contenders take turns pair by pair (the order rotates every pair and round, with a
60 ms pause between contenders so no one pays for another's spinning threads), so a busy
neighbour process slows all of them alike; the CPU other processes took while we measured
is reported with the results.

Run (from the project root):
    .venv/bin/python bench/pipeline.py            # every devset + tests/data photo, 3 rounds
    .venv/bin/python bench/pipeline.py --quick    # 1 round, tests/data + 2 photos x 8 people
Options: --rounds N, --threads N (ONNX Runtime intra-op and OpenCV threads, default 2),
--devset DIR, --no-http, --no-opencv, --no-spin-variant. Prints markdown; writes
bench/results/pipeline-*.json.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import itertools
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from measure import (DEVSET_DIR, IMAGE_SUFFIXES, PROJECT_DIR, RESULTS_DIR, TEST_DATA_DIR,
                     CpuShare, Stats, describe_machine, machine, markdown_table, ratio,
                     save_results)

from sophon_face.backends.onnx import OnnxBackend
from sophon_face.errors import ApiError
from sophon_face.manifest.files import source_path
from sophon_face.pipeline.align import align_face
from sophon_face.pipeline.detector import Detector, blob_from_bgr, letterbox
from sophon_face.pipeline.embedder import Embedder
from sophon_face.pipeline.face_pipeline import FacePipeline
from sophon_face.pipeline.images import load_image
from sophon_face.pipeline.quality import QualityThresholds
from sophon_face.pipeline.types import ImageInput, ImageLimits
from sophon_face.service.scoring import cosine_to_score
from sophon_face.workers.models import PreparedModels, prepare_models

MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"
MODEL_CACHE = RESULTS_DIR / "models"
STAGES = ("decode", "detect", "align", "quality", "embed")
#: The API's default MATCH_THRESHOLD (api/README.md section 6).
MATCH_THRESHOLD = 82.0
#: Photos above this many megapixels are "large" in the per-size medians.
LARGE_MEGAPIXELS = 1.0


@dataclass
class Photo:
    label: str  # "devset/<person>/<file>" or "tests/<file>"
    person: Optional[str]  # devset folder; None for tests/data (not labelled here)
    data: bytes
    megapixels: float = 0.0
    has_face: bool = True
    opencv_has_face: bool = True
    feature: Optional[np.ndarray] = None  # ours, unit norm
    opencv_feature: Optional[np.ndarray] = None
    det_blob: Optional[np.ndarray] = None  # raw ORT inputs, prepared outside the timing
    rec_blob: Optional[np.ndarray] = None
    times: Dict[str, List[float]] = field(default_factory=dict)
    http_bodies: Dict[str, bytes] = field(default_factory=dict)
    _b64: Optional[str] = None

    @property
    def b64(self) -> str:
        """The base64 text a client sends, encoded once (not part of any timing)."""
        if self._b64 is None:
            self._b64 = base64.b64encode(self.data).decode("ascii")
        return self._b64

    def add(self, name: str, ms: float) -> None:
        self.times.setdefault(name, []).append(ms)

    def http_body_with(self, other: "Photo") -> bytes:
        """The compare request body for (self, other), encoded once and kept."""
        body = self.http_bodies.get(other.label)
        if body is None:
            body = HttpCompare.body(self, other)
            self.http_bodies[other.label] = body
        return body


def collect_photos(devset: Path, sample: Optional[Tuple[int, int]]) -> List[Photo]:
    """Devset photos (all, or ``sample`` = (people, photos each)), then tests/data."""
    photos: List[Photo] = []
    if devset.is_dir():
        people = sorted(p for p in devset.iterdir() if p.is_dir())
        if sample is not None:
            people = people[:sample[0]]
        for person in people:
            files = sorted(f for f in person.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if sample is not None:
                files = files[:sample[1]]
            for f in files:
                photos.append(Photo(f"devset/{person.name}/{f.name}", person.name, f.read_bytes()))
    for f in sorted(TEST_DATA_DIR.iterdir()):
        if f.suffix.lower() in IMAGE_SUFFIXES:
            photos.append(Photo(f"tests/{f.name}", None, f.read_bytes()))
    return photos


# ---------------------------------------------------------------- contenders

#: Pause between two contenders. ONNX Runtime's intra-op threads spin-wait 20-50 ms after a
#: run (measured: a recognizer run 20 ms after a detector run took 30 ms, 50 ms after it
#: 16 ms); without the pause one contender would pay for the previous one's spinning pool.
SETTLE_S = 0.06


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def ort_session(path: Path, threads: int, spinning: bool) -> Any:
    """A session with the daemon's options (backends/onnx.py); ``spinning=False`` adds the
    one option this benchmark proposes: intra-op threads block instead of spin-waiting."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


class NoSpinOnnxBackend:
    """The Backend protocol (backends/base.py) over a session that does not spin-wait: the
    proposal, prototyped here without touching backends/onnx.py. Batch-1 models only."""

    runtime = "onnxruntime"

    def __init__(self, path: Path, threads: int) -> None:
        from sophon_face.backends.base import TensorSpec

        self._session = ort_session(path, threads, spinning=False)
        self._inputs = [TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape))
                        for i in self._session.get_inputs()]
        self._outputs = [o.name for o in self._session.get_outputs()]

    def input_specs(self) -> List[Any]:
        return list(self._inputs)

    def output_names(self) -> List[str]:
        return list(self._outputs)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        outputs = self._session.run(self._outputs, feeds)
        return {name: np.asarray(out, dtype=np.float32) for name, out in zip(self._outputs, outputs)}

    def close(self) -> None:
        self._session = None


class OursInProcess:
    """Our FacePipeline, called directly: decode + detect + align + quality + embed.

    ``spinning=False`` builds it on NoSpinOnnxBackend and records its times under ``ns_``.
    """

    def __init__(self, models: PreparedModels, threads: int, spinning: bool = True) -> None:
        manifest = models.manifest
        self.detector_spec = manifest.detector
        self.recognizer_spec = manifest.recognizer
        if spinning:
            det: Any = OnnxBackend(str(models.detector_path), threads)
            rec: Any = OnnxBackend(str(models.recognizer_path), threads)
        else:
            det = NoSpinOnnxBackend(models.detector_path, threads)
            rec = NoSpinOnnxBackend(models.recognizer_path, threads)
        self.prefix = "" if spinning else "ns_"
        self.pipeline = FacePipeline(Detector(det, manifest.detector),
                                     Embedder(rec, manifest.recognizer), QualityThresholds())
        self.limits = ImageLimits()

    def run(self, photo: Photo, record: bool) -> Optional[np.ndarray]:
        started = time.perf_counter()
        image = load_image(ImageInput("image_1_base64", base64_text=photo.b64), self.limits, [])
        decode_ms = _ms_since(started)
        times: Dict[str, float] = {}
        try:
            analyzed = self.pipeline.analyze_largest(image, "no", with_feature=True, times=times)
        except ApiError:
            return None
        if record:
            photo.add(self.prefix + "decode", decode_ms)
            for stage in STAGES[1:]:
                photo.add(self.prefix + stage, times.get(stage, 0.0))
            photo.add(self.prefix + "ours_total", _ms_since(started))
        return analyzed.feature

    def prepare_raw_inputs(self, photo: Photo) -> None:
        """The exact tensors our pipeline feeds the two models, for the raw runs."""
        image = load_image(ImageInput("image", base64_text=photo.b64), self.limits, [])
        photo.megapixels = image.image_bgr.shape[0] * image.image_bgr.shape[1] / 1e6
        canvas, _, _ = letterbox(image.image_bgr, self.detector_spec.input_size)
        photo.det_blob = blob_from_bgr([canvas], self.detector_spec)
        faces = self.pipeline.detect(image)
        crop = align_face(image.image_bgr, faces[0].landmarks)
        photo.rec_blob = blob_from_bgr([crop], self.recognizer_spec)


class RawOrt:
    """Bare ``session.run`` of both models, with the daemon's session options (or, with
    ``spinning=False``, the proposed one; recorded under ``ns_``)."""

    def __init__(self, models: PreparedModels, threads: int, spinning: bool = True) -> None:
        self.det = ort_session(models.detector_path, threads, spinning)
        self.rec = ort_session(models.recognizer_path, threads, spinning)
        self.det_input = self.det.get_inputs()[0].name
        self.rec_input = self.rec.get_inputs()[0].name
        self.prefix = "" if spinning else "ns_"

    def run(self, photo: Photo, record: bool) -> float:
        started = time.perf_counter()
        self.det.run(None, {self.det_input: photo.det_blob})
        det_ms = _ms_since(started)
        mid = time.perf_counter()
        self.rec.run(None, {self.rec_input: photo.rec_blob})
        rec_ms = _ms_since(mid)
        if record:
            photo.add(self.prefix + "raw_detect", det_ms)
            photo.add(self.prefix + "raw_embed", rec_ms)
            photo.add(self.prefix + "raw_total", det_ms + rec_ms)
        return det_ms + rec_ms


class OpenCvPeer:
    """OpenCV's face API on the original int8 files, used the way its samples use it."""

    INPUT_SIDE_PX = 640  # shrink the image to fit 640x640, never enlarge, as our letterbox does

    def __init__(self, models: PreparedModels, threads: int) -> None:
        manifest = models.manifest
        cv2.setNumThreads(threads)
        self.detector_file = source_path(manifest.detector, manifest.base_dir)
        self.recognizer_file = source_path(manifest.recognizer, manifest.base_dir)
        spec = manifest.detector
        self.det = cv2.FaceDetectorYN.create(
            str(self.detector_file), "", (self.INPUT_SIDE_PX, self.INPUT_SIDE_PX),
            spec.score_threshold, spec.nms_iou, 5000)
        self.rec = cv2.FaceRecognizerSF.create(str(self.recognizer_file), "")

    def run(self, photo: Photo, record: bool) -> Optional[np.ndarray]:
        started = time.perf_counter()
        image = cv2.imdecode(np.frombuffer(photo.data, dtype=np.uint8), cv2.IMREAD_COLOR)
        decode_ms = _ms_since(started)
        mark = time.perf_counter()
        h, w = image.shape[:2]
        scale = min(self.INPUT_SIDE_PX / w, self.INPUT_SIDE_PX / h, 1.0)
        small = image if scale == 1.0 else cv2.resize(
            image, (max(1, round(w * scale)), max(1, round(h * scale))),
            interpolation=cv2.INTER_AREA)
        self.det.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self.det.detect(small)
        detect_ms = _ms_since(mark)
        if faces is None or len(faces) == 0:
            return None
        mark = time.perf_counter()
        face = max(faces, key=lambda f: float(f[2] * f[3])).copy()
        face[:14] /= scale  # box and landmarks back to full-size pixels
        aligned = self.rec.alignCrop(image, face)
        feature = self.rec.feature(aligned).reshape(-1).astype(np.float32)
        embed_ms = _ms_since(mark)
        if record:
            photo.add("cv_decode", decode_ms)
            photo.add("cv_detect", detect_ms)
            photo.add("cv_align_embed", embed_ms)
            photo.add("cv_total", _ms_since(started))
        return feature / max(float(np.linalg.norm(feature)), 1e-12)


class HttpCompare:
    """The daemon in this process (tests/api/live.py) and one keep-alive client.

    ``spinning=False`` starts the daemon with NoSpinOnnxBackend as its ``onnx`` runtime:
    the backend registry's opener is swapped only while the workers load their sessions,
    so the proposal runs through the real app without a change to sophon_face/.
    """

    def __init__(self, models: PreparedModels, threads: int, spinning: bool = True) -> None:
        from sophon_face.backends import registry
        from sophon_face.config import config_from_mapping
        from tests.api.live import LiveServer

        self.data_dir = Path(tempfile.mkdtemp(prefix="bench-pipeline-", dir=RESULTS_DIR))
        config = config_from_mapping({
            "storage": {"data_dir": str(self.data_dir), "min_free_bytes": 0},
            "workers": {"count": 1, "intra_op_threads": threads},
            "logging": {"level": "WARNING"},
        })
        opener = registry.OPENERS["onnx"]
        if not spinning:
            registry.OPENERS["onnx"] = lambda path, spec, options: NoSpinOnnxBackend(
                Path(path), options.intra_op_threads)
        try:
            self.server = LiveServer(config, models).start()
        finally:
            registry.OPENERS["onnx"] = opener
        self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=120)

    @staticmethod
    def body(a: Photo, b: Photo, fiqa_level: Optional[str] = None) -> bytes:
        payload = {"image_1_base64": a.b64, "image_2_base64": b.b64}
        if fiqa_level is not None:
            payload["fiqa_level"] = fiqa_level
        return json.dumps(payload).encode("utf-8")

    def run_rejected(self, body: bytes) -> float:
        """A request refused at the edge (INVALID_ARGUMENTS after the body is parsed): the
        HTTP, JSON and validation cost of this body, without any image work."""
        started = time.perf_counter()
        self.conn.request("POST", "/sophon/v2/face/compare", body=body,
                          headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        response.read()
        ms = _ms_since(started)
        if response.status != 400:
            raise RuntimeError(f"expected the bogus fiqa_level to be refused, got {response.status}")
        return ms

    def run(self, body: bytes) -> Tuple[float, Optional[float]]:
        started = time.perf_counter()
        self.conn.request("POST", "/sophon/v2/face/compare", body=body,
                          headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        payload = response.read()
        ms = _ms_since(started)
        if response.status != 200:
            return ms, None
        return ms, float(json.loads(payload)["score"])

    def close(self) -> None:
        self.conn.close()
        self.server.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


# ---------------------------------------------------------------- runs

#: A contender times one pair: (first photo, second photo, record?) -> ms, or None when it
#: could not compare them (no face found by that contender).
Contender = Callable[[Photo, Photo, bool], Optional[float]]


def contenders_for(ours: OursInProcess, raw: RawOrt, ours_ns: Optional[OursInProcess],
                   raw_ns: Optional[RawOrt], peer: Optional[OpenCvPeer],
                   http: Optional[HttpCompare], http_ns: Optional[HttpCompare]) -> Dict[str, Contender]:
    def inproc(pipeline: OursInProcess) -> Contender:
        def run(a: Photo, b: Photo, record: bool) -> Optional[float]:
            started = time.perf_counter()
            for photo in (a, b):
                pipeline.run(photo, record=record)
            return _ms_since(started)
        return run

    def bare(runtime: RawOrt) -> Contender:
        def run(a: Photo, b: Photo, record: bool) -> Optional[float]:
            return runtime.run(a, record) + runtime.run(b, record)
        return run

    def opencv(a: Photo, b: Photo, record: bool) -> Optional[float]:
        assert peer is not None
        if not (a.opencv_has_face and b.opencv_has_face):
            return None
        started = time.perf_counter()
        fa, fb = peer.run(a, record=record), peer.run(b, record=record)
        if fa is None or fb is None:
            return None
        float(fa @ fb)  # the peer's comparison, part of its time
        return _ms_since(started)

    def over_http(a: Photo, b: Photo, record: bool) -> Optional[float]:
        assert http is not None
        ms, score = http.run(HttpCompare.body(a, b) if not record else a.http_body_with(b))
        return ms if score is not None else None

    def http_edge_only(a: Photo, b: Photo, record: bool) -> Optional[float]:
        assert http is not None
        return http.run_rejected(HttpCompare.body(a, b, fiqa_level="bogus"))

    def over_http_ns(a: Photo, b: Photo, record: bool) -> Optional[float]:
        assert http_ns is not None
        ms, score = http_ns.run(HttpCompare.body(a, b) if not record else a.http_body_with(b))
        return ms if score is not None else None

    found: Dict[str, Contender] = {"inproc": inproc(ours), "raw": bare(raw)}
    if peer is not None:
        found["opencv"] = opencv
    if http is not None:
        found["http"] = over_http
        found["http_edge"] = http_edge_only
    if ours_ns is not None and raw_ns is not None:
        found["inproc_nospin"] = inproc(ours_ns)
        found["raw_nospin"] = bare(raw_ns)
    if http_ns is not None:
        found["http_nospin"] = over_http_ns
    return found


def measure_pairs(photos: Sequence[Photo], contenders: Dict[str, Contender],
                  rounds: int) -> List[Dict[str, Any]]:
    """Every photo with a face paired with the next one; each pair timed by every contender,
    ``rounds`` times, in a rotating order with a pause between contenders. Stage times of
    single images are recorded on the way (each photo is in two pairs: 2 x rounds samples)."""
    usable = [p for p in photos if p.has_face]
    pairs = [(usable[i], usable[(i + 1) % len(usable)]) for i in range(len(usable))]
    results: List[Dict[str, Any]] = [
        {"a": a.label, "b": b.label, **{name: [] for name in contenders}} for a, b in pairs]
    names = list(contenders)
    for round_no in range(rounds):
        for i, (a, b) in enumerate(pairs):
            shift = (round_no + i) % len(names)
            for name in names[shift:] + names[:shift]:
                time.sleep(SETTLE_S)
                ms = contenders[name](a, b, True)
                if ms is not None:
                    results[i][name].append(ms)
        print(f"  round {round_no + 1}/{rounds} done", file=sys.stderr)
    return results


def warm_up(photos: Sequence[Photo], contenders: Dict[str, Contender]) -> None:
    sample = [p for p in photos if p.has_face][:4]
    for run in contenders.values():
        for a, b in zip(sample[::2], sample[1::2]):
            run(a, b, False)


def reduced_decode(photos: Sequence[Photo], ours: OursInProcess) -> Dict[str, Any]:
    """A proposal for large photos: let libjpeg decode at 1/2 or 1/4 scale (its DCT does
    it almost for free) when even the reduced image is larger than the detector input.
    Decode time of each scale, and the cosine between the feature of the full decode and of
    the reduced one (our pipeline on both), for the JPEGs above 1 MP."""
    from sophon_face.pipeline.types import DecodedImage

    flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4}
    times: Dict[int, List[float]] = {k: [] for k in flags}
    cosines: Dict[int, List[float]] = {2: [], 4: []}
    big = [p for p in photos if p.megapixels > LARGE_MEGAPIXELS and p.data[:3] == b"\xff\xd8\xff"]
    for photo in big:
        buffer = np.frombuffer(photo.data, dtype=np.uint8)
        images = {}
        for factor, flag in flags.items():
            samples = []
            for _ in range(3):
                started = time.perf_counter()
                images[factor] = cv2.imdecode(buffer, flag)
                samples.append(_ms_since(started))
            times[factor].append(float(np.median(samples)))
        features = {}
        for factor in (1, 2, 4):
            decoded = DecodedImage(image_bgr=images[factor], encoded=photo.data, format="jpeg",
                                   param="image")
            try:
                features[factor] = ours.pipeline.analyze_largest(decoded, "no").feature
            except ApiError:
                features[factor] = None
        for factor in (2, 4):
            if features[1] is not None and features[factor] is not None:
                cosines[factor].append(float(features[1] @ features[factor]))
    return {"photos": len(big),
            "decode_ms": {str(k): Stats.of(v).as_dict() for k, v in times.items()},
            "cosine_to_full": {str(k): Stats.of(v).as_dict() for k, v in cosines.items()}}


def score_distributions(photos: Sequence[Photo], match_cosine: float) -> Dict[str, Any]:
    labelled = [p for p in photos if p.person is not None and p.feature is not None]
    same: List[float] = []
    different: List[float] = []
    for a, b in itertools.combinations(labelled, 2):
        cosine = float(a.feature @ b.feature)  # type: ignore[operator]
        (same if a.person == b.person else different).append(cosine)

    def describe(cosines: List[float]) -> Dict[str, Any]:
        scores = [cosine_to_score(c, match_cosine) for c in cosines]
        return {"pairs": len(cosines), "cosine": Stats.of(cosines).as_dict(),
                "score": Stats.of(scores).as_dict(),
                "at_or_above_82": (sum(s >= MATCH_THRESHOLD for s in scores) / len(scores)
                                   if scores else float("nan"))}

    same_scores = np.array([cosine_to_score(c, match_cosine) for c in same])
    diff_scores = np.array([cosine_to_score(c, match_cosine) for c in different])
    best: Dict[str, Any] = {}
    zero_far: Dict[str, Any] = {}
    if same_scores.size and diff_scores.size:
        # Youden's J (TAR - FAR) over thresholds on a 0.5-point grid; the set is small and
        # the classes are unbalanced (~1:15), so plain accuracy would favour "reject all".
        grid = np.arange(0.0, 100.01, 0.5)
        tar = np.array([(same_scores >= t).mean() for t in grid])
        far = np.array([(diff_scores >= t).mean() for t in grid])
        j = tar - far
        k = int(np.argmax(j))
        # The plateau of equally good thresholds: report its middle and its range.
        ties = np.flatnonzero(np.isclose(j, j[k]))
        mid = int(ties[len(ties) // 2])
        best = {"threshold": float(grid[mid]), "range": [float(grid[ties[0]]), float(grid[ties[-1]])],
                "tar": float(tar[mid]), "far": float(far[mid]), "youden_j": float(j[mid])}
        k0 = int(np.flatnonzero(far == 0.0)[0])
        zero_far = {"threshold": float(grid[k0]), "tar": float(tar[k0])}
    missing = [p.label for p in photos if p.person is not None and p.feature is None]
    return {"photos": len(labelled), "people": len({p.person for p in labelled}),
            "no_face": missing, "same_person": describe(same),
            "different_person": describe(different), "best_threshold": best,
            "lowest_threshold_with_far_0": zero_far}


# ---------------------------------------------------------------- report

def _per_photo_medians(photos: Sequence[Photo], key: str,
                       only: Optional[Callable[[Photo], bool]] = None) -> List[float]:
    return [float(np.median(p.times[key])) for p in photos
            if p.times.get(key) and (only is None or only(p))]


def stage_table(photos: Sequence[Photo]) -> Tuple[str, Dict[str, Any]]:
    rows = []
    data: Dict[str, Any] = {}
    labels = [(s, f"ours: {s}") for s in STAGES] + [
        ("ours_total", "ours: total (in process)"),
        ("raw_detect", "raw ORT: detector run"), ("raw_embed", "raw ORT: recognizer run"),
        ("raw_total", "raw ORT: total"),
        ("cv_decode", "OpenCV: decode"), ("cv_detect", "OpenCV: resize + detect"),
        ("cv_align_embed", "OpenCV: alignCrop + feature"), ("cv_total", "OpenCV: total"),
        ("ns_detect", "proposal, ORT not spinning: ours detect"),
        ("ns_embed", "proposal, ORT not spinning: ours embed"),
        ("ns_ours_total", "proposal, ORT not spinning: ours total"),
        ("ns_raw_detect", "proposal, ORT not spinning: raw detector run"),
        ("ns_raw_embed", "proposal, ORT not spinning: raw recognizer run")]

    def small(p: Photo) -> bool:
        return p.megapixels <= LARGE_MEGAPIXELS

    def large(p: Photo) -> bool:
        return p.megapixels > LARGE_MEGAPIXELS

    for key, label in labels:
        all_ = Stats.of(_per_photo_medians(photos, key))
        if all_.n == 0:
            continue
        s = Stats.of(_per_photo_medians(photos, key, small))
        big = Stats.of(_per_photo_medians(photos, key, large))
        data[key] = {"all": all_.as_dict(), "small": s.as_dict(), "large": big.as_dict()}
        rows.append((label, all_.median, all_.p90, s.median, big.median))
    headers = ("stage (ms per image)", "median", "p90",
               f"median ≤{LARGE_MEGAPIXELS:g} MP", f"median >{LARGE_MEGAPIXELS:g} MP")
    return markdown_table(headers, rows), data


def pair_table(pairs: Sequence[Dict[str, Any]]) -> Tuple[str, Dict[str, Any]]:
    """Per pair: median over rounds; then median/p90 over pairs, and per-pair ratios."""
    def medians(key: str, keep: Sequence[int]) -> List[float]:
        return [float(np.median(pairs[i][key])) for i in keep]

    # Only pairs every contender finished, so each row covers the same pairs.
    keys = [k for k in ("http", "inproc", "raw", "opencv", "http_nospin", "inproc_nospin",
                        "raw_nospin") if any(p.get(k) for p in pairs)]
    keep = [i for i, p in enumerate(pairs) if all(p[k] for k in keys)]
    per = {k: medians(k, keep) for k in keys}
    raw = per["raw"]
    rows = []
    data: Dict[str, Any] = {"pairs": len(keep), "pairs_total": len(pairs)}
    names = {"http": "compare over HTTP", "inproc": "our pipeline in process (2 images)",
             "raw": "raw ORT session.run (2 images)", "opencv": "OpenCV FaceDetectorYN+SF (2 images)",
             "http_nospin": "proposal: compare over HTTP, ORT not spinning",
             "inproc_nospin": "proposal: our pipeline, ORT not spinning (2 images)",
             "raw_nospin": "proposal: raw ORT, not spinning (2 images)"}
    for k in keys:
        st = Stats.of(per[k])
        r = Stats.of([ratio(x, y) for x, y in zip(per[k], raw)])
        row = {"ms": st.as_dict(), "ratio_to_raw": r.as_dict(),
               "ratio_of_medians_to_raw": ratio(st.median, Stats.of(raw).median)}
        if "opencv" in per and k != "opencv":
            ro = Stats.of([ratio(x, y) for x, y in zip(per[k], per["opencv"])])
            row["ratio_to_opencv"] = ro.as_dict()
            opencv_median = ro.median
        else:
            opencv_median = float("nan")
        data[k] = row
        rows.append((names[k], st.median, st.p90, r.median, r.p90, opencv_median))
    edge = [float(np.median(pairs[i]["http_edge"])) for i in keep if pairs[i].get("http_edge")]
    if edge:
        data["http_edge_ms"] = Stats.of(edge).as_dict()
    if "http_nospin" in per and "raw_nospin" in per:
        data["http_nospin_to_raw_nospin"] = Stats.of(
            [ratio(x, y) for x, y in zip(per["http_nospin"], per["raw_nospin"])]).as_dict()
    if "http" in per:
        overhead = Stats.of([x - y for x, y in zip(per["http"], raw)])
        data["http_minus_raw_ms"] = overhead.as_dict()
        data["http_minus_inproc_ms"] = Stats.of(
            [x - y for x, y in zip(per["http"], per["inproc"])]).as_dict()
    headers = ("per compare (2 images)", "median ms", "p90 ms", "× raw (median)",
               "× raw (p90)", "× OpenCV (median)")
    return markdown_table(headers, rows), data


def score_table(dist: Dict[str, Any]) -> str:
    rows = []
    for key, label in (("same_person", "same person"), ("different_person", "different person")):
        d = dist[key]
        rows.append((label, d["pairs"], d["cosine"]["minimum"], d["cosine"]["median"],
                     d["cosine"]["maximum"], d["score"]["minimum"], d["score"]["median"],
                     d["score"]["maximum"], f"{100 * d['at_or_above_82']:.1f}%"))
    headers = ("pairs", "n", "cos min", "cos median", "cos max", "score min", "score median",
               "score max", "≥ 82")
    return markdown_table(headers, rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2,
                        help="ONNX Runtime intra-op threads (daemon default) and OpenCV threads")
    parser.add_argument("--devset", type=Path, default=DEVSET_DIR)
    parser.add_argument("--quick", action="store_true",
                        help="1 round, tests/data plus 2 photos of each of 8 devset people")
    parser.add_argument("--no-http", action="store_true")
    parser.add_argument("--no-opencv", action="store_true")
    parser.add_argument("--no-spin-variant", dest="spin_variant", action="store_false",
                        help="leave out the proposal: our pipeline and raw ORT with "
                             "session.intra_op.allow_spinning=0")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rounds = 1 if args.quick else args.rounds

    facts = machine()
    photos = collect_photos(args.devset, (8, 2) if args.quick else None)
    models = prepare_models(MANIFEST, MODEL_CACHE)
    ours = OursInProcess(models, args.threads)
    raw = RawOrt(models, args.threads)
    ours_ns = OursInProcess(models, args.threads, spinning=False) if args.spin_variant else None
    raw_ns = RawOrt(models, args.threads, spinning=False) if args.spin_variant else None
    peer = None if args.no_opencv else OpenCvPeer(models, args.threads)
    # Features and raw inputs first (untimed): they decide which photos have a face.
    for photo in photos:
        photo.feature = ours.run(photo, record=False)
        photo.has_face = photo.feature is not None
        if photo.has_face:
            ours.prepare_raw_inputs(photo)
        if peer is not None:
            photo.opencv_feature = peer.run(photo, record=False)
            photo.opencv_has_face = photo.opencv_feature is not None
    http = None if args.no_http else HttpCompare(models, args.threads)
    http_ns = (HttpCompare(models, args.threads, spinning=False)
               if args.spin_variant and not args.no_http else None)
    try:
        contenders = contenders_for(ours, raw, ours_ns, raw_ns, peer, http, http_ns)
        warm_up(photos, contenders)
        share = CpuShare().start()
        pairs = measure_pairs(photos, contenders, rounds)
        cpu = share.stop()
    finally:
        for server in (http, http_ns):
            if server is not None:
                server.close()

    stages_md, stages = stage_table(photos)
    pairs_md, pair_data = pair_table(pairs)
    match_cosine = float(models.manifest.recognizer.match_cosine or 0.5)
    dist = score_distributions(photos, match_cosine)
    reduced = reduced_decode(photos, ours)
    parity = [float(p.feature @ p.opencv_feature) for p in photos
              if p.feature is not None and p.opencv_feature is not None]
    with_face = [p for p in photos if p.has_face]

    print(f"# Pipeline benchmark\n\nMachine: {describe_machine(facts)}")
    print(f"Threads: ONNX Runtime intra-op {args.threads}, OpenCV {args.threads}; rounds: {rounds}; "
          f"photos: {len(photos)} ({len(with_face)} with a face; "
          f"{sum(p.megapixels > LARGE_MEGAPIXELS for p in with_face)} above {LARGE_MEGAPIXELS:g} MP)")
    print(f"CPU while measuring: ours {cpu.get('ours_cores')} cores, other processes "
          f"{cpu.get('others_cores')} cores (of {facts['cores']})\n")
    print("## Per-stage times (median over rounds per photo, then across photos)\n")
    print(stages_md + "\n")
    print(f"## compare: HTTP vs raw inference vs OpenCV ({pair_data['pairs']} pairs)\n")
    print(pairs_md + "\n")
    if "http" in pair_data:
        http_ratio = pair_data["http"]["ratio_to_raw"]["median"]
        print(f"HTTP compare minus raw inference: median {pair_data['http_minus_raw_ms']['median']:.1f} ms; "
              f"HTTP minus in-process pipeline: median {pair_data['http_minus_inproc_ms']['median']:.1f} ms "
              f"(run-to-run noise of ORT's spinning threads is larger than the HTTP layer)")
        if "http_edge_ms" in pair_data:
            print(f"HTTP layer alone (same body refused after parsing: transfer, JSON, validation): "
                  f"median {pair_data['http_edge_ms']['median']:.1f} ms, p90 {pair_data['http_edge_ms']['p90']:.1f} ms")
        print(f"Goal compare <= 1.15x raw: {'met' if http_ratio <= 1.15 else 'missed'} "
              f"({http_ratio:.2f}x)")
        if "ratio_to_opencv" in pair_data["http"]:
            cv_ratio = pair_data["http"]["ratio_to_opencv"]["median"]
            print(f"Goal compare no slower than OpenCV: {'met' if cv_ratio <= 1.0 else 'missed'} "
                  f"({cv_ratio:.2f}x)")
    if "http_nospin" in pair_data and "raw_nospin" in pair_data:
        ns = pair_data["http_nospin"]
        same = pair_data["http_nospin_to_raw_nospin"]
        print(f"Proposal (ORT intra-op threads not spinning): compare over HTTP "
              f"{ns['ms']['median']:.1f} ms median = {ns['ratio_to_raw']['median']:.2f}x today's raw "
              f"inference, {same['median']:.2f}x the raw inference with the same (non-spinning) "
              f"settings"
              + (f", {ns['ratio_to_opencv']['median']:.2f}x OpenCV" if "ratio_to_opencv" in ns else ""))
    print()
    print(f"## Scores on the devset ({dist['photos']} photos with a face, {dist['people']} people)\n")
    print(score_table(dist) + "\n")
    best = dist["best_threshold"]
    if best:
        print(f"TAR at 82: {100 * dist['same_person']['at_or_above_82']:.1f}%, "
              f"FAR at 82: {100 * dist['different_person']['at_or_above_82']:.2f}%. "
              f"Best threshold (max TAR-FAR): {best['threshold']:.1f} "
              f"(equally good {best['range'][0]:.1f}-{best['range'][1]:.1f}; "
              f"TAR {100 * best['tar']:.1f}%, FAR {100 * best['far']:.2f}%); lowest threshold "
              f"with FAR 0: {dist['lowest_threshold_with_far_0']['threshold']:.1f} "
              f"(TAR {100 * dist['lowest_threshold_with_far_0']['tar']:.1f}%)")
    if dist["no_face"]:
        print(f"No face found (excluded): {', '.join(dist['no_face'])}")
    if parity:
        print(f"Feature parity ours vs OpenCV (same photo, cosine): median {np.median(parity):.4f}, "
              f"min {min(parity):.4f} over {len(parity)} photos")
    if reduced["photos"]:
        d, c = reduced["decode_ms"], reduced["cosine_to_full"]
        print(f"\n## Proposal: reduced JPEG decode of large photos ({reduced['photos']} JPEGs > "
              f"{LARGE_MEGAPIXELS:g} MP)\n")
        print(markdown_table(("decode scale", "decode median ms", "p90 ms",
                              "feature cosine to full decode: median", "min"), [
            ("1 (today)", d["1"]["median"], d["1"]["p90"], 1.0, 1.0),
            ("1/2 (IMREAD_REDUCED_COLOR_2)", d["2"]["median"], d["2"]["p90"],
             c["2"]["median"], c["2"]["minimum"]),
            ("1/4 (IMREAD_REDUCED_COLOR_4)", d["4"]["median"], d["4"]["p90"],
             c["4"]["median"], c["4"]["minimum"])]))
    path = save_results("pipeline", {
        "machine": facts, "threads": args.threads, "rounds": rounds, "cpu": cpu,
        "stages_ms": stages, "compare": pair_data, "scores": dist,
        "parity_cosine": Stats.of(parity).as_dict(), "reduced_decode": reduced,
        "photos": [{"label": p.label, "megapixels": round(p.megapixels, 3), "has_face": p.has_face,
                    "opencv_has_face": p.opencv_has_face,
                    "median_ms": {k: round(float(np.median(v)), 3) for k, v in p.times.items()}}
                   for p in photos],
        "pairs": [{k: ([round(x, 3) for x in v] if isinstance(v, list) else v)
                   for k, v in p.items()} for p in pairs],
    })
    print(f"\nResults: {path.relative_to(PROJECT_DIR)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
