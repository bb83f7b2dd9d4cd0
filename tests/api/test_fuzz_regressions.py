"""Every failure the fuzzers found (issue 12, bench/README.md "Fuzzing"), pinned.

1. PNG chunk length (atheris_image): a 67-byte PNG whose IDAT chunk declares 4 GB made
   OpenCV 4.14 (the box's version too) allocate about 4 GB before finding the data short.
   Now refused with IMAGE_DECODE_ERROR before OpenCV sees it: every chunk must fit in the
   file, up to IEND.
2. A ``register_feature`` element past float range (an integer such as 10**400, which
   JSON carries): OverflowError in numpy, answered INTERNAL_ERROR (HTTP 500). Now
   INVALID_ARGUMENTS.
3. A ``register_feature`` of huge but finite numbers (1e300...): its norm overflowed and
   the vector was refused, though README 4.3 (and the document) accept any finite vector
   that is not all zero (schemathesis' positive-data check). Now normalised without
   overflow; a signalling NaN in the base64 form no longer warns either.

Each case is checked where it was found (the function) and through the daemon (the
answer a client gets).
"""

from __future__ import annotations

import base64
import struct
import uuid
import warnings
import zlib
from typing import List

import numpy as np
import pytest

from sophon_face.api.validation import Context, feature_vector
from sophon_face.errors import ImageDecodeError, InvalidArguments
from sophon_face.pipeline import images
from sophon_face.pipeline.types import ImageLimits

from .live import LiveServer

#: Finding 1, as atheris wrote it (less its harness mode byte): IHDR 1 x 1, then an IDAT
#: chunk whose length field says 0xFFFFFF0A bytes.
PNG_4GB_IDAT = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108020000009077"
    "531bffffff0a49444154081d63000200001400010d3ba4b90000000049454e44ae426082")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png(*extra_chunks: bytes, iend: bool = True, trailer: bytes = b"") -> bytes:
    """A valid 2 x 2 RGB PNG, with ``extra_chunks`` before IEND."""
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x80" * 6 for _ in range(2))
    body = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows))
            + b"".join(extra_chunks))
    return body + (_chunk(b"IEND", b"") if iend else b"") + trailer


# --- 1. PNG chunk lengths -----------------------------------------------------------------

def test_png_declaring_a_4gb_chunk_is_refused_before_opencv(monkeypatch) -> None:
    def no_decode(*args, **kwargs):
        raise AssertionError("OpenCV must not be asked to decode this")

    monkeypatch.setattr(images.cv2, "imdecode", no_decode)
    assert len(PNG_4GB_IDAT) == 67
    with pytest.raises(ImageDecodeError) as caught:
        images.decode_image_bytes(PNG_4GB_IDAT, "image_base64_str", ImageLimits())
    assert caught.value.message == "image_base64_str"


@pytest.mark.parametrize("data", [
    _png(iend=False),                                          # truncated before IEND
    _png(_chunk(b"tEXt", b"k\x00v")[:-6]),                     # a chunk cut short
    _png()[:-12] + struct.pack(">I", 0x7FFFFFFF) + b"IEND",    # IEND claiming 2 GB
])
def test_png_whose_chunks_do_not_fit_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        images.decode_image_bytes(data, "image", ImageLimits())


@pytest.mark.parametrize("data", [
    _png(),
    _png(_chunk(b"tEXt", b"Comment\x00fuzz")),
    _png(trailer=b"\x00" * 16),  # bytes after IEND are ignored, as libpng does
])
def test_png_whose_chunks_fit_still_decodes(data: bytes) -> None:
    decoded = images.decode_image_bytes(data, "image", ImageLimits())
    assert decoded.image_bgr.shape == (2, 2, 3)


def test_api_answers_the_4gb_png_with_image_decode_error(server: LiveServer) -> None:
    reply = server.post("detect", {"image_base64_str": base64.b64encode(PNG_4GB_IDAT).decode()})
    assert reply.status == 400
    assert reply.error == ("IMAGE_DECODE_ERROR", "image_base64_str")


# --- 2. and 3. register_feature numbers ---------------------------------------------------

def _feature_dim(server: LiveServer) -> int:
    return int(server.request("GET", "/health").json["feature_dim"])


@pytest.mark.parametrize("odd", [10 ** 400, -(10 ** 309), 2 ** 1024],
                         ids=["1e400", "-1e309", "2^1024"])
def test_feature_element_past_float_range_is_invalid_arguments(odd: int) -> None:
    value: List[object] = [0.5] * 128
    value[7] = odd
    with pytest.raises(InvalidArguments) as caught:
        feature_vector(value, "register_feature", Context(feature_dim=128))
    assert caught.value.message == "register_feature: <array of 128 items>"


@pytest.mark.parametrize("magnitude", [1e300, 1.7976931348623157e308, 5e-324])
def test_feature_of_extreme_finite_numbers_is_normalised(magnitude: float) -> None:
    value = [magnitude] * 64 + [-magnitude] * 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow / underflow warning on the way
        unit = feature_vector(value, "register_feature", Context(feature_dim=128))
    assert unit.dtype == np.float32 and unit.shape == (128,)
    np.testing.assert_allclose(unit, np.array([1.0] * 64 + [-1.0] * 64) / np.sqrt(128),
                               rtol=1e-6)


def test_feature_with_a_signalling_nan_is_invalid_without_a_warning() -> None:
    raw = bytearray(struct.pack("<128f", *([0.5] * 128)))
    raw[0:4] = bytes.fromhex("0100807f")  # float32 signalling NaN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InvalidArguments):
            feature_vector(base64.b64encode(bytes(raw)).decode(), "register_feature",
                           Context(feature_dim=128))


def test_api_feature_past_float_range_is_400_not_500(server: LiveServer) -> None:
    feature: List[object] = [1] * _feature_dim(server)
    feature[0] = 10 ** 400
    reply = server.post("createidentity", {"register_feature": feature,
                                           "identity_id": f"fuzz-{uuid.uuid4().hex[:8]}"})
    assert reply.status == 400, reply
    assert reply.error == ("INVALID_ARGUMENTS",
                           f"register_feature: <array of {len(feature)} items>")


def test_api_registers_a_feature_of_huge_finite_numbers(server: LiveServer) -> None:
    dim = _feature_dim(server)
    identity_id = f"fuzz-{uuid.uuid4().hex[:8]}"
    reply = server.post("createidentity", {"register_feature": [1e300] * dim,
                                           "identity_id": identity_id})
    assert reply.status == 200, reply
    assert reply.json["identity_id"] == identity_id
    server.post("deleteidentities", {"identity_ids": [identity_id]})
