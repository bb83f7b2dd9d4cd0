"""Fidelity of our face pipeline against OpenCV's bare FaceDetectorYN + FaceRecognizerSF.

Both run the same folded fp32 ONNX files (``sophon_face.manifest.files.prepared_path``) on the
same decoded pixels (``decode_image_bytes``, the decoder ``compare`` uses; checked identical
to ``cv2.imread``). For every photo of the devset (and, separately, of ``tests/data``) each
contender yields the feature of the LARGEST face, or a refusal (no face):

* ``api``: what ``POST compare`` runs, i.e. ``FacePipeline.detect`` then ``analyze_largest``
  with ``fiqa_level: no``, exactly as the tree has it now;
* ``api[...]``: the same pipeline with ONE piece swapped for a candidate (the detector's
  letterbox, the alignment crop, the score threshold, the recognizer's colour order), so each
  candidate is measured in isolation. ``legacy`` is the letterbox before issue 9, which
  enlarged photos smaller than 640x640 to fill it; ``no-enlarge`` only shrinks (the tree's
  letterbox since issue 9); ``shrink-linear`` shrinks bilinearly instead of by area;
  ``align-direct`` crops with one bilinear warp like ``alignCrop`` (no area pre-shrink);
* ``cv-native``: OpenCV as its samples use it: ``FaceDetectorYN`` with the input size set to
  the image's own size, then ``FaceRecognizerSF.alignCrop`` + ``feature``;
* ``cv-640`` / ``cv-640-noup``: OpenCV's detector on the 640x640 letterbox canvas (the photo
  enlarged to fit / never enlarged, i.e. the legacy / the current detector input), boxes
  mapped back, then ``alignCrop`` on the full photo.

Reported per contender: accuracy over all pairs at the best threshold and at our fixed
``match_cosine`` (a pair with a refused photo counts as an error), TAR at FAR 1e-2 and 1e-3
(1e-3 only where there are >= 1000 different-person pairs, and then it allows a single false
accept), d' between the same- and different-person cosines, refusals, and the per-photo
cosine of the contender's feature to cv-native's and to cv-640-noup's (same detector input as
the tree's ``api``). Then the photos on which ``api`` and ``cv-native`` differ most, with the
difference split into its sources: landmarks (both crops by ``alignCrop``, from our landmarks
vs OpenCV's), crop (our ``align_face`` vs ``alignCrop`` from the same landmarks) and
recognizer runtime (ONNX Runtime vs OpenCV DNN on the same crop). Last, refusals on tight
crops of the tests/data portraits (the face filling 80-100 % of a small photo, rolled up to
35 degrees), the case where enlarging to 640 loses faces.

Photos of tests/data named ``no_face*`` have no face: they are left out of the pairs and
only their refusal is reported.

Run from the project root:
    .venv/bin/python scripts/fidelity_check.py [--devset DIR] [--threads N] [--json OUT]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import logging
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple
from unittest import mock

import cv2
import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:  # run as ``python scripts/fidelity_check.py``
    sys.path.insert(0, str(PROJECT_DIR))

from sophon_face.backends.onnx import OnnxBackend  # noqa: E402
from sophon_face.errors import NoFaceError  # noqa: E402
from sophon_face.manifest.files import prepared_path  # noqa: E402
from sophon_face.manifest.schema import Manifest, ModelSpec, load_manifest  # noqa: E402
from sophon_face.pipeline import detector as detector_module  # noqa: E402
from sophon_face.pipeline import face_pipeline as face_pipeline_module  # noqa: E402
from sophon_face.pipeline.align import ALIGNED_SIZE, alignment_matrix  # noqa: E402
from sophon_face.pipeline.detector import Detector  # noqa: E402
from sophon_face.pipeline.embedder import Embedder  # noqa: E402
from sophon_face.pipeline.face_pipeline import FacePipeline  # noqa: E402
from sophon_face.pipeline.images import decode_image_bytes  # noqa: E402
from sophon_face.pipeline.quality import QualityThresholds  # noqa: E402
from sophon_face.pipeline.types import DecodedImage, ImageLimits  # noqa: E402

MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"
DEVSET_DIR = Path("/work/shared/data/devset")
TEST_DATA_DIR = PROJECT_DIR / "tests" / "data"
#: Git-ignored; the benchmarks keep their prepared models here too.
DEFAULT_CACHE_DIR = PROJECT_DIR / "bench" / "results" / "models"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
FARS = (1e-2, 1e-3)
#: Worst-agreeing photos listed per set.
WORST_SHOWN = 8
#: tests/data photos without a face (left out of the pairs).
NO_FACE_PREFIX = "no_face"
#: Tight crops: face box side / photo side, photo side in px, in-plane roll in degrees.
TIGHT_FILL = (0.8, 0.9, 1.0)
TIGHT_SIDE_PX = (160, 250)
TIGHT_ROLL_DEG = (-35.0, 0.0, 35.0)


@dataclasses.dataclass
class Photo:
    name: str  # relative to its set's folder
    identity: str
    image: DecodedImage


@dataclasses.dataclass
class Result:
    """One contender on one photo: the largest face's feature, or None when refused."""

    feature: Optional[np.ndarray]
    landmarks: Optional[np.ndarray] = None  # (5, 2) in original-image pixels
    bbox: Optional[np.ndarray] = None  # (4,) xyxy in original-image pixels


Contender = Callable[[DecodedImage], Result]


# --- photos ---------------------------------------------------------------------------

def devset_photos(root: Path) -> List[Photo]:
    """One folder per person; every image file below it."""
    return [_photo(path, root, path.parent.name) for path in sorted(root.rglob("*"))
            if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]


def test_data_photos(root: Path) -> List[Photo]:
    """tests/data: the person is the file name up to the first ``_`` (ardern_2018 ...)."""
    return [_photo(p, root, p.stem.split("_")[0]) for p in sorted(root.iterdir())
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]


def _photo(path: Path, root: Path, identity: str) -> Photo:
    image = decode_image_bytes(path.read_bytes(), "image_base64", ImageLimits())
    return Photo(str(path.relative_to(root)), identity, image)


def decoded_like_imread(photos: Sequence[Photo], root: Path) -> int:
    """How many photos ``decode_image_bytes`` decodes to exactly ``cv2.imread``'s pixels."""
    same = 0
    for photo in photos:
        theirs = cv2.imread(str(root / photo.name), cv2.IMREAD_COLOR)
        same += int(theirs is not None and np.array_equal(theirs, photo.image.image_bgr))
    return same


# --- contenders: our pipeline and its candidate changes -----------------------------------

def letterbox_variant(enlarge: bool, shrink_interpolation: int):
    """A ``detector.letterbox`` replacement: enlarge small photos to fill the input (the
    letterbox before issue 9) or not; the interpolation used when shrinking (enlarging was
    always bilinear)."""

    def letterbox(image_bgr: np.ndarray, input_size: Tuple[int, int]):
        in_w, in_h = int(input_size[0]), int(input_size[1])
        h, w = image_bgr.shape[:2]
        scale = min(in_w / w, in_h / h)
        if not enlarge:
            scale = min(scale, 1.0)
        new_w = min(in_w, max(1, int(round(w * scale))))
        new_h = min(in_h, max(1, int(round(h * scale))))
        interp = shrink_interpolation if scale < 1.0 else cv2.INTER_LINEAR
        resized = image_bgr if (new_w, new_h) == (w, h) else cv2.resize(
            image_bgr, (new_w, new_h), interpolation=interp)
        canvas = np.zeros((in_h, in_w, 3), dtype=np.uint8)
        canvas[:new_h, :new_w] = resized
        return canvas, new_w / w, new_h / h

    return letterbox


def align_direct(image_bgr: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """What ``FaceRecognizerSF.alignCrop`` does: one bilinear warp, no area pre-shrink."""
    return cv2.warpAffine(image_bgr, alignment_matrix(landmarks, size), (size, size),
                          flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                          borderValue=(0, 0, 0))


Swap = Tuple[object, str, object]
LEGACY_LETTERBOX: Swap = (detector_module, "letterbox", letterbox_variant(True, cv2.INTER_AREA))
NO_ENLARGE_LETTERBOX: Swap = (detector_module, "letterbox", letterbox_variant(False, cv2.INTER_AREA))
ALIGN_DIRECT: Swap = (face_pipeline_module, "align_face", align_direct)

#: Candidate swaps, each one change from ``legacy`` (and the two that fit together).
SWAPS: Dict[str, List[Swap]] = {
    "legacy": [LEGACY_LETTERBOX],
    "legacy+no-enlarge": [NO_ENLARGE_LETTERBOX],
    "legacy+shrink-linear": [(detector_module, "letterbox", letterbox_variant(True, cv2.INTER_LINEAR))],
    "legacy+align-direct": [LEGACY_LETTERBOX, ALIGN_DIRECT],
    "no-enlarge+align-direct": [NO_ENLARGE_LETTERBOX, ALIGN_DIRECT],
}


@contextlib.contextmanager
def swapped(swaps: Sequence[Swap]) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for module, name, value in swaps:
            stack.enter_context(mock.patch.object(module, name, value))
        yield


def pipeline_contender(pipeline: FacePipeline, swaps: Sequence[Swap] = ()) -> Contender:
    """``compare``'s per-image steps (service/analysis.py ``_compare_job``), fiqa_level no."""

    def run(image: DecodedImage) -> Result:
        with swapped(swaps):
            try:
                faces = pipeline.detect(image)
            except NoFaceError:
                return Result(None)
            analyzed = pipeline.analyze_largest(image, "no", with_feature=True, faces=faces)
        return Result(analyzed.feature, analyzed.face.landmarks, analyzed.face.bbox)

    return run


# --- contenders: OpenCV -----------------------------------------------------------------

class OpenCvFace:
    """OpenCV's FaceDetectorYN + FaceRecognizerSF on our folded files."""

    def __init__(self, detector_file: Path, recognizer_file: Path, spec: ModelSpec) -> None:
        self._spec = spec
        self.detector = cv2.FaceDetectorYN.create(
            str(detector_file), "", tuple(spec.input_size), spec.score_threshold, spec.nms_iou, 5000)
        self.recognizer = cv2.FaceRecognizerSF.create(str(recognizer_file), "")

    def largest_face(self, image_bgr: np.ndarray, mode: str) -> Optional[np.ndarray]:
        """The (15,) row of the largest face in original pixels, or None.

        ``mode``: "native" (input size = the image's size, as OpenCV's samples do),
        "640" (the photo fitted into 640x640, enlarged if smaller) or "640-noup"
        (shrunk to fit, never enlarged)."""
        if mode == "native":
            h, w = image_bgr.shape[:2]
            self.detector.setInputSize((w, h))
            _, faces = self.detector.detect(image_bgr)
            scale = np.ones(2, np.float32)
        else:
            letterbox = letterbox_variant(mode == "640", cv2.INTER_AREA)
            canvas, sx, sy = letterbox(image_bgr, self._spec.input_size)
            self.detector.setInputSize(tuple(self._spec.input_size))
            _, faces = self.detector.detect(canvas)
            scale = np.array([sx, sy], np.float32)
        if faces is None or len(faces) == 0:
            return None
        face = faces[int(np.argmax(faces[:, 2] * faces[:, 3]))].copy()
        face[0:14] = (face[0:14].reshape(7, 2) / scale).reshape(14)
        return face

    def feature_of_crop(self, crop_bgr: np.ndarray) -> np.ndarray:
        return _unit(self.recognizer.feature(crop_bgr).reshape(-1))

    def align_crop(self, image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        face = np.zeros((1, 15), np.float32)
        face[0, 4:14] = np.asarray(landmarks, np.float32).reshape(10)
        return self.recognizer.alignCrop(image_bgr, face)

    def contender(self, mode: str) -> Contender:
        def run(image: DecodedImage) -> Result:
            face = self.largest_face(image.image_bgr, mode)
            if face is None:
                return Result(None)
            crop = self.recognizer.alignCrop(image.image_bgr, face.reshape(1, 15))
            box = np.array([face[0], face[1], face[0] + face[2], face[1] + face[3]], np.float32)
            return Result(self.feature_of_crop(crop), face[4:14].reshape(5, 2), box)

        return run


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, np.float64).reshape(-1)
    return (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)


# --- metrics --------------------------------------------------------------------------

def pair_metrics(photos: Sequence[Photo], results: Sequence[Result],
                 match_cosine: float) -> Dict[str, object]:
    same: List[float] = []
    different: List[float] = []
    refused_same = refused_different = 0
    for i, j in itertools.combinations(range(len(photos)), 2):
        is_same = photos[i].identity == photos[j].identity
        a, b = results[i].feature, results[j].feature
        if a is None or b is None:
            if is_same:
                refused_same += 1
            else:
                refused_different += 1
            continue
        (same if is_same else different).append(float(a @ b))
    pos, neg = np.array(same), np.array(different)
    n_pos = len(pos) + refused_same
    n_neg = len(neg) + refused_different
    n_pairs = n_pos + n_neg

    def correct_at(t: float) -> int:  # a refused pair is never correct
        return int((pos >= t).sum() + (neg < t).sum())

    best_t = max(np.concatenate([pos, neg, [np.inf]]), key=correct_at)
    tar: Dict[float, Optional[float]] = {}
    for far in FARS:
        if n_neg * far < 1.0 or not n_pos:
            tar[far] = None  # too few different-person pairs for this FAR
            continue
        allowed = int(np.floor(far * n_neg))  # false accepts allowed; refusals never accept
        ordered = np.sort(neg)[::-1]
        threshold = ordered[allowed] if allowed < len(ordered) else -np.inf
        tar[far] = float((pos > threshold).sum() / n_pos)
    d_prime = float((pos.mean() - neg.mean()) / np.sqrt((pos.var() + neg.var()) / 2.0)) \
        if len(pos) > 1 and len(neg) > 1 else float("nan")
    return {
        "pairs": n_pairs, "same": n_pos, "different": n_neg,
        "refused_pairs": refused_same + refused_different,
        "acc_best": correct_at(best_t) / n_pairs, "best_threshold": float(best_t),
        "acc_fixed": correct_at(match_cosine) / n_pairs,
        "errors_fixed": n_pairs - correct_at(match_cosine),
        "tar": tar, "d_prime": d_prime,
        "same_mean": float(pos.mean()) if len(pos) else float("nan"),
        "same_min": float(pos.min()) if len(pos) else float("nan"),
        "different_max": float(neg.max()) if len(neg) else float("nan"),
    }


def agreement(results: Sequence[Result], reference: Sequence[Result]) -> List[float]:
    """Per-photo cosine between two contenders' features (NaN where either refused)."""
    return [float(r.feature @ ref.feature) if r.feature is not None and ref.feature is not None
            else float("nan") for r, ref in zip(results, reference)]


def crop_scale(landmarks: np.ndarray) -> float:
    """Crop pixels per image pixel of the alignment (``align_face`` pre-shrinks below 0.5)."""
    return float(np.sqrt(abs(np.linalg.det(alignment_matrix(landmarks)[:, :2]))))


# --- report ---------------------------------------------------------------------------

def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"


def _mean_min(values: Sequence[float]) -> str:
    arr = np.array(values, dtype=np.float64)
    if np.all(np.isnan(arr)):
        return "n/a"
    return f"{np.nanmean(arr):.4f} / {np.nanmin(arr):.4f}"


def summary_table(photos: Sequence[Photo], runs: Dict[str, List[Result]],
                  match_cosine: float) -> Tuple[str, Dict[str, object]]:
    rows = [f"| contender | acc best % (t) | acc @{match_cosine:.3f} % (errors) | TAR@FAR1e-2 % "
            "| TAR@FAR1e-3 % | d' | same mean / min | diff max | refused "
            "| cos to cv-native mean / min | cos to cv-640-noup mean / min |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    payload: Dict[str, object] = {}
    for name, results in runs.items():
        m = pair_metrics(photos, results, match_cosine)
        native = agreement(results, runs["cv-native"])
        same_input = agreement(results, runs["cv-640-noup"])
        refused = [p.name for p, r in zip(photos, results) if r.feature is None]
        tar = m["tar"]
        assert isinstance(tar, dict)
        rows.append(
            f"| {name} | {_pct(m['acc_best'])} ({m['best_threshold']:.3f}) "
            f"| {_pct(m['acc_fixed'])} ({m['errors_fixed']}) "
            f"| {_pct(tar[1e-2])} | {_pct(tar[1e-3])} | {m['d_prime']:.3f} "
            f"| {m['same_mean']:.4f} / {m['same_min']:.4f} | {m['different_max']:.4f} "
            f"| {len(refused)}{(': ' + ', '.join(refused)) if refused else ''} "
            f"| {_mean_min(native)} | {_mean_min(same_input)} |")
        payload[name] = dict(m, tar={str(k): v for k, v in tar.items()}, refused=refused,
                             cos_to_cv_native=native, cos_to_cv_640_noup=same_input)
    return "\n".join(rows), payload


def worst_photos_table(photos: Sequence[Photo], ours: Sequence[Result], theirs: Sequence[Result],
                       cv_face: OpenCvFace, embedder: Embedder, input_size: Tuple[int, int]) -> str:
    """Where api and cv-native disagree most, and which stage the difference comes from."""
    rows = ["| photo | size | detector scale | eye dist px | crop scale | lm diff / eye "
            "| cos api vs cv-native | landmarks only | crop only | runtime only |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    agree = agreement(ours, theirs)
    order = sorted(range(len(photos)), key=lambda i: float(np.nan_to_num(agree[i], nan=-2.0)))
    for i in order[:WORST_SHOWN]:
        photo, a, b = photos[i], ours[i], theirs[i]
        image_bgr = photo.image.image_bgr
        h, w = image_bgr.shape[:2]
        _, scale, _ = detector_module.letterbox(image_bgr, input_size)
        head = f"| {photo.name} | {w}x{h} | {scale:.2f} "
        if a.landmarks is None or b.landmarks is None:
            rows.append(head + f"| | | refused by {'api' if a.landmarks is None else ''}"
                        f"{' and ' if a.landmarks is None and b.landmarks is None else ''}"
                        f"{'cv-native' if b.landmarks is None else ''} | | | | |")
            continue
        eye = float(np.linalg.norm(b.landmarks[1] - b.landmarks[0]))
        lm_diff = float(np.abs(a.landmarks - b.landmarks).max()) / max(eye, 1e-6)
        cv_crop_ours = cv_face.align_crop(image_bgr, a.landmarks)
        cv_crop_theirs = cv_face.align_crop(image_bgr, b.landmarks)
        our_crop = face_pipeline_module.align_face(image_bgr, a.landmarks)
        f_cv_ours, f_cv_theirs, f_our_crop = embedder.embed([cv_crop_ours, cv_crop_theirs, our_crop])
        rows.append(head + f"| {eye:.0f} | {crop_scale(a.landmarks):.2f} | {lm_diff:.3f} "
                    f"| {agree[i]:.4f} | {float(f_cv_ours @ f_cv_theirs):.4f} "
                    f"| {float(f_our_crop @ f_cv_ours):.4f} "
                    f"| {float(cv_face.feature_of_crop(cv_crop_theirs) @ f_cv_theirs):.5f} |")
    return "\n".join(rows)


def tight_crops(image_bgr: np.ndarray, bbox: np.ndarray) -> Iterator[Tuple[str, np.ndarray]]:
    """Square photos cut around a face so that it fills most of them, some of them rolled."""
    cx, cy = float(bbox[0] + bbox[2]) / 2.0, float(bbox[1] + bbox[3]) / 2.0
    box_side = float(max(bbox[2] - bbox[0], bbox[3] - bbox[1]))
    for fill, side, roll in itertools.product(TIGHT_FILL, TIGHT_SIDE_PX, TIGHT_ROLL_DEG):
        matrix = cv2.getRotationMatrix2D((cx, cy), roll, side * fill / box_side)
        matrix[:, 2] += [side / 2.0 - cx, side / 2.0 - cy]
        crop = cv2.warpAffine(image_bgr, matrix, (side, side), flags=cv2.INTER_AREA,
                              borderMode=cv2.BORDER_REPLICATE)
        yield f"fill {fill:.1f} side {side} roll {roll:+.0f}", crop


def tight_crop_table(photos: Sequence[Photo], contenders: Dict[str, Contender],
                     names: Sequence[str]) -> str:
    counts = {name: 0 for name in names}
    refused: Dict[str, List[str]] = {name: [] for name in names}
    total = 0
    for photo in photos:
        found = contenders["api"](photo.image)
        if found.bbox is None or photo.identity == "solvay":
            continue  # no face, or a group photo: no single face to cut around
        for label, crop in tight_crops(photo.image.image_bgr, found.bbox):
            total += 1
            image = DecodedImage(image_bgr=crop, encoded=b"", format="png", param="image_base64")
            for name in names:
                if contenders[name](image).feature is None:
                    counts[name] += 1
                    refused[name].append(f"{photo.name} ({label})")
    rows = ["| contender | refused tight crops | which |", "|---|---|---|"]
    for name in names:
        rows.append(f"| {name} | {counts[name]} of {total} | {'; '.join(refused[name][:6])}"
                    f"{' ...' if len(refused[name]) > 6 else ''} |")
    return "\n".join(rows)


# --- main -----------------------------------------------------------------------------

def build(manifest: Manifest, cache_dir: Path, threads: int):
    detector_file = prepared_path(manifest.detector, manifest.base_dir, cache_dir)
    recognizer_file = prepared_path(manifest.recognizer, manifest.base_dir, cache_dir)
    det_backend = OnnxBackend(str(detector_file), intra_op_threads=threads)
    rec_backend = OnnxBackend(str(recognizer_file), intra_op_threads=threads)
    embedder = Embedder(rec_backend, manifest.recognizer)
    pipeline = FacePipeline(Detector(det_backend, manifest.detector), embedder, QualityThresholds())
    cv2.setNumThreads(threads)
    cv_face = OpenCvFace(detector_file, recognizer_file, manifest.detector)
    contenders: Dict[str, Contender] = {"api": pipeline_contender(pipeline)}
    for name, swaps in SWAPS.items():
        contenders[f"api[{name}]"] = pipeline_contender(pipeline, swaps)
    # Score threshold and colour order: a detector / recognizer built from a changed spec.
    low = dataclasses.replace(manifest.detector, score_threshold=0.6)
    contenders["api[score 0.6]"] = pipeline_contender(
        FacePipeline(Detector(det_backend, low), embedder, QualityThresholds()))
    bgr = dataclasses.replace(manifest.recognizer, color_order="bgr")
    contenders["api[recognizer BGR]"] = pipeline_contender(
        FacePipeline(Detector(det_backend, manifest.detector), Embedder(rec_backend, bgr),
                     QualityThresholds()))
    for mode in ("native", "640", "640-noup"):
        contenders[f"cv-{mode}"] = cv_face.contender(mode)
    return contenders, cv_face, embedder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--devset", type=Path, default=DEVSET_DIR)
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                        help="where the folded models are cached (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    manifest = load_manifest(MANIFEST)
    match_cosine = float(manifest.recognizer.match_cosine or 0.0)
    input_size = (int(manifest.detector.input_size[0]), int(manifest.detector.input_size[1]))
    contenders, cv_face, embedder = build(manifest, args.cache_dir, args.threads)
    test_photos = test_data_photos(TEST_DATA_DIR)
    sets = [("tests/data", TEST_DATA_DIR, test_photos)]
    if args.devset.is_dir():
        sets.insert(0, ("devset", args.devset, devset_photos(args.devset)))
    else:
        print(f"(no devset at {args.devset}; tests/data only)\n")
    payload: Dict[str, object] = {}
    for set_name, root, all_photos in sets:
        photos = [p for p in all_photos if not Path(p.name).name.startswith(NO_FACE_PREFIX)]
        no_face = [p for p in all_photos if p not in photos]
        runs = {name: [run(p.image) for p in photos] for name, run in contenders.items()}
        n_ids = len({p.identity for p in photos})
        print(f"## {set_name}: {len(photos)} photos of {n_ids} people\n")
        print(f"Decoded pixels identical to cv2.imread: {decoded_like_imread(all_photos, root)} "
              f"of {len(all_photos)} photos.\n")
        for photo in no_face:
            refused_by = [name for name, run in contenders.items() if run(photo.image).feature is None]
            print(f"No-face photo {photo.name}: refused by {len(refused_by)} of {len(contenders)} "
                  f"contenders{'' if len(refused_by) == len(contenders) else ' (not all!)'}.\n")
        table, numbers = summary_table(photos, runs, match_cosine)
        print(table + "\n")
        print(f"### {set_name}: photos where api and cv-native differ most\n")
        print(worst_photos_table(photos, runs["api"], runs["cv-native"], cv_face, embedder,
                                 input_size) + "\n")
        payload[set_name] = {"photos": [p.name for p in photos], "contenders": numbers}
    print("## Tight crops of the tests/data portraits "
          f"(face fills {TIGHT_FILL} of a {TIGHT_SIDE_PX} px square, roll {TIGHT_ROLL_DEG} deg)\n")
    print(tight_crop_table(test_photos, contenders,
                           ["api", "api[legacy]", "cv-native", "cv-640"]) + "\n")
    if args.json:
        args.json.write_text(json.dumps(payload, indent=1, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
