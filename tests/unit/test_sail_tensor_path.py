"""SAIL's Tensor path: what SailBackend gains from it and what the fake enforces.

The fake ``sophon.sail`` (tests/fakes/sail.py) emulates the one property that made the
switch worth it: its Tensor-path ``Engine.process`` sleeps ``FakeGraph.tpu_time_s`` with the
GIL released, as the real binding's ``gil_scoped_release`` does, while its numpy-path
``process`` blocks for the same time holding the GIL, as the real one does. It also keeps
separate system and device memory per ``Tensor`` and enforces the calling contract of
reference/sail.md section 1.3 (exact ``update_data`` shapes and dtypes, memory the IOMode
needs, compiled stages only, one thread per Engine).
"""

from __future__ import annotations

import bisect
import threading
import time
import types
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import pytest

from sophon_face.backends.base import BackendError
from sophon_face.backends.batching import BatchingBackend
from sophon_face.backends.sail import SailBackend

SAMPLE = (3, 8, 8)
FEATURES = 5
_WEIGHTS = np.random.default_rng(7).standard_normal((int(np.prod(SAMPLE)), FEATURES))


def _reference(x: np.ndarray) -> Dict[str, np.ndarray]:
    """The toy model per sample, in float64: a projection and the sample's mean."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return {"feat": flat @ _WEIGHTS, "mean": flat.mean(axis=1, keepdims=True)}


def _toy_fn(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in _reference(feeds["data"]).items()}


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n,) + SAMPLE).astype(np.float32)


def toy_graph(fake, batch_sizes: Sequence[int] = (1, 4), *, tpu_time_s: float = 0.0,
              input_dtype=None, input_scale: float = 1.0, output_dtype=None,
              output_scale: float = 1.0, fn: Callable = _toy_fn):
    max_batch = max(batch_sizes)
    return fake.FakeGraph(
        name="toy",
        inputs=[fake.FakeIO("data", (max_batch,) + SAMPLE, input_dtype or fake.BM_FLOAT32, input_scale)],
        outputs=[fake.FakeIO("mean", (max_batch, 1), output_dtype or fake.BM_FLOAT32, output_scale),
                 fake.FakeIO("feat", (max_batch, FEATURES), output_dtype or fake.BM_FLOAT32, output_scale)],
        fn=fn, batch_sizes=tuple(batch_sizes), tpu_time_s=tpu_time_s)


def toy_model(fake, tmp_path: Path, **kwargs) -> str:
    return fake.register_model(tmp_path / "toy.bmodel", toy_graph(fake, **kwargs))


def loaded(fake, path: str, **kwargs) -> SailBackend:
    """A SailBackend whose Engine's call log starts after the load-time check."""
    backend = SailBackend(path, batch_sizes=kwargs.pop("batch_sizes", (1, 4)), sail_module=fake,
                          **kwargs)
    fake.ENGINES[-1].calls.clear()
    return backend


def _module_with(fake, **overrides: Any) -> types.ModuleType:
    """The fake sail module with some of its classes replaced (a SAIL that misbehaves)."""
    module = types.ModuleType("sophon.sail")
    module.__dict__.update({k: v for k, v in vars(fake).items() if not k.startswith("__")})
    module.__dict__.update(overrides)
    return module


# -- the GIL ---------------------------------------------------------------------------------

class ProgressCounter:
    """A Python thread that counts loop iterations, noting (time, count) every 256 of them,
    so the progress it made inside any time window can be read afterwards."""

    def __init__(self) -> None:
        self.times: List[float] = []
        self.counts: List[int] = []
        self._running = True
        self._thread = threading.Thread(target=self._count, name="progress-counter", daemon=True)

    def _count(self) -> None:
        n = 0
        now = time.perf_counter
        times, counts = self.times, self.counts
        while self._running:
            n += 1
            if n & 255 == 0:
                times.append(now())
                counts.append(n)

    def __enter__(self) -> "ProgressCounter":
        self._thread.start()
        time.sleep(0.05)  # running steadily before anything is measured
        return self

    def __exit__(self, *exc: Any) -> None:
        self._running = False
        self._thread.join(5)

    def _count_at(self, t: float) -> int:
        i = bisect.bisect_right(self.times, t)
        return self.counts[i - 1] if i else 0

    def rate(self, windows: Sequence[Tuple[float, float]]) -> float:
        """Iterations per millisecond inside ``windows``."""
        done = sum(self._count_at(end) - self._count_at(start) for start, end in windows)
        return done / (sum(end - start for start, end in windows) * 1000.0)


def test_other_threads_run_while_the_tpu_works_on_the_tensor_path_not_the_numpy_path(fake_sail, tmp_path):
    # Long enough that the one switch interval (5 ms) the other thread may still get at the
    # start of a GIL-holding call is a small part of it.
    tpu_time_s = 0.1
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path, tpu_time_s=tpu_time_s))
    engine = fake_sail.ENGINES[0]
    rounds = 4
    with ProgressCounter() as counter:
        idle = []
        for _ in range(rounds):  # the baseline: this thread merely sleeps (GIL released)
            started = time.perf_counter()
            time.sleep(tpu_time_s)
            idle.append((started, time.perf_counter()))
        for i in range(rounds):
            backend.run({"data": _batch(1, seed=i)})  # what the backend does now
        for i in range(rounds):  # what the backend did before: SAIL's numpy path
            engine.process("toy", {"data": _batch(1, seed=i)})
    tensor = [(c.tpu_started_s, c.tpu_ended_s) for c in engine.calls if c.path == "tensor"]
    numpy_path = [(c.tpu_started_s, c.tpu_ended_s) for c in engine.calls if c.path == "numpy"]
    assert len(tensor) == len(numpy_path) == rounds
    assert all(end - start >= tpu_time_s * 0.9 for start, end in tensor + numpy_path)

    idle_rate, tensor_rate, numpy_rate = (counter.rate(w) for w in (idle, tensor, numpy_path))
    summary = (f"counter thread, iterations/ms: idle {idle_rate:.0f}, during Tensor-path TPU "
               f"time {tensor_rate:.0f}, during numpy-path TPU time {numpy_rate:.0f}")
    print(summary)
    # Released GIL: the other thread runs about as fast as when nothing else happens.
    assert tensor_rate > 0.5 * idle_rate, summary
    # Held GIL: it only gets a switch interval (5 ms) now and then.
    assert numpy_rate < 0.2 * tensor_rate, summary


def test_callers_queue_their_next_requests_while_the_tpu_runs(fake_sail, tmp_path):
    """Through the BatchingBackend: while one batch is on the (GIL-free) TPU, the callers'
    threads run, queue their next samples, and the next batch is full at once."""
    tpu_time_s = 0.02
    path = toy_model(fake_sail, tmp_path, tpu_time_s=tpu_time_s)
    backend = BatchingBackend(lambda: SailBackend(path, batch_sizes=(1, 4), sail_module=fake_sail),
                              max_batch=4, max_wait_s=0.0, name="toy")
    engine = fake_sail.ENGINES[0]
    engine.calls.clear()
    clients = 8
    rounds = 6
    barrier = threading.Barrier(clients)
    errors: List[BaseException] = []

    def caller() -> None:
        barrier.wait()
        try:
            for r in range(rounds):
                backend.run({"data": _batch(1, seed=r)})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stats = backend.stats()
    backend.close()
    assert errors == []
    # No deadline at all (max_wait_s 0): the batches fill only because callers keep
    # queueing while the batcher's thread waits for the TPU with the GIL released.
    assert stats.samples == clients * rounds
    assert stats.samples / stats.batches >= 2.5, stats  # 4 at best, 1 without overlap
    assert {c.path for c in engine.calls} == {"tensor"}


# -- batches under concurrency ---------------------------------------------------------------

def _tagged(tag: int, n: int) -> np.ndarray:
    """``n`` samples, sample j filled with ``tag + j``: the model's mean output names it."""
    return np.stack([np.full(SAMPLE, float(tag + j), np.float32) for j in range(n)])


def test_eight_callers_get_their_own_rows_back_from_shared_batches(fake_sail, tmp_path):
    fake_sail.KEEP_INPUTS = True
    path = toy_model(fake_sail, tmp_path, tpu_time_s=0.01)
    backend = BatchingBackend(lambda: SailBackend(path, batch_sizes=(1, 4), sail_module=fake_sail),
                              max_batch=4, max_wait_s=0.005, name="toy")
    engine = fake_sail.ENGINES[0]
    engine.calls.clear()
    clients, rounds = 8, 8
    results: Dict[Tuple[int, int], Dict[str, np.ndarray]] = {}
    errors: List[BaseException] = []
    barrier = threading.Barrier(clients)

    def caller(i: int) -> None:
        barrier.wait()
        try:
            for r in range(rounds):
                n = 1 + (i + r) % 2  # one or two faces per request
                results[(i, r)] = backend.run({"data": _tagged(1000 * i + 10 * r, n)})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    stats = backend.stats()
    backend.close()

    assert errors == [] and len(results) == clients * rounds
    for (i, r), out in results.items():
        n = 1 + (i + r) % 2
        tags = [1000 * i + 10 * r + j for j in range(n)]
        assert out["mean"][:, 0].tolist() == tags, (i, r)  # its own rows, in its order
        np.testing.assert_allclose(out["feat"], _reference(_tagged(tags[0], n))["feat"], rtol=1e-5)
    assert stats.largest_batch > 1 and stats.batches < stats.requests
    mixed = [c for c in engine.calls
             if len({int(v) // 1000 for v in c.inputs["data"].reshape(len(c.inputs["data"]), -1)[:, 0]
                     if v != 0}) > 1]
    assert mixed, "no TPU run carried samples of two different callers"
    assert {c.path for c in engine.calls} == {"tensor"}
    assert {c.shapes["data"][0] for c in engine.calls} <= {1, 4}


def test_a_lone_request_waits_at_most_the_batch_deadline(fake_sail, tmp_path):
    tpu_time_s = 0.005
    # A deadline well above the tolerance, which absorbs a loaded machine's scheduling
    # pauses: a lone call that waited for company would take the whole deadline.
    max_wait_s = 0.5
    tolerance_s = 0.2
    path = toy_model(fake_sail, tmp_path, tpu_time_s=tpu_time_s)
    backend = BatchingBackend(lambda: SailBackend(path, batch_sizes=(1, 4), sail_module=fake_sail),
                              max_batch=4, max_wait_s=max_wait_s, name="toy")

    def timed() -> float:
        started = time.perf_counter()
        backend.run({"data": _batch(1)})
        return time.perf_counter() - started

    fresh = [timed() for _ in range(3)]
    burst = [threading.Thread(target=lambda: [backend.run({"data": _batch(1)}) for _ in range(4)])
             for _ in range(6)]
    for t in burst:
        t.start()
    for t in burst:
        t.join(30)
    assert backend.stats().largest_batch > 1  # the burst armed the deadline
    after = [timed() for _ in range(4)]
    backend.close()

    # A lone caller never waits for company it has no reason to expect...
    assert max(fresh) < tpu_time_s + tolerance_s, fresh
    # ...and right after a burst it waits for the deadline once, at most.
    assert after[0] < max_wait_s + tpu_time_s + tolerance_s, after
    assert max(after[1:]) < tpu_time_s + tolerance_s, after


# -- padding, int8, memory --------------------------------------------------------------------

@pytest.mark.parametrize("n, stages", [(1, [1]), (2, [4]), (3, [4]), (4, [4]), (5, [4, 1]),
                                       (6, [4, 4]), (8, [4, 4]), (9, [4, 4, 1])])
def test_pads_to_the_compiled_sizes_1_and_4_and_slices_back(fake_sail, tmp_path, n, stages):
    fake_sail.KEEP_INPUTS = True
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path))
    x = _batch(n, seed=n) + 2.0  # no sample is all zeros
    out = backend.run({"data": x})

    assert out["feat"].shape == (n, FEATURES) and out["mean"].shape == (n, 1)
    np.testing.assert_allclose(out["feat"], _reference(x)["feat"], rtol=1e-5, atol=1e-5)
    calls = fake_sail.ENGINES[0].calls
    assert [c.shapes["data"][0] for c in calls] == stages
    fed = np.concatenate([c.inputs["data"] for c in calls])
    real = fed[np.abs(fed).reshape(len(fed), -1).max(axis=1) > 0]
    np.testing.assert_array_equal(real, x)  # every sample once, in order
    assert len(fed) - len(real) == sum(stages) - n  # the padding is zeros (no stale rows)


def test_each_stage_owns_system_and_device_memory_allocated_at_load(fake_sail, tmp_path):
    backend = SailBackend(toy_model(fake_sail, tmp_path), batch_sizes=(1, 4), sail_module=fake_sail)
    tensors = fake_sail.TENSORS
    assert sorted(t.shape()[0] for t in tensors) == [1, 1, 1, 4, 4, 4]  # data, mean, feat x 2
    assert all(t.own_sys_data() and t.own_dev_data() for t in tensors)
    for _ in range(3):
        backend.run({"data": _batch(3)})
    assert len(fake_sail.TENSORS) == 6  # nothing allocated per call
    backend.close()


def test_int8_io_goes_through_scale_from_and_scale_to_with_the_graph_scales(fake_sail, tmp_path):
    fake_sail.KEEP_INPUTS = True
    in_scale, out_scale = 20.0, 0.05
    path = toy_model(fake_sail, tmp_path, input_dtype=fake_sail.BM_INT8, input_scale=in_scale,
                     output_dtype=fake_sail.BM_INT8, output_scale=out_scale)
    backend = loaded(fake_sail, path)
    x = _batch(3) * 10.0  # some values beyond 127 / 20, to exercise the clamp
    out = backend.run({"data": x})

    quantised = np.clip(np.round(x * in_scale), -127, 127) / in_scale
    call = fake_sail.ENGINES[0].calls[0]
    assert call.dtypes["data"] == np.int8  # an int8 tensor, never float32 bytes
    np.testing.assert_allclose(call.inputs["data"][:3], quantised, atol=1e-6)
    want = np.clip(np.round(_reference(quantised)["feat"] / out_scale), -127, 127) * out_scale
    np.testing.assert_allclose(out["feat"], want, atol=1e-4)
    assert out["feat"].dtype == np.float32


def test_the_load_check_catches_a_tensor_path_that_ignores_the_output_scale(fake_sail, tmp_path):
    class ScaleBlindTensor(fake_sail.Tensor):
        def scale_to(self, scale, shape=None):
            return super().scale_to(1.0, shape)

    path = toy_model(fake_sail, tmp_path, output_dtype=fake_sail.BM_INT8, output_scale=0.05)
    with pytest.raises(BackendError, match="differs from SAIL's numpy path"):
        SailBackend(path, batch_sizes=(1, 4), sail_module=_module_with(fake_sail, Tensor=ScaleBlindTensor))


def test_results_never_share_memory_with_the_tensors_or_each_other(fake_sail, tmp_path):
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path))
    first = backend.run({"data": _batch(2, seed=1)})
    kept = {k: v.copy() for k, v in first.items()}
    second = backend.run({"data": _batch(2, seed=2)})  # same stage, same tensors
    buffers = [b for t in fake_sail.TENSORS for b in (t._sys, t._dev) if b is not None]
    for name in first:
        np.testing.assert_array_equal(first[name], kept[name])
        assert not np.shares_memory(first[name], second[name])
        assert not any(np.shares_memory(r[name], b) for r in (first, second) for b in buffers)


def test_a_failing_tensor_path_is_a_backend_error(fake_sail, tmp_path):
    calls = {"n": 0}

    def fn(feeds):
        calls["n"] += 1
        if calls["n"] > 4:  # after the load-time check
            raise RuntimeError("TPU timeout")
        return _toy_fn(feeds)

    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path, fn=fn))
    with pytest.raises(BackendError, match="TPU timeout"):
        backend.run({"data": _batch(2)})


# -- what the fake enforces (the guards the tests above rely on are live) --------------------

def _engine_and_tensors(fake, tmp_path: Path, mode=None, batch: int = 4, own=(True, True)):
    engine = fake.Engine(toy_model(fake, tmp_path), 0, mode if mode is not None else fake.SYSIO)
    handle = engine.get_handle()
    inputs = {"data": fake.Tensor(handle, [batch, *SAMPLE], fake.BM_FLOAT32, *own)}
    outputs = {"mean": fake.Tensor(handle, [batch, 1], fake.BM_FLOAT32, True, True),
               "feat": fake.Tensor(handle, [batch, FEATURES], fake.BM_FLOAT32, True, True)}
    return engine, inputs, outputs


def test_fake_update_data_wants_the_exact_shape_and_dtype(fake_sail):
    tensor = fake_sail.Tensor(fake_sail.Handle(0), [4, *SAMPLE], fake_sail.BM_FLOAT32, True, True)
    for wrong in (_batch(3), _batch(4).astype(np.float64), _batch(4).reshape(4, -1),
                  _batch(4).astype(np.int8)):
        with pytest.raises(fake_sail.SailTensorError):
            tensor.update_data(wrong)
    tensor.update_data(_batch(4))
    with pytest.raises(fake_sail.SailTensorError):
        fake_sail.Tensor(fake_sail.Handle(0), [1, 2], fake_sail.BM_FLOAT32).update_data(
            np.zeros((1, 2), np.float32))  # no memory at all (the defaults own none)
    with pytest.raises(TypeError):
        fake_sail.Tensor(fake_sail.Handle(0), [1, 2], 0)  # a plain int is not a sail.Dtype


def test_fake_tensor_path_needs_the_memory_its_iomode_uses(fake_sail, tmp_path):
    engine, inputs, outputs = _engine_and_tensors(fake_sail, tmp_path, own=(False, True))
    with pytest.raises(fake_sail.SailEngineError, match="bad input"):
        engine.process("toy", inputs, outputs)  # SYSIO: inputs need system memory
    engine, inputs, outputs = _engine_and_tensors(fake_sail, tmp_path, own=(True, False))
    with pytest.raises(fake_sail.SailEngineError, match="bad input"):
        engine.process("toy", inputs, outputs)  # and always device memory
    engine, inputs, _ = _engine_and_tensors(fake_sail, tmp_path)
    bare = {"mean": fake_sail.Tensor(engine.get_handle(), [4, 1], fake_sail.BM_FLOAT32, False, True),
            "feat": fake_sail.Tensor(engine.get_handle(), [4, FEATURES], fake_sail.BM_FLOAT32, False, True)}
    with pytest.raises(fake_sail.SailEngineError, match="bad output"):
        engine.process("toy", inputs, bare)


def test_fake_syso_needs_sync_s2d_and_sysi_needs_sync_d2s(fake_sail, tmp_path):
    x = _batch(4) + 1.0
    engine, inputs, outputs = _engine_and_tensors(fake_sail, tmp_path, mode=fake_sail.SYSO)
    inputs["data"].update_data(x)  # into system memory: SYSO's run does not copy it over
    engine.process("toy", inputs, outputs)
    np.testing.assert_array_equal(outputs["mean"].asnumpy(), np.zeros((4, 1), np.float32))
    inputs["data"].sync_s2d()
    engine.process("toy", inputs, outputs)
    np.testing.assert_allclose(outputs["mean"].asnumpy(), _reference(x)["mean"], rtol=1e-6)

    engine, inputs, outputs = _engine_and_tensors(fake_sail, tmp_path, mode=fake_sail.SYSI)
    inputs["data"].update_data(x)
    engine.process("toy", inputs, outputs)  # outputs stay in device memory
    assert not np.allclose(outputs["mean"].asnumpy(), _reference(x)["mean"])
    outputs["mean"].sync_d2s()
    np.testing.assert_allclose(outputs["mean"].asnumpy(), _reference(x)["mean"], rtol=1e-6)


@pytest.mark.parametrize("breach", ["uncompiled stage", "float tensor for int8 input",
                                    "missing output", "tensor used meanwhile"])
def test_fake_flags_what_the_real_tensor_path_gets_wrong_silently(fake_sail, tmp_path, breach):
    engine, inputs, outputs = _engine_and_tensors(fake_sail, tmp_path)
    handle = engine.get_handle()
    if breach == "uncompiled stage":
        inputs = {"data": fake_sail.Tensor(handle, [2, *SAMPLE], fake_sail.BM_FLOAT32, True, True)}
    elif breach == "float tensor for int8 input":
        path = fake_sail.register_model(tmp_path / "int8.bmodel", toy_graph(
            fake_sail, input_dtype=fake_sail.BM_INT8, input_scale=20.0))
        engine = fake_sail.Engine(path, 0, fake_sail.SYSIO)
    elif breach == "missing output":
        del outputs["feat"]
    else:
        toy_graph_of = fake_sail.MODELS[engine.bmodel_path][0]
        toy_graph_of.tpu_time_s = 0.2
        intruder_errors: List[BaseException] = []

        def intruder() -> None:
            time.sleep(0.05)  # the Tensor-path run has released the GIL by now
            try:
                inputs["data"].update_data(_batch(4))
            except AssertionError as exc:
                intruder_errors.append(exc)

        thread = threading.Thread(target=intruder)
        thread.start()
        engine.process("toy", inputs, outputs)
        thread.join()
        assert len(intruder_errors) == 1 and "while a Tensor-path process() runs" in str(intruder_errors[0])
        assert len(fake_sail.VIOLATIONS) == 1
        fake_sail.VIOLATIONS.clear()
        return
    with pytest.raises(AssertionError):
        engine.process("toy", inputs, outputs)
    assert len(fake_sail.VIOLATIONS) == 1
    fake_sail.VIOLATIONS.clear()


def test_fake_tensor_path_refuses_a_second_thread(fake_sail, tmp_path):
    engine, inputs, outputs = _engine_and_tensors(fake_sail, tmp_path)
    errors: List[BaseException] = []

    def other() -> None:
        try:
            engine.process("toy", inputs, outputs)
        except AssertionError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "one Engine must stay on one thread" in str(errors[0])
    fake_sail.VIOLATIONS.clear()


def test_fake_scale_from_quantises_like_sail_and_refuses_strided_arrays(fake_sail):
    tensor = fake_sail.Tensor(fake_sail.Handle(0), [2, 3], fake_sail.BM_INT8, True, True)
    tensor.scale_from(np.array([[0.04, -0.06, 9.0], [-9.0, 0.5, 0.0]], np.float32), 20.0)
    assert tensor.asnumpy().tolist() == [[1, -1, 127], [-127, 10, 0]]  # round, clamp at +-127
    np.testing.assert_allclose(tensor.scale_to(0.5), [[0.5, -0.5, 63.5], [-63.5, 5.0, 0.0]])
    with pytest.raises(AssertionError, match="strided"):
        tensor.scale_from(np.zeros((3, 2), np.float32).T, 1.0)
    fake_sail.VIOLATIONS.clear()
    with pytest.raises(fake_sail.SailTensorError, match="size out of range"):
        tensor.scale_from(np.zeros((3, 3), np.float32), 1.0)
    copy = tensor.asnumpy()
    copy[:] = 0
    assert tensor.asnumpy()[0, 2] == 127  # asnumpy hands out a copy


def test_an_output_without_a_leading_batch_dimension_is_refused_at_load(fake_sail, tmp_path):
    graph = fake_sail.FakeGraph(
        "toy", [fake_sail.FakeIO("data", (4,) + SAMPLE)], [fake_sail.FakeIO("anchors", (16, 4))],
        lambda feeds: {"anchors": np.zeros((16, 4), np.float32)})
    path = fake_sail.register_model(tmp_path / "anchors.bmodel", graph)
    with pytest.raises(BackendError, match="leading batch dimension"):
        SailBackend(path, sail_module=fake_sail)
    assert fake_sail.TENSORS == [] and fake_sail.ENGINES[0].calls == []
