"""Crash-safety soak: many rounds of SIGKILL under concurrent writes, each audited.

    .venv/bin/python bench/crash.py [--rounds 50] [--clients 4] [--seed N] [--keep]

The same harness as tests/integration/test_crash.py (tests/integration/crash_harness.py),
run for many more rounds on one data directory. Prints one line per round and a summary;
exits 1 when any invariant was violated (the count must be 0), so it can gate a release.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:  # run as ``python bench/crash.py``: reach tests/ too
    sys.path.insert(0, str(PROJECT_DIR))

from tests.integration.crash_harness import CrashHarness, RoundReport  # noqa: E402

#: Git-ignored; the folded models are kept here between runs so a start takes ~1 s.
DEFAULT_MODELS_DIR = PROJECT_DIR / "bench" / "results" / "models"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--seed", type=int, help="replays operation choices and kill delays")
    parser.add_argument("--min-delay", type=float, default=0.3, help="seconds before the kill")
    parser.add_argument("--max-delay", type=float, default=2.5)
    parser.add_argument("--photo-share", type=float, default=0.08,
                        help="fraction of faces registered from a photo instead of a feature")
    parser.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR)
    parser.add_argument("--work-dir", type=Path, help="default: a temporary folder")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data directory and daemon log afterwards")
    return parser


def _line(report: RoundReport) -> str:
    return (f"round {report.index:3d}: kill after {report.kill_delay_s:5.2f} s, "
            f"{report.acked_writes:5d} writes + {report.acked_reads:4d} reads acknowledged, "
            f"{report.in_flight} in flight ({report.in_flight_landed} landed), "
            f"store {report.identities} identities / {report.faces} faces / "
            f"{report.images} photos, {len(report.violations)} violations, "
            f"{report.elapsed_s:.1f} s")


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2 ** 31)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="sophon-face-crash-"))
    args.models_dir.mkdir(parents=True, exist_ok=True)
    harness = CrashHarness(work_dir, args.models_dir, seed=seed, clients=args.clients,
                           min_kill_delay_s=args.min_delay, max_kill_delay_s=args.max_delay,
                           photo_share=args.photo_share)
    print(f"seed {seed}, {args.rounds} rounds, {args.clients} clients, work dir {work_dir}")
    reports: List[RoundReport] = []
    started = time.monotonic()
    try:
        for index in range(args.rounds):
            report = harness.run_round(index)
            reports.append(report)
            print(_line(report), flush=True)
            for violation in report.violations:
                print("  VIOLATION:", violation)
    except KeyboardInterrupt:
        print("interrupted")
    finally:
        harness.close()
        if not args.keep and args.work_dir is None:
            shutil.rmtree(work_dir, ignore_errors=True)

    violations = sum(len(r.violations) for r in reports)
    last = reports[-1] if reports else None
    print()
    print(f"rounds:                      {len(reports)}")
    print(f"operations acknowledged:     {sum(r.acked_writes for r in reports)} writes, "
          f"{sum(r.acked_reads for r in reports)} reads")
    print(f"requests in flight at kill:  {sum(r.in_flight for r in reports)} "
          f"({sum(r.in_flight_landed for r in reports)} had committed)")
    if last is not None:
        print(f"final store:                 {last.identities} identities, {last.faces} faces, "
              f"{last.images} photos")
    print(f"elapsed:                     {time.monotonic() - started:.1f} s")
    print(f"invariant violations:        {violations}" + ("" if violations == 0 else "  <-- FAIL"))
    return 0 if violations == 0 and reports else 1


if __name__ == "__main__":
    sys.exit(main())
