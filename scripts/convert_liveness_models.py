#!/usr/bin/env python3
"""Convert the two Silent-Face-Anti-Spoofing RGB liveness models to ONNX, once.

The weights are minivision-ai/Silent-Face-Anti-Spoofing's ``resources/anti_spoof_models``
(Apache-2.0): MiniFASNetV2 on the face box grown 2.7x and MiniFASNetV1SE on it grown 4.0x,
both taking an 80x80 BGR crop as raw 0-255 floats and answering 3-class logits (class 1 =
real). The network is built from the repository's own ``src/model_lib/MiniFASNet.py``,
imported from the checkout named on the command line (their code is not committed here),
the ``.pth`` files are checked against the sha256s below, and each export is compared with
torch on random inputs and on the repository's sample photos before it is written.

torch is a conversion-time tool only; run this in a separate virtualenv, never the
daemon's::

    python3 -m venv /tmp/livconv
    /tmp/livconv/bin/pip install torch==2.13.0 onnx onnxruntime numpy \
        "opencv-python-headless<5"   # 4.x still has cv2.dnn.readNetFromCaffe
    /tmp/livconv/bin/python scripts/convert_liveness_models.py /path/to/Silent-Face-Anti-Spoofing

The sample-photo check also re-runs the repository's ``test.py`` decision (its own
RetinaFace box, the summed softmaxes, argmax) through torch and through ONNX Runtime and
prints the box and scores; ``models/liveness/SOURCE.md`` records them.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
import time
import warnings
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Sequence, Tuple

import numpy as np

REPO_URL = "https://github.com/minivision-ai/Silent-Face-Anti-Spoofing"
INPUT_SIZE = (80, 80)  # height, width
INPUT_NAME = "input"  # (N, 3, 80, 80) float32, BGR, 0-255
OUTPUT_NAME = "logits"  # (N, 3); softmax class 1 = real
SAMPLE_PHOTOS = ("image_F1.jpg", "image_F2.jpg", "image_T1.jpg")

# (.pth inside the checkout, its sha256, constructor in MiniFASNet.py, crop scale, ONNX name)
MODELS: Tuple[Tuple[str, str, str, float, str], ...] = (
    ("resources/anti_spoof_models/2.7_80x80_MiniFASNetV2.pth",
     "a5eb02e1843f19b5386b953cc4c9f011c3f985d0ee2bb9819eea9a142099bec0",
     "MiniFASNetV2", 2.7, "minifasnet_v2_2.7.onnx"),
    ("resources/anti_spoof_models/4_0_0_80x80_MiniFASNetV1SE.pth",
     "84ee1d37d96894d5e82de5a57df044ef80a58be2b218b5ed7cdfd875ec2f5990",
     "MiniFASNetV1SE", 4.0, "minifasnet_v1se_4.0.onnx"),
)

#: torch vs ONNX Runtime, float32: the graphs differ only by BatchNorm folded into Conv.
MAX_LOGIT_DIFF = 1e-3
MAX_PROB_DIFF = 1e-4


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_module(path: Path, name: str) -> ModuleType:
    """Import one file of the checkout by path (its ``src`` is not a package)."""
    spec = importlib.util.spec_from_file_location(name, str(path))
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def build_network(torch, minifasnet: ModuleType, constructor: str, pth: Path):
    """The repository's network with its weights, in eval mode."""
    height, width = INPUT_SIZE
    # utility.get_kernel: the last depth-wise conv covers the whole 5x5 feature map.
    kernel = ((height + 15) // 16, (width + 15) // 16)
    model = getattr(minifasnet, constructor)(conv6_kernel=kernel)
    state = torch.load(str(pth), map_location="cpu", weights_only=True)
    # Trained under DataParallel: every key carries a "module." prefix.
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def export(torch, model, out_path: Path, opset: int) -> None:
    dummy = torch.zeros((1, 3) + INPUT_SIZE, dtype=torch.float32)
    # The TorchScript exporter: a plain static graph (BatchNorm folded into Conv), byte-for-byte
    # reproducible, and no onnxscript needed. torch >= 2.9 warns that it is deprecated.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (dummy,), str(out_path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], do_constant_folding=True,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def retinaface_box(cv2, net, image_bgr: np.ndarray) -> List[int]:
    """The face box [x, y, w, h] the repository's test.py uses (its RetinaFace, best score)."""
    height, width = image_bgr.shape[:2]
    aspect = width / height
    small = image_bgr
    if width * height >= 192 * 192:
        small = cv2.resize(image_bgr, (int(192 * np.sqrt(aspect)), int(192 / np.sqrt(aspect))),
                           interpolation=cv2.INTER_LINEAR)
    net.setInput(cv2.dnn.blobFromImage(small, 1, mean=(104, 117, 123)), "data")
    out = net.forward("detection_out").squeeze()
    best = out[int(np.argmax(out[:, 2]))]
    left, top, right, bottom = best[3] * width, best[4] * height, best[5] * width, best[6] * height
    return [int(left), int(top), int(right - left + 1), int(bottom - top + 1)]


def compare(name: str, torch, model, session, batch: np.ndarray) -> Tuple[float, float]:
    with torch.no_grad():
        want = model(torch.from_numpy(batch)).numpy()
    got = session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
    logit_diff = float(np.abs(want - got).max())
    prob_diff = float(np.abs(softmax(want) - softmax(got)).max())
    if logit_diff > MAX_LOGIT_DIFF or prob_diff > MAX_PROB_DIFF:
        raise SystemExit(f"{name}: ONNX Runtime differs from torch: max |logit| {logit_diff:.2e}, "
                         f"max |prob| {prob_diff:.2e}")
    return logit_diff, prob_diff


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path,
                        help="a checkout of minivision-ai/Silent-Face-Anti-Spoofing")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "models" / "liveness",
                        help="output folder (default: models/liveness)")
    parser.add_argument("--opset", type=int, default=13)
    args = parser.parse_args(argv)

    import cv2
    import onnx
    import onnxruntime as ort
    import torch

    checkout: Path = args.checkout.resolve()
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}, "
          f"opencv {cv2.__version__}")
    for rel, want, _, _, _ in MODELS:
        got = sha256_of(checkout / rel)
        if got != want:
            raise SystemExit(f"{rel}: sha256 {got}, expected {want}")
        print(f"ok  sha256 {want}  {rel}")

    minifasnet = load_module(checkout / "src" / "model_lib" / "MiniFASNet.py", "_sfas_minifasnet")
    patches = load_module(checkout / "src" / "generate_patches.py", "_sfas_generate_patches")
    detector = cv2.dnn.readNetFromCaffe(
        str(checkout / "resources" / "detection_model" / "deploy.prototxt"),
        str(checkout / "resources" / "detection_model" / "Widerface-RetinaFace.caffemodel"))
    photos: Dict[str, Tuple[np.ndarray, List[int]]] = {}
    for photo in SAMPLE_PHOTOS:
        image = cv2.imread(str(checkout / "images" / "sample" / photo), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"cannot read images/sample/{photo}")
        photos[photo] = (image, retinaface_box(cv2, detector, image))

    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    summed = {photo: np.zeros(3) for photo in SAMPLE_PHOTOS}
    summed_ort = {photo: np.zeros(3) for photo in SAMPLE_PHOTOS}
    written: List[Tuple[str, str]] = []
    for rel, _, constructor, scale, onnx_name in MODELS:
        started = time.monotonic()
        print(f"{constructor}: building the network and loading {Path(rel).name} ...", flush=True)
        model = build_network(torch, minifasnet, constructor, checkout / rel)
        out_path = args.out / onnx_name
        print(f"{constructor}: exporting to {out_path} (opset {args.opset}) ...", flush=True)
        export(torch, model, out_path, args.opset)
        onnx.checker.check_model(onnx.load(str(out_path)), full_check=True)
        session = ort.InferenceSession(str(out_path), providers=["CPUExecutionProvider"])

        noise = rng.uniform(0.0, 255.0, size=(4, 3) + INPUT_SIZE).astype(np.float32)
        logit_diff, prob_diff = compare(constructor, torch, model, session, noise)
        print(f"{constructor}: random batch of 4: max |logit| diff {logit_diff:.2e}, "
              f"max |prob| diff {prob_diff:.2e}")
        for photo, (image, box) in photos.items():
            crop = patches.CropImage().crop(image, box, scale, INPUT_SIZE[1], INPUT_SIZE[0], True)
            blob = np.ascontiguousarray(crop.transpose(2, 0, 1)[None].astype(np.float32))
            logit_diff, prob_diff = compare(constructor, torch, model, session, blob)
            with torch.no_grad():
                summed[photo] += softmax(model(torch.from_numpy(blob)).numpy())[0]
            summed_ort[photo] += softmax(session.run([OUTPUT_NAME], {INPUT_NAME: blob})[0])[0]
            print(f"{constructor}: {photo} box {box}: max |logit| diff {logit_diff:.2e}, "
                  f"max |prob| diff {prob_diff:.2e}")
        written.append((onnx_name, sha256_of(out_path)))
        print(f"{constructor}: done in {time.monotonic() - started:.1f} s", flush=True)

    print("\nthe repository's test.py decision (sum of the two softmaxes, argmax; class 1 = real):")
    for photo in SAMPLE_PHOTOS:
        label = int(np.argmax(summed[photo]))
        print(f"  {photo}: box {photos[photo][1]}  label {label} "
              f"({'real' if label == 1 else 'fake'}, score {summed[photo][label] / 2:.4f})  "
              f"live probability torch {summed[photo][1] / 2:.6f}  "
              f"onnxruntime {summed_ort[photo][1] / 2:.6f}")
    print("\nwritten:")
    for onnx_name, digest in written:
        print(f"  {digest}  {onnx_name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
