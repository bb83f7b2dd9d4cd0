"""The inference seam: a tiny protocol shaped like the simplest runtime session.

A backend owns loading, dtype/layout conversion, batch padding and warm-up. It knows
nothing about faces: detectors, quality models and embedders take a backend and own
all model maths (pipeline/). A backend object is used from one thread only, except
``BatchingBackend`` (batching.py), which exists to take ``run`` calls from many threads
and funnel them into one inner backend on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

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
