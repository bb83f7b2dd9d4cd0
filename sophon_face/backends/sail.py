"""SOPHGO SAIL on the SE5's BM1684 TPU: the backend of the TPU profile (compiled bmodels).

Written to the calling contract in ``reference/sail.md`` (sections 1.3 and 3, the
"Tensor-path pattern") and tested off-device against a fake ``sophon.sail`` that enforces
that contract (tests/fakes/sail.py). The vendor module is imported lazily, only when this
backend is chosen, because it exists only on the box and only when installed from
SOPHGO's SDK wheel.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from dataclasses import dataclass
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


#: How closely the Tensor path must reproduce SAIL's own numpy path in the load-time check.
#: Both run the same bmodel on the same TPU, so they agree exactly unless we feed or read
#: the tensors wrongly (dtype, scale, padding, stale memory).
VERIFY_RTOL = 1e-4
VERIFY_ATOL = 1e-6


@dataclass(frozen=True)
class _Stage:
    """The tensors of one compiled batch size, allocated once (system and device memory)."""

    batch: int
    inputs: Dict[str, Any]  # name -> sail.Tensor
    outputs: Dict[str, Any]


class SailBackend:
    """One SAIL ``Engine`` on one bmodel graph, run through SAIL's Tensor path.

    The Tensor path (``Engine.process(graph, input_tensors, output_tensors)``) releases
    the GIL for the whole TPU run, so the event loop, the other workers' CPU stages and
    the batcher's queue keep running meanwhile; SAIL's numpy path holds the GIL for the
    whole run (5-25 ms on BM1684, reference/sail.md section 1.3 item 8). For every
    compiled batch size the backend allocates, at load, one ``sail.Tensor`` per input and
    output with its own system and device memory (SYSIO: the run copies inputs to the
    device and outputs back itself). Float inputs are written with ``update_data``
    (exact shape and dtype), integer (int8) inputs with ``scale_from`` and the graph's
    input scale; float outputs are read with ``asnumpy``, integer ones with ``scale_to``
    and the output scale. Results are always copied out, so no caller ever holds memory
    that a later run overwrites.

    Unlike the numpy path, the Tensor path does not check input shapes: SAIL only logs a
    failed launch of an uncompiled shape and leaves the previous run's outputs in place.
    So at load every declared batch size is run once through both paths on the same probe
    input: the numpy path rejects a stage the bmodel lacks ("bad input"), and the Tensor
    path must reproduce its outputs, which proves on the box that this backend feeds and
    reads the tensors exactly as SAIL itself does. It also warms every stage up.

    Threading: a SAIL Engine is one bmruntime with no lock, so it must only be used from
    the thread that created it; ``run`` from any other thread raises BackendError.
    Construct the backend on the thread that will run it: the daemon wraps it in a
    ``BatchingBackend`` (batching.py), whose single thread opens and runs it, because
    more threads would add no TPU throughput (BM1684 has one core) while batching does.

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
            # Positional only: the pybind constructor declares no argument names. SYSIO:
            # the Tensor path then copies inputs to the device and outputs back within
            # process(), and the load-time check's numpy path requires SYSIO (with SYSI
            # its fp32 outputs come from a NULL system pointer, garbage without an error).
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
            output_names = list(engine.get_output_names(graph))
            # get_input_shape reports the shape of the *last* process() call once one has
            # run, so the compiled (maximum) shapes are read here, before any inference.
            shapes = {n: tuple(int(d) for d in engine.get_input_shape(graph, n)) for n in input_names}
            out_shapes = {n: tuple(int(d) for d in engine.get_output_shape(graph, n))
                          for n in output_names}
            dtypes = {n: engine.get_input_dtype(graph, n) for n in input_names}
            out_dtypes = {n: engine.get_output_dtype(graph, n) for n in output_names}
            scales = {n: float(engine.get_input_scale(graph, n)) for n in input_names}
            out_scales = {n: float(engine.get_output_scale(graph, n)) for n in output_names}
            dynamic = bool(engine.graph_is_dynamic(graph))
            handle = engine.get_handle()
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
        for name, shape in out_shapes.items():
            # Padding is sliced off along axis 0, and each stage's output tensors are
            # allocated as (batch,) + the rest: both need batch-major outputs.
            if len(shape) < 1 or shape[0] != max_batch:
                raise BackendError(
                    f"{model_path}: output {name!r} has shape {shape} for a batch of {max_batch}; "
                    f"the model must be exported with a leading batch dimension")
        self._batch_sizes = self._check_batch_sizes(batch_sizes, max_batch, dynamic, model_path)

        self._engine: Optional[Any] = engine
        self._graph = graph
        self._path = model_path
        self._input_names = input_names
        self._sample_shapes = {n: shape[1:] for n, shape in shapes.items()}
        self._output_names = output_names
        self._out_sample_shapes = {n: shape[1:] for n, shape in out_shapes.items()}
        # None: float32 I/O (update_data / asnumpy); else the int8 scale (scale_from / scale_to).
        self._input_scales = {n: self._io_scale(sail, dtypes[n], scales[n], f"input {n!r}")
                              for n in input_names}
        self._output_scales = {n: self._io_scale(sail, out_dtypes[n], out_scales[n], f"output {n!r}")
                               for n in output_names}
        self._owner_thread = threading.get_ident()
        try:
            self._stages = {b: _Stage(
                b,
                {n: sail.Tensor(handle, [b, *self._sample_shapes[n]], dtypes[n], True, True)
                 for n in input_names},
                {n: sail.Tensor(handle, [b, *self._out_sample_shapes[n]], out_dtypes[n], True, True)
                 for n in output_names}) for b in self._batch_sizes}
        except Exception as exc:  # SailRuntimeError("no enough device memory"), ...
            raise BackendError(f"SAIL cannot allocate the I/O tensors of {model_path} for "
                               f"batch sizes {list(self._batch_sizes)}: {exc}") from exc
        for stage in self._stages.values():
            self._verify_stage(engine, stage)
        log.info("loaded %s graph %r on TPU %s: inputs %s dtypes %s scales %s, outputs %s "
                 "dtypes %s scales %s, batch sizes %s%s; Tensor path checked against the "
                 "numpy path", model_path, graph, tpu_id, shapes,
                 {n: str(d) for n, d in dtypes.items()}, scales, output_names,
                 {n: str(d) for n, d in out_dtypes.items()}, out_scales,
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

    def _io_scale(self, sail: Any, dtype: Any, scale: float, what: str) -> Optional[float]:
        if dtype == sail.Dtype.BM_FLOAT32:
            return None
        if any(dtype == getattr(sail.Dtype, name) for name in ("BM_INT8", "BM_UINT8", "BM_INT32")):
            if not scale > 0:
                raise BackendError(f"{self._path}: {what} is {dtype} with scale {scale}")
            return scale
        # BM1684 has no F16/BF16; SAIL's own numpy path converts only these four either.
        raise BackendError(f"{self._path}: {what} has dtype {dtype}; only float32 and "
                           f"int8/uint8/int32 bmodel I/O is supported")

    @property
    def graph(self) -> str:
        return self._graph

    @property
    def batch_sizes(self) -> Tuple[int, ...]:
        """The compiled batch sizes ``run`` cuts batches into (ascending)."""
        return self._batch_sizes

    def input_specs(self) -> List[TensorSpec]:
        # Batch is None: run() takes any N and pads to the compiled batches itself. The
        # dtype is what callers feed; an int8 bmodel input is quantised here with its scale.
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
            # A slice along axis 0 of a C-contiguous array is still C-contiguous.
            chunk = {name: array[start:start + take] for name, array in inputs.items()}
            parts.append(self._run_stage(engine, self._stages[compiled], chunk, take))
            start += take

        if len(parts) == 1:
            # The copy drops the padded rows' memory and guarantees that no result is ever
            # a view of memory a later run could reach, whatever SAIL's asnumpy returns.
            return {name: np.array(parts[0][name], dtype=np.float32, copy=True)
                    for name in self._output_names}
        return {name: np.concatenate([p[name] for p in parts], axis=0).astype(np.float32, copy=False)
                for name in self._output_names}

    def _prepare(self, feeds: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], int]:
        # Own C-contiguous float32 copies: update_data wants the exact dtype, and scale_from
        # reads a strided array in memory order.
        return checked_feeds(self.input_specs(), feeds, self._path)

    def _run_stage(self, engine: Any, stage: _Stage, chunk: Dict[str, np.ndarray],
                   take: int) -> Dict[str, np.ndarray]:
        """One Tensor-path run of ``stage`` on ``take`` samples; outputs sliced to ``take``."""
        try:
            for name, part in chunk.items():
                if take < stage.batch:
                    padded = np.zeros((stage.batch,) + part.shape[1:], dtype=np.float32)
                    padded[:take] = part
                    part = padded
                scale = self._input_scales[name]
                if scale is None:
                    stage.inputs[name].update_data(part)
                else:
                    stage.inputs[name].scale_from(part, scale)
            # GIL released here; SYSIO: inputs go system -> device first, outputs come back.
            engine.process(self._graph, stage.inputs, stage.outputs)
            outputs = {}
            for name in self._output_names:
                scale = self._output_scales[name]
                tensor = stage.outputs[name]
                out = tensor.asnumpy() if scale is None else tensor.scale_to(scale)
                outputs[name] = np.asarray(out, dtype=np.float32)
        except Exception as exc:  # SailEngineError / SailTensorError, or RuntimeError from older wheels
            shapes = {n: a.shape for n, a in chunk.items()}
            raise BackendError(f"SAIL process failed on {self._path} graph {self._graph!r} "
                               f"at batch {stage.batch} with inputs {shapes}: {exc}") from exc
        for name, out in outputs.items():
            want = (stage.batch,) + self._out_sample_shapes[name]
            if out.shape != want:
                raise BackendError(f"{self._path}: output {name!r} came back shaped {out.shape}, "
                                   f"expected {want}")
        return {name: out[:take] for name, out in outputs.items()}

    def _verify_stage(self, engine: Any, stage: _Stage) -> None:
        """Run ``stage`` through SAIL's numpy path and the Tensor path on one probe input;
        see the class docstring."""
        probe = {n: _probe((stage.batch,) + self._sample_shapes[n]) for n in self._input_names}
        try:
            reference = engine.process(self._graph, probe)
        except Exception as exc:  # SailEngineError("bad input") for a stage the bmodel lacks
            raise BackendError(
                f"{self._path} graph {self._graph!r} does not run at batch {stage.batch} "
                f"(SAIL: {exc}); the manifest's batch_sizes {list(self._batch_sizes)} must be "
                f"stages the bmodel was compiled with") from exc
        got = self._run_stage(engine, stage, probe, stage.batch)
        for name in self._output_names:
            want = reference.get(name)
            expected_shape = (stage.batch,) + self._out_sample_shapes[name]
            if want is None or np.shape(want) != expected_shape:
                raise BackendError(
                    f"{self._path}: output {name!r} is shaped {np.shape(want)} at batch "
                    f"{stage.batch}, expected {expected_shape}; the model must be exported "
                    f"with a leading batch dimension")
            want = np.asarray(want, dtype=np.float32)
            if not np.allclose(got[name], want, rtol=VERIFY_RTOL, atol=VERIFY_ATOL, equal_nan=True):
                worst = float(np.nanmax(np.abs(got[name] - want)))
                raise BackendError(
                    f"{self._path}: the Tensor path's output {name!r} at batch {stage.batch} "
                    f"differs from SAIL's numpy path by up to {worst:.3g}; the tensors are fed "
                    f"or read wrongly for this bmodel")

    def close(self) -> None:
        # Dropping the last references destroys the tensors' device memory and the
        # bmruntime; the owner (the batching thread) calls this on its own thread.
        self._stages = {}
        self._engine = None


def _probe(shape: Tuple[int, ...]) -> np.ndarray:
    """A deterministic, non-constant float32 input: values in [-1, 1] that differ from
    sample to sample, so mixed-up rows, a missed input scale or stale memory show up."""
    count = int(np.prod(shape))
    return np.linspace(-1.0, 1.0, num=count, dtype=np.float32).reshape(shape)
