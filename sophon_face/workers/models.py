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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

from ..backends.base import Backend
from ..backends.batching import BatchingBackend
from ..backends.registry import BackendOptions, open_backend
from ..config import BATCHING_MODES
from ..manifest.files import ModelFileError, prepared_path
from ..manifest.schema import Manifest, ModelSpec, load_manifest
from ..pipeline.detector import Detector
from ..pipeline.embedder import Embedder
from ..pipeline.extras import build_extras
from ..pipeline.face_pipeline import FacePipeline
from ..pipeline.quality import QualityThresholds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModels:
    manifest: Manifest
    detector_path: Path
    recognizer_path: Path
    #: The optional models (age, gender, mask, liveness) whose files were found, by role.
    optional_paths: Mapping[str, Path] = field(default_factory=dict)

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
        described = {"detector": one(self.manifest.detector, self.detector_path),
                     "recognizer": one(self.manifest.recognizer, self.recognizer_path)}
        for role, path in self.optional_paths.items():
            spec = self.manifest.model(role)
            if spec is not None:
                described[role] = one(spec, path)
        return described

    def optional_models(self) -> Dict[str, Tuple[ModelSpec, Path]]:
        """The optional roles this profile can run: role -> (spec, file)."""
        found: Dict[str, Tuple[ModelSpec, Path]] = {}
        for role, path in self.optional_paths.items():
            spec = self.manifest.model(role)
            if spec is not None:
                found[role] = (spec, path)
        return found


def prepare_models(manifest_path: Path, cache_dir: Optional[Path]) -> PreparedModels:
    manifest = load_manifest(manifest_path)
    detector = prepared_path(manifest.detector, manifest.base_dir, cache_dir)
    recognizer = prepared_path(manifest.recognizer, manifest.base_dir, cache_dir)
    log.info("models (%s profile, %s runtime): detector %s, recognizer %s (%d-d)",
             manifest.profile, manifest.runtime, detector.name, recognizer.name,
             manifest.recognizer.feature_dim)
    return PreparedModels(manifest, detector, recognizer, prepare_optional(manifest, cache_dir))


def prepare_optional(manifest: Manifest, cache_dir: Optional[Path]) -> Dict[str, Path]:
    """The optional models' files. One that is missing or corrupt is logged and left out:
    what it would compute is then answered as not assessed (attributes ``null``, FIQA
    ``mask: -1``, ``liveness_rgb`` NOT_SUPPORT_IR_LIVENESS), never a failed start."""
    found: Dict[str, Path] = {}
    for role, spec in manifest.optional.items():
        try:
            found[role] = prepared_path(spec, manifest.base_dir, cache_dir)
        except ModelFileError as exc:
            log.warning("optional %s model unavailable: %s", role, exc)
    if found:
        log.info("optional models: %s", ", ".join(f"{r} {p.name}" for r, p in found.items()))
    return found


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
        #: role -> shared batching backend (batching only); detector and recognizer first.
        self._shared: Optional[Dict[str, BatchingBackend]] = None

    def _roles(self) -> Dict[str, Tuple[ModelSpec, Path]]:
        """Every model this profile runs, by role: the two required, then the optional."""
        manifest = self._models.manifest
        roles = {"detector": (manifest.detector, self._models.detector_path),
                 "recognizer": (manifest.recognizer, self._models.recognizer_path)}
        roles.update(self._models.optional_models())
        return roles

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
            shared: Dict[str, BatchingBackend] = {}
            try:
                for role, (spec, path) in self._roles().items():
                    shared[role] = self._batcher(spec, path)
            except BaseException:
                for backend in shared.values():
                    backend.close()
                raise
            self._shared = shared

    def __call__(self) -> FacePipeline:
        backends: Dict[str, Tuple[Backend, ModelSpec]] = {}
        try:
            if self.batching:
                self.open()
                assert self._shared is not None
                for role, (spec, _path) in self._roles().items():
                    backends[role] = (self._shared[role].attach(), spec)
            else:
                for role, (spec, path) in self._roles().items():
                    backends[role] = (self._open(spec, path), spec)
            det_backend, det_spec = backends.pop("detector")
            rec_backend, rec_spec = backends.pop("recognizer")
            return FacePipeline(Detector(det_backend, det_spec), Embedder(rec_backend, rec_spec),
                                self._thresholds, extras=build_extras(backends))
        except BaseException:
            for backend, _spec in backends.values():
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
        return dict(info, **{role: dict(asdict(backend.stats()), max_batch=backend.max_batch)
                             for role, backend in shared.items()})

    def close(self) -> None:
        """Stop the shared backends; call after every pipeline is closed (pool closed)."""
        with self._lock:
            shared, self._shared = self._shared, None
        for backend in (shared or {}).values():
            backend.close()


def pipeline_factory(models: PreparedModels, options: BackendOptions,
                     thresholds: QualityThresholds, batching: str = "auto",
                     batch_wait_ms: float = 3.0) -> PipelineFactory:
    """A callable each worker calls on its own thread to build its pipeline."""
    return PipelineFactory(models, options, thresholds, batching, batch_wait_ms)
