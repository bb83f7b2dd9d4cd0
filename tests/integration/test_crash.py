"""Crash safety: a real daemon SIGKILLed under concurrent writes loses nothing it acknowledged
and leaves no half-written change behind (ARCHITECTURE.md, Store; api/README.md 13).

The rounds and every check live in crash_harness.py, shared with bench/crash.py (which runs
many more rounds). ``CRASH_ROUNDS`` raises the count here; ``CRASH_SEED`` replays the
operation choices and kill delays of a failed run (thread timing still varies).
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Dict, List

import pytest

from .crash_harness import CrashHarness, RoundReport

DEFAULT_ROUNDS = 6


@pytest.mark.crash
def test_sigkill_under_concurrent_writes_keeps_every_acknowledged_change(
        tmp_path: Path, prepared_models: Dict[str, Path]) -> None:
    rounds = int(os.environ.get("CRASH_ROUNDS", DEFAULT_ROUNDS))
    seed = int(os.environ.get("CRASH_SEED", random.randrange(2 ** 31)))
    # The daemon finds the session's already folded models in this folder and skips folding.
    harness = CrashHarness(tmp_path / "crash", prepared_models["detector"].parent, seed=seed)
    reports: List[RoundReport] = []
    try:
        for index in range(rounds):
            report = harness.run_round(index)
            reports.append(report)
            assert not report.violations, (
                f"round {index} (CRASH_SEED={seed}, kill after {report.kill_delay_s} s, "
                f"{report.acked_writes} writes acknowledged):\n" + "\n".join(report.violations))
    finally:
        harness.close()

    writes = sum(r.acked_writes for r in reports)
    # Each round must really have loaded the daemon and caught requests mid-way; otherwise
    # the audit above proves nothing about crashes.
    assert all(r.acked_writes >= 20 for r in reports), [r.acked_writes for r in reports]
    assert sum(r.in_flight for r in reports) >= rounds, [r.in_flight for r in reports]
    assert reports[-1].faces > 0 and writes > 0
