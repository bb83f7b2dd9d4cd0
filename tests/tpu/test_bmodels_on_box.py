"""scripts/verify-bmodels' checks on a real SE5, as pytest tests (opt-in).

Run on the box, from the project folder, with the bmodels in bmodels/ and either a reference
saved on an x86 host (``scripts/verify-bmodels --save-reference ref.npz --onnx ...``) or the
source ONNX files and onnxruntime on the box:

    SOPHON_FACE_TPU=1 SOPHON_FACE_VERIFY_REFERENCE=ref.npz .venv/bin/python -m pytest -m tpu tests/tpu
    SOPHON_FACE_TPU=1 SOPHON_FACE_VERIFY_ONNX_MAP=onnx.yaml .venv/bin/python -m pytest -m tpu tests/tpu

``SOPHON_FACE_VERIFY_PHOTOS`` picks another photo folder (default tests/data; a reference
must have been made on the same photos), ``SOPHON_FACE_VERIFY_MANIFEST`` another manifest
(default bmodels/manifest.yaml). Everywhere else these tests skip and say why.
tests/unit/test_verify_bmodels.py runs ``box_report`` against the fake SAIL.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "verify-bmodels"

pytestmark = pytest.mark.tpu


def _script():
    if "verify_bmodels" in sys.modules:
        return sys.modules["verify_bmodels"]
    loader = importlib.machinery.SourceFileLoader("verify_bmodels", str(SCRIPT))
    spec = importlib.util.spec_from_loader("verify_bmodels", loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules["verify_bmodels"] = module
    loader.exec_module(module)
    return module


def _real_sail_or_skip() -> None:
    if os.environ.get("SOPHON_FACE_TPU") != "1":
        pytest.skip("TPU tests are opt-in: run them on an SE5 with SOPHON_FACE_TPU=1")
    from sophon_face.backends.base import BackendError
    from sophon_face.backends.sail import load_sail

    try:
        load_sail()  # a real sophon.sail with Engine, not missing, not the PyPI placeholder
    except BackendError as exc:
        pytest.skip(f"SOPHON_FACE_TPU=1 but no usable SAIL here: {exc}")


def box_report():
    """The verify-bmodels report for this box's bmodels; skips (with the reason) off-box."""
    _real_sail_or_skip()
    vb = _script()
    from sophon_face.backends.registry import BackendOptions
    from sophon_face.manifest.schema import load_manifest

    manifest = load_manifest(Path(os.environ.get("SOPHON_FACE_VERIFY_MANIFEST", str(vb.DEFAULT_MANIFEST))))
    specs = vb.role_specs(manifest, vb.ALL_ROLES, {})
    photos = vb.load_photos(Path(os.environ.get("SOPHON_FACE_VERIFY_PHOTOS", str(vb.DEFAULT_PHOTOS))))
    saved = os.environ.get("SOPHON_FACE_VERIFY_REFERENCE")
    onnx_map = os.environ.get("SOPHON_FACE_VERIFY_ONNX_MAP")
    if saved:
        reference = vb.load_reference(Path(saved))
        vb.check_reference_fits(reference, photos, specs)
    elif onnx_map:
        pytest.importorskip("onnxruntime", reason="SOPHON_FACE_VERIFY_ONNX_MAP needs onnxruntime on "
                                                  "the box; else use SOPHON_FACE_VERIFY_REFERENCE")
        paths = dict(vb.onnx_defaults())
        paths.update(vb.parse_onnx_paths([], Path(onnx_map)))
        reference = vb.build_reference(manifest, specs, photos, paths, max_faces=32)
    else:
        pytest.skip("no reference: set SOPHON_FACE_VERIFY_REFERENCE (an .npz saved by "
                    "verify-bmodels --save-reference) or SOPHON_FACE_VERIFY_ONNX_MAP")
    repeat = int(os.environ.get("SOPHON_FACE_VERIFY_REPEAT", "10"))
    result = vb.verify(manifest, specs, photos, reference, BackendOptions(tpu_id=0), repeat=repeat)
    print(vb.format_report(result))
    return result


@pytest.fixture(scope="module")
def report():
    return box_report()


@pytest.mark.parametrize("role", ["detector", "recognizer", "age", "gender", "mask",
                                  "liveness_v2", "liveness_v1se"])
def test_each_bmodel_matches_its_onnx_source(report, role):
    vb = _script()
    row = next((r for r in report.rows if r.role == role), None)
    if row is None:
        pytest.skip(f"the manifest has no {role} model")
    if row.verdict == vb.SKIP:
        assert role not in vb.REQUIRED_ROLES
        pytest.skip(f"{role}: {'; '.join(row.reasons)}")
    assert row.verdict == vb.PASS, f"{role} ({row.file}): " + "; ".join(row.reasons)


def test_batch_1_and_4_are_timed_and_the_verdict_passes(report):
    vb = _script()
    for row in report.rows:
        if row.verdict != vb.SKIP:
            assert row.ms_per_image.get(1, 0) > 0 and row.ms_per_image.get(4, 0) > 0, row.role
    assert report.passed, vb.format_report(report)
