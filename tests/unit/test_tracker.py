"""The face tracker: association by overlap and appearance, ends, crossings."""

from __future__ import annotations

import numpy as np

from sophon_face.video.tracker import FaceTracker, iou


def unit(seed: int, dim: int = 128) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return v / np.linalg.norm(v)


def near(feature: np.ndarray, seed: int, amount: float = 0.3) -> np.ndarray:
    """The same person in another frame: the feature plus a little noise."""
    v = feature + amount * unit(seed, feature.size)
    return (v / np.linalg.norm(v)).astype(np.float32)


def box(x: float, y: float, size: float = 100.0) -> np.ndarray:
    return np.array([x, y, x + size, y + size], dtype=np.float32)


def test_iou() -> None:
    assert iou(box(0, 0), box(0, 0)) == 1.0
    assert iou(box(0, 0), box(200, 0)) == 0.0
    assert abs(iou(box(0, 0), box(50, 0)) - 50 * 100 / (2 * 100 * 100 - 50 * 100)) < 1e-6


def test_a_walking_face_keeps_its_track_even_without_overlap() -> None:
    tracker = FaceTracker(timeout_s=1.0)
    person = unit(1)
    ids = []
    for step in range(10):  # 120 px per analysed frame: less than one box of overlap
        tracks, ended = tracker.update([box(step * 120.0, 200)], [near(person, 100 + step)],
                                       step * 0.125)
        ids.append(tracks[0].track_id)
        assert not ended
    assert set(ids) == {1}
    assert tracker.tracks[0].hits == 10


def test_two_people_crossing_keep_their_own_tracks() -> None:
    tracker = FaceTracker(timeout_s=1.0)
    a, b = unit(1), unit(2)
    for step in range(12):
        ax, bx = 100.0 + step * 80.0, 1000.0 - step * 80.0  # they pass each other
        tracks, _ = tracker.update([box(ax, 200), box(bx, 230)],
                                   [near(a, 200 + step), near(b, 300 + step)], step * 0.125)
        assert [t.track_id for t in tracks] == [1, 2], step


def test_a_different_face_in_the_same_place_is_a_new_track_only_without_overlap() -> None:
    tracker = FaceTracker(timeout_s=1.0)
    tracker.update([box(100, 100)], [unit(1)], 0.0)
    far, _ = tracker.update([box(700, 100)], [unit(2)], 0.1)  # a stranger elsewhere
    assert far[0].track_id == 2


def test_tracks_end_after_the_timeout_and_a_return_is_a_new_track() -> None:
    tracker = FaceTracker(timeout_s=1.0)
    person = unit(3)
    tracker.update([box(100, 100)], [person], 0.0)
    tracks, ended = tracker.update([], [], 0.9)
    assert tracks == [] and ended == []
    tracks, ended = tracker.update([box(100, 100)], [person], 2.5)
    assert [t.track_id for t in ended] == [1]
    assert tracks[0].track_id == 2
    assert [t.track_id for t in tracker.flush()] == [2]
    assert tracker.tracks == []


def test_timing_velocity_and_feature_mean() -> None:
    tracker = FaceTracker(timeout_s=1.0)
    person = unit(4)
    for step in range(5):
        tracker.update([box(100 + step * 40.0, 100)], [near(person, step)], 10.0 + step * 0.25)
    track = tracker.tracks[0]
    assert (track.first_seen, track.last_seen, track.hits) == (10.0, 11.0, 5)
    assert abs(float(np.linalg.norm(track.feature)) - 1.0) < 1e-5
    assert float(np.dot(track.feature, person)) > 0.9
    assert np.allclose(track.velocity, [160.0, 0.0, 160.0, 0.0])  # px per second
    assert np.allclose(track.predicted_box(11.5), box(340, 100))
