"""BatchingBackend: many worker threads, one inference thread, batches across requests.

Against the fake ``sophon.sail`` (tests/fakes/sail.py), which fails a test if an Engine is
entered from a second thread; against the real SFace model on ONNX Runtime; and through
the worker pool's wiring (``pipeline_factory``) on real photos.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

from sophon_face.backends.base import BackendError, TensorSpec
from sophon_face.backends.batching import BatchingBackend, BatchingClient
from sophon_face.backends.registry import BackendOptions
from sophon_face.backends.sail import SailBackend
from sophon_face.manifest.schema import load_manifest
from sophon_face.pipeline.face_pipeline import FacePipeline
from sophon_face.pipeline.quality import QualityThresholds
from sophon_face.pipeline.types import DecodedImage, DetectedFace
from sophon_face.workers.models import PreparedModels, batching_enabled, pipeline_factory
from sophon_face.workers.pool import WorkerPool

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = (3, 8, 8)
FEATURES = 5
_WEIGHTS = np.random.default_rng(7).standard_normal((int(np.prod(SAMPLE)), FEATURES))
#: The toy model's "TPU time" per inner call: long enough for callers to pile up.
TOY_RUN_S = 0.002


def _reference(x: np.ndarray) -> Dict[str, np.ndarray]:
    """The toy model per sample, in float64: a projection and a per-sample mean."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return {"feat": flat @ _WEIGHTS, "mean": flat.mean(axis=1, keepdims=True)}


def _toy_fn(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    time.sleep(TOY_RUN_S)
    return {k: v.astype(np.float32) for k, v in _reference(feeds["data"]).items()}


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n,) + SAMPLE).astype(np.float32)


def toy_model(fake, tmp_path: Path, fn=_toy_fn, name: str = "toy") -> str:
    """The toy bmodel compiled at batch 4 with stages (1, 4)."""
    graph = fake.FakeGraph(
        name=name,
        inputs=[fake.FakeIO("data", (4,) + SAMPLE)],
        outputs=[fake.FakeIO("mean", (4, 1)), fake.FakeIO("feat", (4, FEATURES))],
        fn=fn, batch_sizes=(1, 4))
    return fake.register_model(tmp_path / f"{name}.bmodel", graph)


def sail_batcher(fake, path: str, max_wait_s: float = 0.003, max_batch: int = 4) -> BatchingBackend:
    backend = BatchingBackend(lambda: SailBackend(path, batch_sizes=(1, 4), sail_module=fake),
                              max_batch=max_batch, max_wait_s=max_wait_s, name="toy")
    # The Engine's call log starts after SailBackend's load-time check of both stages.
    fake.ENGINES[-1].calls.clear()
    return backend


def _start_together(count: int, target, *args) -> List[threading.Thread]:
    barrier = threading.Barrier(count)
    errors: List[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            target(i, *args)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    return threads


# -- correctness under concurrency -------------------------------------------------------------

def test_eight_threads_get_their_own_outputs_from_one_engine_thread(fake_sail, tmp_path):
    path = toy_model(fake_sail, tmp_path)
    backend = sail_batcher(fake_sail, path)
    assert backend.runtime == "sail" and backend.output_names() == ["mean", "feat"]
    assert [s.shape for s in backend.input_specs()] == [(None,) + SAMPLE]
    rounds = 12
    results: Dict[tuple, Dict[str, np.ndarray]] = {}
    caller_threads = set()

    def caller(i: int) -> None:
        caller_threads.add(threading.get_ident())
        for r in range(rounds):
            x = _batch(1 + (i + r) % 3, seed=100 * i + r)  # 1, 2 or 3 samples
            results[(i, r)] = backend.run({"data": x})

    _start_together(8, caller)
    stats = backend.stats()
    backend.close()

    # Same outputs as unbatched runs of the same engine type, each caller its own rows.
    unbatched = SailBackend(path, batch_sizes=(1, 4), sail_module=fake_sail)
    for (i, r), got in results.items():
        x = _batch(1 + (i + r) % 3, seed=100 * i + r)
        want = unbatched.run({"data": x})
        assert got["feat"].shape == (len(x), FEATURES) and got["mean"].shape == (len(x), 1)
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["feat"], _reference(x)["feat"], rtol=1e-4, atol=1e-4)

    engine = fake_sail.ENGINES[0]
    threads = {c.thread_id for c in engine.calls}
    assert len(threads) == 1 and not threads & caller_threads  # only the batcher's thread
    assert threads != {threading.get_ident()}
    assert any(c.shapes["data"][0] == 4 for c in engine.calls)  # a full compiled batch
    assert stats.requests == 8 * rounds
    assert stats.samples == sum(1 + (i + r) % 3 for i in range(8) for r in range(rounds))
    assert 1 < stats.largest_batch <= 4 and stats.batches < stats.requests
    assert stats.failed_requests == 0


def test_a_request_larger_than_max_batch_is_split_by_the_inner_backend(fake_sail, tmp_path):
    backend = sail_batcher(fake_sail, toy_model(fake_sail, tmp_path))
    x = _batch(9, seed=3)
    out = backend.run({"data": x})
    backend.close()
    np.testing.assert_allclose(out["feat"], _reference(x)["feat"], rtol=1e-4, atol=1e-4)
    assert [c.shapes["data"][0] for c in fake_sail.ENGINES[0].calls] == [4, 4, 1]


def test_a_malformed_request_fails_alone_before_reaching_the_model(fake_sail, tmp_path):
    backend = sail_batcher(fake_sail, toy_model(fake_sail, tmp_path))
    for feeds in ({"data": np.zeros((2, 3, 9, 9), np.float32)}, {"image": _batch(1)}, {},
                  {"data": np.zeros((0,) + SAMPLE, np.float32)}, {"data": np.zeros(SAMPLE, np.float32)}):
        with pytest.raises(BackendError):
            backend.run(feeds)
    assert fake_sail.ENGINES[0].calls == []
    assert backend.run({"data": _batch(1)})["feat"].shape == (1, FEATURES)
    backend.close()


# -- the deadline ------------------------------------------------------------------------------

def _timed_runs(backend, count: int) -> List[float]:
    times = []
    for i in range(count):
        started = time.perf_counter()
        backend.run({"data": _batch(1, seed=i)})
        times.append(time.perf_counter() - started)
    return times


def test_a_lone_caller_is_not_delayed_by_the_deadline(fake_sail, tmp_path):
    max_wait_s = 0.2
    backend = sail_batcher(fake_sail, toy_model(fake_sail, tmp_path), max_wait_s=max_wait_s)
    # Even with three workers attached, only one of them is calling.
    clients = [backend.attach() for _ in range(3)]
    times = _timed_runs(clients[0], 10)
    assert max(times) < max_wait_s / 4, times
    assert backend.stats().largest_batch == 1
    for client in clients:
        client.close()
    backend.close()


def test_after_a_burst_a_lone_caller_pays_the_deadline_at_most_once(fake_sail, tmp_path):
    max_wait_s = 0.1
    backend = sail_batcher(fake_sail, toy_model(fake_sail, tmp_path), max_wait_s=max_wait_s)
    _start_together(6, lambda i: [backend.run({"data": _batch(1, seed=i)}) for _ in range(5)])
    assert backend.stats().largest_batch > 1
    times = _timed_runs(backend, 6)
    assert times[0] < max_wait_s + 0.1, times
    assert max(times[1:]) < max_wait_s / 2, times  # disarmed by the one fruitless wait
    backend.close()


def test_the_wait_ends_once_every_attached_client_is_in_the_batch(fake_sail, tmp_path):
    # 3 workers can never fill max_batch 4: without the client count every batch would
    # sit out the whole (here absurdly long) deadline.
    max_wait_s = 0.5
    rounds = 10
    backend = sail_batcher(fake_sail, toy_model(fake_sail, tmp_path), max_wait_s=max_wait_s)
    clients = [backend.attach() for _ in range(3)]
    assert backend.stats().clients == 3
    started = time.perf_counter()
    _start_together(3, lambda i: [clients[i].run({"data": _batch(1, seed=r)}) for r in range(rounds)])
    elapsed = time.perf_counter() - started
    assert elapsed < 2 * max_wait_s, elapsed  # vs >= rounds * max_wait_s without the early end
    assert backend.stats().largest_batch == 3
    for client in clients:
        client.close()
    assert backend.stats().clients == 0
    backend.close()


def test_a_zero_wait_still_batches_what_is_already_queued(fake_sail, tmp_path):
    backend = sail_batcher(fake_sail, toy_model(fake_sail, tmp_path), max_wait_s=0.0)
    _start_together(8, lambda i: [backend.run({"data": _batch(1, seed=i)}) for _ in range(5)])
    assert backend.stats().largest_batch > 1  # callers queue up while the model runs
    backend.close()


# -- errors and lifecycle -----------------------------------------------------------------------

class GatedInner:
    """A backend whose first run blocks until released; later runs fail while ``fail``."""

    runtime = "gated"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.fail = True
        self.batches: List[int] = []
        self.closed_on: Optional[int] = None

    def input_specs(self) -> List[TensorSpec]:
        return [TensorSpec("data", (None,) + SAMPLE)]

    def output_names(self) -> List[str]:
        return ["feat"]

    def run(self, feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        x = feeds["data"]
        self.batches.append(len(x))
        if len(self.batches) == 1:
            self.gate.wait(10)
        elif self.fail:
            raise ValueError("boom")
        return {"feat": x.reshape(len(x), -1)[:, :FEATURES].copy()}

    def close(self) -> None:
        self.closed_on = threading.get_ident()


def _wait_until(condition, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_an_inner_exception_reaches_every_caller_of_the_batch(tmp_path):
    inner = GatedInner()
    backend = BatchingBackend(lambda: inner, max_batch=4, max_wait_s=0.003, name="gated")
    pool = ThreadPoolExecutor(max_workers=4)
    first = pool.submit(backend.run, {"data": _batch(1)})
    _wait_until(lambda: inner.batches == [1])  # the model is busy with the first request
    others = [pool.submit(backend.run, {"data": _batch(1, seed=i)}) for i in (1, 2, 3)]
    _wait_until(lambda: backend.stats().waiting == 3)
    inner.gate.set()

    assert first.result(10)["feat"].shape == (1, FEATURES)
    errors = [f.exception(10) for f in others]
    assert inner.batches == [1, 3]  # the three queued callers shared one failing run
    assert all(isinstance(e, BackendError) and "boom" in str(e) for e in errors)
    assert all(isinstance(e.__cause__, ValueError) for e in errors)
    assert len({id(e) for e in errors}) == 3  # one exception object per caller thread
    assert backend.stats().failed_requests == 3

    inner.fail = False  # the batcher survives a failed batch
    assert pool.submit(backend.run, {"data": _batch(2)}).result(10)["feat"].shape == (2, FEATURES)
    pool.shutdown()
    backend.close()


def test_close_fails_pending_and_later_runs_and_releases_the_engine_on_its_thread(fake_sail, tmp_path):
    gate = threading.Event()
    entered = threading.Event()
    armed = threading.Event()  # not during SailBackend's load-time check

    def gated_fn(feeds):
        if armed.is_set():
            entered.set()
            gate.wait(10)
        return _toy_fn(feeds)

    path = toy_model(fake_sail, tmp_path, fn=gated_fn)
    closed_on: List[int] = []

    class RecordingSail(SailBackend):
        def close(self) -> None:
            closed_on.append(threading.get_ident())
            super().close()

    backend = BatchingBackend(lambda: RecordingSail(path, batch_sizes=(1, 4), sail_module=fake_sail),
                              max_batch=4, max_wait_s=0.003, name="toy")
    armed.set()
    client = backend.attach()
    pool = ThreadPoolExecutor(max_workers=4)
    running = pool.submit(backend.run, {"data": _batch(1)})
    assert entered.wait(5)
    pending = [pool.submit(backend.run, {"data": _batch(1, seed=i)}) for i in (1, 2)]
    _wait_until(lambda: backend.stats().waiting == 2)
    closing = pool.submit(backend.close)

    for future in pending:  # failed at once, while the running batch is still on the TPU
        with pytest.raises(BackendError, match="closed"):
            future.result(5)
    assert not closing.done()
    gate.set()
    assert running.result(5)["feat"].shape == (1, FEATURES)  # the batch in progress finishes
    closing.result(5)

    engine = fake_sail.ENGINES[0]
    assert closed_on == [engine._owner_thread] != [threading.get_ident()]
    assert {c.thread_id for c in engine.calls} == {engine._owner_thread}
    with pytest.raises(BackendError, match="closed"):
        backend.run({"data": _batch(1)})
    with pytest.raises(BackendError, match="closed"):
        client.run({"data": _batch(1)})
    with pytest.raises(BackendError, match="closed"):
        backend.attach()
    backend.close()  # idempotent
    pool.shutdown()
    assert not any(t.name == "batcher-toy" for t in threading.enumerate())


def test_construction_raises_the_inner_backends_error_and_leaves_no_thread(fake_sail, tmp_path):
    with pytest.raises(BackendError, match="bmodel not found"):
        BatchingBackend(lambda: SailBackend(str(tmp_path / "absent.bmodel"), sail_module=fake_sail),
                        name="absent")

    def broken():
        raise ValueError("no such model")

    with pytest.raises(BackendError, match="no such model") as info:
        BatchingBackend(broken, name="broken")
    assert isinstance(info.value.__cause__, ValueError)
    assert not any(t.name.startswith("batcher-") for t in threading.enumerate())


def test_a_client_closes_only_itself(fake_sail, tmp_path):
    backend = sail_batcher(fake_sail, toy_model(fake_sail, tmp_path))
    client = backend.attach()
    assert isinstance(client, BatchingClient) and client.runtime == "sail"
    assert client.output_names() == backend.output_names()
    client.close()
    client.close()
    with pytest.raises(BackendError):
        client.run({"data": _batch(1)})
    assert backend.run({"data": _batch(1)})["feat"].shape == (1, FEATURES)
    backend.close()


# -- real model: SFace on ONNX Runtime ------------------------------------------------------------

def test_batched_sface_embeddings_equal_unbatched_ones(prepared_models):
    from sophon_face.backends.onnx import OnnxBackend

    path = str(prepared_models["recognizer"])
    unbatched = OnnxBackend(path)
    backend = BatchingBackend(lambda: OnnxBackend(path), max_batch=4, max_wait_s=0.005, name="sface")
    name = backend.input_specs()[0].name
    assert backend.runtime == "onnxruntime" and backend.output_names() == unbatched.output_names()
    results: Dict[tuple, Dict[str, np.ndarray]] = {}

    def faces(i: int, r: int) -> np.ndarray:
        rng = np.random.default_rng(1000 * i + r)
        return rng.uniform(0, 255, (1 + (i + r) % 2, 3, 112, 112)).astype(np.float32)

    def caller(i: int) -> None:
        for r in range(4):
            results[(i, r)] = backend.run({name: faces(i, r)})

    _start_together(6, caller)
    assert backend.stats().largest_batch > 1
    backend.close()
    for (i, r), got in results.items():
        want = unbatched.run({name: faces(i, r)})
        for out in want:
            assert got[out].shape == want[out].shape
            np.testing.assert_allclose(got[out], want[out], rtol=1e-5, atol=1e-5)
    unbatched.close()


# -- wiring: pipeline_factory and the worker pool ---------------------------------------------------

def test_batching_is_on_by_default_for_sail_only():
    assert batching_enabled("auto", "sail") and not batching_enabled("auto", "onnx")
    assert batching_enabled("on", "onnx") and not batching_enabled("off", "sail")
    with pytest.raises(ValueError):
        batching_enabled("yes", "sail")


def test_sail_workers_share_one_engine_per_model_on_its_batching_thread(fake_sail, tmp_path):
    se5 = load_manifest(ROOT / "bmodels" / "manifest.yaml")

    def recognize(feeds):
        x = feeds["data"]
        return {"fc1": x.reshape(len(x), -1)[:, :512].copy()}

    det = fake_sail.register_model(tmp_path / "det.bmodel", fake_sail.FakeGraph(
        "det", [fake_sail.FakeIO("data", (4, 3, 640, 640))], [fake_sail.FakeIO("score", (4, 1))],
        lambda feeds: {"score": np.zeros((len(feeds["data"]), 1), np.float32)}, (1, 4)))
    rec = fake_sail.register_model(tmp_path / "rec.bmodel", fake_sail.FakeGraph(
        "rec", [fake_sail.FakeIO("data", (4, 3, 112, 112))], [fake_sail.FakeIO("fc1", (4, 512))],
        recognize, (1, 4)))
    manifest = dataclasses.replace(
        se5, detector=dataclasses.replace(se5.detector, graph="det"),
        recognizer=dataclasses.replace(se5.recognizer, graph="rec", batch_sizes=(1, 4)))
    models = PreparedModels(manifest, Path(det), Path(rec))
    # The three-argument call of existing callers: "auto" is on for the sail runtime.
    factory = pipeline_factory(models, BackendOptions(sail_module=fake_sail), QualityThresholds())
    assert factory.batching
    factory.open()
    assert len(fake_sail.ENGINES) == 2  # one per model, before any worker exists

    image = DecodedImage(image_bgr=np.random.default_rng(5).integers(0, 256, (200, 200, 3), np.uint8),
                         encoded=b"", format="png", param="image_base64")
    marks = np.array([[80, 90], [120, 90], [100, 110], [84, 130], [116, 130]], np.float32)
    faces = [DetectedFace(bbox=np.array([60, 60, 140, 150], np.float32), landmarks=marks + dx,
                          score=0.9) for dx in (0.0, 3.0, -3.0)]
    with ThreadPoolExecutor(max_workers=3) as workers:
        pipelines = list(workers.map(lambda _: factory(), range(3)))
        features = list(workers.map(lambda p: p.features_of(image, faces), pipelines))
        worker_ids = set(workers.map(lambda _: threading.get_ident(), range(3)))
    assert len(fake_sail.ENGINES) == 2  # the workers opened no sessions of their own
    assert factory.stats()["recognizer"]["clients"] == 3
    for got in features[1:]:
        np.testing.assert_array_equal(got, features[0])
    for engine in fake_sail.ENGINES:
        assert {c.thread_id for c in engine.calls} <= {engine._owner_thread}
        assert engine._owner_thread not in worker_ids
    for pipeline in pipelines:
        pipeline.close()
    assert factory.stats()["recognizer"]["clients"] == 0
    factory.close()
    assert factory.stats() == {"enabled": True, "max_wait_ms": 3.0}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


PHOTOS = ("sunak.jpg", "macron_2014.jpg", "ardern_2018.jpg", "obama_senate.jpg", "newton.png")


def test_pool_with_batching_gives_the_unbatched_pipelines_features(
        cpu_manifest, prepared_models, face_pipeline, load_test_image):
    # The CPU manifest declares batch 1 (YuNet and SFace are exported with a fixed batch);
    # a batch-4 bound makes the shared backends concatenate requests, which OnnxBackend
    # then runs sample by sample, so the batching path itself is what is compared here.
    manifest = dataclasses.replace(
        cpu_manifest, detector=dataclasses.replace(cpu_manifest.detector, batch_sizes=(1, 4)),
        recognizer=dataclasses.replace(cpu_manifest.recognizer, batch_sizes=(1, 4)))
    models = PreparedModels(manifest, prepared_models["detector"], prepared_models["recognizer"])
    factory = pipeline_factory(models, BackendOptions(intra_op_threads=1), QualityThresholds(),
                               batching="on", batch_wait_ms=5.0)
    images = [load_test_image(name) for name in PHOTOS]

    async def analyze_all():
        await asyncio.get_running_loop().run_in_executor(None, factory.open)
        pool = WorkerPool(factory, warm_up=FacePipeline.warm_up, close=FacePipeline.close,
                          count=3, queue_size=32)
        await pool.start()
        try:
            results = await asyncio.gather(*(
                pool.run(FacePipeline.analyze_largest, image, "no")
                for image in images * 3))
            during = factory.stats()
        finally:
            await pool.close()
        return results, during

    results, stats = asyncio.run(analyze_all())
    factory.close()

    assert stats["enabled"] and stats["detector"]["clients"] == 3
    assert stats["detector"]["max_batch"] == 4
    assert max(stats["detector"]["largest_batch"], stats["recognizer"]["largest_batch"]) > 1
    for i, result in enumerate(results):
        image = images[i % len(images)]
        want = face_pipeline.analyze_largest(image, "no")
        assert _cosine(result.feature, want.feature) > 0.9999, PHOTOS[i % len(PHOTOS)]
        np.testing.assert_allclose(result.face.bbox, want.face.bbox, atol=1e-3)
