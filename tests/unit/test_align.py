"""Alignment: the similarity estimate, where the 5 points land in the crop, and real crops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sophon_face.pipeline.align import (
    ALIGNED_SIZE, ARCFACE_TEMPLATE_112, align_face, alignment_matrix, similarity_transform,
    transform_points,
)


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = math.radians(angle_deg)
    return np.array([[scale * math.cos(a), -scale * math.sin(a), tx],
                     [scale * math.sin(a), scale * math.cos(a), ty]])


def test_similarity_transform_recovers_an_exact_similarity():
    truth = _similarity(2.5, 17.0, 40.0, -12.0)
    src = np.random.default_rng(1).uniform(0, 200, (5, 2))
    estimated = similarity_transform(src, transform_points(truth, src))
    assert np.allclose(estimated, truth, atol=1e-9)


def test_similarity_transform_never_mirrors():
    mirrored = ARCFACE_TEMPLATE_112 * [-1, 1] + [112, 0]
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE_112)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_similarity_transform_rejects_mismatched_points():
    with pytest.raises(ValueError):
        similarity_transform(np.zeros((5, 2)), np.zeros((4, 2)))


def _dots_image(points: np.ndarray, shape, radius: int) -> np.ndarray:
    """A black image with a white disc of ``radius`` at each point."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    image = np.zeros(shape + (3,), np.uint8)
    for x, y in points:
        image[(xs - x) ** 2 + (ys - y) ** 2 <= radius ** 2] = 255
    return image


def _centroids(crop: np.ndarray) -> np.ndarray:
    """Brightness-weighted centre of the blob nearest each template point."""
    grey = crop[..., 0].astype(np.float64)
    ys, xs = np.mgrid[0:crop.shape[0], 0:crop.shape[1]]
    found = []
    for tx, ty in ARCFACE_TEMPLATE_112:
        near = ((xs - tx) ** 2 + (ys - ty) ** 2 <= 7 ** 2) * grey
        found.append([(near * xs).sum() / near.sum(), (near * ys).sum() / near.sum()])
    return np.array(found)


@pytest.mark.parametrize("scale", [1.3, 4.0])  # 4.0 takes the area-shrink path
def test_points_land_on_the_template(scale):
    # Put the template into a bigger image by a known similarity, then align it back.
    to_image = _similarity(scale, -12.0, 150.0, 90.0)
    points = transform_points(to_image, ARCFACE_TEMPLATE_112)
    image = _dots_image(points, (900, 900), radius=int(2.5 * scale))
    crop = align_face(image, points)
    assert crop.shape == (ALIGNED_SIZE, ALIGNED_SIZE, 3) and crop.dtype == np.uint8
    assert np.abs(_centroids(crop) - ARCFACE_TEMPLATE_112).max() < 0.6


def test_crop_outside_the_image_is_black():
    points = ARCFACE_TEMPLATE_112 - [30.0, 0.0]  # face partly left of the image
    crop = align_face(np.full((200, 200, 3), 90, np.uint8), points)
    assert crop[:, :20].max() == 0 and crop[:, 40:].min() == 90


def test_real_faces_align_to_112_crops(detector, load_test_image):
    image = load_test_image("solvay_1927_group.jpg")
    faces = detector.detect(image.image_bgr)
    for face in faces[:10] + [faces[-1]]:
        crop = align_face(image.image_bgr, face.landmarks)
        assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
        landed = transform_points(alignment_matrix(face.landmarks), face.landmarks)
        # 5 noisy points cannot all sit on the template, but a face's must be close.
        assert np.abs(landed - ARCFACE_TEMPLATE_112).max() < 8.0
    portrait = load_test_image("sunak.jpg")
    crop = align_face(portrait.image_bgr, detector.detect(portrait.image_bgr)[0].landmarks)
    assert crop.shape == (112, 112, 3) and crop[40:100, 30:80].mean() > 40  # a face, not the fill
