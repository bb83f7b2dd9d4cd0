"""atheris harness: the image decoder (sophon_face/pipeline/images.py).

Each input is one image slot of a request. Its first byte picks how the rest arrives:

0. raw bytes (``decode_image_bytes``: what a path input reads);
1. their standard base64 (``load_image`` with base64 text);
2. the bytes as base64 *text* a client typed, any characters (UTF-8, errors kept as lone
   surrogates, as JSON can carry them);
3. a data URL in the URL-safe alphabet, unpadded, with a line break every 76 characters.

A refusal with IMAGE_DECODE_ERROR or IMAGE_SIZE_TOO_LARGE_ERROR is the expected outcome of
almost every input. Anything else raised is a bug, and so is a decoded image that breaks
what the pipeline relies on: H x W x 3 uint8, within the limits, no larger than the header
probe said (the probe is what refuses decompression bombs before OpenCV allocates), the
original bytes kept, and a storable JPEG.

Run (from the project root; ``python -m bench.fuzz`` runs it with the seeds it writes):
    .venv/bin/python bench/fuzz/atheris_image.py --seconds 60 --seed-dir DIR [-libFuzzer flags]
    .venv/bin/python bench/fuzz/atheris_image.py --replay bench/results/fuzz/crash-...
"""

from __future__ import annotations

import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from bench.fuzz.harness import TestOneInput, main  # noqa: E402

#: Below the daemon's (16 MiB, 8192 px) so that one input decodes in milliseconds; the
#: limit checks are the same code either way.
MAX_ENCODED_BYTES = 1 << 20
MAX_SIDE_PX = 4096
MAX_PIXELS = 4096 * 2048


def load() -> TestOneInput:
    import base64

    import numpy as np

    from sophon_face.errors import ImageDecodeError, ImageSizeTooLargeError
    from sophon_face.pipeline import images
    from sophon_face.pipeline.types import ImageInput, ImageLimits

    limits = ImageLimits(max_encoded_bytes=MAX_ENCODED_BYTES, max_side_px=MAX_SIDE_PX,
                         max_pixels=MAX_PIXELS)
    refusals = (ImageDecodeError, ImageSizeTooLargeError)

    def from_text(text: str):
        return images.load_image(ImageInput("image", base64_text=text), limits, ())

    def test_one_input(data: bytes) -> None:
        if not data:
            return
        mode, payload = data[0] % 4, data[1:]
        try:
            if mode == 0:
                decoded = images.decode_image_bytes(payload, "image", limits)
            elif mode == 1:
                decoded = from_text(base64.b64encode(payload).decode("ascii"))
            elif mode == 2:
                decoded = from_text(payload.decode("utf-8", "surrogateescape"))
            else:
                text = "data:image/x;base64," + base64.urlsafe_b64encode(payload).decode(
                    "ascii").rstrip("=")
                decoded = from_text("\n".join(text[i:i + 76] for i in range(0, len(text), 76)))
        except refusals as error:
            assert error.message == "image", error.message  # README 12.2: the parameter
            return
        image = decoded.image_bgr
        assert isinstance(image, np.ndarray) and image.dtype == np.uint8, type(image)
        assert image.ndim == 3 and image.shape[2] == 3, image.shape
        height, width = image.shape[:2]
        assert 1 <= max(height, width) <= MAX_SIDE_PX and height * width <= MAX_PIXELS, (
            image.shape)
        assert decoded.format in images.SUPPORTED_FORMATS, decoded.format
        encoded = decoded.encoded
        if mode != 2:
            assert encoded == payload, "the original bytes must be kept (README 4.7)"
        probed_w, probed_h = images._probe_dimensions(decoded.format, encoded, "image")
        assert height * width <= probed_w * probed_h, (
            f"decoded {width}x{height} from a header that declared {probed_w}x{probed_h}")
        stored = images.jpeg_for_storage(decoded)
        assert stored[:3] == b"\xff\xd8\xff", stored[:8]

    return test_one_input


if __name__ == "__main__":
    sys.exit(main("image", load))
