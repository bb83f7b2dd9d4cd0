"""ONNX Runtime on the CPU: the backend of the CPU profile (development, tests, x86)."""

from __future__ import annotations

import logging
from typing import Dict, List

import numpy as np

from .base import BackendError, TensorSpec

log = logging.getLogger(__name__)


class OnnxBackend:
    """One ``onnxruntime.InferenceSession``; used from one worker thread.

    A graph with a fixed batch dimension (YuNet and SFace are exported with batch 1) is
    run once per sample and the results stacked, so callers may pass any batch size.
    """

    runtime = "onnxruntime"

    def __init__(self, model_path: str, intra_op_threads: int = 1) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - a dependency of the cpu extra
            raise BackendError("onnxruntime is not installed") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(intra_op_threads))
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # keep ORT's own warnings out of the daemon log
        # Idle intra-op threads otherwise spin for tens of ms after each run, stealing the
        # cores the worker's other model runs next on: measured on 2 cores, SFace went from
        # 36 to 17 ms and compare over HTTP from 108 to 82 ms (bench/README.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types
            raise BackendError(f"onnxruntime cannot load {model_path}: {exc}") from exc
        self._inputs = [
            TensorSpec(i.name, tuple(d if isinstance(d, int) else None for d in i.shape))
            for i in self._session.get_inputs()
        ]
        self._outputs = [o.name for o in self._session.get_outputs()]
        first = self._inputs[0].shape
        self._fixed_batch = first[0] if first and isinstance(first[0], int) else None
        log.debug("loaded %s: inputs %s outputs %s", model_path, self._inputs, self._outputs)

    def input_specs(self) -> List[TensorSpec]:
        return list(self._inputs)

    def output_names(self) -> List[str]:
        return list(self._outputs)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        feeds = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in feeds.items()}
        batch = next(iter(feeds.values())).shape[0]
        step = self._fixed_batch or batch
        parts: List[List[np.ndarray]] = []
        for start in range(0, batch, step):
            chunk = {k: v[start:start + step] for k, v in feeds.items()}
            try:
                parts.append(self._session.run(self._outputs, chunk))
            except Exception as exc:
                raise BackendError(f"onnxruntime run failed: {exc}") from exc
        if len(parts) == 1:
            return {name: np.asarray(out, dtype=np.float32) for name, out in zip(self._outputs, parts[0])}
        return {
            name: np.concatenate([p[i] for p in parts], axis=0).astype(np.float32, copy=False)
            for i, name in enumerate(self._outputs)
        }

    def close(self) -> None:
        self._session = None
