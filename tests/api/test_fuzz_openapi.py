"""Schemathesis against the daemon's own /openapi.json, every operation, bounded (issue 12).

The quick pass of ``make test``: schemathesis' examples, coverage and fuzzing phases, with
``FUZZ_MAX_EXAMPLES`` (default 5) generated bodies per operation and mode (positive and
negative) on top of the coverage phase's fixed set, derandomized so that the pass is the
same every run. It fuzzes a real daemon of its own: fuzzing wipes data, changes the
password and the settings, so it must not share the session's daemon.

Each body is shaped by tests/api/fuzz_support.py (pool images in image fields, URLs
confined to loopback), and every answer must keep the rule: no 5xx, and every non-2xx
answer is the spec's error envelope with a code the document lists for that operation.
Schemathesis' status-code, content-type and response-schema conformance checks run on
top. The long, random pass is bench/fuzz/openapi.py; the failures both found are pinned
in tests/api/test_fuzz_regressions.py.

Skipped where schemathesis is not installed (its 4.x needs Python >= 3.9; the box's
Python 3.8 does not run it).
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any, Iterator, Tuple

import pytest

schemathesis = pytest.importorskip("schemathesis", minversion="4.0")

from hypothesis import HealthCheck, settings  # noqa: E402  (installed with schemathesis)

from sophon_face.workers.models import PreparedModels  # noqa: E402

from .fuzz_support import (ImagePool, conformance_checks, cpu_document,  # noqa: E402
                           fuzz_config, operations, run_case)
from .live import LiveServer  # noqa: E402

#: Generated bodies per operation and generation mode.
MAX_EXAMPLES = int(os.environ.get("FUZZ_MAX_EXAMPLES", "5"))

#: Built without a daemon: pytest needs the operations when it collects the tests (the
#: first test checks the daemon serves exactly this).
DOCUMENT = cpu_document()
OPERATIONS = operations(DOCUMENT)
CHECKS = conformance_checks()
schema = schemathesis.openapi.from_dict(DOCUMENT)

#: (operation label, HTTP status) -> answers seen, for the closing test.
ANSWERS: Counter = Counter()


@pytest.fixture(scope="module")
def fuzz_daemon(models: PreparedModels, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Tuple[LiveServer, ImagePool]]:
    work = tmp_path_factory.mktemp("fuzz")
    pool = ImagePool.build(work)
    live = LiveServer(fuzz_config(work, pool.root), models).start()
    yield live, pool
    live.stop()


def test_the_fuzzed_document_is_the_served_one(
        fuzz_daemon: Tuple[LiveServer, ImagePool]) -> None:
    reply = fuzz_daemon[0].request("GET", "/openapi.json")
    assert reply.status == 200, reply
    assert reply.json == DOCUMENT


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=list(HealthCheck))
def test_every_answer_keeps_the_contract(case: Any,
                                         fuzz_daemon: Tuple[LiveServer, ImagePool]) -> None:
    live, pool = fuzz_daemon
    outcome = run_case(case, f"http://127.0.0.1:{live.port}", pool, OPERATIONS, CHECKS)
    ANSWERS[(case.operation.label, outcome.status)] += 1
    assert outcome.problem is None, (
        f"{case.operation.label}: {outcome.problem}\n{case.as_curl_command()[:4000]}")


def test_the_fuzzing_reached_the_pipeline() -> None:
    """Runs after the fuzzing (file order). Bodies that never get past validation prove
    little: the pool images must have carried some requests through the face pipeline."""
    if not ANSWERS:
        pytest.skip("the fuzzing test did not run (deselected)")
    assert sum(ANSWERS.values()) >= 1000, ANSWERS
    pipeline = ("detect", "fiqa", "compare", "search", "searchbyimage", "createidentity")
    through = sum(n for (label, status), n in ANSWERS.items()
                  if status == 200 and label.rsplit("/", 1)[-1] in pipeline)
    assert through >= 10, sorted(ANSWERS.items())
