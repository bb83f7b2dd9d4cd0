"""What every benchmark needs: timing statistics, memory and CPU accounting, machine facts,
markdown tables and the JSON results file.

Benchmarks report numbers; they never assert them. Every run records how busy the machine
was with *other* processes while it measured, because on a 2-core box one busy neighbour
doubles a latency and the numbers are only comparable with that figure beside them.
Linux only (``/proc``), like the daemon's targets.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
#: Git-ignored: JSON results, the prepared models and the cached LMDB fixtures.
RESULTS_DIR = BENCH_DIR / "results"
#: The prepared models (prepare_models' cache), shared by every benchmark and daemon.
MODEL_CACHE = RESULTS_DIR / "models"
#: Labelled photos for tuning and benchmarks: read in place, never copied into the project.
DEVSET_DIR = Path("/work/shared/data/devset")
#: Licence-clear photos of the test suite.
TEST_DATA_DIR = PROJECT_DIR / "tests" / "data"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

if str(PROJECT_DIR) not in sys.path:  # run as ``python bench/x.py``: reach tests/ too
    sys.path.insert(0, str(PROJECT_DIR))


@dataclass(frozen=True)
class Stats:
    """Summary of one series of samples (any unit; the caller names it)."""

    n: int
    median: float
    p90: float
    mean: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> "Stats":
        values = [float(v) for v in samples]
        if not values:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan)
        return cls(n=len(values), median=statistics.median(values),
                   p90=float(np.percentile(values, 90)), mean=statistics.fmean(values),
                   minimum=min(values), maximum=max(values))

    def as_dict(self, digits: int = 4) -> Dict[str, float]:
        return {k: (round(v, digits) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}


def ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else float("nan")


# ---------------------------------------------------------------- memory

def memory_of(pid: Optional[int] = None) -> Dict[str, int]:
    """Resident memory of a process in bytes: ``rss`` and its ``anon`` and ``file`` parts.

    ``anon`` is what the process allocated itself (the gallery, Python objects, model
    weights); ``file`` counts mapped file pages it touched (the LMDB map, shared libraries):
    clean page cache the kernel can drop at any time, so it is reported apart.
    """
    path = f"/proc/{pid or 'self'}/status"
    fields = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "RssShmem": "shmem",
              "VmHWM": "peak_rss"}
    found: Dict[str, int] = {}
    with open(path, "r", encoding="ascii") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in fields:
                found[fields[key]] = int(rest.split()[0]) * 1024  # kB
    return found


def mib(n_bytes: float) -> float:
    return n_bytes / (1024.0 * 1024.0)


# ---------------------------------------------------------------- CPU accounting

def _machine_jiffies() -> List[int]:
    with open("/proc/stat", "r", encoding="ascii") as fh:
        parts = fh.readline().split()[1:]
    values = [int(v) for v in parts[:8]]  # user nice system idle iowait irq softirq steal
    return values


def _process_jiffies(pid: int, children: bool = True) -> int:
    try:
        with open(f"/proc/{pid}/stat", "r", encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return 0
    fields = text[text.rindex(")") + 2:].split()
    # utime stime cutime cstime are fields 14-17 (1-based), 12-15 after the command.
    return sum(int(v) for v in fields[11:15 if children else 13])


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used itself so far; 0 once it is gone."""
    return _process_jiffies(pid, children=False) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """CPU use of the whole machine, of our processes and of everyone else, over a window.

    ``others_cores`` is the headline: how many cores' worth of CPU other processes took
    while we measured (0 on an idle machine, up to the core count).
    """

    def __init__(self, pids: Sequence[int] = ()) -> None:
        self.pids = [os.getpid(), *pids]
        self._start_machine: List[int] = []
        self._start_ours = 0
        self._started = 0.0

    def start(self) -> "CpuShare":
        self._start_machine = _machine_jiffies()
        self._start_ours = sum(_process_jiffies(p) for p in self.pids)
        self._started = time.perf_counter()
        return self

    def add_pid(self, pid: int) -> None:
        """Count a process started after ``start`` (its earlier CPU time is zero)."""
        self.pids.append(pid)

    def stop(self) -> Dict[str, float]:
        end_machine = _machine_jiffies()
        ours = sum(_process_jiffies(p) for p in self.pids) - self._start_ours
        deltas = [b - a for a, b in zip(self._start_machine, end_machine)]
        busy = sum(deltas) - deltas[3] - deltas[4]  # minus idle and iowait
        hz = os.sysconf("SC_CLK_TCK")
        wall_s = time.perf_counter() - self._started
        if wall_s <= 0:
            return {}
        return {
            "wall_s": round(wall_s, 2),
            "machine_busy_cores": round(busy / hz / wall_s, 2),
            "ours_cores": round(ours / hz / wall_s, 2),
            "others_cores": round(max(0.0, (busy - ours) / hz / wall_s), 2),
            "loadavg_1m_end": os.getloadavg()[0],
        }


# ---------------------------------------------------------------- machine facts

def _first_line_with(path: str, prefix: str) -> str:
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def _version(module: str) -> str:
    try:
        imported = __import__(module)
    except ImportError:
        return "not installed"
    return str(getattr(imported, "__version__", "?"))


def machine() -> Dict[str, Any]:
    """The facts a reader needs to compare a result with another machine's."""
    mem_kb = _first_line_with("/proc/meminfo", "MemTotal").split()[0]
    blas = "?"
    try:
        config = np.show_config(mode="dicts")  # numpy >= 1.25
        info = config["Build Dependencies"]["blas"]
        blas = f"{info.get('name')} {info.get('version')}"
    except Exception:  # older numpy prints instead; the name is a nicety
        pass
    return {
        "cpu": _first_line_with("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kb) / 1024 / 1024, 1) if mem_kb.isdigit() else "?",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas": blas,
        "onnxruntime": _version("onnxruntime"),
        "opencv": _version("cv2"),
        "faiss": _version("faiss"),
        "lmdb": _version("lmdb"),
        "loadavg_at_start": os.getloadavg(),
    }


def describe_machine(facts: Dict[str, Any]) -> str:
    return (f"{facts['cpu']}, {facts['cores']} cores, {facts['memory_gib']} GiB; "
            f"Python {facts['python']}, numpy {facts['numpy']} ({facts['blas']}), "
            f"onnxruntime {facts['onnxruntime']}, OpenCV {facts['opencv']}, "
            f"faiss {facts['faiss']}")


# ---------------------------------------------------------------- output

def progress(log: logging.Logger, label: str, done: int, total: int, every: int = 1) -> None:
    """``done`` of ``total``: one updated line on a terminal, else a log line every
    ``every`` steps and at the end (on the caller's logger, which its CLI turned up)."""
    if sys.stderr.isatty():
        print(f"\r{label}: {done}/{total}", end="", file=sys.stderr, flush=True)
        if done == total:
            print(file=sys.stderr)
    elif done == total or done % every == 0:
        log.info("%s: %d/%d", label, done, total)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "—"
            return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_results(kind: str, payload: Dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<kind>-<timestamp>.json`` and a ``<kind>-latest.json`` copy; returns the first."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(payload, indent=1, sort_keys=True, default=_json_default)
    path = out_dir / f"{kind}-{stamp}.json"
    path.write_text(text, encoding="utf-8")
    (out_dir / f"{kind}-latest.json").write_text(text, encoding="utf-8")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
