"""Worker-pool fairness: video frames (run_background) wait behind API jobs."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List

import pytest

from sophon_face.errors import ServiceBusy
from sophon_face.workers.pool import WorkerPool


def make_pool(count: int = 1, queue_size: int = 2, admission: str = "time") -> WorkerPool:
    return WorkerPool(lambda: object(), warm_up=lambda _p: True, close=lambda _p: None,
                      count=count, queue_size=queue_size, timeout_s=10.0, admission=admission)


def job(log: List[str], name: str, seconds: float, gate: Any = None) -> str:
    def run(_pipeline: Any) -> str:
        if gate is not None:
            gate.wait(5)
        time.sleep(seconds)
        log.append(name)
        return name
    return run


def test_a_freed_worker_goes_to_the_api_job_first() -> None:
    async def scenario() -> List[str]:
        pool = make_pool()
        await pool.start()
        log: List[str] = []
        gate = threading.Event()
        first = asyncio.ensure_future(pool.run_background(job(log, "frame-1", 0.0, gate)))
        await asyncio.sleep(0.05)
        frames = [asyncio.ensure_future(pool.run_background(job(log, f"frame-{i}", 0.01)))
                  for i in (2, 3)]
        await asyncio.sleep(0.05)
        api = asyncio.ensure_future(pool.run(job(log, "search", 0.01)))
        await asyncio.sleep(0.05)
        assert pool.background_pending == 3 and pool.pending == 1
        gate.set()
        await asyncio.gather(first, api, *frames)
        await pool.close()
        return log

    assert asyncio.run(scenario()) == ["frame-1", "search", "frame-2", "frame-3"]


def test_background_jobs_do_not_use_up_the_api_queue() -> None:
    async def scenario() -> None:
        # The count rule makes the API's own limit exact (the time rule's counterpart:
        # tests/unit/test_admission.py).
        pool = make_pool(count=1, queue_size=1, admission="count")
        await pool.start()
        gate = threading.Event()
        frames = [asyncio.ensure_future(pool.run_background(job([], f"f{i}", 0.0, gate)))
                  for i in range(5)]
        await asyncio.sleep(0.05)
        api = [asyncio.ensure_future(pool.run(job([], f"a{i}", 0.0))) for i in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ServiceBusy):  # the API's own limit: 1 running + 1 waiting
            await pool.run(job([], "refused", 0.0))
        gate.set()
        assert sorted(await asyncio.gather(*api)) == ["a0", "a1"]
        assert len(await asyncio.gather(*frames)) == 5
        await pool.close()

    asyncio.run(scenario())


def test_a_cancelled_waiter_does_not_lose_the_worker() -> None:
    async def scenario() -> str:
        pool = make_pool()
        await pool.start()
        gate = threading.Event()
        running = asyncio.ensure_future(pool.run(job([], "long", 0.0, gate)))
        await asyncio.sleep(0.05)
        waiter = asyncio.ensure_future(pool.run_background(job([], "never", 0.0)))
        await asyncio.sleep(0.05)
        waiter.cancel()
        gate.set()
        await running
        result = await asyncio.wait_for(pool.run(job([], "after", 0.0)), 5)
        await pool.close()
        return result

    assert asyncio.run(scenario()) == "after"
