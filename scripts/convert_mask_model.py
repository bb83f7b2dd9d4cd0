#!/usr/bin/env python3
"""Convert AIZOOTech's face-mask SSD (TFLite) to the ONNX file committed under models/mask/.

Run once, in a throw-away venv (none of these packages is a runtime dependency):

    python3 -m venv /tmp/maskconv
    /tmp/maskconv/bin/pip install tflite2onnx==0.4.1 onnx onnxruntime ai-edge-litert \\
        opencv-python-headless
    git clone https://github.com/AIZOOTech/FaceMaskDetection /tmp/FaceMaskDetection
    git -C /tmp/FaceMaskDetection checkout 256dc65f726cb78d82936b2c61c55a5adc2cf05d
    /tmp/maskconv/bin/python scripts/convert_mask_model.py \\
        --tflite /tmp/FaceMaskDetection/models/face_mask_detection.tflite

Steps: check the TFLite file's SHA-256; convert it with ``tflite2onnx`` (which also turns the
NHWC graph into an NCHW one); replace each Reshape's (3, 1) shape tensor, which ONNX Runtime
refuses ("A shape tensor must be a vector tensor"), by a static 1-D shape; check the graph;
write it with its provenance in the model's metadata; print its SHA-256; then run ONNX
Runtime and the TFLite interpreter (``ai-edge-litert`` or ``tflite-runtime``) on the same
inputs (random tensors and the photos of tests/data) and fail if they differ.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np

REPO_DIR = Path(__file__).resolve().parent.parent
SOURCE_REPO = "https://github.com/AIZOOTech/FaceMaskDetection"
SOURCE_COMMIT = "256dc65f726cb78d82936b2c61c55a5adc2cf05d"
SOURCE_PATH = "models/face_mask_detection.tflite"
TFLITE_SHA256 = "d2347acf155858681619bc009368f730288aa0447d2c97209be4a26d9be4e928"
DEFAULT_OUTPUT = REPO_DIR / "models" / "mask" / "face_mask_detection.onnx"
INPUT_SIDE_PX = 260
#: float32 convolutions summed in a different order differ in the last bits; outputs
#: are sigmoid scores and box offsets of magnitude < 10, so 1e-4 is far below anything
#: that could change a decision.
MAX_ABS_DIFF = 1e-4


def say(message: str) -> None:
    print(message, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def convert(tflite_path: Path, onnx_path: Path) -> None:
    import tflite2onnx

    tflite2onnx.convert(str(tflite_path), str(onnx_path))


def make_static(onnx_in: Path, onnx_out: Path) -> Tuple[List[int], Dict[str, List[int]]]:
    """Flatten the Reshape shape tensors to static 1-D shapes; return input/output shapes."""
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(onnx_in))
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    # Shape inference does not get past the rank-2 shape tensors, so the Reshape inputs'
    # shapes come from the ops before them (Conv -> Transpose NHWC), which it does infer.
    inferred = shape_inference.infer_shapes(model)
    known = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
             for vi in list(inferred.graph.value_info) + list(inferred.graph.input)}
    fixed = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] not in inits:
            continue
        target = numpy_helper.to_array(inits[node.input[1]]).reshape(-1).astype(np.int64)
        source_shape = known.get(node.input[0])
        if not source_shape or not all(source_shape):
            raise SystemExit(f"cannot infer the input shape of Reshape {node.name}")
        if (target == -1).any():
            free = int(np.prod(source_shape)) // int(np.prod(target[target != -1]))
            target = np.where(target == -1, free, target)
        if int(np.prod(target)) != int(np.prod(source_shape)):
            raise SystemExit(f"Reshape {node.name}: {source_shape} cannot become {target.tolist()}")
        shape_name = f"{node.name}/static_shape"
        graph.initializer.append(numpy_helper.from_array(target, shape_name))
        node.input[1] = shape_name
        fixed += 1
    used = {name for node in graph.node for name in node.input}
    unused = [init for init in graph.initializer if init.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    # tflite2onnx emits the initializers in set order, which changes from run to run;
    # sorted by name, the same input always gives the same bytes (and the same sha256).
    ordered = sorted(graph.initializer, key=lambda init: init.name)
    copies = [type(init)() for init in ordered]
    for copy, init in zip(copies, ordered):
        copy.CopyFrom(init)
    del graph.initializer[:]
    graph.initializer.extend(copies)
    say(f"  {fixed} Reshape shape tensors made static 1-D, {len(unused)} unused initializers dropped")

    del graph.value_info[:]
    model = shape_inference.infer_shapes(model, strict_mode=True)
    for key, value in (("source_repository", SOURCE_REPO), ("source_commit", SOURCE_COMMIT),
                       ("source_path", SOURCE_PATH), ("source_sha256", TFLITE_SHA256),
                       ("license", "MIT (see LICENSE beside this file)"),
                       ("converted_by", "scripts/convert_mask_model.py (tflite2onnx)")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(onnx_out))
    in_shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    out_shapes = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim]
                  for o in model.graph.output}
    return in_shape, out_shapes


def test_inputs_nhwc() -> List[Tuple[str, np.ndarray]]:
    """Random tensors and every test photo, as the model takes them (260x260 RGB / 255)."""
    import cv2

    rng = np.random.default_rng(20200221)
    inputs = [(f"random-{i}", rng.random((1, INPUT_SIDE_PX, INPUT_SIDE_PX, 3), dtype=np.float32))
              for i in range(3)]
    for path in sorted((REPO_DIR / "tests" / "data").glob("*")):
        image_bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image_bgr is None:
            continue
        rgb = cv2.cvtColor(cv2.resize(image_bgr, (INPUT_SIDE_PX, INPUT_SIDE_PX)), cv2.COLOR_BGR2RGB)
        inputs.append((path.name, (rgb.astype(np.float32) / 255.0)[None]))
    return inputs


def tflite_interpreter(tflite_path: Path):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError:
            return None
    interpreter = Interpreter(model_path=str(tflite_path))
    interpreter.allocate_tensors()
    return interpreter


def compare_with_tflite(tflite_path: Path, onnx_path: Path) -> float:
    import onnxruntime as ort

    interpreter = tflite_interpreter(tflite_path)
    if interpreter is None:
        raise SystemExit("no TFLite interpreter: pip install ai-edge-litert (or tflite-runtime) "
                         "in the conversion venv, or pass --no-check to skip the comparison")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    tfl_in = interpreter.get_input_details()[0]["index"]
    tfl_outs = {d["name"]: d["index"] for d in interpreter.get_output_details()}
    worst = 0.0
    for label, nhwc in test_inputs_nhwc():
        interpreter.set_tensor(tfl_in, nhwc)
        interpreter.invoke()
        onnx_outs = session.run(None, {input_name: np.ascontiguousarray(nhwc.transpose(0, 3, 1, 2))})
        diffs = []
        for meta, got in zip(session.get_outputs(), onnx_outs):
            want = interpreter.get_tensor(tfl_outs[meta.name])
            if want.shape != got.shape:
                raise SystemExit(f"{label}: {meta.name} has shape {got.shape}, TFLite {want.shape}")
            diffs.append(float(np.abs(want - got).max()))
        worst = max(worst, *diffs)
        say(f"  {label:28s} max |onnx - tflite| per output: " + ", ".join(f"{d:.2e}" for d in diffs))
    return worst


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tflite", type=Path, required=True,
                        help=f"{SOURCE_PATH} of {SOURCE_REPO} at {SOURCE_COMMIT[:12]}")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--no-check", action="store_true",
                        help="skip the ONNX Runtime vs TFLite comparison")
    args = parser.parse_args(argv)

    say(f"[1/4] checking {args.tflite}")
    actual = sha256_of(args.tflite)
    if actual != TFLITE_SHA256:
        say(f"  sha256 {actual} is not the expected {TFLITE_SHA256}")
        return 1
    say(f"  sha256 {actual} ok")

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        say("[2/4] converting with tflite2onnx")
        started = time.monotonic()
        convert(args.tflite, raw)
        say(f"  done in {time.monotonic() - started:.1f} s")
        say("[3/4] making the graph loadable by ONNX Runtime")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        in_shape, out_shapes = make_static(raw, args.output)
    say(f"  wrote {args.output} ({args.output.stat().st_size} bytes)")
    say(f"  input {in_shape}, outputs {out_shapes}")
    say(f"  sha256 {sha256_of(args.output)}")

    if args.no_check:
        say("[4/4] comparison with TFLite skipped (--no-check)")
        return 0
    say("[4/4] comparing ONNX Runtime with the TFLite interpreter")
    worst = compare_with_tflite(args.tflite, args.output)
    if worst > MAX_ABS_DIFF:
        say(f"  FAILED: largest difference {worst:.2e} > {MAX_ABS_DIFF:.0e}")
        return 1
    say(f"  ok: largest difference {worst:.2e} (limit {MAX_ABS_DIFF:.0e})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
