"""From a manifest to warmed per-worker face pipelines.

Preparation (checksums, folding the quantised CPU weights) happens once, in the daemon's
main thread, before any worker starts; each worker then opens its own backend sessions
from the prepared files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional

from ..backends.registry import BackendOptions, open_backend
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


def pipeline_factory(models: PreparedModels, options: BackendOptions,
                     thresholds: QualityThresholds) -> Callable[[], FacePipeline]:
    """A function each worker calls on its own thread to build its pipeline."""
    manifest = models.manifest

    def build() -> FacePipeline:
        det_backend = open_backend(manifest.runtime, str(models.detector_path),
                                   manifest.detector, options)
        rec_backend = open_backend(manifest.runtime, str(models.recognizer_path),
                                   manifest.recognizer, options)
        return FacePipeline(Detector(det_backend, manifest.detector),
                            Embedder(rec_backend, manifest.recognizer), thresholds)

    return build
