"""Worker recovery (workers/recovery.py) on fake pipelines: a failed job's worker is probed
and rebuilt only when its pipeline no longer answers; a job that never returns gets its
worker replaced. The same faults on the real models over HTTP: tests/api/test_faults_api.py."""

from __future__ import annotations

import asyncio
import itertools
import threading
from typing import Any, List

import pytest

from sophon_face.errors import InternalError
from sophon_face.workers.pool import WorkerPool


class FakePipeline:
    made = itertools.count(1)

    def __init__(self) -> None:
        self.number = next(self.made)
        self.broken = False
        self.closed = False
        self.thread = threading.get_ident()

    def warm_up(self) -> None:
        if self.broken:
            raise RuntimeError("engine lost")


def close(pipeline: FakePipeline) -> None:
    assert threading.get_ident() == pipeline.thread  # closed on the thread that used it
    pipeline.closed = True


def make_pool(factory: Any = FakePipeline, timeout_s: float = 10.0) -> WorkerPool:
    pool: WorkerPool = WorkerPool(factory, warm_up=FakePipeline.warm_up, close=close, count=1,
                                  timeout_s=timeout_s, max_wait_s=timeout_s)
    pool._recovery._retry_min_s = 0.01  # type: ignore[attr-defined]
    return pool


def which(pipeline: FakePipeline) -> int:
    return pipeline.number


def break_it(pipeline: FakePipeline) -> None:
    pipeline.broken = True
    raise RuntimeError("engine lost")


def fail_once(pipeline: FakePipeline) -> None:
    raise ValueError("a bad input tripped a bug")


async def settle(pool: WorkerPool) -> None:
    for _ in range(200):
        if pool.stats()["recovery"]["recovering"] == 0:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the worker did not recover")


def test_a_broken_pipeline_is_rebuilt_and_a_failed_input_is_not() -> None:
    async def scenario() -> List[Any]:
        pool = make_pool()
        await pool.start()
        first = await pool.run(which)
        with pytest.raises(InternalError, match="inference failed"):
            await pool.run(fail_once)
        await settle(pool)
        kept = await pool.run(which)
        with pytest.raises(InternalError):
            await pool.run(break_it)
        await settle(pool)
        rebuilt = await pool.run(which)
        stats = pool.stats()["recovery"]
        await pool.close()
        return [first, kept, rebuilt, stats]

    first, kept, rebuilt, stats = asyncio.run(scenario())
    assert kept == first and rebuilt != first
    assert stats == {"failed_jobs": 2, "rebuilt": 1, "replaced": 0, "recovering": 0}


def test_rebuilding_retries_until_the_factory_works_again() -> None:
    attempts = {"left_to_fail": 0}

    def flaky_factory() -> FakePipeline:
        if attempts["left_to_fail"]:
            attempts["left_to_fail"] -= 1
            raise RuntimeError("device busy")
        return FakePipeline()

    async def scenario() -> Any:
        pool = make_pool(flaky_factory)
        await pool.start()
        attempts["left_to_fail"] = 3
        with pytest.raises(InternalError):
            await pool.run(break_it)
        await settle(pool)
        answer = await pool.run(which)
        await pool.close()
        return answer

    assert isinstance(asyncio.run(scenario()), int) and attempts["left_to_fail"] == 0


def test_a_job_that_never_returns_gets_its_worker_replaced() -> None:
    release = threading.Event()
    seen: List[FakePipeline] = []

    def hang(pipeline: FakePipeline) -> None:
        seen.append(pipeline)
        release.wait(10)

    async def scenario() -> Any:
        pool = make_pool(timeout_s=0.3)
        await pool.start()
        with pytest.raises(InternalError, match="timed out"):
            await pool.run(hang)
        await settle(pool)
        answer = await pool.run(which)  # on the replacement, while the old thread hangs
        release.set()
        for _ in range(100):
            if seen[0].closed:
                break
            await asyncio.sleep(0.01)
        stats = pool.stats()["recovery"]
        await pool.close()
        return answer, stats

    answer, stats = asyncio.run(scenario())
    assert answer != seen[0].number
    assert seen[0].closed  # the retired worker's pipeline, on its own thread, once back
    assert stats["replaced"] == 1 and stats["recovering"] == 0


def test_close_stops_a_rebuild_that_keeps_failing() -> None:
    state = {"fail": False}

    def factory() -> FakePipeline:
        if state["fail"]:
            raise RuntimeError("no device")
        return FakePipeline()

    async def scenario() -> None:
        pool = make_pool(factory)
        await pool.start()
        state["fail"] = True
        with pytest.raises(InternalError):
            await pool.run(break_it)
        await asyncio.sleep(0.1)
        assert pool.stats()["recovery"]["recovering"] == 1
        await asyncio.wait_for(pool.close(), 5)

    asyncio.run(scenario())
