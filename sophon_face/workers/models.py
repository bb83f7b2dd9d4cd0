"""From a manifest to warmed per-worker face pipelines.

Preparation (checksums, folding the quantised CPU weights) happens once, in the daemon's
main thread, before any worker starts. Then either each worker opens its own backend
sessions from the prepared files, or (batching) every worker's pipeline shares one
``BatchingBackend`` per model, opened once by the factory's owner before the workers start:

* SAIL (auto: on): BM1684 has one TPU core, so several Engines only queue on it while each
  costs device memory; one Engine per model on one batching thread fills the compiled
  batch-4 stage with faces from concurrent requests, and the workers' CPU stages (decode,
  letterbox, align, quality) run in parallel on the SE5's 8 cores.
* ONNX Runtime (auto: off): per-worker sessions already run in parallel on the CPU cores,
  and the CPU models are exported with a fixed batch of 1 (OnnxBackend loops per sample),
  so one shared session would only serialise the workers without a batching gain.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..backends.base import Backend
from ..backends.batching import BatchingBackend
from ..backends.registry import BackendOptions, open_backend
from ..config import BATCHING_MODES
from ..manifest.files import prepared_path
from ..manifest.schema import Manifest, ModelSpec, load_manifest
from ..pipeline.detector import Detector
from ..pipeline.embedder import Embedder
from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.quality import QualityThresholds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModels:
    manifest: Manifest
    detector_path: Path
    recognizer_path: Path

    @property
    def feature_dim(self) -> int:
        return int(self.manifest.recognizer.feature_dim or 0)

    def describe(self) -> Dict[str, Dict[str, object]]:
        """What /health reports about the models."""
        def one(spec: ModelSpec, path: Path) -> Dict[str, object]:
            info: Dict[str, object] = {"family": spec.family, "file": path.name,
                                       "input_size": list(spec.input_size)}
            if spec.feature_dim:
                info["feature_dim"] = spec.feature_dim
            return info
        return {"detector": one(self.manifest.detector, self.detector_path),
                "recognizer": one(self.manifest.recognizer, self.recognizer_path)}


def prepare_models(manifest_path: Path, cache_dir: Optional[Path]) -> PreparedModels:
    manifest = load_manifest(manifest_path)
    detector = prepared_path(manifest.detector, manifest.base_dir, cache_dir)
    recognizer = prepared_path(manifest.recognizer, manifest.base_dir, cache_dir)
    log.info("models (%s profile, %s runtime): detector %s, recognizer %s (%d-d)",
             manifest.profile, manifest.runtime, detector.name, recognizer.name,
             manifest.recognizer.feature_dim)
    return PreparedModels(manifest, detector, recognizer)


def batching_enabled(mode: str, runtime: str) -> bool:
    """``workers.batching``: "on", "off", or "auto" (on for SAIL only; see the module doc)."""
    if mode not in BATCHING_MODES:
        raise ValueError(f"batching must be one of {BATCHING_MODES}, got {mode!r}")
    if mode == "auto":
        return runtime == "sail"
    return mode == "on"


class PipelineFactory:
    """Builds each worker's ``FacePipeline`` (called on the worker's own thread).

    With batching, it owns the shared ``BatchingBackend``s: ``open`` creates them (the
    first call does it if the owner did not), each pipeline gets its own attached client
    (closing a pipeline only detaches), and ``close`` stops them, after the pool closed.
    """

    def __init__(self, models: PreparedModels, options: BackendOptions,
                 thresholds: QualityThresholds, batching: str = "auto",
                 batch_wait_ms: float = 3.0) -> None:
        self._models = models
        self._options = options
        self._thresholds = thresholds
        self._batch_wait_s = float(batch_wait_ms) / 1000.0
        self.batching = batching_enabled(batching, models.manifest.runtime)
        self._lock = threading.Lock()
        self._shared: Optional[Tuple[BatchingBackend, BatchingBackend]] = None

    def _open(self, spec: ModelSpec, path: Path) -> Backend:
        return open_backend(self._models.manifest.runtime, str(path), spec, self._options)

    def _batcher(self, spec: ModelSpec, path: Path) -> BatchingBackend:
        # A batch larger than the largest compiled stage would only be cut up again.
        max_batch = max(spec.batch_sizes) if spec.batch_sizes else 1
        return BatchingBackend(lambda: self._open(spec, path), max_batch=max_batch,
                               max_wait_s=self._batch_wait_s, name=spec.role)

    def open(self) -> None:
        """Open the shared batching backends (nothing without batching). Idempotent."""
        if not self.batching:
            return
        with self._lock:
            if self._shared is not None:
                return
            manifest = self._models.manifest
            detector = self._batcher(manifest.detector, self._models.detector_path)
            try:
                recognizer = self._batcher(manifest.recognizer, self._models.recognizer_path)
            except BaseException:
                detector.close()
                raise
            self._shared = (detector, recognizer)

    def __call__(self) -> FacePipeline:
        manifest = self._models.manifest
        backends: List[Backend] = []
        try:
            if self.batching:
                self.open()
                assert self._shared is not None
                backends = [shared.attach() for shared in self._shared]
            else:
                backends.append(self._open(manifest.detector, self._models.detector_path))
                backends.append(self._open(manifest.recognizer, self._models.recognizer_path))
            det_backend, rec_backend = backends
            return FacePipeline(Detector(det_backend, manifest.detector),
                                Embedder(rec_backend, manifest.recognizer), self._thresholds)
        except BaseException:
            for backend in backends:
                backend.close()
            raise

    def stats(self) -> Dict[str, Any]:
        """What /health reports about batching."""
        shared = self._shared
        if not self.batching:
            return {"enabled": False}
        info: Dict[str, Any] = {"enabled": True, "max_wait_ms": round(self._batch_wait_s * 1000.0, 3)}
        if shared is None:
            return info
        detector, recognizer = shared
        return {**info,
                "detector": dict(asdict(detector.stats()), max_batch=detector.max_batch),
                "recognizer": dict(asdict(recognizer.stats()), max_batch=recognizer.max_batch)}

    def close(self) -> None:
        """Stop the shared backends; call after every pipeline is closed (pool closed)."""
        with self._lock:
            shared, self._shared = self._shared, None
        for backend in shared or ():
            backend.close()


def pipeline_factory(models: PreparedModels, options: BackendOptions,
                     thresholds: QualityThresholds, batching: str = "auto",
                     batch_wait_ms: float = 3.0) -> PipelineFactory:
    """A callable each worker calls on its own thread to build its pipeline."""
    return PipelineFactory(models, options, thresholds, batching, batch_wait_ms)
