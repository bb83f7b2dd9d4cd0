"""The inference seam: a tiny protocol shaped like the simplest runtime session.

A backend owns loading, dtype/layout conversion, batch padding and warm-up. It knows
nothing about faces: detectors, quality models and embedders take a backend and own
all model maths (pipeline/). A backend object is used from one thread only, except
``BatchingBackend`` (batching.py), which exists to take ``run`` calls from many threads
and funnel them into one inner backend on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

try:  # Python 3.8 has typing.Protocol; keep the import explicit for readers.
    from typing import Protocol
except ImportError:  # pragma: no cover
    Protocol = object  # type: ignore[assignment,misc]


@dataclass(frozen=True)
class TensorSpec:
    """One model input: its name, its shape (``None`` for a free dimension) and dtype."""

    name: str
    shape: Sequence[Optional[int]]
    dtype: str = "float32"


class BackendError(RuntimeError):
    """A model could not be loaded or run (missing runtime, bad file, bad input)."""


class Backend(Protocol):
    """What a model needs from a runtime."""

    #: Short runtime name shown by /health, e.g. ``"onnxruntime"`` or ``"sail"``.
    runtime: str

    def input_specs(self) -> List[TensorSpec]:
        """The model's inputs, in model order."""

    def output_names(self) -> List[str]:
        """The model's outputs, in model order."""

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run on float32 NCHW feeds of any batch size N >= 1.

        Returns fresh float32 arrays keyed by output name, each with batch N. A backend
        whose compiled model has fixed batch sizes pads and slices; callers never do.
        """

    def close(self) -> None:
        """Release the runtime's resources."""


def checked_feeds(specs: Sequence[TensorSpec], feeds: Mapping[str, np.ndarray],
                  owner: str) -> Tuple[Dict[str, np.ndarray], int]:
    """Feeds as C-contiguous float32 arrays of our own, checked against ``specs``.

    Exactly the model's inputs (a runtime may silently reuse a stale buffer for a missing
    one), the fixed dimensions of each spec (``None`` is free), one batch size N >= 1.
    Contiguity matters for SAIL, which would otherwise copy a strided input and write the
    copy back into the caller's buffer. Returns the arrays and N; ``owner`` names the model
    in errors.
    """
    names = [spec.name for spec in specs]
    if set(feeds) != set(names):
        raise BackendError(f"{owner}: feeds {sorted(feeds)} do not match the model "
                           f"inputs {sorted(names)}")
    arrays: Dict[str, np.ndarray] = {}
    batch: Optional[int] = None
    for spec in specs:
        array = np.ascontiguousarray(feeds[spec.name], dtype=np.float32)
        fixed = tuple(spec.shape)[1:]
        if array.ndim != len(spec.shape) or any(
                want is not None and want != got for want, got in zip(fixed, array.shape[1:])):
            raise BackendError(f"{owner}: input {spec.name!r} has shape {array.shape}, "
                               f"the model takes {tuple(spec.shape)}")
        if batch is None:
            batch = array.shape[0]
        elif array.shape[0] != batch:
            raise BackendError(f"{owner}: inputs disagree on the batch size")
        arrays[spec.name] = array
    if not batch:
        raise BackendError(f"{owner}: empty batch")
    return arrays, batch
