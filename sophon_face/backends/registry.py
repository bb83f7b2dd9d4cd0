"""The explicit list of runtimes: a manifest's ``runtime`` key names one of these.

Each opener takes ``(model_path, spec, options)`` and returns a ``Backend``; the vendor
runtime is imported inside the opener, so a missing one is reported when it is chosen,
never when this module is imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from .base import Backend, BackendError


@dataclass(frozen=True)
class BackendOptions:
    intra_op_threads: int = 1  # ONNX Runtime threads per session
    tpu_id: int = 0  # SAIL device id
    sail_module: Optional[Any] = None  # an injected ``sophon.sail`` (tests use a fake)


def _open_onnx(model_path: str, spec: Any, options: BackendOptions) -> Backend:
    from .onnx import OnnxBackend

    return OnnxBackend(model_path, intra_op_threads=options.intra_op_threads)


def _open_sail(model_path: str, spec: Any, options: BackendOptions) -> Backend:
    from .sail import SailBackend

    return SailBackend(model_path, tpu_id=options.tpu_id, graph=spec.graph,
                       batch_sizes=tuple(spec.batch_sizes), sail_module=options.sail_module)


OPENERS: Dict[str, Callable[[str, Any, BackendOptions], Backend]] = {
    "onnx": _open_onnx,
    "sail": _open_sail,
}


def open_backend(runtime: str, model_path: str, spec: Any, options: BackendOptions) -> Backend:
    try:
        opener = OPENERS[runtime]
    except KeyError:
        raise BackendError(f"unknown runtime {runtime!r}; known: {sorted(OPENERS)}") from None
    return opener(model_path, spec, options)
