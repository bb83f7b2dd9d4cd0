"""The long OpenAPI fuzzing pass: schemathesis against the daemon's /openapi.json for a
time budget, with the quick pass's rule (tests/api/test_fuzz_openapi.py).

A daemon of its own in this process (tests/api/fuzz_support.py: its own store, path inputs
confined to a temporary image root holding the image pool, every URL a body names pointed
at 127.0.0.1:9), then rounds until the budget is spent: in each round every operation gets
``--examples`` positive and as many negative bodies from schemathesis' Hypothesis
strategies, with a new random seed. A failing case is shrunk by Hypothesis, reported with
a curl line, and the run goes on. Progress lines every 30 s; at the end a summary (cases,
answers by status, failures) on stdout and in bench/results/fuzz/openapi-*.json.

Run (from the project root):
    .venv/bin/python -m bench.fuzz.openapi --seconds 600
    .venv/bin/python -m bench.fuzz.openapi --seconds 60 --only search,detect
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

PROJECT_DIR = Path(__file__).resolve().parents[2]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

RESULTS_DIR = PROJECT_DIR / "bench" / "results" / "fuzz"
MODEL_CACHE = PROJECT_DIR / "bench" / "results" / "models"
PROGRESS_EVERY_S = 30.0
log = logging.getLogger("bench.fuzz.openapi")


@dataclass
class Tally:
    started: float = field(default_factory=time.monotonic)
    cases: int = 0
    answers: Counter = field(default_factory=Counter)  # status -> count
    by_operation: Counter = field(default_factory=Counter)
    #: (operation, first line of the problem) -> the first report of it
    failures: Dict[str, Dict[str, str]] = field(default_factory=dict)
    last_progress: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def progress(self, round_no: int, label: str, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_progress >= PROGRESS_EVERY_S:
            self.last_progress = now
            print(f"[{self.elapsed():6.0f} s] round {round_no}: {self.cases} cases "
                  f"({self.cases / max(self.elapsed(), 1e-9):.0f}/s), "
                  f"{len(self.failures)} failures; at {label}", flush=True)


def fuzz(seconds: float, examples: int, seed: int, only: Sequence[str]) -> Dict[str, Any]:
    import schemathesis
    from schemathesis import GenerationMode

    from sophon_face.workers.models import prepare_models
    from tests.api.fuzz_support import (CPU_MANIFEST, ImagePool, conformance_checks,
                                        fuzz_config, operations, run_case)
    from tests.api.live import LiveServer

    models = prepare_models(CPU_MANIFEST, MODEL_CACHE)
    work = Path(tempfile.mkdtemp(prefix="fuzz-openapi-"))
    pool = ImagePool.build(work)
    live = LiveServer(fuzz_config(work, pool.root), models).start()
    base_url = f"http://127.0.0.1:{live.port}"
    tally = Tally()
    rng = random.Random(seed)
    try:
        schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
        by_key = operations(schema.raw_schema)
        checks = conformance_checks()
        ops = [result.ok() for result in schema.get_all_operations()]
        if only:
            ops = [op for op in ops if any(op.path.rstrip("/").endswith("/" + name)
                                           or op.path.endswith("/" + name + "/{image_id}")
                                           for name in only)]
        print(f"fuzzing {len(ops)} operations of {base_url} for {seconds:.0f} s, "
              f"{examples} examples per operation and mode per round, seed {seed}",
              flush=True)
        round_no = 0
        while tally.elapsed() < seconds:
            round_no += 1
            for op in ops:
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    if tally.elapsed() >= seconds:
                        break
                    _one_operation(op, mode, examples, rng.getrandbits(64), tally, round_no,
                                   lambda case: run_case(case, base_url, pool, by_key, checks))
            health = live.request("GET", "/health")
            if health.status != 200:
                _record(tally, "GET /health", f"daemon unhealthy: {health!r}", "")
            tally.progress(round_no, f"end of round {round_no}", force=True)
    finally:
        live.stop()
        shutil.rmtree(str(work), ignore_errors=True)
    return {"seconds": round(tally.elapsed(), 1), "seed": seed, "rounds": round_no,
            "examples_per_operation_and_mode": examples, "operations": len(ops),
            "cases": tally.cases, "answers_by_status": dict(sorted(tally.answers.items())),
            "cases_by_operation": dict(sorted(tally.by_operation.items())),
            "failures": list(tally.failures.values())}


def _one_operation(op: Any, mode: Any, examples: int, seed_value: int, tally: Tally,
                   round_no: int, send: Any) -> None:
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from hypothesis.errors import Unsatisfiable as unsatisfiable

    label = f"{op.method.upper()} {op.path}"

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck),
              phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @seed(seed_value)
    @given(case=op.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        outcome = send(case)
        tally.cases += 1
        tally.answers[outcome.status] += 1
        tally.by_operation[label] += 1
        tally.progress(round_no, label)
        if outcome.problem is not None:
            raise AssertionError(f"{outcome.problem}\n{case.as_curl_command()[:3000]}")

    try:
        run()
    except unsatisfiable:  # nothing to negate (no parameters, or any string is valid)
        pass
    except Exception as exc:
        # An AssertionError is the rule broken, shrunk by Hypothesis. A flaky one (the
        # daemon's state changed while shrinking) arrives wrapped; anything else, e.g. a
        # transport error because the daemon died, is a failure too.
        inner = [e for e in getattr(exc, "exceptions", ()) if isinstance(e, AssertionError)]
        if isinstance(exc, AssertionError) or inner:
            problem, _, curl = str(exc if isinstance(exc, AssertionError)
                                   else inner[0]).partition("\n")
            _record(tally, label, problem, curl)
        else:
            _record(tally, label, f"{type(exc).__name__}: {exc}", "")


def _record(tally: Tally, label: str, problem: str, curl: str) -> None:
    key = f"{label} | {problem[:160]}"
    if key not in tally.failures:
        tally.failures[key] = {"operation": label, "problem": problem[:4000], "curl": curl}
        print(f"FAILURE {label}: {problem[:500]}\n  {curl[:500]}", flush=True)


def summary(result: Dict[str, Any]) -> str:
    lines = [f"cases run: {result['cases']} in {result['seconds']:.0f} s "
             f"({result['rounds']} rounds, {result['operations']} operations, "
             f"seed {result['seed']})",
             "answers by status: " + ", ".join(f"{k}: {v}" for k, v in
                                               result["answers_by_status"].items()),
             f"failures: {len(result['failures'])}"]
    for failure in result["failures"]:
        lines.append(f"  - {failure['operation']}: {failure['problem'][:300]}")
    return "\n".join(lines)


def save(result: Dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / time.strftime("openapi-%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(result, indent=1, ensure_ascii=False), encoding="utf-8")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--examples", type=int, default=25,
                        help="bodies per operation and generation mode in each round")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--only", default="", help="endpoint names, comma-separated")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s: %(message)s")
    seed = args.seed if args.seed is not None else random.randrange(2 ** 32)
    result = fuzz(args.seconds, args.examples, seed,
                  [n for n in args.only.split(",") if n])
    print("\n" + summary(result))
    print(f"results: {save(result)}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
