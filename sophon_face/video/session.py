"""One video device's analysis: frames -> faces -> tracks -> one event per person.

Runs on the event loop as one task per device, taking sampled frames from the reader's
mailbox one at a time (at most one frame of a device is ever being analysed), so a device
cannot flood the worker pool; its frames go through ``run_background``, behind API calls.

Per track (rules where the spec is silent, README "Video devices"):

* A face is usable when its short side is at least REGN_MIN_FACE, its pose passes
  REGN_POSE_THRESH (abs(yaw) + abs(pitch) at most 90 / 60 / 40 degrees for low / middle /
  high; ``off`` lets every pose through) and, when REGN_VIDEO_FIQA is on, it is sharp,
  lit and uncut (the ``normal`` fiqa level's clarity, brightness and partial items).
* The track keeps its ``BEST_SHOTS`` usable faces with the highest best-shot score
  (pipeline/frame_faces.py). Each time that set improves, their mean feature is searched
  in the device's group: at MATCH_THRESHOLD the person is recognised and the event is
  recorded at once, with the best shot so far; the track then yields nothing more.
* A track that ends (unseen for ``video.track_timeout_s``, or the stream ended) without
  being recognised is a stranger: one event with its best shot, if it had at least
  ``MIN_STRANGER_SHOTS`` usable faces (one stray false detection makes no event).
* Outside the armed windows (REGN_TIME_PART1/2) nothing is searched or recorded.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..pipeline.frame_faces import FrameFace, analyze_frame
from ..service.video_recognition import Identification, Sighting, VideoRecognition
from ..service.settings import RuntimeSettings
from .frames import Frame
from .reader import FrameMailbox
from .tracker import FaceTracker, Track

log = logging.getLogger(__name__)

BEST_SHOTS = 3
MIN_STRANGER_SHOTS = 2
POSE_LIMITS_DEG = {"off": float("inf"), "low": 90.0, "middle": 60.0, "high": 40.0}
#: The fiqa items REGN_VIDEO_FIQA checks (size and pose have their own settings).
VIDEO_FIQA_ITEMS = ("clarity", "brightness", "partial")
STRANGER_NAME = "stranger"
PREVIEW_ATTRIBUTES = ("mask", "age", "gender", "glasses")


@dataclass
class _Shot:
    face: FrameFace
    frame: Frame


@dataclass
class _TrackState:
    shots: List[_Shot] = field(default_factory=list)
    usable: int = 0
    done: bool = False  # its event is recorded (or it can have none)
    identification: Optional[Identification] = None
    best_stranger_score: float = 0.0
    attributes: Dict[str, str] = field(default_factory=dict)  # of its event, for the preview


class SessionStats:
    def __init__(self) -> None:
        self.frames_analysed = 0
        self.faces = 0
        self.tracks = 0
        self.events = 0
        self.stage_ms: Dict[str, float] = {}
        self.last_error = ""


@dataclass(frozen=True)
class PreviewSink:
    """Where analysed frames go for the preview stream (``push/preview.py``'s hub)."""

    wants_frames: Callable[[str], bool]
    publish_frame: Callable[..., None]


def _usable(face: FrameFace, settings: RuntimeSettings) -> bool:
    if face.quality.face_size < float(settings.value("REGN_MIN_FACE")):
        return False
    if face.pose_sum_deg > POSE_LIMITS_DEG.get(str(settings.value("REGN_POSE_THRESH")), 40.0):
        return False
    if settings.value("REGN_VIDEO_FIQA"):
        return not any(item in face.quality.failed for item in VIDEO_FIQA_ITEMS)
    return True


def _pose_score(face: FrameFace) -> float:
    return float(min(1.0, max(0.0, 1.0 - face.pose_sum_deg / 90.0)))


def _mean_feature(shots: List[_Shot]) -> np.ndarray:
    mean = np.mean([s.face.feature for s in shots], axis=0).astype(np.float32)
    norm = float(np.linalg.norm(mean))
    return mean / norm if norm > 0 else mean


class DeviceSession:
    def __init__(self, device: Dict[str, Any], pool: Any, recognition: VideoRecognition,
                 settings: RuntimeSettings, track_timeout_s: float, max_faces: int,
                 preview: Optional[PreviewSink] = None) -> None:
        self._device = device
        self._device_id = device["media_device_id"]
        self._pool = pool
        self._recognition = recognition
        self._settings = settings
        self._tracker = FaceTracker(track_timeout_s)
        self._max_faces = max_faces
        self._preview = preview
        self._group: Optional[Dict[str, Any]] = None
        self._shape: List[int] = [0, 0, 3]
        self._abandoned = False
        self.stats = SessionStats()

    def abandon(self) -> None:
        """The device is being deleted or reconfigured: open tracks end without events
        (their people have not left the picture; a restarted reader sees them again)."""
        self._abandoned = True

    async def run(self, mailbox: FrameMailbox) -> None:
        self._group = await self._recognition.group(self._device)
        try:
            while True:
                frame = await mailbox.take()
                if frame is None or self._abandoned:
                    break
                try:
                    await self._analyse(frame)
                except Exception as exc:  # one bad frame (or a busy pool) must not end the device
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("video device %s: frame %d not analysed: %s",
                                self._device_id, frame.frame_id, exc)
        finally:
            ended = self._tracker.flush()
            if not self._abandoned:  # the stream ended: everyone has left the picture
                for track in ended:
                    await self._finish(track)

    async def _analyse(self, frame: Frame) -> None:
        self._shape = frame.shape
        times: Dict[str, float] = {}
        faces: List[FrameFace] = await self._pool.run_background(
            analyze_frame, frame.image_bgr, self._device.get("roi_area") or [],
            float(self._settings.value("REGN_MIN_FACE")) * 0.5, self._max_faces, times)
        for stage, ms in times.items():
            self.stats.stage_ms[stage] = self.stats.stage_ms.get(stage, 0.0) + ms
        self.stats.frames_analysed += 1
        self.stats.faces += len(faces)
        tracks, ended = self._tracker.update([f.face.bbox for f in faces],
                                             [f.feature for f in faces], frame.timestamp)
        for track in ended:
            await self._finish(track)
        armed = self._recognition.is_armed()
        for face, track in zip(faces, tracks):
            state = track.data.get("state")
            if state is None:
                state = track.data["state"] = _TrackState()
                self.stats.tracks += 1
            if state.done or not _usable(face, self._settings):
                continue
            state.usable += 1
            if not self._keep_shot(state, face, frame) or not armed:
                continue
            identification = await self._recognition.identify(_mean_feature(state.shots),
                                                               self._group)
            state.best_stranger_score = max(state.best_stranger_score, identification.score)
            if identification.recognised:
                state.identification = identification
                state.done = True
                await self._record(track, state, identification, time.time())
        self._publish_preview(frame, faces, tracks)

    @staticmethod
    def _keep_shot(state: _TrackState, face: FrameFace, frame: Frame) -> bool:
        """Add the face to the track's best shots; True when the set changed."""
        shots = state.shots
        if len(shots) >= BEST_SHOTS and face.best_shot_score <= shots[-1].face.best_shot_score:
            return False
        shots.append(_Shot(face, frame))
        shots.sort(key=lambda s: -s.face.best_shot_score)
        del shots[BEST_SHOTS:]
        return True

    async def _finish(self, track: Track) -> None:
        state: Optional[_TrackState] = track.data.get("state")
        if state is None or state.done or state.usable < MIN_STRANGER_SHOTS or not state.shots:
            return
        state.done = True
        if not self._recognition.is_armed():
            return
        # A last look with every best shot: the set may have improved since the last search.
        identification = await self._recognition.identify(_mean_feature(state.shots), self._group)
        if not identification.recognised:
            identification = Identification(score=max(identification.score,
                                                       state.best_stranger_score))
        state.identification = identification
        await self._record(track, state, identification, time.time())

    async def _record(self, track: Track, state: _TrackState, identification: Identification,
                      now: float) -> None:
        best = state.shots[0]
        sighting = Sighting(
            feature=best.face.feature, face=best.face.face, image_bgr=best.frame.image_bgr,
            frame_id=best.frame.frame_id, track_id=track.track_id,
            in_timestamp=track.first_seen, out_timestamp=track.last_seen,
            recognition_timestamp=now, pose_score=_pose_score(best.face))
        recorded = await self._recognition.record(self._device, self._group, sighting,
                                                  identification, self._shape)
        if recorded is not None:
            self.stats.events += 1
            computed = recorded.record["recognize_face_attr"]
            state.attributes = {key: computed[key] for key in PREVIEW_ATTRIBUTES
                                if computed.get(key) is not None}

    def _publish_preview(self, frame: Frame, faces: List[FrameFace], tracks: List[Track]) -> None:
        if self._preview is None or not self._preview.wants_frames(self._device_id):
            return
        objs = []
        for face, track in zip(faces, tracks):
            state: Optional[_TrackState] = track.data.get("state")
            name = STRANGER_NAME
            if state is not None and state.identification is not None and \
                    state.identification.identity is not None:
                name = state.identification.identity["identity_name"]
            obj: Dict[str, Any] = {"track_id": track.track_id,
                                   "detect_box": [round(float(v), 1) for v in face.face.bbox],
                                   "identity_name": name}
            if state is not None:
                obj.update(state.attributes)  # device.md 10.1: only when computed
            objs.append(obj)
        self._preview.publish_frame(self._device_id, frame.image_bgr, frame.frame_id,
                                    frame.timestamp, objs, list(self._device.get("roi_area") or []))
