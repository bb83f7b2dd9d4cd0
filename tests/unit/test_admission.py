"""Admission by waiting time: the service-time estimator, the admission arithmetic, and the
pool using them (fake jobs; the real daemon under bursts: tests/api/test_admission_api.py)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, List

import pytest

from sophon_face.config import ConfigError, config_from_mapping
from sophon_face.errors import ServiceBusy
from sophon_face.workers.admission import (EWMA_ALPHA, MAX_SAMPLE_FACTOR, REQUEST_BODY_BYTES,
                                           Admission, AdmissionLimits, ServiceTimes, job_kind)
from sophon_face.workers.pool import WorkerPool

MIB = 1024 * 1024


def _detect_job(_pipeline: Any) -> None:
    return None


def admission(max_wait_s: float = 10.0, max_bytes: int = 100 * MIB, workers: int = 1,
              estimate_s: float = 1.0, mode: str = "time", queue_size: int = 32,
              timeout_s: float = 60.0) -> Admission:
    return Admission(AdmissionLimits(mode=mode, max_wait_s=max_wait_s,
                                     max_queued_body_bytes=max_bytes, queue_size=queue_size),
                     workers, ServiceTimes(prior_s=estimate_s), timeout_s=timeout_s)


# --- the estimator ------------------------------------------------------------------

def test_job_kind_names_the_endpoint_by_its_job_function() -> None:
    assert job_kind(_detect_job) == "test_admission.detect"
    from sophon_face.service import analysis, identities
    assert job_kind(analysis._detect_job) == "analysis.detect"
    assert job_kind(identities._registration_job) == "identities.registration"


def test_the_prior_stands_until_the_first_sample_replaces_it() -> None:
    times = ServiceTimes(prior_s=0.5)
    assert times.estimate("a") == 0.5
    times.set_prior(0.2)
    assert times.estimate("a") == 0.2
    times.observe("a", 0.01)
    assert times.estimate("a") == pytest.approx(0.01)
    assert times.estimate("b") == 0.2 and times.samples("a") == 1


def test_first_samples_are_averaged_then_weighted_exponentially() -> None:
    times = ServiceTimes()
    for seconds in (0.010, 0.020, 0.030):
        times.observe("k", seconds)
    assert times.estimate("k") == pytest.approx(0.020)  # a plain mean while n <= 1/alpha
    for _ in range(100):
        times.observe("k", 0.040)
    assert times.estimate("k") == pytest.approx(0.040, rel=1e-6)
    times.observe("k", 0.020)
    assert times.estimate("k") == pytest.approx(0.040 + EWMA_ALPHA * (0.020 - 0.040))


def test_one_huge_job_does_not_make_the_kind_look_slow_but_a_lasting_change_shows() -> None:
    times = ServiceTimes()
    for _ in range(20):
        times.observe("k", 0.010)
    times.observe("k", 5.0)  # one 8k photo among small ones
    capped = 0.010 + EWMA_ALPHA * (0.010 * MAX_SAMPLE_FACTOR - 0.010)
    assert times.estimate("k") == pytest.approx(capped)
    assert times.estimate("k") < 0.02
    for _ in range(20):  # every job is 100x slower now: followed within a few dozen
        times.observe("k", 1.0)
    assert times.estimate("k") > 0.9


# --- the arithmetic -----------------------------------------------------------------

def test_admits_while_the_expected_wait_plus_its_own_time_fits_the_budget() -> None:
    gate = admission(max_wait_s=10.0, estimate_s=1.0)
    tickets = [gate.admit("k") for _ in range(10)]  # the 10th: wait 9 s + own 1 s = 10 s
    assert gate.expected_wait_s() == pytest.approx(10.0)
    with pytest.raises(ServiceBusy) as refused:
        gate.admit("k")
    assert refused.value.http_status == 503
    assert refused.value.headers == {"Retry-After": "1"}  # 10 + 1 - 10 s
    assert gate.refused == 1 and gate.pending == 10
    tickets[0].close()
    gate.admit("k")  # one left: room for one


def test_retry_after_is_the_time_the_queue_needs_to_drain_far_enough() -> None:
    gate = admission(max_wait_s=10.0, estimate_s=0.5)
    for _ in range(60):
        gate.admit("k", starts_now=True)  # as if admitted while workers were idle
    with pytest.raises(ServiceBusy) as refused:
        gate.admit("k")
    assert refused.value.retry_after_s == pytest.approx(30.0 + 0.5 - 10.0)
    assert refused.value.headers["Retry-After"] == "21"


def test_refused_jobs_are_told_to_come_back_in_turn_not_all_at_once() -> None:
    now = [100.0]
    gate = Admission(AdmissionLimits(max_wait_s=10.0), 2, ServiceTimes(prior_s=2.0),
                     clock=lambda: now[0])
    for _ in range(9):
        gate.admit("k")  # 9 x 2 s / 2 workers: the next would end at 11 s
    retry = []
    for _ in range(5):
        with pytest.raises(ServiceBusy) as refused:
            gate.admit("k")
        retry.append(refused.value.retry_after_s)
    # Each would fit 1 s from now; one after the other, 2 s / 2 workers apart.
    assert retry == pytest.approx([1.0, 2.0, 3.0, 4.0, 5.0])
    now[0] += 60.0  # long after: the promises have lapsed
    with pytest.raises(ServiceBusy) as refused:
        gate.admit("k")
    assert refused.value.retry_after_s == pytest.approx(1.0)
    for _ in range(100):  # a flood is spread over at most one budget beyond the fit
        with pytest.raises(ServiceBusy) as refused:
            gate.admit("k")
    assert refused.value.retry_after_s == pytest.approx(1.0 + 10.0)


def test_more_workers_shorten_the_wait_and_kinds_cost_their_own_estimates() -> None:
    gate = admission(max_wait_s=10.0, workers=2, estimate_s=1.0)
    gate.times.observe("slow", 4.0)
    for _ in range(3):
        gate.admit("slow")  # 3 x 4 s / 2 workers
    gate.admit("fast")  # 1 s (the prior)
    assert gate.expected_wait_s() == pytest.approx(6.5)
    gate.admit("fast")  # 6.5 + 1 <= 10
    with pytest.raises(ServiceBusy):
        gate.admit("slow")  # 7 + 4 > 10


def test_a_job_that_starts_at_once_is_always_admitted() -> None:
    gate = admission(max_wait_s=0.001, estimate_s=5.0)
    gate.admit("k", starts_now=True)
    with pytest.raises(ServiceBusy):
        gate.admit("k")


def test_the_budget_never_exceeds_the_hard_timeout() -> None:
    assert admission(max_wait_s=30.0, timeout_s=5.0).budget_s == 5.0
    assert admission(max_wait_s=30.0, timeout_s=60.0).budget_s == 30.0


def test_queue_admitted_on_the_prior_is_revalued_by_the_first_measurements() -> None:
    gate = admission(max_wait_s=10.0, estimate_s=1.0)
    for _ in range(10):
        gate.admit("k")
    with pytest.raises(ServiceBusy):
        gate.admit("k")
    gate.times.observe("k", 0.01)  # the warm-up was pessimistic
    assert gate.expected_wait_s() == pytest.approx(0.1)
    for _ in range(900):
        gate.admit("k")


def test_bodies_waiting_are_bounded_by_bytes_and_leave_the_count_when_they_start() -> None:
    gate = admission(max_wait_s=1000.0, max_bytes=10 * MIB, estimate_s=0.1)
    first = gate.admit("k", 6 * MIB)
    second = gate.admit("k", 4 * MIB)
    assert gate.queued_body_bytes == 10 * MIB
    with pytest.raises(ServiceBusy) as refused:
        gate.admit("k", 1)
    # 1 byte over 10 MiB waiting: the first bodies leave within the expected wait.
    assert refused.value.headers["Retry-After"] == "1"
    gate.admit("k", 0)  # a path input holds no body
    first.started()  # it got a worker: its body no longer waits
    assert gate.queued_body_bytes == 4 * MIB
    gate.admit("k", 6 * MIB)
    first.close()
    first.close()  # idempotent
    second.close()
    assert gate.queued_body_bytes == 6 * MIB and gate.pending == 2


def test_a_body_larger_than_the_budget_waits_alone() -> None:
    gate = admission(max_bytes=1 * MIB)
    ticket = gate.admit("k", 5 * MIB)  # nothing else waits: it fits
    with pytest.raises(ServiceBusy):
        gate.admit("k", 1)
    ticket.close()
    assert (gate.pending, gate.queued_body_bytes) == (0, 0)


def test_count_mode_is_the_former_rule() -> None:
    gate = admission(mode="count", queue_size=2, workers=1, max_wait_s=0.001, estimate_s=9.0)
    tickets = [gate.admit("k", 100 * MIB) for _ in range(3)]  # 1 running + 2 waiting
    with pytest.raises(ServiceBusy) as refused:
        gate.admit("k")
    assert int(refused.value.headers["Retry-After"]) >= 1
    tickets[0].close()
    gate.admit("k")


def test_config_keys_and_their_checks() -> None:
    workers = config_from_mapping({}).workers
    assert (workers.admission, workers.max_wait_s, workers.max_queued_body_bytes) == \
        ("time", 30.0, 256 * MIB)
    with pytest.raises(ConfigError, match=r"workers\.admission: invalid value 'fifo'"):
        config_from_mapping({"workers": {"admission": "fifo"}})
    with pytest.raises(ConfigError, match=r"workers\.max_wait_s: invalid value 0"):
        config_from_mapping({"workers": {"max_wait_s": 0}})
    with pytest.raises(ValueError):
        AdmissionLimits(mode="fifo")


def test_service_busy_without_an_estimate_has_no_retry_after() -> None:
    assert ServiceBusy().headers == {}
    assert ServiceBusy(retry_after_s=0.2).headers == {"Retry-After": "1"}
    assert ServiceBusy(retry_after_s=2.01).headers == {"Retry-After": "3"}


# --- the pool -----------------------------------------------------------------------

def make_pool(**kwargs: Any) -> WorkerPool:
    kwargs.setdefault("timeout_s", 10.0)
    return WorkerPool(lambda: object(), warm_up=lambda _p: time.sleep(0.02),
                      close=lambda _p: None, **kwargs)


def sleeper(seconds: float, gate: Any = None) -> Any:
    def sleep_job(_pipeline: Any) -> float:
        if gate is not None:
            gate.wait(5)
        time.sleep(seconds)
        return seconds
    return sleep_job


def test_the_pool_learns_service_times_and_takes_its_prior_from_the_warm_up() -> None:
    async def scenario() -> None:
        pool = make_pool()
        await pool.start()
        assert 0.015 <= pool.service_times.prior_s < 1.0
        job = sleeper(0.03)
        for _ in range(3):
            await pool.run(job)
        kind = job_kind(job)
        assert pool.service_times.samples(kind) == 3
        assert 0.025 < pool.service_times.estimate(kind) < 0.5
        stats = pool.stats()
        assert stats["pending"] == 0 and stats["video_pending"] == 0
        assert stats["mode"] == "time" and kind in stats["service_ms"]
        await pool.close()

    asyncio.run(scenario())


def test_the_pool_refuses_promptly_beyond_the_budget_and_serves_what_it_admitted() -> None:
    async def scenario() -> None:
        pool = make_pool(max_wait_s=0.5)
        await pool.start()
        job = sleeper(0.05)
        pool.service_times.observe(job_kind(job), 0.05)
        started = time.perf_counter()
        results = await asyncio.gather(*(pool.run(job) for _ in range(40)),
                                       return_exceptions=True)
        refused = [r for r in results if isinstance(r, ServiceBusy)]
        served = [r for r in results if r == 0.05]
        assert len(served) + len(refused) == 40
        assert 9 <= len(served) <= 12  # 0.5 s / 0.05 s, plus the one that starts at once
        assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
        assert time.perf_counter() - started < 3.0
        assert pool.pending == 0 and pool.admission.refused == len(refused)
        await pool.close()

    asyncio.run(scenario())


def test_video_frames_never_count_against_api_admission() -> None:
    async def scenario() -> None:
        pool = make_pool(max_wait_s=1.0)
        await pool.start()
        gate = threading.Event()
        frame = sleeper(0.0, gate)
        pool.service_times.observe(job_kind(frame), 10.0)  # frames look very slow
        frames = [asyncio.ensure_future(pool.run_background(frame)) for _ in range(8)]
        await asyncio.sleep(0.05)
        assert pool.background_pending == 8 and pool.admission.expected_wait_s() == 0.0
        api_job = sleeper(0.001)
        api_job.__name__ = "api_job"  # another kind than the frames'
        api = [asyncio.ensure_future(pool.run(api_job)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert pool.pending == 5  # none refused: frames are not in the estimate
        gate.set()
        await asyncio.gather(*api, *frames)
        await pool.close()

    asyncio.run(scenario())


def test_request_body_bytes_count_while_waiting_only() -> None:
    async def scenario() -> None:
        pool = make_pool(max_queued_body_bytes=3000)
        await pool.start()
        gate = threading.Event()
        seen: List[int] = []

        async def request(body_bytes: int, job: Any) -> Any:
            REQUEST_BODY_BYTES.set(body_bytes)  # what api/http.py does after reading
            return await pool.run(job)

        def submit(body_bytes: int, job: Any) -> "asyncio.Future[Any]":
            # A task of its own copies the context, like aiohttp's task per request.
            return asyncio.ensure_future(request(body_bytes, job))

        running = submit(1000, sleeper(0.0, gate))
        await asyncio.sleep(0.05)
        assert pool.admission.queued_body_bytes == 0  # it has its worker
        waiting = [submit(1000, sleeper(0.0)) for _ in range(3)]
        await asyncio.sleep(0.05)
        seen.append(pool.admission.queued_body_bytes)
        with pytest.raises(ServiceBusy):
            await request(1, sleeper(0.0))
        gate.set()
        await asyncio.gather(running, *waiting)
        assert seen == [3000] and pool.admission.queued_body_bytes == 0
        await pool.close()

    asyncio.run(scenario())


def test_a_job_whose_worker_comes_too_late_to_finish_is_refused_not_timed_out() -> None:
    async def scenario() -> None:
        pool = make_pool(timeout_s=0.6)
        await pool.start()
        gate = threading.Event()
        slow_start = sleeper(0.0, gate)
        pool.service_times.observe(job_kind(slow_start), 0.01)  # looks quick ...
        late = sleeper(0.01)
        late.__name__ = "late_job"
        pool.service_times.observe(job_kind(late), 0.3)
        running = asyncio.ensure_future(pool.run(slow_start))
        await asyncio.sleep(0.02)
        waiting = asyncio.ensure_future(pool.run(late))  # 0.01 + 0.3 s fit 0.6 s
        await asyncio.sleep(0.45)  # ... but takes 0.45 s: 0.15 s left, 0.3 s needed
        gate.set()
        await running
        with pytest.raises(ServiceBusy) as refused:
            await waiting
        assert int(refused.value.headers["Retry-After"]) >= 1
        assert pool.admission.refused == 1 and pool.pending == 0
        assert await pool.run(late) == 0.01  # the worker was given back
        await pool.close()

    asyncio.run(scenario())
