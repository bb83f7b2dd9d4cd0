"""Face alignment: 5 landmarks -> the ArcFace 112x112 crop every recognizer here expects.

A similarity transform (rotation, uniform scale, translation; no shear) maps the detected
points onto the ArcFace template in the least-squares sense (Umeyama, 1991). A full affine
or a homography would also bend the face to fit noisy landmarks, and the recognizers were
trained on similarity-aligned crops.

The template and the estimate are OpenCV's ``FaceRecognizerSF.alignCrop``'s; a crop of a face
that needs no more than 2x shrinking is the same bilinear warp (pixels within 3 grey levels,
SFace features equal to 4 decimals). Larger faces are area-shrunk first (``align_face``), and
there the crops differ: their SFace features agree with ``alignCrop``'s to cosine 0.937-0.996
on the devset and tests/data. Measured with ``scripts/fidelity_check.py``
(issue 9), neither crop is the better one for recognition: on the devset's 1953 pairs the
single warp gave d' 6.91 against 6.77, but the 113 same-person pairs it changed went 58 up
and 55 down. The area-shrunk crop stays, because the clarity measure (quality.py) is
calibrated on it.
"""

from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

ALIGNED_SIZE = 112

#: Below this crop-pixels-per-image-pixel scale the face region is area-shrunk before
#: warping (see ``align_face``).
MAX_WARP_SHRINK = 0.5

#: Where the 5 points (left eye, right eye, nose, left mouth, right mouth as seen in the
#: image) land in the 112x112 crop: the template InsightFace's ArcFace models and OpenCV's
#: SFace were trained with.
ARCFACE_TEMPLATE_112 = np.array([
    [38.2946, 51.6963],
    [73.5318, 51.5014],
    [56.0252, 71.7366],
    [41.5493, 92.3655],
    [70.7299, 92.2041],
], dtype=np.float64)


def similarity_transform(src_points: np.ndarray, dst_points: np.ndarray) -> np.ndarray:
    """The (2, 3) similarity matrix that best maps ``src_points`` onto ``dst_points``.

    Umeyama's closed form: centre both point sets, take the SVD of their covariance for
    the rotation (with the reflection case excluded), then the scale from the source
    variance and the translation from the centroids.
    """
    src = np.asarray(src_points, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst_points, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or src.shape[0] < 2:
        raise ValueError(f"need matching point sets of >= 2 points, got {src.shape} and {dst.shape}")
    src_mean = src.mean(axis=0)
    dst_mean = dst.mean(axis=0)
    src_c = src - src_mean
    dst_c = dst - dst_mean
    covariance = dst_c.T @ src_c / src.shape[0]
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        sign[-1] = -1.0  # a reflection would fit better; a face is never mirrored
    rotation = u @ np.diag(sign) @ vt
    src_var = (src_c ** 2).sum() / src.shape[0]
    scale = float((singular * sign).sum() / src_var) if src_var > 0 else 1.0
    matrix = np.zeros((2, 3), dtype=np.float64)
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def alignment_matrix(landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The (2, 3) matrix from image pixels to the ``size`` x ``size`` aligned crop."""
    template = ARCFACE_TEMPLATE_112 * (size / float(ALIGNED_SIZE))
    return similarity_transform(np.asarray(landmarks, dtype=np.float64).reshape(5, 2), template)


def align_face(image_bgr: np.ndarray, landmarks: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    """The aligned ``size`` x ``size`` x 3 uint8 BGR face crop (outside the image: black).

    A face much larger than the crop is first shrunk with area averaging: bilinear warping
    alone samples a 4x-larger face sparsely, and the aliasing it adds looks like detail to
    the clarity measure and like noise to the recognizer.
    """
    matrix = alignment_matrix(landmarks, size)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < MAX_WARP_SHRINK:
        image_bgr, matrix = _shrunk_region(image_bgr, matrix, size, scale)
    return cv2.warpAffine(image_bgr, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _shrunk_region(image_bgr: np.ndarray, matrix: np.ndarray, size: int,
                   scale: float) -> Tuple[np.ndarray, np.ndarray]:
    """The image region the crop samples, shrunk to about crop resolution, and the matrix
    that maps it into the crop."""
    inverse = cv2.invertAffineTransform(matrix)
    corners = transform_points(inverse, [[0, 0], [size, 0], [0, size], [size, size]])
    h, w = image_bgr.shape[:2]
    x0 = int(np.clip(np.floor(corners[:, 0].min()) - 2, 0, w))
    y0 = int(np.clip(np.floor(corners[:, 1].min()) - 2, 0, h))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()) + 2, 0, w))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()) + 2, 0, h))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return image_bgr, matrix  # the crop lies outside the image: nothing to shrink
    region = image_bgr[y0:y1, x0:x1]
    new_w = max(1, int(round((x1 - x0) * scale)))
    new_h = max(1, int(round((y1 - y0) * scale)))
    shrunk = cv2.resize(region, (new_w, new_h), interpolation=cv2.INTER_AREA)
    fx = new_w / float(x1 - x0)
    fy = new_h / float(y1 - y0)
    # crop = M @ original, original = (shrunk / f) + origin
    adjusted = np.empty_like(matrix)
    adjusted[:, 0] = matrix[:, 0] / fx
    adjusted[:, 1] = matrix[:, 1] / fy
    adjusted[:, 2] = matrix[:, 2] + matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return shrunk, adjusted


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine matrix to (N, 2) points."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ matrix[:, :2].T + matrix[:, 2]
