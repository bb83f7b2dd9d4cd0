"""Pipeline stage times for ``/metrics``: each worker's pipeline seen through a meter.

The pipeline already measures its stages (``FacePipeline.analyze_largest`` fills a
``times`` dict with detect / align / quality / embed milliseconds), but no use case asks
for them. Rather than teach every job to pass a dict, the worker pool's factory is wrapped
once (app.py): each worker gets a ``MeteredPipeline`` that hands ``analyze_largest`` a dict
and puts every stage into one histogram, and times the calls that are a stage on their
own (``detect`` / ``detect_bgr``: detect; ``features_of`` / ``embed_crops``: embed, the
alignment of their crops included). Everything else passes straight through to the real
pipeline, so the jobs cannot tell the difference.

The histogram is thread-safe and lives in the app's own registry; recording costs a few
microseconds per stage next to milliseconds of inference. Decoding happens in the jobs,
outside the pipeline, and is not measured; video frames' stages are also kept per device
by the sessions (``stage_ms``), exported from /health's numbers by ``api/metrics.py``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.types import AnalyzedFace, DecodedImage, DetectedFace

#: The stages the pipeline measures, in request order (the histogram's ``stage`` label).
STAGES = ("detect", "align", "quality", "embed")
#: Half a millisecond (a small face's alignment) to 2.5 s (a large photo on a busy box).
STAGE_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5)


class StageTimes:
    """The ``sophon_face_pipeline_stage_duration_seconds`` histogram of one app."""

    def __init__(self, registry: CollectorRegistry) -> None:
        histogram = Histogram(
            "sophon_face_pipeline_stage_duration_seconds",
            "Time of one pipeline stage on a worker (API requests and video frames).",
            ["stage"], buckets=STAGE_BUCKETS_S, registry=registry)
        # Bound once: a labels() lookup per observation would take the family's lock.
        self._by_stage = {stage: histogram.labels(stage=stage) for stage in STAGES}

    def observe_ms(self, times: Dict[str, float]) -> None:
        for stage, ms in times.items():
            child = self._by_stage.get(stage)
            if child is not None:
                child.observe(ms / 1000.0)

    def observe_since(self, stage: str, started: float) -> None:
        self._by_stage[stage].observe(time.perf_counter() - started)

    def metered(self, factory: Callable[[], FacePipeline]) -> Callable[[], "MeteredPipeline"]:
        """The worker pool's pipeline factory, each pipeline it builds behind a meter."""
        return lambda: MeteredPipeline(factory(), self)


class MeteredPipeline:
    """A ``FacePipeline`` whose stage times go into ``StageTimes``; same calls, same
    results. Attributes and methods not metered here are the inner pipeline's."""

    def __init__(self, inner: FacePipeline, times: StageTimes) -> None:
        self._inner = inner
        self._times = times

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class does not define: feature_dim, thresholds,
        # extras, headpose_of, warm_up, close, and the private parts FacePipeline's own
        # unbound methods (the pool's warm_up/close callbacks) reach for.
        return getattr(self._inner, name)

    def detect(self, image: DecodedImage) -> Any:
        started = time.perf_counter()
        try:
            return self._inner.detect(image)
        finally:
            self._times.observe_since("detect", started)

    def detect_bgr(self, image_bgr: np.ndarray) -> Any:
        started = time.perf_counter()
        try:
            return self._inner.detect_bgr(image_bgr)
        finally:
            self._times.observe_since("detect", started)

    def embed_crops(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._inner.embed_crops(crops)
        finally:
            self._times.observe_since("embed", started)

    def features_of(self, image: DecodedImage, faces: Sequence[DetectedFace]) -> np.ndarray:
        started = time.perf_counter()
        try:
            return self._inner.features_of(image, faces)
        finally:
            self._times.observe_since("embed", started)

    def analyze_largest(self, image: DecodedImage, fiqa_level: str, with_feature: bool = True,
                        min_face_size: Optional[float] = None, raise_on_low_quality: bool = True,
                        times: Optional[Dict[str, float]] = None,
                        faces: Optional[Sequence[DetectedFace]] = None) -> AnalyzedFace:
        measured: Dict[str, float] = {}
        try:
            return self._inner.analyze_largest(
                image, fiqa_level, with_feature=with_feature, min_face_size=min_face_size,
                raise_on_low_quality=raise_on_low_quality, times=measured, faces=faces)
        finally:  # a refused face (no face, low quality) still spent its stages
            self._times.observe_ms(measured)
            if times is not None:
                for stage, ms in measured.items():
                    times[stage] = times.get(stage, 0.0) + ms
