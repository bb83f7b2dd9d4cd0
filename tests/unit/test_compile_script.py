"""bmodels/compile.sh, bmodels/fill_checksums.py and scripts/make-calibration-set, off-device.

There is no tpu-mlir here: the whole compile script runs against stub ``model_transform``,
``model_deploy``, ``run_calibration`` and ``model_tool`` executables that record their
arguments and working folder, and fail like the real tools where an input file they are
given does not exist. The tests check the exact commands (preprocessing against the manifest,
``--processor bm1684``, the INT8 batch-1 and batch-4 stages combined with ``model_tool
--combine``), that the checksums land in a COPY of the manifest, and the argument errors.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest
import yaml

from sophon_face.manifest.schema import load_manifest

ROOT = Path(__file__).resolve().parents[2]
COMPILE = ROOT / "bmodels" / "compile.sh"
MANIFEST = ROOT / "bmodels" / "manifest.yaml"
FILL = ROOT / "bmodels" / "fill_checksums.py"
DATA = ROOT / "tests" / "data"
PINNED = "1.30.2"

# One stub for all four tools: it records {"tool", "cwd", "args"} and writes what the real
# tool would write, refusing inputs that do not exist.
STUB = textwrap.dedent('''\
    #!{python}
    import json, os, re, sys
    tool = os.path.basename(sys.argv[0]).replace(".py", "")
    args = sys.argv[1:]
    with open(os.environ["STUB_LOG"], "a") as log:
        log.write(json.dumps({{"tool": tool, "cwd": os.getcwd(), "args": args}}) + "\\n")

    def value(flag):
        return args[args.index(flag) + 1] if flag in args else None

    def need(path):
        if path is not None and not os.path.exists(path):
            sys.exit("%s: no such file: %s" % (tool, path))

    if tool == "model_transform":
        need(value("--model_def"))
        need(value("--test_input"))
        name, batch = value("--model_name"), re.match(r"\\[\\[(\\d+),", value("--input_shapes")).group(1)
        open(value("--mlir"), "w").write("mlir %s batch %s\\n" % (name, batch))
        if value("--test_input"):
            open(name + "_in_f32.npz", "w").write("input batch %s\\n" % batch)
            open(value("--test_result"), "w").write("reference batch %s\\n" % batch)
    elif tool == "run_calibration":
        need(args[0])
        need(value("--dataset"))
        open(value("-o"), "w").write("cali table\\n")
    elif tool == "model_deploy":
        for flag in ("--mlir", "--calibration_table", "--test_input", "--test_reference"):
            need(value(flag))
        open(value("--model"), "w").write("bmodel %s %s %s\\n" % (
            open(value("--mlir")).read().strip(), value("--quantize"), value("--processor")))
    elif tool == "model_tool":
        if "--combine" in args:
            parts = args[args.index("--combine") + 1:args.index("-o")]
            for part in parts:
                need(part)
            open(value("-o"), "w").write("combined:" + "".join(open(p).read() for p in parts))
        else:
            need(value("--info"))
            print("stub model_tool info: " + value("--info"))
    ''')

VERSION_STUB = textwrap.dedent('''\
    #!/bin/sh
    # Stands in for the Python whose pip metadata names the tpu_mlir release.
    [ -n "$STUB_TPU_MLIR_VERSION" ] || exit 1
    echo "$STUB_TPU_MLIR_VERSION"
    ''')


@pytest.fixture
def stubs(tmp_path) -> Path:
    folder = tmp_path / "stub-bin"
    folder.mkdir()
    for tool in ("model_transform", "model_deploy", "run_calibration", "model_tool"):
        path = folder / tool
        path.write_text(STUB.format(python=sys.executable))
        path.chmod(0o755)
    version = folder / "tpu-mlir-python"
    version.write_text(VERSION_STUB)
    version.chmod(0o755)
    return folder


@pytest.fixture
def inputs(tmp_path) -> Dict[str, Path]:
    """Placeholder ONNX files (the stubs do not read them), calibration folders, test inputs."""
    folder = tmp_path / "inputs"
    folder.mkdir()
    files = {}
    for name in ("scrfd.onnx", "scrfd_4b.onnx", "arcface.onnx", "age.onnx", "gender.onnx"):
        (folder / name).write_bytes(name.encode())
        files[name] = folder / name
    for cali in ("scrfd_cali", "arcface_cali"):
        (folder / cali).mkdir()
        for i in range(3):
            shutil.copy(DATA / "ardern_2018.jpg", folder / cali / f"{i}.jpg")
        files[cali] = folder / cali
    files["test_image"] = DATA / "solvay_1927_group.jpg"
    files["test_face"] = DATA / "gauss.png"
    return files


def compile_sh(stubs: Optional[Path], tmp_path: Path, *args: str, version: str = PINNED,
               ) -> subprocess.CompletedProcess:
    env = dict(os.environ, STUB_LOG=str(tmp_path / "calls.jsonl"), STUB_TPU_MLIR_VERSION=version)
    if stubs is not None:
        env["PATH"] = f"{stubs}{os.pathsep}{env['PATH']}"
        env["TPU_MLIR_PYTHON"] = str(stubs / "tpu-mlir-python")
    return subprocess.run(["bash", str(COMPILE), *args], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)


def calls(tmp_path: Path) -> List[dict]:
    log = tmp_path / "calls.jsonl"
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def arg(call: dict, flag: str) -> Optional[str]:
    args = call["args"]
    return args[args.index(flag) + 1] if flag in args else None


def full_args(inputs: Dict[str, Path], out: Path, manifest: Path) -> List[str]:
    return ["--scrfd", str(inputs["scrfd.onnx"]), "--arcface", str(inputs["arcface.onnx"]),
            "--scrfd-cali", str(inputs["scrfd_cali"]), "--arcface-cali", str(inputs["arcface_cali"]),
            "--test-image", str(inputs["test_image"]), "--test-face", str(inputs["test_face"]),
            "--age", str(inputs["age.onnx"]), "--gender", str(inputs["gender.onnx"]),
            "--mask", str(ROOT / "models" / "mask" / "face_mask_detection.onnx"),
            "--liveness-v2", str(ROOT / "models" / "liveness" / "minifasnet_v2_2.7.onnx"),
            "--liveness-v1se", str(ROOT / "models" / "liveness" / "minifasnet_v1se_4.0.onnx"),
            "--out", str(out), "--manifest", str(manifest)]


@pytest.fixture
def manifest_copy(tmp_path) -> Path:
    copy = tmp_path / "manifest-copy.yaml"
    shutil.copy(MANIFEST, copy)
    return copy


# -- the script as a program ----------------------------------------------------------------------

def test_bash_syntax():
    subprocess.run(["bash", "-n", str(COMPILE)], check=True)


def test_help_names_the_pinned_toolchain_and_every_option(tmp_path):
    result = compile_sh(None, tmp_path, "--help")
    assert result.returncode == 0
    assert f"tpu-mlir {PINNED}" in result.stdout and "sophgo/tpuc_dev:v3.4" in result.stdout
    assert f'pip install "tpu_mlir[onnx]=={PINNED}"' in result.stdout
    for option in ("--scrfd", "--scrfd-b4", "--arcface", "--arcface-b4", "--scrfd-cali", "--arcface-cali",
                   "--test-image", "--test-face", "--cali-num", "--int8-tolerance", "--no-merge-weight",
                   "--out", "--manifest", "--no-checksums", "--age", "--gender", "--mask",
                   "--liveness-v2", "--liveness-v1se", "--only"):
        assert option in result.stdout
    readme = (ROOT / "bmodels" / "README.md").read_text()
    assert f"tpu_mlir[onnx]=={PINNED}" in readme and "sophgo/tpuc_dev:v3.4" in readme


@pytest.mark.parametrize("args, status, message", [
    (["--frobnicate"], 2, "unknown argument: --frobnicate"),
    (["--scrfd"], 2, "--scrfd needs a value"),
    (["--scrfd", "--arcface", "a.onnx"], 2, "--scrfd needs a value, got the option --arcface"),
    (["--only", "everything"], 2, "--only takes scrfd, arcface or extras"),
    (["--cali-num", "many"], 2, "--cali-num takes a positive integer"),
    (["--cali-num", "0"], 2, "--cali-num takes a positive integer"),
    ([], 2, "--scrfd is required"),
    (["--only", "arcface"], 2, "--arcface is required"),
    (["--only", "extras"], 2, "--only extras needs at least one of"),
    (["--scrfd", "missing.onnx", "--arcface", "missing.onnx"], 1, "--scrfd: no such file: 'missing.onnx'"),
    (["--only", "extras", "--age", "nope.onnx"], 1, "--age: no such file"),
])
def test_argument_errors_stop_before_any_tool_runs(stubs, tmp_path, args, status, message):
    result = compile_sh(stubs, tmp_path, *args)
    assert result.returncode == status, result.stderr
    assert message in result.stderr
    if status == 2:
        assert "usage: bmodels/compile.sh" in result.stderr
    assert calls(tmp_path) == []


def test_bad_calibration_folders_and_manifest_are_refused_up_front(stubs, tmp_path, inputs):
    base = ["--only", "scrfd", "--scrfd", str(inputs["scrfd.onnx"])]
    result = compile_sh(stubs, tmp_path, *base, "--scrfd-cali", str(tmp_path / "nothing"))
    assert result.returncode == 1 and "--scrfd-cali: no such folder" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    result = compile_sh(stubs, tmp_path, *base, "--scrfd-cali", str(empty))
    assert result.returncode == 1 and "no .jpg/.jpeg/.png/.bmp images" in result.stderr
    result = compile_sh(stubs, tmp_path, *base, "--manifest", str(tmp_path / "none.yaml"))
    assert result.returncode == 1 and "--manifest: no such file" in result.stderr
    assert calls(tmp_path) == []


def test_outside_the_tpu_mlir_environment_it_says_where_to_run(tmp_path, inputs):
    result = compile_sh(None, tmp_path, "--only", "scrfd", "--scrfd", str(inputs["scrfd.onnx"]))
    assert result.returncode == 1
    assert "model_transform(.py) not found on PATH" in result.stderr
    assert "sophgo/tpuc_dev:v3.4" in result.stderr and f"tpu_mlir[onnx]=={PINNED}" in result.stderr


def test_the_whole_build_runs_the_documented_commands(stubs, tmp_path, inputs, manifest_copy):
    out = tmp_path / "out"
    original = MANIFEST.read_bytes()
    result = compile_sh(stubs, tmp_path, *full_args(inputs, out, manifest_copy))
    assert result.returncode == 0, result.stderr
    assert f"== tpu_mlir {PINNED} (the pinned release)" in result.stdout
    assert "installed" not in result.stderr  # no toolchain warning
    assert "WARNING: --scrfd-cali: 3 images, fewer than --cali-num 200" in result.stderr
    log = calls(tmp_path)

    # Every deploy targets BM1684; calibration too (tpu-mlir's default would be bm1684x).
    deploys = [c for c in log if c["tool"] == "model_deploy"]
    assert deploys and all(arg(c, "--processor") == "bm1684" for c in deploys)
    assert all(arg(c, "--processor") == "bm1684" for c in log if c["tool"] == "run_calibration")

    for name, size, cali, test_input, extra in (
            ("scrfd_10g_kps", 640, inputs["scrfd_cali"], inputs["test_image"],
             ["--keep_aspect_ratio", "--pad_type", "normal"]),
            ("arcface_r100", 112, inputs["arcface_cali"], inputs["test_face"], [])):
        int8_dir = str(out / "work" / f"{name}_int8")
        steps = [c for c in log if c["cwd"] == int8_dir]
        assert [c["tool"] for c in steps] == ["model_transform", "run_calibration", "model_deploy",
                                              "model_transform", "model_deploy"]
        t1, cal, d1, t4, d4 = steps
        for transform, batch in ((t1, 1), (t4, 4)):
            assert arg(transform, "--model_name") == name  # one network name for both stages
            assert arg(transform, "--input_shapes") == f"[[{batch},3,{size},{size}]]"
            assert arg(transform, "--mlir") == f"{name}_{batch}b.mlir"
            assert arg(transform, "--test_input") == str(test_input)
            assert arg(transform, "--test_result") == f"{name}_top_outputs.npz"
            for flag in extra:
                assert flag in transform["args"]
        assert arg(t1, "--pad_type") == ("normal" if extra else None)
        assert cal["args"][0] == f"{name}_1b.mlir"
        assert arg(cal, "--dataset") == str(cali) and arg(cal, "--input_num") == "200"
        assert arg(cal, "-o") == f"{name}_cali_table"
        for deploy, batch in ((d1, 1), (d4, 4)):
            assert arg(deploy, "--mlir") == f"{name}_{batch}b.mlir"
            assert arg(deploy, "--quantize") == "INT8"
            assert arg(deploy, "--calibration_table") == f"{name}_cali_table"
            assert "--merge_weight" in deploy["args"]
            assert arg(deploy, "--test_input") == f"{name}_in_f32.npz"
            assert arg(deploy, "--test_reference") == f"{name}_top_outputs.npz"
            assert arg(deploy, "--model") == f"{name}_int8_{batch}b.bmodel"
        combine = [c for c in log if c["tool"] == "model_tool" and "--combine" in c["args"]
                   and c["args"][-1].endswith(f"{name}_int8_1b4b.bmodel")]
        assert len(combine) == 1
        assert combine[0]["args"] == ["--combine", f"{int8_dir}/{name}_int8_1b.bmodel",
                                      f"{int8_dir}/{name}_int8_4b.bmodel", "-o",
                                      str(out / f"{name}_int8_1b4b.bmodel")]
        assert ["--info", str(out / f"{name}_int8_1b4b.bmodel")] in [
            c["args"] for c in log if c["tool"] == "model_tool"]
        combined = (out / f"{name}_int8_1b4b.bmodel").read_text()
        assert f"mlir {name} batch 1" in combined and f"mlir {name} batch 4" in combined

        fp32 = [c for c in log if c["cwd"] == str(out / "work" / f"{name}_fp32")]
        assert [c["tool"] for c in fp32] == ["model_transform", "model_deploy"] * 2
        assert all(arg(c, "--quantize") == "F32" and "--calibration_table" not in c["args"]
                   for c in fp32 if c["tool"] == "model_deploy")
        assert (out / f"{name}_fp32_1b4b.bmodel").exists() and (out / f"{name}_fp32_1b.bmodel").exists()

    # The optional models: F32 batch 1 only, one folder each, no weight merging.
    for name in ("age_v1", "gender_v1", "face_mask", "minifasnet_v2", "minifasnet_v1se"):
        steps = [c for c in log if c["cwd"] == str(out / "work" / f"{name}_fp32")]
        assert [c["tool"] for c in steps] == ["model_transform", "model_deploy"]
        assert arg(steps[0], "--input_shapes").startswith("[[1,3,")
        assert arg(steps[1], "--quantize") == "F32" and "--merge_weight" not in steps[1]["args"]
        assert arg(steps[1], "--model") == str(out / f"{name}_fp32_1b.bmodel")

    assert sorted(p.name for p in out.glob("*.bmodel")) == sorted(
        ["scrfd_10g_kps_fp32_1b.bmodel", "scrfd_10g_kps_fp32_1b4b.bmodel", "scrfd_10g_kps_int8_1b4b.bmodel",
         "arcface_r100_fp32_1b.bmodel", "arcface_r100_fp32_1b4b.bmodel", "arcface_r100_int8_1b4b.bmodel",
         "age_v1_fp32_1b.bmodel", "gender_v1_fp32_1b.bmodel", "face_mask_fp32_1b.bmodel",
         "minifasnet_v2_fp32_1b.bmodel", "minifasnet_v1se_fp32_1b.bmodel"])
    info = (out / "BUILD-INFO.txt").read_text()
    assert f"tpu_mlir: {PINNED} (pinned {PINNED}, docker sophgo/tpuc_dev:v3.4)" in info
    assert hashlib.sha256(inputs["scrfd.onnx"].read_bytes()).hexdigest() in info

    # The checksums landed in the COPY, for every file the manifest names; nothing else moved.
    assert MANIFEST.read_bytes() == original
    manifest = load_manifest(manifest_copy)
    specs = {"detector": manifest.detector, "recognizer": manifest.recognizer, **manifest.optional}
    assert len(specs) == 7
    for role, spec in specs.items():
        assert spec.source.sha256 == hashlib.sha256((out / spec.source.file).read_bytes()).hexdigest(), role
    before, after = MANIFEST.read_text().splitlines(), manifest_copy.read_text().splitlines()
    assert [line for line in after if not line.strip().startswith("sha256:")] == before
    assert "not named by manifest-copy.yaml" in result.stdout  # e.g. the fp32 1b4b builds


def test_preprocessing_flags_agree_with_the_manifest(stubs, tmp_path, inputs, manifest_copy):
    """model_transform's mean/scale/pixel format (calibration and validation inputs) must be
    what the daemon feeds: the manifest's mean, 1/std and colour order, role by role."""
    result = compile_sh(stubs, tmp_path, *full_args(inputs, tmp_path / "out", manifest_copy))
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(MANIFEST)
    by_graph = {s.graph: s for s in [manifest.detector, manifest.recognizer, *manifest.optional.values()]}
    transforms = [c for c in calls(tmp_path) if c["tool"] == "model_transform"]
    assert {arg(c, "--model_name") for c in transforms} == set(by_graph)
    for call in transforms:
        spec = by_graph[arg(call, "--model_name")]
        mean = [float(v) for v in arg(call, "--mean").split(",")]
        scale = [float(v) for v in arg(call, "--scale").split(",")]
        np.testing.assert_allclose(mean, spec.mean, rtol=1e-6)
        np.testing.assert_allclose(scale, [1.0 / s for s in spec.std], rtol=1e-6)
        assert call["args"].count("--pixel_format") == 1
        assert arg(call, "--pixel_format") == spec.color_order
        width, height = spec.input_size
        assert arg(call, "--input_shapes").endswith(f",3,{height},{width}]]")
        assert spec.source.file.startswith(spec.graph)


def test_without_calibration_images_only_fp32_is_built(stubs, tmp_path, inputs, manifest_copy):
    out = tmp_path / "out"
    result = compile_sh(stubs, tmp_path, "--only", "arcface", "--arcface", str(inputs["arcface.onnx"]),
                        "--out", str(out), "--manifest", str(manifest_copy))
    assert result.returncode == 0, result.stderr
    assert "no calibration images given, INT8 build skipped" in result.stdout
    log = calls(tmp_path)
    assert "run_calibration" not in {c["tool"] for c in log}
    assert all(arg(c, "--quantize") == "F32" for c in log if c["tool"] == "model_deploy")
    assert all("--test_input" not in c["args"] for c in log)  # no --test-face given
    manifest = load_manifest(manifest_copy)
    assert manifest.recognizer.source.sha256 == hashlib.sha256(
        (out / "arcface_r100_fp32_1b.bmodel").read_bytes()).hexdigest()
    assert manifest.detector.source.sha256 is None  # not built: left alone


def test_options_for_separate_batch4_exports_tolerance_and_no_weight_merge(stubs, tmp_path, inputs, manifest_copy):
    result = compile_sh(stubs, tmp_path, "--only", "scrfd", "--scrfd", str(inputs["scrfd.onnx"]),
                        "--scrfd-b4", str(inputs["scrfd_4b.onnx"]), "--scrfd-cali", str(inputs["scrfd_cali"]),
                        "--cali-num", "3", "--int8-tolerance", "0.85,0.45", "--no-merge-weight",
                        "--out", str(tmp_path / "out"), "--no-checksums")
    assert result.returncode == 0, result.stderr
    assert "fewer than --cali-num" not in result.stderr
    log = calls(tmp_path)
    transforms = [c for c in log if c["tool"] == "model_transform"]
    assert [(arg(c, "--input_shapes")[2], Path(arg(c, "--model_def")).name) for c in transforms] == [
        ("1", "scrfd.onnx"), ("4", "scrfd_4b.onnx")] * 2
    deploys = [c for c in log if c["tool"] == "model_deploy"]
    assert all("--merge_weight" not in c["args"] for c in deploys)
    assert [arg(c, "--tolerance") for c in deploys] == [None, None, "0.85,0.45", "0.85,0.45"]
    assert arg([c for c in log if c["tool"] == "run_calibration"][0], "--input_num") == "3"


@pytest.mark.parametrize("version, warning", [
    ("1.21", f"tpu_mlir 1.21 is installed but this script was written for {PINNED}"),
    ("", "cannot tell which tpu-mlir is installed"),
])
def test_another_or_unknown_tpu_mlir_release_warns_and_goes_on(stubs, tmp_path, manifest_copy, version, warning):
    result = compile_sh(stubs, tmp_path, "--only", "extras", "--mask",
                        str(ROOT / "models" / "mask" / "face_mask_detection.onnx"),
                        "--out", str(tmp_path / "out"), "--manifest", str(manifest_copy), version=version)
    assert result.returncode == 0, result.stderr
    assert "WARNING: " + warning in result.stderr
    assert load_manifest(manifest_copy).model("mask").source.sha256 is not None


def test_a_failing_tool_stops_the_build_before_the_checksums(stubs, tmp_path, inputs, manifest_copy):
    (stubs / "model_deploy").write_text("#!/bin/sh\necho 'deploy: compare failed' >&2\nexit 1\n")
    result = compile_sh(stubs, tmp_path, "--only", "arcface", "--arcface", str(inputs["arcface.onnx"]),
                        "--out", str(tmp_path / "out"), "--manifest", str(manifest_copy))
    assert result.returncode != 0 and "deploy: compare failed" in result.stderr
    assert manifest_copy.read_bytes() == MANIFEST.read_bytes()


# -- fill_checksums.py ---------------------------------------------------------------------------

def _load(path: Path, name: str):
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    loader.exec_module(module)
    return module


fill = _load(FILL, "fill_checksums")
A, B = "a" * 64, "b" * 64

MANIFEST_TEXT = textwrap.dedent('''\
    # a comment that must survive
    models:
      detector:
        family: scrfd
        source:
          # the int8 build
          file: det.bmodel   # trailing comment
        batch_sizes: [1, 4]
      recognizer:
        source:
          file: "rec.bmodel"
          sha256: 0000000000000000000000000000000000000000000000000000000000000000  # old
        feature_dim: 512
      age:
        source:
          file: age.bmodel
    ''')


def test_fill_inserts_and_replaces_only_the_sha256_lines():
    text, changes = fill.fill_checksums(MANIFEST_TEXT, {"det.bmodel": A, "rec.bmodel": B})
    assert [(c.path, c.file, c.action) for c in changes] == [
        ("models.detector.source", "det.bmodel", "inserted"),
        ("models.recognizer.source", "rec.bmodel", "updated")]
    assert text.splitlines() == MANIFEST_TEXT.replace(
        "      file: det.bmodel   # trailing comment\n",
        f"      file: det.bmodel   # trailing comment\n      sha256: {A}\n").replace(
        "0" * 64 + "  # old", B + "  # old").splitlines()
    parsed = yaml.safe_load(text)
    assert parsed["models"]["detector"]["source"] == {"file": "det.bmodel", "sha256": A}
    assert parsed["models"]["recognizer"]["source"]["sha256"] == B
    assert "sha256" not in parsed["models"]["age"]["source"]  # not given: untouched
    again, changes = fill.fill_checksums(text, {"det.bmodel": A})
    assert again == text and changes[0].action == "unchanged"


def test_fill_keeps_line_endings_indentation_and_a_missing_final_newline():
    crlf = "models:\r\n    detector:\r\n        source:\r\n            file: det.bmodel\r\n"
    text, _ = fill.fill_checksums(crlf, {"det.bmodel": A})
    assert text == crlf + f"            sha256: {A}\r\n"
    bare = "source:\n  file: det.bmodel"
    text, _ = fill.fill_checksums(bare, {"det.bmodel": A})
    assert text == f"source:\n  file: det.bmodel\n  sha256: {A}\n"
    # A file path in the manifest matches by its file name.
    text, changes = fill.fill_checksums("source:\n  file: sub/det.bmodel\n", {"det.bmodel": A})
    assert changes[0].file == "sub/det.bmodel" and f"  sha256: {A}" in text


def test_fill_refuses_inline_sources_and_bad_checksums():
    with pytest.raises(fill.ManifestEditError, match="line 2: `source:` written inline"):
        fill.fill_checksums("detector:\n  source: {file: det.bmodel}\n", {"det.bmodel": A})
    with pytest.raises(ValueError, match="not a lowercase hex sha256"):
        fill.fill_checksums(MANIFEST_TEXT, {"det.bmodel": "xyz"})


def test_fill_command_line_on_a_copy_of_the_real_manifest(tmp_path, capsys):
    copy = tmp_path / "manifest.yaml"
    shutil.copy(MANIFEST, copy)
    models = tmp_path / "out"
    models.mkdir()
    (models / "scrfd_10g_kps_int8_1b4b.bmodel").write_bytes(b"detector")
    (models / "arcface_r100_fp32_1b4b.bmodel").write_bytes(b"not in the manifest")
    assert fill.main(["--manifest", str(copy), "--dry-run", str(models)]) == 0
    assert copy.read_bytes() == MANIFEST.read_bytes()
    assert fill.main(["--manifest", str(copy), str(models)]) == 0
    out = capsys.readouterr().out
    assert "models.detector.source scrfd_10g_kps_int8_1b4b.bmodel" in out and "(inserted)" in out
    assert "arcface_r100_fp32_1b4b.bmodel: sha256" in out and "not named by manifest.yaml" in out
    assert load_manifest(copy).detector.source.sha256 == hashlib.sha256(b"detector").hexdigest()
    assert load_manifest(copy).recognizer.source.sha256 is None
    assert fill.main(["--manifest", str(copy), str(tmp_path / "missing")]) == 1
    assert "no such file or folder" in capsys.readouterr().err


# -- make-calibration-set ------------------------------------------------------------------------

def test_calibration_set_is_letterboxed_photos_and_aligned_faces_from_our_pipeline(tmp_path, prepared_models, detector):
    from sophon_face.pipeline.align import align_face
    from sophon_face.pipeline.detector import letterbox

    calib = _load(ROOT / "scripts" / "make-calibration-set", "make_calibration_set")
    photos = tmp_path / "photos"
    (photos / "nested").mkdir(parents=True)
    for name in ("ardern_2018.jpg", "solvay_1927_group.jpg"):
        shutil.copy(DATA / name, photos / name)
    shutil.copy(DATA / "gauss.png", photos / "nested" / "gauss.png")
    out = tmp_path / "cali"
    assert calib.main([str(photos), str(out), "--cache-dir", str(prepared_models["detector"].parent)]) == 0

    import cv2

    canvases = sorted((out / "detector").glob("*.png"))
    assert len(canvases) == 3
    for canvas_path in canvases:
        source = next(p for p in photos.rglob("*") if p.stem == canvas_path.stem.rsplit("-", 1)[0])
        image = cv2.imread(str(source))
        expected, _, _ = letterbox(image, (640, 640))
        np.testing.assert_array_equal(cv2.imread(str(canvas_path)), expected)  # PNG: exact

    crops = sorted((out / "recognizer").glob("ardern_2018-*.png"))
    faces = [f for f in detector.detect(cv2.imread(str(photos / "ardern_2018.jpg"))) if f.short_side >= 40]
    assert len(crops) == len(faces) >= 1
    np.testing.assert_array_equal(cv2.imread(str(crops[0])),
                                  align_face(cv2.imread(str(photos / "ardern_2018.jpg")), faces[0].landmarks))
    group = list((out / "recognizer").glob("solvay_1927_group-*.png"))
    assert len(group) >= 10 and all(cv2.imread(str(p)).shape == (112, 112, 3) for p in group)

    again = tmp_path / "cali2"
    assert calib.main([str(photos), str(again), "--max-faces", "2",
                       "--cache-dir", str(prepared_models["detector"].parent)]) == 0
    assert len(list((again / "recognizer").glob("*.png"))) == 2
    assert sorted(p.name for p in (again / "detector").glob("*.png")) == [p.name for p in canvases]
