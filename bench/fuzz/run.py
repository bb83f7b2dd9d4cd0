"""Run the fuzzers for a bounded time each: the OpenAPI pass, then the two atheris harnesses.

    .venv/bin/python -m bench.fuzz --seconds 600            # each of the three
    .venv/bin/python -m bench.fuzz --seconds 120 --only image,requests

Seeds for the harnesses are written fresh each run under bench/results/fuzz/seeds-*/ (the
image pool's files shrunk to small inputs; every endpoint's spec examples); what libFuzzer
finds interesting accumulates in bench/results/fuzz/corpus-*/, and crash inputs land in
bench/results/fuzz/ as ``<harness>-crash-*`` (atheris) or ``crash-<harness>-*`` (the
fallback loop). Without atheris the harnesses run their blind fallback loop. Exit status 1
when any fuzzer reported a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

PROJECT_DIR = Path(__file__).resolve().parents[2]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from bench.fuzz.harness import RESULTS_DIR, have_atheris  # noqa: E402

FUZZ_DIR = Path(__file__).resolve().parent
HARNESSES = {"image": FUZZ_DIR / "atheris_image.py",
             "requests": FUZZ_DIR / "atheris_requests.py"}
#: The image harness decodes at most 4096 x 2048 x 3 bytes; 1 GiB of RSS means a decoder
#: allocated far beyond what the header probe allowed (the PNG finding in bench/README.md).
LIBFUZZER_FLAGS = ["-rss_limit_mb=1024", "-timeout=30", "-print_final_stats=1"]


def write_image_seeds(folder: Path) -> int:
    """The pool's images, small: each photo in every format at 48 px, and the hostile
    files (bomb headers, truncations) as they are. First byte: harness mode 0 (raw)."""
    import cv2
    import numpy as np

    from tests.api.fuzz_support import image_files

    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for name, data in image_files().items():
        if len(data) > 4096:  # a real photo: shrink it, keep its format
            image = cv2.imdecode(np.frombuffer(data, np.uint8),
                                 cv2.IMREAD_UNCHANGED)
            if image is None:
                continue
            scale = 48.0 / max(image.shape[:2])
            image = cv2.resize(image, (max(1, int(image.shape[1] * scale)),
                                       max(1, int(image.shape[0] * scale))))
            ok, buf = cv2.imencode("." + name.rsplit(".", 1)[1], image)
            if not ok:
                continue
            data = buf.tobytes()
            if name == "portrait_rotated.jpg":
                from tests.api.fuzz_support import with_exif_orientation
                data = with_exif_orientation(data, 6)
        for mode in (0, 1):
            (folder / f"{mode}-{name}").write_bytes(bytes([mode]) + data)
            count += 1
    return count


def write_request_seeds(folder: Path) -> int:
    """Every endpoint's spec examples as raw bodies (mode 0, endpoint index, JSON), and a
    feature-sized ``register_feature`` for the registration endpoints."""
    from bench.fuzz.atheris_requests import endpoints, key_names

    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    for index, (path, op) in enumerate(endpoints()):
        bodies = list(op.request_examples.values()) or [{}]
        if "register_feature" in key_names(op):
            bodies.append({"register_feature": [0.1] * 128})
        for n, body in enumerate(bodies):
            data = bytes([0, index % 256, 0]) + json.dumps(body).encode("utf-8")
            (folder / f"{index:02d}-{path.rsplit('/', 1)[1]}-{n}").write_bytes(data)
            count += 1
    return count


def run_harness(name: str, seconds: float) -> Dict[str, object]:
    seeds = RESULTS_DIR / f"seeds-{name}"
    written = (write_image_seeds if name == "image" else write_request_seeds)(seeds)
    command = [sys.executable, str(HARNESSES[name]), "--seconds", str(int(seconds)),
               "--seed-dir", str(seeds), "--corpus-dir", str(RESULTS_DIR / f"corpus-{name}")]
    if have_atheris():
        command += LIBFUZZER_FLAGS
        if name == "requests":  # a structured body needs a few hundred input bytes at once
            command += ["-len_control=0", f"-dict={FUZZ_DIR / 'requests.dict'}"]
    print(f"== {name}: {'atheris' if have_atheris() else 'blind loop'}, {written} seeds, "
          f"{seconds:.0f} s", flush=True)
    started = time.monotonic()
    log_path = RESULTS_DIR / f"{name}.log"
    env = dict(os.environ, OPENCV_LOG_LEVEL="OFF")  # libpng / libjpeg still warn on stderr
    with open(log_path, "wb") as log_file:
        process = subprocess.run(command, cwd=str(PROJECT_DIR), stdout=log_file, env=env,
                                 stderr=subprocess.STDOUT, timeout=seconds + 600)
    text = log_path.read_text(encoding="utf-8", errors="replace")
    runs = re.findall(r"stat::number_(?:of_)?executed_units:\s*(\d+)", text)
    crashed = process.returncode != 0
    result = {"harness": name, "engine": "atheris" if have_atheris() else "blind",
              "seconds": round(time.monotonic() - started, 1),
              "runs": int(runs[-1]) if runs else None, "exit": process.returncode,
              "failure": crashed, "log": str(log_path)}
    tail = "\n".join(text.splitlines()[-25:]) if crashed else ""
    print(f"   {result['runs']} runs in {result['seconds']:.0f} s, "
          f"{'FAILED (see ' + str(log_path) + ')' if crashed else 'no failure'}", flush=True)
    if tail:
        print(tail, flush=True)
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0, help="budget of each fuzzer")
    parser.add_argument("--only", default="openapi,image,requests")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    results: List[Dict[str, object]] = []
    failed = False
    if "openapi" in only:
        from bench.fuzz import openapi

        print(f"== openapi: {args.seconds:.0f} s", flush=True)
        result = openapi.fuzz(args.seconds, 25, int(time.time()), [])
        print(openapi.summary(result), flush=True)
        print(f"results: {openapi.save(result)}", flush=True)
        failed |= bool(result["failures"])
        results.append({"harness": "openapi", "cases": result["cases"],
                        "failures": len(result["failures"])})
    for name in ("image", "requests"):
        if name in only:
            result = run_harness(name, args.seconds)
            failed |= bool(result["failure"])
            results.append(result)
    print("\n== summary")
    for result in results:
        print("  " + ", ".join(f"{k}: {v}" for k, v in result.items() if k != "log"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
