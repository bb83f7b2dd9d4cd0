"""Test videos made on the fly: real face photos walking across a 1280x720 picture.

Nothing large lives in git: each test writes the video it needs (MJPEG in AVI, which
OpenCV writes without extra codecs and GStreamer serves over RTSP). A ``Passage`` is one
person crossing the frame: the head cut out of a photo in tests/data (the detected face
box grown by ``HEAD_MARGIN``), scaled to ``face_px``, moving in a straight line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import cv2
import numpy as np

FRAME_SIZE = (1280, 720)
HEAD_MARGIN = 0.6  # of the face box, on every side


@dataclass(frozen=True)
class Passage:
    photo: str  # file name in tests/data
    start_s: float
    duration_s: float
    y_px: int = 200  # top of the head image
    left_to_right: bool = True
    face_px: int = 150  # width of the face box in the video


def head_image(photo_bgr: np.ndarray, face_box: Sequence[float], face_px: int) -> np.ndarray:
    """The head around ``face_box``, scaled so the face box is ``face_px`` wide."""
    x1, y1, x2, y2 = (float(v) for v in face_box)
    w, h = x2 - x1, y2 - y1
    height, width = photo_bgr.shape[:2]
    left, top = max(0, int(x1 - HEAD_MARGIN * w)), max(0, int(y1 - HEAD_MARGIN * h))
    right, bottom = min(width, int(x2 + HEAD_MARGIN * w)), min(height, int(y2 + HEAD_MARGIN * h))
    head = photo_bgr[top:bottom, left:right]
    scale = face_px / w
    return cv2.resize(head, (max(1, int(head.shape[1] * scale)), max(1, int(head.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


def background(seed: int = 0) -> np.ndarray:
    """A corridor-like backdrop: a vertical gradient with mild sensor noise."""
    width, height = FRAME_SIZE
    rng = np.random.default_rng(seed)
    ramp = np.linspace(90, 170, height, dtype=np.float32)[:, None, None]
    frame = np.broadcast_to(ramp, (height, width, 3)).copy()
    frame += rng.normal(0, 4, frame.shape).astype(np.float32)
    return np.clip(frame, 0, 255).astype(np.uint8)


def write_video(path: Path, passages: Sequence[Passage], duration_s: float,
                heads: Dict[str, Callable[[int], np.ndarray]], fps: float = 15.0) -> Path:
    """Write the scene as MJPEG AVI; ``heads[photo](face_px)`` gives each head image."""
    width, height = FRAME_SIZE
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    base = background()
    images: List[Tuple[Passage, np.ndarray]] = [(p, heads[p.photo](p.face_px)) for p in passages]
    try:
        for n in range(int(round(duration_s * fps))):
            t = n / fps
            frame = base.copy()
            for passage, head in images:
                progress = (t - passage.start_s) / passage.duration_s
                if not 0.0 <= progress <= 1.0:
                    continue
                hh, hw = head.shape[:2]
                travel = width - hw
                x = int(travel * (progress if passage.left_to_right else 1.0 - progress))
                y = min(max(0, passage.y_px), height - hh)
                frame[y:y + hh, x:x + hw] = head
            writer.write(frame)
    finally:
        writer.release()
    return path


def head_factory(detect: Callable[[np.ndarray], Sequence[float]],
                 load: Callable[[str], np.ndarray]) -> Callable[[str], Callable[[int], np.ndarray]]:
    """``heads[photo]`` built from a face detector and a photo loader (cached per photo)."""
    cache: Dict[str, Tuple[np.ndarray, Sequence[float]]] = {}

    def for_photo(photo: str) -> Callable[[int], np.ndarray]:
        if photo not in cache:
            image = load(photo)
            cache[photo] = (image, detect(image))
        image, box = cache[photo]
        return lambda face_px: head_image(image, box, face_px)

    return for_photo


#: Four passages: Ardern (registered from her 2018 photo, seen in her 2022 one), a
#: stranger (Sunak, never registered), then Obama and Macron crossing at the same time.
SCENE = [Passage("ardern_2022.jpg", 0.5, 3.0),
         Passage("sunak.jpg", 4.0, 3.0, left_to_right=False),
         Passage("obama_senate.jpg", 7.5, 3.0, y_px=60),
         Passage("macron_2025.jpg", 7.5, 3.0, y_px=380, left_to_right=False)]
SCENE_S = 11.0
REGISTERED = {"ardern": "ardern_2018.jpg", "obama": "obama_senate.jpg", "macron": "macron_2025.jpg"}
