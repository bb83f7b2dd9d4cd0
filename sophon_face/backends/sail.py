"""SOPHGO SAIL on the SE5's BM1684 TPU: the backend of the TPU profile (compiled bmodels).

Written to the calling contract in ``reference/sail.md`` (sections 1.3 and 3) and tested
off-device against a fake ``sophon.sail`` that enforces that contract (tests/fakes/sail.py).
The vendor module is imported lazily, only when this backend is chosen, because it exists
only on the box and only when installed from SOPHGO's SDK wheel.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .base import BackendError, TensorSpec, checked_feeds

log = logging.getLogger(__name__)

SAIL_INSTALL_HINT = (
    "SAIL comes from SOPHGO's SDK wheel sophon_arm-<ver>-py3-none-any.whl (in the SDK under "
    "sophon-sail/python_wheels/soc_BM1684_BM1684X/libsophon-<v>_sophonmw-<v>/py38/), never "
    "from PyPI: the PyPI package named 'sophon' is an empty placeholder (pip uninstall sophon)"
)


def load_sail(sail_module: Optional[Any] = None) -> Any:
    """Return a usable ``sophon.sail`` module (``sail_module`` if given), or raise BackendError.

    Startup and ``health`` call this to report a missing or bogus SAIL before any model
    is opened.
    """
    if sail_module is None:
        try:
            sail_module = importlib.import_module("sophon.sail")
        except Exception as exc:  # a broken vendor build fails with OSError (libbmrt.so), not only ImportError
            raise BackendError(f"cannot import sophon.sail ({exc}); {SAIL_INSTALL_HINT}") from exc
    # The PyPI placeholder installs package ``sophon`` with a 0-byte sail.py, so the import
    # succeeds and only the missing Engine tells it apart from the real extension module.
    if not hasattr(sail_module, "Engine"):
        where = getattr(sail_module, "__file__", None) or repr(sail_module)
        raise BackendError(
            f"sophon.sail at {where} has no Engine: it is the empty PyPI placeholder, "
            f"not SOPHGO's SAIL; {SAIL_INSTALL_HINT}")
    return sail_module


class SailBackend:
    """One SAIL ``Engine`` on one bmodel graph, fed numpy arrays (SAIL's "numpy path").

    Threading: a SAIL Engine is one bmruntime with per-graph I/O buffers shared by all
    callers and no lock, so it must only be used from the thread that created it; ``run``
    from any other thread raises BackendError. Construct the backend on the thread that
    will run it: the daemon wraps it in a ``BatchingBackend`` (batching.py), whose single
    thread opens and runs it, because more threads would add no TPU throughput (BM1684
    has one core) while batching does. The numpy-path ``Engine.process`` also holds the
    GIL for the whole TPU run (5-25 ms), stalling the workers' CPU stages meanwhile;
    releasing it needs SAIL's Tensor path (``sail.Tensor`` inputs/outputs), a later
    optimisation that would change only this file.

    Batching: a static bmodel accepts only the shapes it was compiled for. ``batch_sizes``
    lists the compiled batch stages (from the manifest; default: the batch of the graph's
    compiled input shape). ``run`` accepts any N >= 1: it cuts the batch into chunks of the
    largest compiled batch, runs the remainder once, zero-padded up to the smallest compiled
    batch that holds it, and slices the padding off the outputs.
    """

    runtime = "sail"

    def __init__(self, model_path: str, tpu_id: int = 0, graph: Optional[str] = None,
                 batch_sizes: Optional[Sequence[int]] = None,
                 sail_module: Optional[Any] = None) -> None:
        sail = load_sail(sail_module)
        model_path = str(model_path)  # pybind's std::string caster rejects pathlib.Path
        if not os.path.isfile(model_path):
            # SAIL only says "invalid bmodel" (the reason goes to its own stderr log).
            raise BackendError(f"bmodel not found: {model_path}")
        try:
            # Positional only: the pybind constructor declares no argument names. SYSIO
            # (inputs and outputs in system memory) is required by the numpy path: with
            # SYSI the fp32 outputs are built from a NULL system pointer and come back as
            # garbage without any error.
            engine = sail.Engine(model_path, int(tpu_id), sail.IOMode.SYSIO)
        except Exception as exc:  # SailEngineError, or RuntimeError from older wheels
            raise BackendError(f"SAIL cannot load {model_path} on TPU {tpu_id}: {exc}") from exc

        try:
            graphs = list(engine.get_graph_names())
            if not graphs:
                raise BackendError(f"{model_path} contains no graph")
            if graph is None:
                graph = graphs[0]
            elif graph not in graphs:
                raise BackendError(f"{model_path} has no graph {graph!r}; it has {graphs}")
            input_names = list(engine.get_input_names(graph))
            # get_input_shape reports the shape of the *last* process() call once one has
            # run, so the compiled (maximum) shapes are read here, before any inference.
            shapes = {n: tuple(int(d) for d in engine.get_input_shape(graph, n)) for n in input_names}
            dtypes = {n: engine.get_input_dtype(graph, n) for n in input_names}
            scales = {n: float(engine.get_input_scale(graph, n)) for n in input_names}
            output_names = list(engine.get_output_names(graph))
            dynamic = bool(engine.graph_is_dynamic(graph))
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(f"SAIL cannot describe {model_path}: {exc}") from exc

        if not input_names or not output_names:
            raise BackendError(f"{model_path} graph {graph!r} has no inputs or no outputs")
        for name, shape in shapes.items():
            if len(shape) < 1 or shape[0] < 1:
                raise BackendError(f"{model_path} input {name!r} has no batch dimension: {shape}")
        compiled = {shape[0] for shape in shapes.values()}
        if len(compiled) != 1:
            raise BackendError(f"{model_path} inputs disagree on the batch dimension: {shapes}")
        max_batch = compiled.pop()
        self._batch_sizes = self._check_batch_sizes(batch_sizes, max_batch, dynamic, model_path)

        self._engine: Optional[Any] = engine
        self._graph = graph
        self._path = model_path
        self._input_names = input_names
        self._sample_shapes = {n: shape[1:] for n, shape in shapes.items()}
        self._output_names = output_names
        self._owner_thread = threading.get_ident()
        log.info("loaded %s graph %r on TPU %s: inputs %s dtypes %s scales %s, outputs %s, "
                 "batch sizes %s%s", model_path, graph, tpu_id, shapes,
                 {n: str(d) for n, d in dtypes.items()}, scales, output_names,
                 self._batch_sizes, " (dynamic)" if dynamic else "")

    @staticmethod
    def _check_batch_sizes(batch_sizes: Optional[Sequence[int]], max_batch: int,
                           dynamic: bool, model_path: str) -> Tuple[int, ...]:
        if batch_sizes is None:
            # A dynamic graph takes any batch up to its maximum, so nothing needs padding.
            return tuple(range(1, max_batch + 1)) if dynamic else (max_batch,)
        sizes = tuple(sorted({int(b) for b in batch_sizes}))
        if not sizes or sizes[0] < 1:
            raise BackendError(f"{model_path}: batch sizes must be positive, got {batch_sizes}")
        if sizes[-1] > max_batch:
            # SAIL cannot list a bmodel's stages, but the largest one is the compiled shape.
            raise BackendError(
                f"{model_path}: the manifest declares batch sizes {list(sizes)} but the bmodel's "
                f"largest compiled batch is {max_batch}; recompile or fix batch_sizes")
        return sizes

    @property
    def graph(self) -> str:
        return self._graph

    @property
    def batch_sizes(self) -> Tuple[int, ...]:
        """The compiled batch sizes ``run`` cuts batches into (ascending)."""
        return self._batch_sizes

    def input_specs(self) -> List[TensorSpec]:
        # Batch is None: run() takes any N and pads to the compiled batches itself. The
        # dtype is what callers feed; an int8 bmodel input is quantised inside SAIL.
        return [TensorSpec(n, (None,) + self._sample_shapes[n], "float32") for n in self._input_names]

    def output_names(self) -> List[str]:
        return list(self._output_names)

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        engine = self._engine
        if engine is None:
            raise BackendError(f"SAIL backend for {self._path} is closed")
        if threading.get_ident() != self._owner_thread:
            raise BackendError(
                f"SAIL engine for {self._path} was created on thread {self._owner_thread} and "
                f"must not be used from thread {threading.get_ident()}")
        inputs, batch = self._prepare(feeds)

        parts: List[Dict[str, np.ndarray]] = []
        start = 0
        while start < batch:
            remaining = batch - start
            # BM1684 runs a padded int8 batch-4 in about the time of one batch-1 run, so a
            # remainder is one padded run of the smallest stage that holds it, never
            # several small runs.
            holding = [b for b in self._batch_sizes if b >= remaining]
            if holding:
                compiled, take = holding[0], remaining
            else:
                compiled = take = self._batch_sizes[-1]
            chunk = {}
            for name, array in inputs.items():
                # A slice along axis 0 of a C-contiguous array is still C-contiguous.
                part = array[start:start + take]
                if take < compiled:
                    padded = np.zeros((compiled,) + array.shape[1:], dtype=np.float32)
                    padded[:take] = part
                    part = padded
                chunk[name] = part
            outputs = self._process(engine, chunk, compiled)
            parts.append({name: outputs[name][:take] for name in self._output_names})
            start += take

        if len(parts) == 1:
            # SAIL already returns fresh arrays; the copy also drops the padded rows' memory
            # and guarantees no result is ever a view another call could reach.
            return {name: np.array(parts[0][name], dtype=np.float32, copy=True)
                    for name in self._output_names}
        return {name: np.concatenate([p[name] for p in parts], axis=0).astype(np.float32, copy=False)
                for name in self._output_names}

    def _prepare(self, feeds: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], int]:
        # Own C-contiguous float32 copies: SAIL would otherwise copy a strided input itself
        # and memcpy it back into the caller's buffer, and it force-casts dtypes anyway.
        return checked_feeds(self.input_specs(), feeds, self._path)

    def _process(self, engine: Any, chunk: Dict[str, np.ndarray], compiled: int) -> Dict[str, np.ndarray]:
        try:
            outputs = engine.process(self._graph, chunk)
        except Exception as exc:  # SailEngineError("bad input"), or RuntimeError from older wheels
            shapes = {n: a.shape for n, a in chunk.items()}
            raise BackendError(f"SAIL process failed on {self._path} graph {self._graph!r} "
                               f"with inputs {shapes}: {exc}") from exc
        for name in self._output_names:
            out = outputs.get(name)
            # Slicing off the padding is only right when every output is batch-major.
            if out is None:
                raise BackendError(f"{self._path}: SAIL returned no output {name!r}")
            if out.ndim < 1 or out.shape[0] != compiled:
                raise BackendError(
                    f"{self._path}: output {name!r} has shape {out.shape} for a batch of "
                    f"{compiled}; the model must be exported with a leading batch dimension")
        return outputs

    def close(self) -> None:
        # Dropping the last reference destroys the bmruntime and frees its device memory.
        self._engine = None
