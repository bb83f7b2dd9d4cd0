"""Following faces across analysed frames: greedy IoU + appearance association.

No tracker library fits here: the maintained ones (ByteTrack/OC-SORT ports, norfair,
motpy) bring SciPy, filterpy or torch and are tuned for 25-30 fps boxes, while our frames
come at a few per second (``video.analysis_fps``) and every face already has a
recognition feature. Between two analysed frames a walking person's face moves a good part
of its width, so position alone is fragile; the feature alone would join two look-alikes
standing side by side. A detection therefore joins a track when

* the boxes overlap (IoU >= ``MIN_IOU``), or
* the faces look alike (cosine >= ``MIN_COSINE`` against the track's mean feature) AND
  the new box lies near the track's predicted one (centre distance <= ``MAX_JUMP`` face
  widths; the prediction adds the track's last velocity),

pairs taken greedily by ``IoU + cosine``, best first, each track and detection once. A
detection left over starts a new track. A track unseen for ``timeout_s`` has ended.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

MIN_IOU = 0.3
#: SFace features of one person in consecutive video frames: cosine 0.6-0.95; two
#: different people: below 0.35 almost always (the recognizer's own threshold is 0.363).
MIN_COSINE = 0.45
MAX_JUMP = 2.5
#: Weight of the newest feature in a track's running mean (appearance drifts with pose).
FEATURE_MOMENTUM = 0.3


def iou(a: np.ndarray, b: np.ndarray) -> float:
    ix1, iy1 = max(a[0], b[0]), max(a[1], b[1])
    ix2, iy2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, ix2 - ix1) * max(0.0, iy2 - iy1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


@dataclass
class Track:
    """One person's passage. ``data`` belongs to the caller (best shots, recognition)."""

    track_id: int
    box: np.ndarray  # (4,) last box, full-frame pixels
    feature: np.ndarray  # (D,) running mean, unit norm
    first_seen: float
    last_seen: float
    hits: int = 1
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(4, dtype=np.float32))
    data: Dict[str, Any] = field(default_factory=dict)

    def predicted_box(self, now: float) -> np.ndarray:
        return self.box + self.velocity * max(0.0, now - self.last_seen)

    def _update(self, box: np.ndarray, feature: np.ndarray, now: float) -> None:
        dt = now - self.last_seen
        if dt > 0:
            self.velocity = ((box - self.box) / dt).astype(np.float32)
        self.box = box
        mixed = (1.0 - FEATURE_MOMENTUM) * self.feature + FEATURE_MOMENTUM * feature
        norm = float(np.linalg.norm(mixed))
        self.feature = mixed / norm if norm > 0 else feature
        self.last_seen = now
        self.hits += 1


class FaceTracker:
    """Tracks of one device. Not thread-safe: one device session drives it."""

    def __init__(self, timeout_s: float = 1.0) -> None:
        self._timeout_s = timeout_s
        self._tracks: List[Track] = []
        self._next_id = 1

    @property
    def tracks(self) -> List[Track]:
        return list(self._tracks)

    def update(self, boxes: Sequence[np.ndarray], features: Sequence[np.ndarray],
               now: float) -> Tuple[List[Track], List[Track]]:
        """Associate one frame's detections; ``(track of each detection, ended tracks)``.

        Tracks unseen for longer than the timeout end before matching, so a person who
        left and came back gets a new track (and a new event)."""
        ended = self.expire(now)
        pairs: List[Tuple[float, int, int]] = []
        for t, track in enumerate(self._tracks):
            predicted = track.predicted_box(now)
            width = max(1.0, float(predicted[2] - predicted[0]))
            centre = (predicted[:2] + predicted[2:]) / 2.0
            for d, box in enumerate(boxes):
                overlap = iou(predicted, box)
                cosine = float(np.dot(track.feature, features[d]))
                jump = float(np.linalg.norm((box[:2] + box[2:]) / 2.0 - centre)) / width
                if overlap >= MIN_IOU or (cosine >= MIN_COSINE and jump <= MAX_JUMP):
                    pairs.append((overlap + cosine, t, d))
        pairs.sort(key=lambda p: -p[0])
        assigned: Dict[int, Track] = {}
        used_tracks = set()
        for _score, t, d in pairs:
            if t in used_tracks or d in assigned:
                continue
            used_tracks.add(t)
            track = self._tracks[t]
            track._update(np.asarray(boxes[d], dtype=np.float32), features[d], now)
            assigned[d] = track
        result: List[Track] = []
        for d, box in enumerate(boxes):
            track = assigned.get(d)
            if track is None:
                track = Track(self._next_id, np.asarray(box, dtype=np.float32),
                              np.asarray(features[d], dtype=np.float32), now, now)
                self._next_id += 1
                self._tracks.append(track)
            result.append(track)
        return result, ended

    def expire(self, now: float) -> List[Track]:
        """End and return the tracks unseen for longer than the timeout."""
        ended = [t for t in self._tracks if now - t.last_seen > self._timeout_s]
        if ended:
            self._tracks = [t for t in self._tracks if now - t.last_seen <= self._timeout_s]
        return ended

    def flush(self) -> List[Track]:
        """End every track (the stream ended or the device is being stopped)."""
        ended, self._tracks = self._tracks, []
        return ended

    def find(self, track_id: int) -> Optional[Track]:
        for track in self._tracks:
            if track.track_id == track_id:
                return track
        return None
