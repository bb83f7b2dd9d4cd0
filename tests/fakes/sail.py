"""A fake ``sophon.sail`` that enforces SAIL's calling contract off-device.

It follows ``reference/sail.md`` section 1.3 (what ``Engine`` and ``Tensor`` really do, read
from SAIL v3.10.7's engine.cpp, graph.cpp and tensor.cpp) and the test-double plan of
section 9. Where the real module fails *silently* (a strided input written back into the
caller's buffer, a missing input read from a stale buffer, a second thread inside one
Engine, a Tensor-path run of a shape the bmodel was not compiled for, a tensor of the wrong
dtype) the fake raises AssertionError and records the violation in ``VIOLATIONS``, so a
test fails even if the code under test wraps the exception. Where the real module raises,
the fake raises the same way (``SailEngineError("bad input")``, ``SailTensorError``,
``TypeError`` for arguments pybind would not accept).

The two ``Engine.process`` paths:
- numpy path ``process(graph, {name: ndarray})``: force-casts to float32, quantises integer
  inputs with the input scale, returns fresh dequantised float32 arrays. The real binding
  has no ``gil_scoped_release``, so it holds the GIL for the whole TPU run; the fake holds
  it for ``FakeGraph.tpu_time_s`` (a C-level sleep through ``ctypes.PyDLL``, which keeps
  the GIL, as a pybind call without a release guard does).
- Tensor path ``process(graph, {name: Tensor}, {name: Tensor})`` (also with
  ``input_shapes`` before the outputs): the real binding releases the GIL, so the fake
  sleeps ``tpu_time_s`` with ``time.sleep`` (GIL released) and other Python threads run
  meanwhile. Each ``Tensor`` has separate system and device buffers: in SYSI/SYSIO the
  run copies inputs system -> device first, in SYSO/SYSIO outputs device -> system after,
  exactly as graph.cpp does; otherwise ``sync_s2d`` / ``sync_d2s`` are the caller's job.
  The TPU reads the device buffers and writes the output tensors' device buffers (integer
  outputs quantised with the output scale). No shape check happens in the real Tensor
  path (a failed ``bmrt_launch_tensor_ex`` is only logged and the outputs keep the
  previous run's values), so an uncompiled shape is a violation here.

Choices documented here because tests rely on them:
- ``IOMode.SYSI`` on the numpy path returns NaN-filled fp32 outputs (the real engine builds
  them from a NULL system pointer and returns garbage, without an error).
- ``get_input_shape`` / ``get_output_shape`` report the shape of the last ``process`` call,
  as the real engine does after its internal reshape; the maximum before any call.
- The numpy path's output dict is ordered by name, like the ``std::map`` the real binding
  converts.
- ``Tensor.update_data`` wants exactly the tensor's shape and numpy dtype
  (``SailTensorError`` otherwise). The real pybind overload resolution would first cast a
  float64 array to float32; the fake refuses it, so a backend never depends on that.
  ``scale_from`` / ``scale_to`` on a tensor without system memory are violations: the SE5's
  aarch64 build (no SSE) only logs them and leaves the data untouched.
- Touching a Tensor (any method) while a Tensor-path ``process`` runs on it is a violation
  (the real run reads and writes its memory with the GIL released).
- ``Decoder`` reads with ``cv2.VideoCapture`` (so files and real RTSP URLs work) and hands
  frames out in ``DECODER_FORMAT`` (BGR_PLANAR, as the real one does for the VPU's NV12
  frames; set YUV420P for what it gives for other streams). Reading with another device's
  Handle, after ``release()``, or from two threads at once is a violation (the real one
  returns an error code that looks like the end of the file, or races).

Use ``install(monkeypatch)`` to make ``import sophon.sail`` return this module for one test,
``install_placeholder`` / ``install_missing`` for the two ways SAIL can be absent, and
``register_model`` (with ``FakeGraph`` or ``onnx_graph``) to declare the bmodels that exist.
``ENGINES`` lists every Engine, ``TENSORS`` every Tensor and ``DECODERS`` every Decoder
constructed; ``KEEP_INPUTS = True`` makes each ``FakeCall`` keep the inputs the model saw.
"""

from __future__ import annotations

import ctypes
import enum
import os
import sys
import threading
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np


class Dtype(enum.IntEnum):
    BM_FLOAT32 = 0
    BM_FLOAT16 = 1
    BM_INT8 = 2
    BM_UINT8 = 3
    BM_INT16 = 4
    BM_UINT16 = 5
    BM_INT32 = 6
    BM_UINT32 = 7
    BM_BFLOAT16 = 8


class IOMode(enum.IntEnum):
    SYSI = 0
    SYSO = 1
    SYSIO = 2
    DEVIO = 3


class Format(enum.IntEnum):
    """``sail.Format`` (bm_image_format_ext); the fake stores only the three marked formats."""

    FORMAT_YUV420P = 0  # stored
    FORMAT_YUV422P = 1
    FORMAT_YUV444P = 2
    FORMAT_NV12 = 3
    FORMAT_NV21 = 4
    FORMAT_NV16 = 5
    FORMAT_NV61 = 6
    FORMAT_NV24 = 7
    FORMAT_RGB_PLANAR = 8
    FORMAT_BGR_PLANAR = 9  # stored
    FORMAT_RGB_PACKED = 10
    FORMAT_BGR_PACKED = 11  # stored
    FORMAT_RGBP_SEPARATE = 12
    FORMAT_BGRP_SEPARATE = 13
    FORMAT_GRAY = 14
    FORMAT_COMPRESSED = 15


class ImgDtype(enum.IntEnum):
    DATA_TYPE_EXT_FLOAT32 = 0
    DATA_TYPE_EXT_1N_BYTE = 1
    DATA_TYPE_EXT_4N_BYTE = 2
    DATA_TYPE_EXT_1N_BYTE_SIGNED = 3
    DATA_TYPE_EXT_4N_BYTE_SIGNED = 4


# The pybind enums are bound with export_values(): sail.SYSIO works as well as sail.IOMode.SYSIO.
globals().update({m.name: m for m in Dtype})
globals().update({m.name: m for m in IOMode})
globals().update({m.name: m for m in Format})
globals().update({m.name: m for m in ImgDtype})


class SailEngineError(RuntimeError):
    pass


class SailTensorError(RuntimeError):
    pass


class SailDecoderError(RuntimeError):
    pass


class SailBMImageError(RuntimeError):
    pass


#: bmodel path (absolute) -> its graphs; filled by register_model(), emptied by install().
MODELS: Dict[str, List["FakeGraph"]] = {}
#: every Engine constructed, in order, for assertions on calls.
ENGINES: List["Engine"] = []
#: contract violations the real SAIL would not report (see the module docstring).
VIOLATIONS: List[str] = []
#: how many TPUs get_available_tpu_num() reports; an SE5 has one.
TPU_COUNT = 1
#: every Decoder constructed, in order.
DECODERS: List["Decoder"] = []
#: the format Decoder.read() gives frames in (see the module docstring).
DECODER_FORMAT = Format.FORMAT_BGR_PLANAR
#: every Tensor constructed, in order (to check that results never alias their memory).
TENSORS: List["Tensor"] = []
#: whether each FakeCall keeps a copy of the float32 inputs the model saw (off: big models).
KEEP_INPUTS = False


def _violation(message: str) -> None:
    VIOLATIONS.append(message)
    raise AssertionError(message)


def get_available_tpu_num() -> int:
    return TPU_COUNT


def _check_dev_id(dev_id: Any) -> int:
    if not isinstance(dev_id, int) or isinstance(dev_id, bool):
        raise TypeError(f"incompatible function arguments: dev_id must be int, got {dev_id!r}")
    if not 0 <= dev_id < TPU_COUNT:
        raise SailEngineError("Engine related error")  # bm_dev_request fails for an absent TPU
    return dev_id


class Handle:
    def __init__(self, dev_id: int, /) -> None:
        self._dev_id = _check_dev_id(dev_id)

    def get_device_id(self) -> int:
        return self._dev_id

    def get_sn(self) -> str:
        return f"FAKE{self._dev_id:08d}"

    def get_target(self) -> str:
        return "BM1684"


@dataclass(frozen=True)
class FakeIO:
    """One graph input or output: its compiled (maximum) shape, dtype and int8 scale."""

    name: str
    shape: Tuple[int, ...]
    dtype: Dtype = Dtype.BM_FLOAT32
    scale: float = 1.0


ModelFn = Callable[[Dict[str, np.ndarray]], Dict[str, np.ndarray]]


@dataclass
class FakeGraph:
    """One network of a bmodel.

    ``batch_sizes`` are the compiled stages (the batch dimension of each stage's inputs;
    the other dimensions are those of the maximum shape); default: only the maximum shape.
    ``fn`` maps float32 inputs of one stage to outputs with the same batch.
    ``tpu_time_s`` is how long each ``process`` call keeps the "TPU" busy: with the GIL
    held on the numpy path, released on the Tensor path (see the module docstring).
    """

    name: str
    inputs: List[FakeIO]
    outputs: List[FakeIO]
    fn: ModelFn
    batch_sizes: Tuple[int, ...] = ()
    dynamic: bool = False
    tpu_time_s: float = 0.0

    def __post_init__(self) -> None:
        max_batch = {io.shape[0] for io in self.inputs}
        if len(max_batch) != 1:
            raise ValueError(f"fake graph {self.name}: inputs disagree on the batch dimension")
        if not self.batch_sizes:
            self.batch_sizes = (max_batch.pop(),)
        elif max(self.batch_sizes) != max_batch.pop():
            raise ValueError(f"fake graph {self.name}: the largest stage must be the input shape")
        self.batch_sizes = tuple(sorted(self.batch_sizes))

    def input(self, name: str) -> Optional[FakeIO]:
        return next((io for io in self.inputs if io.name == name), None)


def register_model(path: Union[str, Path], *graphs: FakeGraph) -> str:
    """Declare a bmodel file with ``graphs``; an empty placeholder file is written if absent."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.exists(path):
        Path(path).write_bytes(b"fake bmodel\n")
    MODELS[path] = list(graphs)
    return path


@dataclass
class FakeCall:
    """What one process() call received, as the binding saw it.

    On the Tensor path ``dtypes`` are the tensors' numpy dtypes and ``shapes`` the shapes
    the run used (the tensors' own, or ``input_shapes``).
    """

    graph: str
    shapes: Dict[str, Tuple[int, ...]]
    dtypes: Dict[str, np.dtype]
    c_contiguous: Dict[str, bool]
    thread_id: int
    mode: IOMode
    #: "numpy" or "tensor": which overload of process() ran.
    path: str = "numpy"
    #: perf_counter() when the emulated TPU time began and ended.
    tpu_started_s: float = 0.0
    tpu_ended_s: float = 0.0
    #: the float32 inputs the model saw (dequantised), only with KEEP_INPUTS.
    inputs: Optional[Dict[str, np.ndarray]] = None


def _quantise(x: np.ndarray, dtype: Dtype, scale: float) -> np.ndarray:
    """SAIL's CPU-side conversion of a float32 input to an integer bmodel input, and back."""
    if dtype == Dtype.BM_INT8:
        return np.clip(np.round(x * scale), -127, 127).astype(np.float32) / np.float32(scale)
    if dtype == Dtype.BM_UINT8:
        return np.clip(np.round(x * scale), 0, 255).astype(np.float32) / np.float32(scale)
    if dtype == Dtype.BM_INT32:
        return np.round(x * scale).astype(np.float32) / np.float32(scale)
    return x


def _dequantise(y: np.ndarray, dtype: Dtype, scale: float) -> np.ndarray:
    """An integer bmodel output as SAIL returns it: q * output_scale."""
    if dtype == Dtype.BM_INT8:
        return np.clip(np.round(y / scale), -127, 127) * scale
    if dtype == Dtype.BM_UINT8:
        return np.clip(np.round(y / scale), 0, 255) * scale
    if dtype == Dtype.BM_INT32:
        return np.round(y / scale) * scale
    return y


def _gil_holding_usleep() -> Optional[Callable[[Any], Any]]:
    try:
        # PyDLL calls keep the GIL (CDLL ones release it): a C-level sleep under the GIL.
        return ctypes.PyDLL(None).usleep
    except (OSError, AttributeError):  # pragma: no cover - every Linux libc has usleep
        return None


_USLEEP_HOLDING_THE_GIL = _gil_holding_usleep()


def _hold_gil_for(seconds: float) -> None:
    """Block for ``seconds`` *without* releasing the GIL, like a pybind11 method bound
    without ``gil_scoped_release`` that waits for the TPU (the numpy-path process)."""
    if seconds <= 0:
        return
    usleep = _USLEEP_HOLDING_THE_GIL
    if usleep is None:  # pragma: no cover
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:  # a Python loop lets others in every 5 ms
            pass
        return
    remaining_us = int(seconds * 1e6)
    while remaining_us > 0:
        step = min(remaining_us, 500_000)  # usleep may refuse a second or more
        usleep(ctypes.c_uint(step))
        remaining_us -= step


_NUMPY_DTYPES = {Dtype.BM_FLOAT32: np.dtype(np.float32), Dtype.BM_INT8: np.dtype(np.int8),
                 Dtype.BM_UINT8: np.dtype(np.uint8), Dtype.BM_INT32: np.dtype(np.int32)}
_INT_RANGES = {Dtype.BM_INT8: (-127, 127), Dtype.BM_UINT8: (0, 255),
               Dtype.BM_INT32: (-2 ** 31, 2 ** 31 - 1)}


def _numpy_dtype(dtype: Dtype) -> np.dtype:
    try:
        return _NUMPY_DTYPES[dtype]
    except KeyError:
        raise NotImplementedError(f"the fake Tensor stores only "
                                  f"{[d.name for d in _NUMPY_DTYPES]}, not {dtype!r}") from None


def _stored(x: np.ndarray, dtype: Dtype, factor: float) -> np.ndarray:
    """float32 values as a tensor of ``dtype`` holds them: SAIL's TRANSFER_INT (round,
    clamp; int8 is clamped to -127..127) or TRANSFER_FLOAT (multiply) of src/internal.h."""
    scaled = np.asarray(x, dtype=np.float32) * factor
    if dtype in _INT_RANGES:
        low, high = _INT_RANGES[dtype]
        return np.clip(np.round(scaled), low, high).astype(_numpy_dtype(dtype))
    return scaled.astype(_numpy_dtype(dtype))


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class Tensor:
    """``sail.Tensor``: system and device memory of one shape and dtype (bind.cpp 286-305).

    ``Tensor(handle, shape, dtype, own_sys_data=False, own_dev_data=False)`` allocates what
    it is told to (device memory zeroed, as bm_memset_device_ext does; system memory left
    as garbage, as malloc does); ``Tensor(handle, data[, own_sys_data[, own_dev_data]])``
    copies ``data`` into system memory when it owns some, else straight to the device.
    The two memories are separate buffers: ``sync_s2d`` / ``sync_d2s`` copy between them.
    """

    def __init__(self, handle: Handle, *args: Any, **kwargs: Any) -> None:
        if not isinstance(handle, Handle):
            raise TypeError("incompatible constructor arguments: the first argument must be a sail.Handle")
        first = args[0] if args else kwargs.get("data", kwargs.get("shape"))
        if isinstance(first, np.ndarray):
            self._init_from_data(handle, *args, **kwargs)
        else:
            self._init_empty(handle, *args, **kwargs)
        self._in_use = False
        TENSORS.append(self)

    def _init_empty(self, handle: Handle, shape: Sequence[int], dtype: Dtype,
                    own_sys_data: bool = False, own_dev_data: bool = False) -> None:
        if not isinstance(shape, (list, tuple)) or not all(_is_int(d) for d in shape):
            raise TypeError(f"incompatible constructor arguments: shape must be a list of int, got {shape!r}")
        if not isinstance(dtype, Dtype):
            raise TypeError(f"incompatible constructor arguments: dtype must be sail.Dtype, got {dtype!r}")
        if not isinstance(own_sys_data, bool) or not isinstance(own_dev_data, bool):
            raise TypeError("incompatible constructor arguments: own_sys_data and own_dev_data are bool")
        self._setup(handle, [int(d) for d in shape], dtype, own_sys_data, own_dev_data)
        if self._sys is not None:
            self._sys[:] = 0xA5  # malloc'd, never zeroed: garbage until written

    def _init_from_data(self, handle: Handle, data: np.ndarray, own_sys_data: bool = True,
                        own_dev_data: bool = True) -> None:
        if not isinstance(own_sys_data, bool) or not isinstance(own_dev_data, bool):
            raise TypeError("incompatible constructor arguments: own_sys_data and own_dev_data are bool")
        dtype = next((d for d, n in _NUMPY_DTYPES.items() if n == data.dtype), Dtype.BM_FLOAT32)
        data = np.ascontiguousarray(data, dtype=_numpy_dtype(dtype))  # pybind forcecast + SAIL's copy
        if data.ndim < 1:
            raise SailTensorError("invalid argument")
        self._setup(handle, list(data.shape), dtype, own_sys_data, own_dev_data)
        target = self._sys if self._sys is not None else self._dev
        if target is not None:
            target[:] = data.view(np.uint8).reshape(-1)

    def _setup(self, handle: Handle, shape: List[int], dtype: Dtype, own_sys: bool, own_dev: bool) -> None:
        self._handle = handle
        self._shape = shape
        self._dtype = dtype
        self._np = _numpy_dtype(dtype)
        self._own = (own_sys, own_dev)
        valid = all(d > 0 for d in shape)  # shape_is_valid(): nothing is allocated otherwise
        nbytes = int(np.prod(shape)) * self._np.itemsize if valid else 0
        self._dev: Optional[np.ndarray] = np.zeros(nbytes, np.uint8) if own_dev and valid else None
        self._sys: Optional[np.ndarray] = np.zeros(nbytes, np.uint8) if own_sys and valid else None

    # -- the guard of the Tensor path ----------------------------------------------------

    def _check_idle(self, what: str) -> None:
        if self._in_use:
            _violation(f"Tensor.{what}() while a Tensor-path process() runs on this tensor: "
                       f"the real run reads and writes its memory with the GIL released")

    # -- queries -------------------------------------------------------------------------

    def shape(self) -> List[int]:
        return list(self._shape)

    def dtype(self) -> Dtype:
        return self._dtype

    def own_sys_data(self) -> bool:
        return self._own[0]

    def own_dev_data(self) -> bool:
        return self._own[1]

    def is_sys_data_valid(self) -> bool:
        return self._sys is not None

    def is_dev_data_valid(self) -> bool:
        return self._dev is not None

    def device_id(self) -> int:
        return self._handle.get_device_id()

    def size(self) -> int:
        return int(np.prod(self._shape))

    def element_size(self) -> int:
        return self._np.itemsize

    def nbytes(self) -> int:
        return self.size() * self._np.itemsize

    # -- data in and out -------------------------------------------------------------------

    def update_data(self, data: np.ndarray) -> None:
        """tensor.cpp update_data(): exactly the tensor's shape and dtype; written to system
        memory when the tensor has some, else straight to device memory."""
        self._check_idle("update_data")
        if not isinstance(data, np.ndarray):
            raise TypeError("incompatible function arguments: update_data(data: numpy.ndarray)")
        if data.ndim != len(self._shape) or list(data.shape) != self._shape:
            raise SailTensorError("invalid argument")  # "Invalid tensor shape [..] vs. [..]!"
        if data.dtype != self._np:
            raise SailTensorError("Wrong dtype of input array!")
        target = self._sys if self._sys is not None else self._dev
        if target is None:
            raise SailTensorError("invalid Tensor")  # "Can not found device memory or host memory!"
        target[:] = np.ascontiguousarray(data).view(np.uint8).reshape(-1)  # SAIL copies a strided array

    def scale_from(self, data: np.ndarray, scale: float) -> None:
        """``q = clamp(round(x * scale))`` from float32 ``data`` into system memory."""
        self._check_idle("scale_from")
        if not isinstance(data, np.ndarray) or not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise TypeError("incompatible function arguments: scale_from(data: numpy.ndarray[float32], scale: float)")
        if data.dtype != np.float32:
            data = np.ascontiguousarray(data, dtype=np.float32)  # pybind's forcecast makes a copy
        elif not data.flags.c_contiguous:
            _violation("scale_from() of a strided float32 array: SAIL reads buf.ptr linearly, "
                       "so the tensor would get the elements in memory order, not index order")
        if data.size > self.size():
            raise SailTensorError("size out of range")
        if self._sys is None:
            _violation("scale_from() on a Tensor without system memory: the SE5's build only "
                       "logs 'AnyScale param err' and leaves the tensor unchanged")
        assert self._sys is not None
        self._sys.view(self._np)[:data.size] = _stored(data.reshape(-1), self._dtype, scale)

    def scale_to(self, scale: float, shape: Optional[Sequence[int]] = None) -> np.ndarray:
        """A new float32 array ``y = q * scale`` of system memory (the tensor's shape)."""
        self._check_idle("scale_to")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool):
            raise TypeError("incompatible function arguments: scale_to(scale: float[, shape])")
        out_shape = list(self._shape if shape is None else shape)
        count = int(np.prod(out_shape))
        if count > self.size():
            raise SailTensorError("size out of range")
        if self._sys is None:
            _violation("scale_to() on a Tensor without system memory: the SE5's build only "
                       "logs 'AnyScale param err' and returns an uninitialised array")
        assert self._sys is not None
        values = self._sys.view(self._np)[:count].astype(np.float32) * np.float32(scale)
        return values.reshape(out_shape)

    def asnumpy(self, shape: Optional[Sequence[int]] = None) -> np.ndarray:
        """A fresh copy of system memory (of device memory if there is none), in the
        tensor's dtype: pybind's array_t(buffer_info) without a base object copies."""
        self._check_idle("asnumpy")
        buffer = self._sys if self._sys is not None else self._dev
        if buffer is None:
            raise SailTensorError("invalid Tensor")  # "asnumpy: sys_data=null and dev_data is null!"
        out_shape = list(self._shape if shape is None else shape)
        count = int(np.prod(out_shape))
        if count > self.size():
            raise SailTensorError("size out of range")
        return buffer.view(self._np)[:count].copy().reshape(out_shape)

    def sync_s2d(self, size: Optional[int] = None) -> None:
        """Copy ``size`` bytes (all by default) of system memory to device memory."""
        self._check_idle("sync_s2d")
        self._copy(self._sys, self._dev, size, "sync_s2d")

    def sync_d2s(self, size: Optional[int] = None) -> None:
        """Copy ``size`` bytes (all by default) of device memory to system memory."""
        self._check_idle("sync_d2s")
        self._copy(self._dev, self._sys, size, "sync_d2s")

    def _copy(self, source: Optional[np.ndarray], target: Optional[np.ndarray],
              size: Optional[int], what: str) -> None:
        if size is not None and not _is_int(size):
            raise TypeError(f"incompatible function arguments: {what}(size: int)")
        if self._sys is None:
            return  # both only act when system memory is valid
        if self._dev is None:
            _violation(f"{what}() on a Tensor without device memory: bm_memcpy fails, only logged")
        assert source is not None and target is not None
        count = source.size if size is None else int(size)
        if not 0 <= count <= source.size:
            _violation(f"{what}({size}) beyond the tensor's {source.size} bytes")
        target[:count] = source[:count]

    # -- what the fake Engine's Tensor path uses -------------------------------------------------

    def _device_values(self, shape: Sequence[int]) -> np.ndarray:
        assert self._dev is not None
        count = int(np.prod(shape))
        return self._dev.view(self._np)[:count].reshape(shape).copy()

    def _write_device(self, values: np.ndarray) -> None:
        assert self._dev is not None and values.dtype == self._np
        flat = values.reshape(-1)
        self._dev.view(self._np)[:flat.size] = flat


def _bind(names: Sequence[str], args: Sequence[Any], kwargs: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """Arguments bound to one overload's parameter names (the last one, core_list, is
    optional), or None when they do not fit its arity and names."""
    if len(args) > len(names) or set(kwargs) - set(names[len(args):]):
        return None
    bound = dict(zip(names, args))
    bound.update(kwargs)
    if any(n not in bound for n in names[:-1]):
        return None
    bound.setdefault(names[-1], [])
    return bound


def _tensor_map(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, Tensor)
                                           for k, v in value.items())


def _shape_map(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, (list, tuple)) and all(_is_int(d) for d in v)
        for k, v in value.items())


def _resolve_process(args: Sequence[Any], kwargs: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """Pick the ``Engine.process`` overload pybind11 would (bind.cpp 393-395, in order)."""
    overloads = (("tensor", ("input", "output", "core_list")),
                 ("tensor", ("input", "input_shapes", "output", "core_list")),
                 ("numpy", ("input_tensors", "core_list")))
    for path, names in overloads:
        bound = _bind(names, args, kwargs)
        if bound is None or not isinstance(bound["core_list"], (list, tuple)):
            continue
        if path == "tensor":
            if (_tensor_map(bound["input"]) and _tensor_map(bound["output"])
                    and ("input_shapes" not in bound or _shape_map(bound["input_shapes"]))):
                return path, bound
        elif isinstance(bound["input_tensors"], dict) and not any(
                isinstance(v, Tensor) for v in bound["input_tensors"].values()):
            return path, bound
    raise TypeError("process(): incompatible function arguments; the overloads are "
                    "(graph_name, input: dict[str, Tensor], output: dict[str, Tensor], core_list=[]), "
                    "(graph_name, input, input_shapes: dict[str, list[int]], output, core_list=[]), "
                    "(graph_name, input_tensors: dict[str, numpy.ndarray], core_list=[])")


class Engine:
    """The ``Engine(bmodel_path, tpu_id, mode)`` constructor and both ``process`` paths."""

    def __init__(self, bmodel_path: str, dev_id: int, mode: IOMode, /) -> None:
        # pybind11 converts only str to std::string and only IOMode members to the enum;
        # the other constructor overloads (tpu_id only, Handle, bytes) are not faked.
        if not isinstance(bmodel_path, str):
            raise TypeError(f"incompatible constructor arguments: bmodel_path must be str, "
                            f"got {type(bmodel_path).__name__}")
        if not isinstance(mode, IOMode):
            raise TypeError(f"incompatible constructor arguments: mode must be sail.IOMode, got {mode!r}")
        self._handle = Handle(dev_id)
        path = os.path.abspath(bmodel_path)
        if not os.path.isfile(path) or path not in MODELS:
            # The real engine logs "bmodel ... does not exist" / "Load ... failed" and raises:
            raise SailEngineError("invalid bmodel")
        self._graphs: Dict[str, FakeGraph] = {g.name: g for g in MODELS[path]}
        self._mode = mode
        self._owner_thread = threading.get_ident()
        self._busy = threading.Lock()
        self._input_shapes = {g.name: {io.name: list(io.shape) for io in g.inputs} for g in MODELS[path]}
        self._output_shapes = {g.name: {io.name: list(io.shape) for io in g.outputs} for g in MODELS[path]}
        self.bmodel_path = path
        self.calls: List[FakeCall] = []
        ENGINES.append(self)

    # -- queries -----------------------------------------------------------------------

    def _graph(self, graph_name: str) -> FakeGraph:
        graph = self._graphs.get(graph_name)
        if graph is None:
            # bmrt_get_network_info returns NULL and the real engine dereferences it.
            _violation(f"unknown graph {graph_name!r}: the real SAIL would crash")
        return graph

    def get_handle(self) -> Handle:
        return self._handle

    def get_device_id(self) -> int:
        return self._handle.get_device_id()

    def get_graph_names(self) -> List[str]:
        return list(self._graphs)

    def graph_is_dynamic(self, graph_name: str) -> bool:
        return self._graph(graph_name).dynamic

    def get_input_names(self, graph_name: str) -> List[str]:
        return [io.name for io in self._graph(graph_name).inputs]

    def get_output_names(self, graph_name: str) -> List[str]:
        return [io.name for io in self._graph(graph_name).outputs]

    def get_max_input_shapes(self, graph_name: str) -> Dict[str, List[int]]:
        return {io.name: list(io.shape) for io in self._graph(graph_name).inputs}

    def get_max_output_shapes(self, graph_name: str) -> Dict[str, List[int]]:
        return {io.name: list(io.shape) for io in self._graph(graph_name).outputs}

    # The real getters index std::maps with operator[]: an unknown tensor name yields an
    # empty shape, dtype 0 (BM_FLOAT32) and scale 0.0 rather than an error.
    def get_input_shape(self, graph_name: str, tensor_name: str) -> List[int]:
        self._graph(graph_name)
        return list(self._input_shapes[graph_name].get(tensor_name, []))

    def get_output_shape(self, graph_name: str, tensor_name: str) -> List[int]:
        self._graph(graph_name)
        return list(self._output_shapes[graph_name].get(tensor_name, []))

    def _io(self, ios: Sequence[FakeIO], name: str) -> Optional[FakeIO]:
        return next((io for io in ios if io.name == name), None)

    def get_input_dtype(self, graph_name: str, tensor_name: str) -> Dtype:
        io = self._io(self._graph(graph_name).inputs, tensor_name)
        return io.dtype if io else Dtype.BM_FLOAT32

    def get_output_dtype(self, graph_name: str, tensor_name: str) -> Dtype:
        io = self._io(self._graph(graph_name).outputs, tensor_name)
        return io.dtype if io else Dtype.BM_FLOAT32

    def get_input_scale(self, graph_name: str, tensor_name: str) -> float:
        io = self._io(self._graph(graph_name).inputs, tensor_name)
        return io.scale if io else 0.0

    def get_output_scale(self, graph_name: str, tensor_name: str) -> float:
        io = self._io(self._graph(graph_name).outputs, tensor_name)
        return io.scale if io else 0.0

    # -- inference ---------------------------------------------------------------------

    def process(self, graph_name: str, *args: Any, **kwargs: Any) -> Optional[Dict[str, np.ndarray]]:
        """The numpy path (returns outputs) or the Tensor path (fills ``output``, returns
        None), chosen from the arguments as pybind11 resolves the overloads."""
        if not isinstance(graph_name, str):
            raise TypeError("process(): incompatible function arguments: graph_name must be str")
        path, bound = _resolve_process(args, kwargs)
        if threading.get_ident() != self._owner_thread:
            _violation(f"process() on thread {threading.get_ident()}, Engine created on "
                       f"thread {self._owner_thread}: one Engine must stay on one thread")
        if not self._busy.acquire(blocking=False):
            _violation("concurrent process() on one Engine: the real one would race on its "
                       "shared per-graph buffers and output shapes")
        try:
            if path == "numpy":
                return self._process(graph_name, bound["input_tensors"])
            self._process_tensors(graph_name, bound["input"], bound.get("input_shapes"),
                                  bound["output"])
            return None
        finally:
            self._busy.release()

    def _process(self, graph_name: str, input_tensors: Dict[str, Any]) -> Dict[str, np.ndarray]:
        graph = self._graph(graph_name)
        if self._mode not in (IOMode.SYSI, IOMode.SYSIO):
            raise SailEngineError("bad input")  # "If input type is numpy.array, IOMode must be SYSIO or SYSI!"
        self.calls.append(FakeCall(
            graph=graph_name,
            shapes={n: tuple(np.shape(v)) for n, v in input_tensors.items()},
            dtypes={n: np.asarray(v).dtype for n, v in input_tensors.items()},
            c_contiguous={n: bool(np.asarray(v).flags.c_contiguous) for n, v in input_tensors.items()},
            thread_id=threading.get_ident(),
            mode=self._mode,
        ))

        arrays: Dict[str, np.ndarray] = {}
        for name, value in input_tensors.items():
            if not isinstance(name, str):
                raise TypeError("incompatible function arguments: input names must be str")
            if isinstance(value, np.ndarray) and not value.flags.c_contiguous:
                _violation(f"input {name!r} is not C-contiguous: the real SAIL would memcpy a "
                           f"contiguous copy back into the caller's buffer")
            try:
                arrays[name] = np.array(value, dtype=np.float32, copy=True)  # array_t<float> force-cast
            except (TypeError, ValueError) as exc:
                raise TypeError(f"incompatible function arguments: {exc}") from exc

        stage_batch = self._check_shapes(graph, arrays)
        missing = [io.name for io in graph.inputs if io.name not in arrays]
        if missing:
            _violation(f"inputs {missing} not given: the real SAIL would silently use stale buffers")
        self._input_shapes[graph_name].update({n: list(a.shape) for n, a in arrays.items()})

        feeds = {io.name: _quantise(arrays[io.name], io.dtype, io.scale) for io in graph.inputs}
        call = self.calls[-1]
        if KEEP_INPUTS:
            call.inputs = {n: v.copy() for n, v in feeds.items()}
        call.tpu_started_s = time.perf_counter()
        _hold_gil_for(graph.tpu_time_s)  # no gil_scoped_release on this overload
        call.tpu_ended_s = time.perf_counter()
        if self._mode == IOMode.SYSI:
            raw = {io.name: np.full((stage_batch,) + io.shape[1:], np.nan, dtype=np.float32)
                   for io in graph.outputs}
        else:
            raw = graph.fn(feeds)
        outputs: Dict[str, np.ndarray] = {}
        for io in sorted(graph.outputs, key=lambda o: o.name):
            expected = (stage_batch,) + tuple(io.shape[1:])
            value = np.asarray(raw[io.name], dtype=np.float32)
            if value.shape != expected:
                raise ValueError(f"fake model fn returned {io.name} shaped {value.shape}, "
                                 f"expected {expected}")  # a broken test model, not a SAIL error
            outputs[io.name] = np.array(_dequantise(value, io.dtype, io.scale), dtype=np.float32, copy=True)
            self._output_shapes[graph_name][io.name] = list(expected)
        return outputs

    def _check_shapes(self, graph: FakeGraph, arrays: Dict[str, np.ndarray]) -> int:
        """SAIL's is_input_shape_valid(); returns the batch of the stage that matched."""
        batches = set()
        for name, array in arrays.items():
            io = graph.input(name)
            if io is None or array.ndim != len(io.shape):
                raise SailEngineError("bad input")
            if graph.dynamic:
                if any(d <= 0 or d > m for d, m in zip(array.shape, io.shape)):
                    raise SailEngineError("bad input")
            elif not any(array.shape == (b,) + io.shape[1:] for b in graph.batch_sizes):
                raise SailEngineError("bad input")
            batches.add(array.shape[0])
        if len(batches) != 1:
            raise SailEngineError("Engine related error")  # inputs from different stages
        return batches.pop()

    def _process_tensors(self, graph_name: str, inputs: Dict[str, Tensor],
                         input_shapes: Optional[Dict[str, Sequence[int]]],
                         outputs: Dict[str, Tensor]) -> None:
        """engine.cpp 1099-1163 and graph.cpp 665-760: checks, s2d, run, d2s."""
        graph = self._graph(graph_name)
        # What the real engine raises for (engine.cpp): memory the IOMode needs is missing.
        inputs_in_sys = self._mode in (IOMode.SYSI, IOMode.SYSIO)
        outputs_in_sys = self._mode in (IOMode.SYSO, IOMode.SYSIO)
        for tensor in inputs.values():
            if (tensor._sys is None and inputs_in_sys) or tensor._dev is None:
                raise SailEngineError("bad input")  # "Not found system/device memory in input tensor"
        for tensor in outputs.values():
            if (tensor._sys is None and outputs_in_sys) or tensor._dev is None:
                raise SailEngineError("bad output")

        # What it does not check, and gets wrong silently.
        def io_of(ios: Sequence[FakeIO], given: Dict[str, Any], kind: str) -> None:
            unknown = sorted(set(given) - {io.name for io in ios})
            if unknown:
                _violation(f"{kind} tensors {unknown} are not {kind}s of {graph_name!r}: the real "
                           f"SAIL maps an unknown name to index 0 (std::map operator[])")
            missing = [io.name for io in ios if io.name not in given]
            if missing:
                _violation(f"{kind}s {missing} not given: the real SAIL runs with unbound tensors")

        io_of(graph.inputs, inputs, "input")
        io_of(graph.outputs, outputs, "output")
        if input_shapes is not None:
            io_of(graph.inputs, input_shapes, "input shape")
        by_name = [(io, inputs[io.name]) for io in graph.inputs]
        by_name += [(io, outputs[io.name]) for io in graph.outputs]
        if len({id(tensor) for _io, tensor in by_name}) != len(by_name):
            _violation(f"one Tensor passed for two of {graph_name!r}'s inputs/outputs")
        for io, tensor in by_name:
            name = io.name
            if tensor._in_use:
                _violation(f"tensor {name!r} is in use by another process() right now")
            if tensor.dtype() != io.dtype:
                _violation(f"tensor {name!r} is {tensor.dtype().name} but the graph's {name!r} is "
                           f"{io.dtype.name}: the TPU would read its bytes as {io.dtype.name}")
            if tensor.device_id() != self.get_device_id():
                _violation(f"tensor {name!r} lives on device {tensor.device_id()}, the Engine on "
                           f"{self.get_device_id()}")

        shapes = {name: tuple(int(d) for d in (input_shapes[name] if input_shapes is not None
                                               else tensor.shape()))
                  for name, tensor in inputs.items()}
        batches = set()
        for io in graph.inputs:
            shape = shapes[io.name]
            if len(shape) != len(io.shape) or (
                    any(d <= 0 or d > m for d, m in zip(shape, io.shape)) if graph.dynamic
                    else not any(shape == (b,) + io.shape[1:] for b in graph.batch_sizes)):
                _violation(f"input {io.name!r} shaped {shape} matches no compiled stage of "
                           f"{graph_name!r}: bmrt_launch_tensor_ex fails, SAIL only logs it and "
                           f"the outputs keep the previous run's values")
            if int(np.prod(shape)) * inputs[io.name].element_size() > inputs[io.name].nbytes():
                _violation(f"input {io.name!r} shaped {shape} is larger than its tensor "
                           f"{inputs[io.name].shape()}: the TPU would read past its memory")
            batches.add(shape[0])
        if len(batches) != 1:
            _violation(f"inputs of {graph_name!r} from different stages: {shapes}")
        stage_batch = batches.pop()
        expected = {io.name: (stage_batch,) + tuple(io.shape[1:]) for io in graph.outputs}
        for io in graph.outputs:
            if int(np.prod(expected[io.name])) > outputs[io.name].size():
                _violation(f"output tensor {io.name!r} {outputs[io.name].shape()} cannot hold "
                           f"{expected[io.name]}: the TPU would write past its memory")

        tensors = list(inputs.values()) + list(outputs.values())
        for tensor in tensors:
            tensor._in_use = True
        try:
            feeds: Dict[str, np.ndarray] = {}
            for io in graph.inputs:
                tensor = inputs[io.name]
                size = int(np.prod(shapes[io.name])) * tensor.element_size()
                if inputs_in_sys:  # input_s2d(): the run copies what it reads
                    assert tensor._sys is not None and tensor._dev is not None
                    tensor._dev[:size] = tensor._sys[:size]
                raw = tensor._device_values(shapes[io.name])
                feeds[io.name] = (raw.astype(np.float32) / np.float32(io.scale)
                                  if io.dtype in _INT_RANGES else raw.astype(np.float32))
            self.calls.append(FakeCall(
                graph=graph_name, shapes=dict(shapes),
                dtypes={n: t._np for n, t in inputs.items()},
                c_contiguous={n: True for n in inputs}, thread_id=threading.get_ident(),
                mode=self._mode, path="tensor",
                inputs={n: v.copy() for n, v in feeds.items()} if KEEP_INPUTS else None))
            call = self.calls[-1]
            call.tpu_started_s = time.perf_counter()
            if graph.tpu_time_s > 0:
                time.sleep(graph.tpu_time_s)  # py::call_guard<gil_scoped_release>: others run
            call.tpu_ended_s = time.perf_counter()
            raw_outputs = graph.fn(feeds)
            for io in graph.outputs:
                value = np.asarray(raw_outputs[io.name], dtype=np.float32)
                if value.shape != expected[io.name]:
                    raise ValueError(f"fake model fn returned {io.name} shaped {value.shape}, "
                                     f"expected {expected[io.name]}")  # a broken test model
                tensor = outputs[io.name]
                factor = 1.0 / io.scale if io.dtype in _INT_RANGES else 1.0
                tensor._write_device(_stored(value, io.dtype, factor))
                self._output_shapes[graph_name][io.name] = list(expected[io.name])
                if outputs_in_sys:  # output_d2s()
                    assert tensor._sys is not None and tensor._dev is not None
                    size = value.size * tensor.element_size()
                    tensor._sys[:size] = tensor._dev[:size]
        finally:
            for tensor in tensors:
                tensor._in_use = False


# -- models backed by a real ONNX file --------------------------------------------------

def onnx_graph(onnx_path: Union[str, Path], batch_sizes: Sequence[int] = (1,),
               name: Optional[str] = None, input_dtype: Dtype = Dtype.BM_FLOAT32,
               input_scale: float = 1.0) -> FakeGraph:
    """A fake bmodel graph "compiled" from an ONNX model at ``batch_sizes``.

    Its ``fn`` runs the ONNX model through onnxruntime (one sample at a time when the ONNX
    graph has a fixed batch of 1), so the SAIL and ONNX Runtime backends can be compared
    numerically on the same weights.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(os.fspath(onnx_path), providers=["CPUExecutionProvider"])
    max_batch = max(batch_sizes)
    onnx_inputs = session.get_inputs()
    sample_shapes = {}
    for i in onnx_inputs:
        dims = list(i.shape)[1:]
        if not all(isinstance(d, int) for d in dims):
            raise ValueError(f"{onnx_path}: input {i.name} has free dimensions {i.shape}")
        sample_shapes[i.name] = tuple(dims)
    fixed_batch = isinstance(onnx_inputs[0].shape[0], int)
    output_names = [o.name for o in session.get_outputs()]

    def run(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        if not fixed_batch:
            results = session.run(output_names, feeds)
        else:
            batch = next(iter(feeds.values())).shape[0]
            per_sample = [session.run(output_names, {k: v[j:j + 1] for k, v in feeds.items()})
                          for j in range(batch)]
            results = [np.concatenate([r[k] for r in per_sample]) for k in range(len(output_names))]
        return dict(zip(output_names, results))

    probe = run({n: np.zeros((1,) + s, dtype=np.float32) for n, s in sample_shapes.items()})
    inputs = [FakeIO(n, (max_batch,) + s, input_dtype, input_scale) for n, s in sample_shapes.items()]
    outputs = [FakeIO(n, (max_batch,) + tuple(probe[n].shape[1:])) for n in output_names]
    return FakeGraph(name or Path(onnx_path).stem, inputs, outputs, run, tuple(batch_sizes))


# -- video decoding: BMImage and Decoder (reference/sail.md 1.4) -------------------------

#: sail_status_t codes Decoder.read() returns (SAIL include/tensor.h).
SAIL_ERR_DEV_HANDLE = 1004
SAIL_ERR_DEC_READ = 5006
SAIL_ERR_DEC_EOF = 5007

_STORED_FORMATS = (Format.FORMAT_BGR_PLANAR, Format.FORMAT_BGR_PACKED, Format.FORMAT_YUV420P)


def _to_format(image_bgr: np.ndarray, image_format: Format) -> np.ndarray:
    """A packed BGR picture in the memory layout of ``image_format``."""
    if image_format == Format.FORMAT_BGR_PACKED:
        return np.ascontiguousarray(image_bgr)
    if image_format == Format.FORMAT_BGR_PLANAR:
        return np.ascontiguousarray(image_bgr.transpose(2, 0, 1))
    if image_format == Format.FORMAT_YUV420P:
        return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YUV_I420)
    raise NotImplementedError(f"the fake BMImage does not store {image_format!r}")


def _to_bgr(pixels: np.ndarray, image_format: Format) -> np.ndarray:
    if image_format == Format.FORMAT_BGR_PACKED:
        return pixels.copy()
    if image_format == Format.FORMAT_BGR_PLANAR:
        return np.ascontiguousarray(pixels.transpose(1, 2, 0))
    return cv2.cvtColor(pixels, cv2.COLOR_YUV2BGR_I420)


class BMImage:
    """``sail.BMImage()`` or ``sail.BMImage(handle, h, w, format, dtype)``: a picture in
    device memory, here a numpy array in ``format``'s layout (uint8 only)."""

    def __init__(self, *args: Any) -> None:
        self._pixels: Optional[np.ndarray] = None
        self._format = Format.FORMAT_BGR_PLANAR  # what the real empty BMImage reports
        self._dtype = ImgDtype.DATA_TYPE_EXT_1N_BYTE
        self._width = self._height = 0
        if not args:
            return
        if len(args) != 5:
            raise TypeError("incompatible constructor arguments: BMImage() or "
                            "BMImage(handle, h, w, format, dtype)")
        handle, height, width, image_format, dtype = args
        if not isinstance(handle, Handle) or not isinstance(image_format, Format) \
                or not isinstance(dtype, ImgDtype):
            raise TypeError("incompatible constructor arguments: BMImage(handle: Handle, h: int, "
                            "w: int, format: Format, dtype: ImgDtype)")
        if image_format not in _STORED_FORMATS or dtype != ImgDtype.DATA_TYPE_EXT_1N_BYTE:
            raise NotImplementedError(f"the fake BMImage stores only uint8 {_STORED_FORMATS}")
        self._set(np.zeros((int(height), int(width), 3), dtype=np.uint8), image_format)

    def _set(self, image_bgr: np.ndarray, image_format: Format) -> None:
        self._pixels = _to_format(image_bgr, image_format)
        self._format = image_format
        self._height, self._width = image_bgr.shape[:2]

    def width(self) -> int:
        return self._width

    def height(self) -> int:
        return self._height

    def format(self) -> Format:
        return self._format

    def dtype(self) -> ImgDtype:
        return self._dtype

    def asmat(self) -> np.ndarray:
        """A packed BGR copy, HxWx3 uint8 (sophon-opencv's toMAT converts any format)."""
        if self._pixels is None:
            raise SailBMImageError("BMImage asmat() failed!")  # "BMImage is empty!"
        return _to_bgr(self._pixels, self._format)


class Decoder:
    """``sail.Decoder(file_path, compressed=True, dev_id=0)`` over ``cv2.VideoCapture``."""

    def __init__(self, file_path: str, compressed: bool = True, dev_id: int = 0, /) -> None:
        # pybind11 would also take bytes as a std::string path; the fake refuses them (and
        # pathlib.Path, which pybind refuses too) so that passing video data fails loudly.
        if not isinstance(file_path, str):
            raise TypeError(f"incompatible constructor arguments: file_path must be str, "
                            f"got {type(file_path).__name__}")
        if not isinstance(compressed, (bool, int)):
            raise TypeError(f"incompatible constructor arguments: compressed must be bool, "
                            f"got {compressed!r}")
        if not isinstance(dev_id, int) or isinstance(dev_id, bool):
            raise TypeError(f"incompatible constructor arguments: dev_id must be int, got {dev_id!r}")
        self.file_path = file_path
        self.dev_id = dev_id
        self.frames_read = 0
        #: seconds each read() takes, so that tests can overlap two reads.
        self.read_delay_s = 0.0
        self._is_rtsp = file_path.startswith("rtsp:")
        self._busy = threading.Lock()
        self._released = False
        self._eof = False
        capture = cv2.VideoCapture(file_path, cv2.CAP_FFMPEG)
        if not capture.isOpened():
            capture.release()
            # SAIL 3.x: avformat_open_input fails -> std::runtime_error (older: is_opened() False).
            raise RuntimeError("Failed to open input file")
        self._capture = capture
        DECODERS.append(self)

    @property
    def released(self) -> bool:
        return self._released

    def is_opened(self) -> bool:
        return not self._released

    def get_fps(self) -> float:
        if self._released:
            return -1.0  # no stream any more
        return float(self._capture.get(cv2.CAP_PROP_FPS))

    def get_frame_shape(self) -> List[int]:
        if self._released:
            return [1, 3, 0, 0]
        return [1, 3, int(self._capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
                int(self._capture.get(cv2.CAP_PROP_FRAME_WIDTH))]

    def is_eof(self) -> bool:
        return self._eof

    def read(self, handle: Handle, image: Optional[BMImage] = None) -> Any:
        """``read(handle, image) -> int`` (0 = a frame) or ``read(handle) -> BMImage``."""
        if image is None:
            image = BMImage()
            status = self.read(handle, image)
            if status != 0:
                raise SailDecoderError("Failed to get one decoded image")
            return image
        if not isinstance(handle, Handle) or not isinstance(image, BMImage):
            raise TypeError("incompatible function arguments: read(handle: Handle, image: BMImage)")
        if self._released:
            _violation("Decoder.read() after release(): the real one returns an error code, "
                       "which a caller takes for the end of the file")
        if handle.get_device_id() != self.dev_id:
            _violation(f"Decoder.read() with a Handle of device {handle.get_device_id()} on a "
                       f"Decoder of device {self.dev_id}: the real one returns "
                       f"SAIL_ERR_DEV_HANDLE, which a caller takes for the end of the file")
        if not self._busy.acquire(blocking=False):
            _violation("concurrent read() on one Decoder: the real one would race inside FFmpeg")
        try:
            if self.read_delay_s:
                time.sleep(self.read_delay_s)
            if self._eof:
                return SAIL_ERR_DEC_EOF
            ok, frame = self._capture.read()
            if not ok or frame is None:
                if self._is_rtsp:
                    return SAIL_ERR_DEC_READ
                self._eof = True
                return SAIL_ERR_DEC_EOF
            self.frames_read += 1
            if image.width() == 0 or (image.width(), image.height()) == (frame.shape[1], frame.shape[0]):
                image._set(frame, DECODER_FORMAT if image.width() == 0 else image.format())
            else:
                # The real read() vpp_resizes into a created BMImage of another size.
                image._set(cv2.resize(frame, (image.width(), image.height())), image.format())
            return 0
        finally:
            self._busy.release()

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._capture.release()


# -- installing the fake as sophon.sail ---------------------------------------------------

def _package(sail_module: types.ModuleType) -> types.ModuleType:
    package = types.ModuleType("sophon")
    package.__path__ = []  # a package, so ``import sophon.sail`` resolves from sys.modules
    package.sail = sail_module
    return package


def install(monkeypatch: Any) -> types.ModuleType:
    """Make ``import sophon.sail`` return this fake, with no models or decoders, for one test."""
    module = sys.modules[__name__]
    monkeypatch.setattr(module, "MODELS", {})
    monkeypatch.setattr(module, "ENGINES", [])
    monkeypatch.setattr(module, "VIOLATIONS", [])
    monkeypatch.setattr(module, "TPU_COUNT", 1)
    monkeypatch.setattr(module, "DECODERS", [])
    monkeypatch.setattr(module, "DECODER_FORMAT", Format.FORMAT_BGR_PLANAR)
    monkeypatch.setattr(module, "TENSORS", [])
    monkeypatch.setattr(module, "KEEP_INPUTS", False)
    monkeypatch.setitem(sys.modules, "sophon", _package(module))
    monkeypatch.setitem(sys.modules, "sophon.sail", module)
    return module


def placeholder_module() -> types.ModuleType:
    """What ``import sophon.sail`` gives with the PyPI package ``sophon`` 0.0.1: an empty module."""
    module = types.ModuleType("sophon.sail")
    module.__file__ = os.path.join("site-packages", "sophon", "sail.py")
    return module


def install_placeholder(monkeypatch: Any) -> types.ModuleType:
    module = placeholder_module()
    monkeypatch.setitem(sys.modules, "sophon", _package(module))
    monkeypatch.setitem(sys.modules, "sophon.sail", module)
    return module


def install_missing(monkeypatch: Any) -> None:
    """Make ``import sophon.sail`` fail as on a machine without any ``sophon`` package."""
    monkeypatch.setitem(sys.modules, "sophon", None)
    monkeypatch.setitem(sys.modules, "sophon.sail", None)
