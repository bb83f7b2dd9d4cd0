"""Image inputs: base64 and path forms, size limits before decoding, formats, EXIF, storage."""

from __future__ import annotations

import base64
import os
import struct
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from sophon_face.errors import ImageDecodeError, ImageNotOpened, ImageSizeTooLargeError
from sophon_face.pipeline import images
from sophon_face.pipeline.images import jpeg_for_storage, load_image
from sophon_face.pipeline.types import ImageInput, ImageLimits

LIMITS = ImageLimits()
PARAM = "image_base64"
DEVSET_WEBP = Path("/work/shared/data/devset/deepface_p03/img47.jpg")


def _picture(height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth, deterministic colour image (compresses like a photo, not like noise)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.dstack([
        (xs * 255 // max(1, width - 1)),
        (ys * 255 // max(1, height - 1)),
        ((xs + ys) * 255 // max(1, width + height - 2)),
    ]).astype(np.uint8)


def _encode(image: np.ndarray, ext: str, params=()) -> bytes:
    ok, buf = cv2.imencode(ext, image, list(params))
    assert ok
    return buf.tobytes()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _from_b64(text: str, limits: ImageLimits = LIMITS, param: str = PARAM):
    return load_image(ImageInput(param, base64_text=text), limits, roots=[])


def _expect(error_cls, message: str, call, *args, **kwargs):
    with pytest.raises(error_cls) as info:
        call(*args, **kwargs)
    assert type(info.value) is error_cls
    assert info.value.message == message
    return info.value


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _jpeg_with_app1(jpeg: bytes, payload: bytes) -> bytes:
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def _exif_orientation(value: int) -> bytes:
    """An APP1 EXIF payload holding only the Orientation tag (0x0112, SHORT)."""
    tiff = b"II*\x00" + struct.pack("<I", 8)
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, value, 0)
    return b"Exif\x00\x00" + tiff + ifd + struct.pack("<I", 0)


@pytest.fixture
def png_bytes() -> bytes:
    return _encode(_picture(), ".png")


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fail the test if OpenCV is asked to decode pixels."""
    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode must not be reached")
    monkeypatch.setattr(images.cv2, "imdecode", refuse)


# --- base64 forms (api/README.md 4.1) ------------------------------------------------

def _noisy_png() -> bytes:
    """A PNG whose standard base64 contains both '+' and '/' and needs '=' padding."""
    rng = np.random.default_rng(7)
    for side in range(16, 40):
        data = _encode(rng.integers(0, 256, (side, side, 3), dtype=np.uint8), ".png")
        text = _b64(data)
        if "+" in text and "/" in text and text.endswith("="):
            return data
    raise AssertionError("no suitable test PNG")  # pragma: no cover


NOISY_PNG = _noisy_png()
NOISY_PIXELS = cv2.imdecode(np.frombuffer(NOISY_PNG, np.uint8), cv2.IMREAD_COLOR)


@pytest.mark.parametrize("text", [
    _b64(NOISY_PNG),
    "data:image/png;base64," + _b64(NOISY_PNG),
    "data:image/jpeg;base64," + _b64(NOISY_PNG),  # the declared media type is not checked
    "DATA:image/png;base64," + _b64(NOISY_PNG),
    base64.encodebytes(NOISY_PNG).decode("ascii"),  # a newline every 76 characters
    base64.encodebytes(NOISY_PNG).decode("ascii").replace("\n", "\r\n"),
    " \t" + "\n".join(_b64(NOISY_PNG)[i:i + 10] for i in range(0, len(_b64(NOISY_PNG)), 10)) + " ",
    _b64(NOISY_PNG).rstrip("="),  # missing padding
    base64.urlsafe_b64encode(NOISY_PNG).decode("ascii"),
    base64.urlsafe_b64encode(NOISY_PNG).decode("ascii").rstrip("="),
], ids=["plain", "data-url", "data-url-other-type", "data-url-upper", "encodebytes",
        "crlf", "spaces-tabs", "no-padding", "urlsafe", "urlsafe-no-padding"])
def test_base64_forms_decode_to_the_same_pixels(text):
    decoded = _from_b64(text)
    assert decoded.format == "png"
    assert decoded.param == PARAM
    assert decoded.encoded == NOISY_PNG
    assert decoded.image_bgr.dtype == np.uint8
    np.testing.assert_array_equal(decoded.image_bgr, NOISY_PIXELS)


@pytest.mark.parametrize("text", [
    "",
    "not base64 at all!",
    "@@@@",
    "QUJD=A==",  # padding in the middle
    "QUJDRA===",  # too much padding
    "QUJDR",  # 5 characters: no byte count fits
    "QUJD\u00e9",  # non-ASCII
    "data:image/png;base64",  # a data URL without its comma
    "data:image/png;base64,",
    "QUJD.RA",
], ids=["empty", "words", "symbols", "inner-padding", "over-padding", "impossible-length",
        "non-ascii", "data-url-no-comma", "data-url-empty", "dot"])
def test_invalid_base64_is_a_decode_error(text):
    _expect(ImageDecodeError, PARAM, _from_b64, text)


@pytest.mark.parametrize("payload", [
    b"hello, this is plain text and not an image",
    b"GIF89a" + b"\x00" * 64,  # a format OpenCV may read but whose size we do not probe
    b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
    b"\xff\xd8\xff" + b"\x00" * 40,
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00\xff\xd9",  # no frame
    b"BM" + b"\x00" * 40,
    b"RIFF\x10\x00\x00\x00WEBPJUNK" + b"\x00" * 16,
], ids=["text", "gif", "png-signature-only", "jpeg-signature-only", "jpeg-without-sof",
        "bmp-zero-header", "webp-unknown-chunk"])
def test_valid_base64_of_non_image_bytes_is_a_decode_error(payload):
    _expect(ImageDecodeError, PARAM, _from_b64, _b64(payload))


def test_png_with_a_declared_size_but_garbage_pixels_is_a_decode_error():
    header = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", b"definitely not zlib") + _png_chunk(b"IEND", b""))
    _expect(ImageDecodeError, PARAM, _from_b64, _b64(data))


# --- truncation ----------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".jpg", ".png", ".bmp", ".webp"])
@pytest.mark.parametrize("keep", [0.25, 0.5, 0.9, -2, -1])
def test_truncated_images_are_decode_errors(ext, keep):
    data = _encode(_picture(96, 128), ext)
    cut = data[:int(len(data) * keep)] if keep > 0 else data[:keep]
    _expect(ImageDecodeError, PARAM, _from_b64, _b64(cut))


@pytest.mark.parametrize("progressive", [0, 1])
def test_truncated_jpeg_is_refused_before_the_pixel_decoder(no_pixel_decoding, progressive):
    # Our own end-of-image check, so the refusal does not depend on the OpenCV build
    data = _encode(_picture(96, 128), ".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
    for cut in (data[:len(data) // 2], data[:-2], data[:-2] + b"\x00" * 64):
        _expect(ImageDecodeError, PARAM, _from_b64, _b64(cut))


def test_truncated_jpeg_with_a_complete_exif_thumbnail_is_refused(no_pixel_decoding):
    # The thumbnail carries its own end-of-image marker; it must not pass for the main one.
    thumbnail = _encode(_picture(8, 8), ".jpg")
    data = _jpeg_with_app1(_encode(_picture(96, 128), ".jpg"), b"Exif\x00\x00" + thumbnail)
    _expect(ImageDecodeError, PARAM, _from_b64, _b64(data[:-200]))


def test_jpeg_with_data_after_its_end_marker_loads():
    # Multi-picture JPEGs and some cameras append data after the primary image's EOI.
    data = _encode(_picture(), ".jpg") + b"\x00\x00TRAILER\xff\xd8 whatever"
    assert _from_b64(_b64(data)).image_bgr.shape == (48, 64, 3)


# --- size limits (api/README.md 4.5) -------------------------------------------------

def _png_bomb(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + _png_chunk(b"IEND", b""))


def _jpeg_bomb(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + sof + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x00" * 64 + b"\xff\xd9"


def _webp_bomb(width: int, height: int) -> bytes:
    vp8x = b"\x00\x00\x00\x00" + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = b"WEBP" + b"VP8X" + struct.pack("<I", len(vp8x)) + vp8x
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _bmp_bomb(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, -height, 1, 24, 0, 0, 0, 0, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\x00" * 16


@pytest.mark.parametrize("bomb", [
    _png_bomb(50000, 50000), _png_bomb(8193, 1), _png_bomb(0xFFFFFFFF, 0xFFFFFFFF),
    _jpeg_bomb(60000, 60000), _webp_bomb(16384, 16384), _bmp_bomb(100000, 100000),
], ids=["png-50000", "png-8193-wide", "png-max-u32", "jpeg-60000", "webp-canvas-16384",
        "bmp-100000"])
def test_decompression_bomb_is_refused_from_its_header(no_pixel_decoding, bomb):
    assert len(bomb) < 2048
    started = time.perf_counter()
    _expect(ImageSizeTooLargeError, PARAM, _from_b64, _b64(bomb))
    assert time.perf_counter() - started < 0.1


def test_dimension_limits_are_inclusive():
    limits = ImageLimits(max_side_px=64, max_pixels=64 * 48)
    assert _from_b64(_b64(_encode(_picture(48, 64), ".png")), limits).image_bgr.shape == (48, 64, 3)
    _expect(ImageSizeTooLargeError, PARAM, _from_b64, _b64(_encode(_picture(10, 65), ".png")), limits)
    _expect(ImageSizeTooLargeError, PARAM, _from_b64, _b64(_encode(_picture(49, 64), ".png")), limits)


def test_encoded_size_limit_is_inclusive(png_bytes):
    assert _from_b64(_b64(png_bytes), ImageLimits(max_encoded_bytes=len(png_bytes)))
    _expect(ImageSizeTooLargeError, PARAM, _from_b64, _b64(png_bytes),
            ImageLimits(max_encoded_bytes=len(png_bytes) - 1))


def test_over_long_base64_is_refused_before_it_is_validated():
    limits = ImageLimits(max_encoded_bytes=1000)
    # 1336 characters decode to 1002 bytes; the invalid tail proves nothing was decoded
    _expect(ImageSizeTooLargeError, PARAM, _from_b64, "A" * 1336 + "!!", limits)
    _expect(ImageSizeTooLargeError, PARAM, _from_b64,
            base64.encodebytes(b"\x00" * 1001).decode("ascii"), limits)
    # whitespace does not count towards the size
    _expect(ImageDecodeError, PARAM, _from_b64, "A" * 1332 + "\n" * 5000 + "!", limits)


# --- path inputs (api/README.md 4.2) --------------------------------------------------

@pytest.fixture
def tree(tmp_path, png_bytes):
    """root/ with a good image, and outside/ beside it with an image that must stay unread."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "good.png").write_bytes(png_bytes)
    (outside / "secret.png").write_bytes(png_bytes)
    return root, outside


def _from_path(path, roots, limits: ImageLimits = LIMITS):
    return load_image(ImageInput("image_path", path=str(path)), limits, roots)


def test_path_inside_a_root_loads(tree, png_bytes):
    root, _ = tree
    decoded = _from_path(root / "sub" / "good.png", [root])
    assert decoded.format == "png"
    assert decoded.param == "image_path"
    assert decoded.encoded == png_bytes


def test_format_comes_from_the_content_not_the_name(tree, png_bytes):
    root, _ = tree
    (root / "photo.jpg").write_bytes(png_bytes)
    assert _from_path(root / "photo.jpg", [str(root)]).format == "png"


def test_symlinks_that_stay_inside_the_roots_are_followed(tree, tmp_path):
    root, _ = tree
    (root / "alias.png").symlink_to(root / "sub" / "good.png")
    assert _from_path(root / "alias.png", [root]).format == "png"
    # a root that is itself a symlink is resolved too
    (tmp_path / "root-link").symlink_to(root)
    assert _from_path(tmp_path / "root-link" / "sub" / "good.png", [tmp_path / "root-link"])


def test_any_of_several_roots_allows_a_path(tree):
    root, outside = tree
    assert _from_path(outside / "secret.png", [root, outside]).format == "png"


def _refused(path, roots):
    _expect(ImageNotOpened, str(path), _from_path, path, roots)


def test_path_outside_the_roots_is_not_opened(tree):
    root, outside = tree
    _refused(outside / "secret.png", [root])


def test_dot_dot_escape_is_not_opened(tree):
    root, _ = tree
    _refused(f"{root}/sub/../../outside/secret.png", [root])


def test_sibling_with_the_root_as_name_prefix_is_not_opened(tree, tmp_path, png_bytes):
    root, _ = tree
    evil = tmp_path / "rootevil"
    evil.mkdir()
    (evil / "x.png").write_bytes(png_bytes)
    _refused(evil / "x.png", [root])


def test_symlink_inside_a_root_pointing_outside_is_not_opened(tree):
    root, outside = tree
    (root / "escape.png").symlink_to(outside / "secret.png")
    (root / "escape-dir").symlink_to(outside, target_is_directory=True)
    _refused(root / "escape.png", [root])
    _refused(root / "escape-dir" / "secret.png", [root])


def test_file_that_turns_out_outside_the_roots_once_opened_is_not_opened(tree, monkeypatch):
    # A directory swapped for a symlink between the check and the open: what the kernel
    # reports for the open descriptor decides.
    root, outside = tree
    monkeypatch.setattr(images, "_path_of_fd", lambda fd: str(outside / "secret.png"))
    _refused(root / "sub" / "good.png", [root])


def test_directory_missing_file_and_fifo_are_not_opened(tree):
    root, _ = tree
    _refused(root / "sub", [root])
    _refused(root / "sub" / "missing.png", [root])
    _refused(root, [root])
    fifo = root / "pipe.png"
    os.mkfifo(fifo)  # must be refused without blocking on open
    _refused(fifo, [root])


def test_unusual_path_strings_are_not_opened(tree):
    root, _ = tree
    _refused(f"{root}/sub/good.png\x00.txt", [root])
    _refused("", [root])
    _refused("relative/good.png", [root])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_is_not_opened(tree):
    root, _ = tree
    path = root / "sub" / "good.png"
    path.chmod(0)
    try:
        _refused(path, [root])
    finally:
        path.chmod(0o644)


def test_path_inputs_are_disabled_without_roots(tree):
    root, _ = tree
    _refused(root / "sub" / "good.png", [])


def test_file_over_the_encoded_limit_is_too_large(tree, png_bytes):
    root, _ = tree
    path = root / "sub" / "good.png"
    assert _from_path(path, [root], ImageLimits(max_encoded_bytes=len(png_bytes)))
    _expect(ImageSizeTooLargeError, "image_path", _from_path, path, [root],
            ImageLimits(max_encoded_bytes=len(png_bytes) - 1))


def test_readable_file_that_is_not_an_image_is_a_decode_error(tree):
    root, _ = tree
    (root / "notes.jpg").write_bytes(b"just some text")
    _expect(ImageDecodeError, "image_path", _from_path, root / "notes.jpg", [root])


# --- priority (api/README.md 4.4) ----------------------------------------------------

def test_base64_wins_over_path(tree, png_bytes):
    root, _ = tree
    source = ImageInput(PARAM, base64_text=_b64(png_bytes), path=str(root / "missing.png"))
    assert load_image(source, LIMITS, [root]).format == "png"


def test_failing_base64_does_not_fall_back_to_path(tree):
    root, _ = tree
    source = ImageInput(PARAM, base64_text="@@@@", path=str(root / "sub" / "good.png"))
    _expect(ImageDecodeError, PARAM, load_image, source, LIMITS, [root])


def test_input_with_neither_form_is_a_programming_error():
    with pytest.raises(ValueError):
        load_image(ImageInput(PARAM), LIMITS, [])


# --- pixel layouts and formats ---------------------------------------------------------

def test_exif_orientation_is_applied():
    stored = _picture(40, 100)  # landscape as stored; orientation 6 means rotate 90 deg CW
    jpeg = _jpeg_with_app1(_encode(stored, ".jpg", [cv2.IMWRITE_JPEG_QUALITY, 95]),
                           _exif_orientation(6))
    raw = cv2.imdecode(np.frombuffer(jpeg, np.uint8),
                       cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    assert raw.shape == (40, 100, 3)

    decoded = _from_b64(_b64(jpeg))
    assert decoded.image_bgr.shape == (100, 40, 3)
    np.testing.assert_array_equal(decoded.image_bgr, cv2.rotate(raw, cv2.ROTATE_90_CLOCKWISE))
    assert decoded.encoded == jpeg


def test_dimension_limits_do_not_depend_on_exif_rotation():
    jpeg = _jpeg_with_app1(_encode(_picture(40, 100), ".jpg"), _exif_orientation(6))
    assert _from_b64(_b64(jpeg), ImageLimits(max_side_px=100, max_pixels=4000))
    _expect(ImageSizeTooLargeError, PARAM, _from_b64, _b64(jpeg),
            ImageLimits(max_side_px=99, max_pixels=4000))
    _expect(ImageSizeTooLargeError, PARAM, _from_b64, _b64(jpeg),
            ImageLimits(max_side_px=100, max_pixels=3999))


def test_grey_png_becomes_three_channel_bgr():
    grey = _picture()[:, :, 0]
    decoded = _from_b64(_b64(_encode(grey, ".png")))
    assert decoded.image_bgr.shape == (48, 64, 3) and decoded.image_bgr.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(decoded.image_bgr[:, :, channel], grey)


def test_alpha_png_drops_the_alpha_channel():
    bgra = np.dstack([_picture(), np.full((48, 64), 128, np.uint8)])
    decoded = _from_b64(_b64(_encode(bgra, ".png")))
    assert decoded.image_bgr.shape == (48, 64, 3) and decoded.image_bgr.dtype == np.uint8
    np.testing.assert_array_equal(decoded.image_bgr, _picture())


def test_sixteen_bit_png_becomes_eight_bit():
    deep = _picture().astype(np.uint16) * 257  # 8-bit value v maps to 16-bit v * 257
    data = _encode(deep, ".png")
    assert data[24] == 16  # IHDR bit depth: the file really is 16-bit
    decoded = _from_b64(_b64(data))
    assert decoded.image_bgr.dtype == np.uint8 and decoded.image_bgr.shape == (48, 64, 3)
    np.testing.assert_array_equal(decoded.image_bgr, _picture())


@pytest.mark.parametrize("ext, params, fmt", [
    (".jpg", [], "jpeg"),
    (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1], "jpeg"),
    (".png", [], "png"),
    (".bmp", [], "bmp"),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 90], "webp"),
    (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], "webp"),  # above 100 means lossless
], ids=["jpeg", "jpeg-progressive", "png", "bmp", "webp-lossy", "webp-lossless"])
def test_supported_formats_decode(ext, params, fmt):
    picture = _picture()
    decoded = _from_b64(_b64(_encode(picture, ext, params)))
    assert decoded.format == fmt
    assert decoded.image_bgr.shape == (48, 64, 3) and decoded.image_bgr.dtype == np.uint8
    assert np.abs(decoded.image_bgr.astype(int) - picture).mean() < 4


def test_grey_and_top_down_bmp_decode():
    grey = _encode(_picture()[:, :, 1], ".bmp")
    assert _from_b64(_b64(grey)).image_bgr.shape == (48, 64, 3)
    # OpenCV writes bottom-up bitmaps; flip the sign of the height to make a top-down one
    bottom_up = bytearray(_encode(_picture(), ".bmp"))
    height = struct.unpack_from("<i", bottom_up, 22)[0]
    struct.pack_into("<i", bottom_up, 22, -height)
    decoded = _from_b64(_b64(bytes(bottom_up)))
    np.testing.assert_array_equal(decoded.image_bgr, _picture()[::-1])


@pytest.mark.skipif(not DEVSET_WEBP.is_file(), reason="shared devset not present")
def test_devset_webp_with_a_jpg_name_loads_by_path():
    decoded = _from_path(DEVSET_WEBP, [DEVSET_WEBP.parents[2]])
    assert decoded.format == "webp"
    assert decoded.image_bgr.ndim == 3 and decoded.image_bgr.shape[2] == 3


# --- stored images (api/README.md 4.7) -------------------------------------------------

def test_jpeg_uploads_are_stored_byte_for_byte():
    jpeg = _jpeg_with_app1(_encode(_picture(), ".jpg"), _exif_orientation(6))
    decoded = _from_b64(_b64(jpeg))
    assert jpeg_for_storage(decoded) == jpeg


@pytest.mark.parametrize("ext", [".png", ".bmp", ".webp"])
def test_other_formats_are_stored_as_decodable_jpeg(ext):
    decoded = _from_b64(_b64(_encode(_picture(), ext)))
    stored = jpeg_for_storage(decoded)
    assert stored.startswith(b"\xff\xd8\xff")
    again = _from_b64(_b64(stored))
    assert again.format == "jpeg"
    assert again.image_bgr.shape == decoded.image_bgr.shape
    assert np.abs(again.image_bgr.astype(int) - decoded.image_bgr).mean() < 3


def test_stored_jpeg_quality_below_the_contract_is_refused(png_bytes):
    decoded = _from_b64(_b64(png_bytes))
    with pytest.raises(ValueError):
        jpeg_for_storage(decoded, quality=80)
    assert jpeg_for_storage(decoded, quality=90).startswith(b"\xff\xd8")
