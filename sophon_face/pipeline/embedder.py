"""Face features: aligned crops -> L2-normalised float32 vectors, one backend run per batch."""

from __future__ import annotations

import logging
from typing import Sequence, Tuple

import cv2
import numpy as np

from sophon_face.backends.base import Backend, BackendError
from sophon_face.manifest.schema import ModelSpec

from .detector import blob_from_bgr

log = logging.getLogger(__name__)


class Embedder:
    """A recognizer model behind a ``Backend``; its feature width comes from the manifest
    and is checked against the model at warm-up."""

    def __init__(self, backend: Backend, spec: ModelSpec) -> None:
        if not spec.feature_dim:
            raise BackendError(f"recognizer {spec.family!r}: the manifest gives no feature_dim")
        inputs = backend.input_specs()
        if len(inputs) != 1:
            raise BackendError(f"recognizer model has {len(inputs)} inputs, expected 1")
        self._backend = backend
        self._spec = spec
        self._input_name = inputs[0].name
        self._output_name = backend.output_names()[0]
        self._input_w, self._input_h = int(spec.input_size[0]), int(spec.input_size[1])

    @property
    def feature_dim(self) -> int:
        return int(self._spec.feature_dim)  # type: ignore[arg-type]

    @property
    def input_size(self) -> Tuple[int, int]:
        """(width, height) of the crops the model takes."""
        return (self._input_w, self._input_h)

    def embed(self, crops_bgr: Sequence[np.ndarray]) -> np.ndarray:
        """(N, D) float32 unit-norm features of N aligned BGR crops, in one backend run."""
        if len(crops_bgr) == 0:
            return np.zeros((0, self.feature_dim), dtype=np.float32)
        sized = [
            crop if crop.shape[:2] == (self._input_h, self._input_w)
            else cv2.resize(crop, (self._input_w, self._input_h), interpolation=cv2.INTER_LINEAR)
            for crop in crops_bgr
        ]
        outputs = self._backend.run({self._input_name: blob_from_bgr(sized, self._spec)})
        raw = np.asarray(outputs[self._output_name], dtype=np.float32).reshape(len(sized), -1)
        if raw.shape[1] != self.feature_dim:
            raise BackendError(
                f"recognizer returned {raw.shape[1]}-d features, the manifest says {self.feature_dim}")
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        # A zero vector (never seen from a real model) stays zero instead of becoming NaN.
        return (raw / np.maximum(norms, 1e-12)).astype(np.float32)

    def warm_up(self) -> None:
        """Run once on a grey crop; raises ``BackendError`` if the model's width is wrong."""
        crop = np.full((self._input_h, self._input_w, 3), 128, dtype=np.uint8)
        features = self.embed([crop])
        log.debug("recognizer warm-up: %d-d features", features.shape[1])

    def close(self) -> None:
        self._backend.close()
