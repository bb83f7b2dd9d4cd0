"""The gallery's compressed scan: int8 codes of every row, exact integer dot products, and a
margin that makes the answer after re-ranking provably the one an exact float32 scan gives.

A 1M x 512 float32 scan streams 2 GB per probe and is bound by memory bandwidth (80 ms on the
benchmark machine). The int8 codes stream a quarter of that; the few rows whose compressed
score comes within the margin of the best are then scored exactly in float32.

Quantisation, per row and symmetric: ``a_i = max_j |x_ij| / 127``, ``q_i = rint(x_i / a_i)``
(int8, in [-127, 127]), residual ``r_i = x_i - a_i q_i``, and ``rho_i`` an upper bound of
``|r_i|`` (computed from the actual residual, rounded up). The unit probe ``p`` likewise:
``b``, ``q_p`` and ``sigma >= |p - b q_p|``.

Why the answer is exact. ``D_i = <q_i, q_p>`` is an integer with ``|D_i| <= d 127^2``, below
2^24 for d <= 1040: it is exact in int32 (simsimd) and in float32 whatever the order of the
additions (the numpy kernel), so both kernels give the same ``D_i``. Then

    s_i = <x_i, p> = a_i b D_i + a_i <q_i, p - b q_p> + <r_i, p>
    |s_i - a_i b D_i| <= |a_i q_i| sigma + rho_i |p| <= (1 + rho_i) sigma + rho_i

(Cauchy-Schwarz; ``|a_i q_i| <= |x_i| + rho_i``). A float32 scan computes ``s_i`` with an
error of at most ``gamma_d = d u / (1 - d u)`` (u = 2^-24, unit rows), and the compressed
score ``c_i = fl(fl(D_i a_i) b)`` is within 2u of ``a_i b D_i``. So with

    F_i = (1 + 1e-5 + rho_i) sigma + (1 + 1e-5) rho_i + gamma_d + 1e-6

(the 1e-5 and 1e-6 cover the rounding of norms, scales and these sums), every row's float32
score lies in ``[c_i - F_i, c_i + F_i]``. The row ``k`` an exact float32 scan returns has the
highest float32 score, so ``c_k + F_k >= score_k >= score_j >= c_j - F_j`` for every ``j``:
``k`` is among the candidates ``{i : c_i + F_i >= max_j (c_j - F_j)}``, and re-ranking the
candidates by their float32 scores finds it. The re-ranking scores in float32 too; it can
only differ from the reference if two faces' cosines are equal to within float32 rounding
(a tie at the precision of the reference itself).

Typical sizes at 512-d: ``rho`` and ``sigma`` about 0.009, so ``F`` about 0.018: a probe of a
registered person has one candidate, a stranger's probe a few dozen out of a million.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Dict, Optional, Tuple

import numpy as np

log = logging.getLogger(__name__)

CODE_MAX = 127
#: Largest dimension whose integer dot products stay below 2^24 (exact in float32).
MAX_EXACT_FLOAT32_DIM = (1 << 24) // (CODE_MAX * CODE_MAX)
_UNIT_ROUNDOFF = 2.0 ** -24
#: Scans of at least this many codes are split between the calling thread and one helper
#: (the kernels release the GIL). Below it a thread hop costs more than it saves.
PARALLEL_MIN_CODES = 4 * 1024 * 1024
#: numpy kernel: int8 rows converted to float32 this many bytes at a time (stays in L2).
NUMPY_BLOCK_BYTES = 1 << 20

KERNELS = ("simsimd", "numpy")


def quantise_rows(rows: np.ndarray, codes: np.ndarray, scales: np.ndarray,
                  resid: np.ndarray) -> None:
    """Codes, scales and residual bounds of float32 rows (k, d), into the given arrays.

    One routine for the bulk load, every added face and every probe, so a rebuilt gallery
    holds the same codes as the incrementally built one, bit for bit.
    """
    amax = np.maximum(rows.max(axis=1), -rows.min(axis=1))
    scale = (amax / np.float32(CODE_MAX)).astype(np.float32)
    inverse = np.zeros_like(scale)
    np.divide(np.float32(1.0), scale, out=inverse, where=scale > 0)
    work = rows * inverse[:, None]
    # |x / a| <= 127 (1 + 4u) < 127.5: rint stays within [-127, 127], no clip needed.
    np.rint(work, out=work)
    codes[...] = work  # exact: small integers
    np.multiply(work, scale[:, None], out=work)
    np.subtract(rows, work, out=work)  # the residual
    norms = np.sqrt(np.einsum("ij,ij->i", work, work))
    # Rounded up: the float32 residual and its norm are within 2e-5 relative and 3e-7
    # absolute of the real ones (see the module docstring).
    resid[...] = norms * np.float32(1 + 1e-4) + np.float32(1e-6)
    scales[...] = scale


def quantise_probe(vector: np.ndarray) -> Tuple[np.ndarray, float, float]:
    """``(codes, scale, sigma)`` of a unit probe."""
    codes = np.empty((1, vector.size), dtype=np.int8)
    scale = np.empty(1, dtype=np.float32)
    sigma = np.empty(1, dtype=np.float32)
    quantise_rows(vector.reshape(1, -1), codes, scale, sigma)
    return codes[0], float(scale[0]), float(sigma[0])


def margin_terms(sigma: float, dim: int) -> Tuple[float, float]:
    """``(A, B)`` with ``F_i = A + B rho_i``: the bound of ``|float32 score - c_i|``."""
    gamma = dim * _UNIT_ROUNDOFF / (1 - dim * _UNIT_ROUNDOFF)
    return sigma * (1 + 1e-5) + gamma * (1 + 1e-4) + 1e-6, 1 + 1e-5 + sigma


def select_candidates(compressed: np.ndarray, rho: np.ndarray, a: float, b: float,
                      rho_max: float) -> np.ndarray:
    """Positions ``i`` with ``c_i + F_i >= max_j (c_j - F_j)``, ascending.

    First a single threshold with the largest ``F`` (one vectorised pass), then the
    per-row bounds on that short list. The row attaining ``max_j (c_j - F_j)`` passes the
    first cut (``c_j >= c_max - F_max``), so the second cut loses nothing.
    """
    top = float(compressed.max())
    if not np.isfinite(top):
        return np.empty(0, dtype=np.intp)
    wide = np.flatnonzero(compressed >= top - 2.0 * (a + b * rho_max))
    c = compressed[wide].astype(np.float64)
    f = a + b * rho[wide].astype(np.float64)
    lower = float((c - f).max())
    return wide[c + f >= lower]


class Int8Scan:
    """Exact integer dot products of int8 rows with an int8 probe, written as float32.

    Kernels: ``simsimd`` (SIMD int8 dot products: AVX2 / AVX-512 VNNI, NEON dotprod, with
    a portable C fallback) when the package is installed, else ``numpy`` (blocks of rows
    converted to float32 in a cache-sized buffer, then BLAS). Both give identical results
    (see the module docstring). Large scans are split with one helper thread.
    """

    def __init__(self, dim: int, kernel: Optional[str] = None,
                 threads: Optional[int] = None) -> None:
        self._simsimd: Any = None
        #: float32 holds every dot product exactly up to MAX_EXACT_FLOAT32_DIM.
        self.dtype = np.dtype(np.float32 if dim <= MAX_EXACT_FLOAT32_DIM else np.float64)
        if kernel is None:
            kernel = "simsimd" if _import_simsimd() is not None else "numpy"
        if kernel not in KERNELS:
            raise ValueError(f"unknown scan kernel {kernel!r}; one of {KERNELS}")
        if kernel == "simsimd":
            self._simsimd = _import_simsimd()
            if self._simsimd is None:
                raise ValueError("scan kernel 'simsimd' asked for, but simsimd is not installed")
        self.kernel = kernel
        self.threads = max(1, min(2, os.cpu_count() or 1) if threads is None else threads)
        self._helper: Optional[ThreadPoolExecutor] = None
        self._helper_lock = threading.Lock()
        self._scratch: Dict[int, np.ndarray] = {}

    def scores(self, codes: np.ndarray, probe: np.ndarray, out: np.ndarray) -> None:
        """``out[i] = <codes[i], probe>`` for C-contiguous int8 ``codes`` (k, d); ``out``
        has ``self.dtype``."""
        k = codes.shape[0]
        if k == 0:
            return
        if self.threads > 1 and codes.size >= PARALLEL_MIN_CODES:
            half = k // 2
            future = self._submit(self._range, codes[half:], probe, out[half:], 1)
            self._range(codes[:half], probe, out[:half], 0)
            future.result()
        else:
            self._range(codes, probe, out, 0)

    def close(self) -> None:
        with self._helper_lock:
            helper, self._helper = self._helper, None
        if helper is not None:
            helper.shutdown(wait=False)

    def _submit(self, fn: Any, *args: Any) -> "Future[Any]":
        with self._helper_lock:
            if self._helper is None:
                self._helper = ThreadPoolExecutor(max_workers=1,
                                                  thread_name_prefix="gallery-scan")
            return self._helper.submit(fn, *args)

    def _range(self, codes: np.ndarray, probe: np.ndarray, out: np.ndarray, lane: int) -> None:
        if self._simsimd is not None:
            # Not ``out=``: simsimd 6.5 then returns None without a reference, and the
            # interpreter dies once None's reference count reaches zero (Python < 3.12).
            result = self._simsimd.cdist(probe.reshape(1, -1), codes, metric="dot",
                                         out_dtype=self.dtype.name)
            out[...] = np.asarray(result).reshape(-1)
            return
        dim = codes.shape[1]
        rows = max(1, NUMPY_BLOCK_BYTES // (dim * self.dtype.itemsize))
        buffer = self._scratch.get(lane)
        if buffer is None or buffer.shape != (rows, dim):
            buffer = self._scratch[lane] = np.empty((rows, dim), dtype=self.dtype)
        weights = probe.astype(self.dtype)
        for start in range(0, codes.shape[0], rows):
            block = codes[start:start + rows]
            part = buffer[:block.shape[0]]
            np.copyto(part, block, casting="unsafe")
            np.dot(part, weights, out=out[start:start + block.shape[0]])


def _import_simsimd() -> Any:
    try:
        import simsimd  # optional: SIMD int8 kernels, cp38 aarch64 wheels exist
    except ImportError:
        return None
    return simsimd
