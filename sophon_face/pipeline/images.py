"""Image inputs: base64 or a local path -> an upright BGR image, within the size limits.

The contract is api/README.md sections 4.1, 4.2, 4.4, 4.5, 4.7 and 12.2. Every refusal is
an ``ApiError`` whose message is the parameter name (or, for IMAGE_NOT_OPENED, the path as
the client sent it).

The pixel dimensions are read from the file header by the small parsers below *before*
OpenCV decodes anything, so an image that declares 50000 x 50000 pixels in a few hundred
bytes is refused without allocating its pixel buffer. We parse the headers ourselves rather
than asking Pillow because the decoder that runs afterwards is OpenCV: the probe has to
agree with what OpenCV will allocate, Pillow is not a dependency of the daemon (it only
arrives with the CPU extra, which the SE5 does not install), and ``pipeline/`` depends on
numpy and OpenCV only. As a consequence only the formats we can probe are accepted:
JPEG, PNG, BMP and WebP (the spec requires the first three and allows any other).

Path inputs are disabled unless allowed directories (``roots``) are configured: with an
empty ``roots`` every path is refused with IMAGE_NOT_OPENED.
"""

from __future__ import annotations

import binascii
import logging
import os
import re
import stat
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..errors import ImageDecodeError, ImageNotOpened, ImageSizeTooLargeError
from .types import DecodedImage, ImageInput, ImageLimits

log = logging.getLogger(__name__)

#: Formats whose header we can probe before decoding; ``DecodedImage.format`` values.
SUPPORTED_FORMATS: Tuple[str, ...] = ("jpeg", "png", "bmp", "webp")

#: Stored registration photos are JPEG of at least this quality (api/README.md 4.7).
MIN_STORED_JPEG_QUALITY = 90
DEFAULT_STORED_JPEG_QUALITY = 95

_DATA_URL_SCHEME = "data:"
_BASE64_WHITESPACE = b" \t\r\n\f\v"
_BASE64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# Clients may send the URL-safe alphabet (RFC 4648 section 5); map it onto the standard one.
_URLSAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")

_JPEG_SIGNATURE = b"\xff\xd8\xff"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_BMP_SIGNATURE = b"BM"

# A JPEG marker is 0xFF followed by a code other than 0x00 (a stuffed data byte), 0xFF (fill)
# or RST0-7 (which sit inside entropy-coded data). Searching for it skips scan data in C.
_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_JPEG_EOI = 0xD9
_JPEG_SOS = 0xDA
# Markers that carry no length field (TEM, SOI); RSTn never match _JPEG_MARKER.
_JPEG_STANDALONE = frozenset((0x01, 0xD8))
# SOF0-SOF15 except DHT (C4), JPG (C8) and DAC (CC), which share the range.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}

_READ_CHUNK_BYTES = 1 << 20

_BMP_CORE_HEADER_BYTES = 12  # OS/2 BITMAPCOREHEADER: 16-bit width and height

PathLike = Union[str, Path]


def load_image(source: ImageInput, limits: ImageLimits,
               roots: Sequence[PathLike]) -> DecodedImage:
    """Decode one image slot of a request.

    Base64 data wins over a path when both are set, even if it then fails to decode
    (api/README.md 4.4). ``roots`` are the directories path inputs may be read from;
    empty means path inputs are disabled.
    """
    if source.base64_text is not None:
        data = _decode_base64(source.base64_text, source.param, limits)
    elif source.path is not None:
        data = _read_path(source.path, source.param, limits, roots)
    else:
        raise ValueError(f"image input {source.param!r} has neither base64 data nor a path")
    return decode_image_bytes(data, source.param, limits)


def decode_image_bytes(data: bytes, param: str, limits: ImageLimits) -> DecodedImage:
    """Probe the header, refuse what is too large, then decode to H x W x 3 uint8 BGR."""
    if len(data) > limits.max_encoded_bytes:
        raise ImageSizeTooLargeError(param)
    fmt = _sniff_format(data)
    if fmt is None:
        log.debug("%s: not a JPEG, PNG, BMP or WebP file", param)
        raise ImageDecodeError(param)
    width, height = _probe_dimensions(fmt, data, param)
    # Rotation by EXIF orientation swaps width and height, so checking the longer side
    # and the area is the same before and after it.
    _check_dimensions(width, height, param, limits)
    if fmt == "jpeg" and not _jpeg_is_complete(data):
        # Some OpenCV/libjpeg builds return a half-grey image for a truncated JPEG with
        # only a warning on stderr; the end-of-image marker tells us cheaply.
        log.debug("%s: JPEG has no end-of-image marker (truncated)", param)
        raise ImageDecodeError(param)
    if fmt == "png" and not _png_chunks_fit(data):
        # OpenCV 4.14 (the box's too) allocates a chunk's declared length before reading
        # it: a 68-byte PNG declaring a 4 GB IDAT took 4 GB (found by fuzzing, issue 12).
        log.debug("%s: PNG chunk longer than the file, or no IEND (truncated)", param)
        raise ImageDecodeError(param)
    image_bgr = _decode_pixels(data, param)
    _check_dimensions(image_bgr.shape[1], image_bgr.shape[0], param, limits)
    return DecodedImage(image_bgr=image_bgr, encoded=data, format=fmt, param=param)


def jpeg_for_storage(image: DecodedImage,
                     quality: int = DEFAULT_STORED_JPEG_QUALITY) -> bytes:
    """The bytes to store for a registration photo (api/README.md 4.7, R61).

    A JPEG upload is kept byte for byte (its EXIF orientation included); anything else is
    re-encoded as JPEG from the decoded, already upright pixels.
    """
    if not MIN_STORED_JPEG_QUALITY <= quality <= 100:
        raise ValueError(
            f"stored JPEG quality must be {MIN_STORED_JPEG_QUALITY}..100, got {quality}")
    if image.format == "jpeg":
        return image.encoded
    ok, buf = cv2.imencode(".jpg", image.image_bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {image.param} as JPEG")
    return buf.tobytes()


# --- base64 ---------------------------------------------------------------------------

def _decode_base64(text: str, param: str, limits: ImageLimits) -> bytes:
    if text[:len(_DATA_URL_SCHEME)].lower() == _DATA_URL_SCHEME:
        comma = text.find(",")
        if comma < 0:
            raise ImageDecodeError(param)
        text = text[comma + 1:]
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ImageDecodeError(param) from None
    raw = raw.translate(None, _BASE64_WHITESPACE)
    body = raw.rstrip(b"=")
    # Every 4 characters carry 3 bytes; a trailing group of 2 or 3 carries 1 or 2. This is
    # the exact decoded size, known before spending time on validating or decoding.
    decoded_bytes = len(body) // 4 * 3 + max(0, len(body) % 4 - 1)
    if decoded_bytes > limits.max_encoded_bytes:
        raise ImageSizeTooLargeError(param)
    if len(raw) - len(body) > 2 or len(body) % 4 == 1:
        raise ImageDecodeError(param)
    body = body.translate(_URLSAFE_TO_STANDARD)
    if body.translate(None, _BASE64_ALPHABET):
        # a character outside both alphabets, or "=" before the end
        raise ImageDecodeError(param)
    try:
        return binascii.a2b_base64(body + b"=" * (-len(body) % 4))
    except binascii.Error:
        raise ImageDecodeError(param) from None


# --- local paths ----------------------------------------------------------------------

def _read_path(path: str, param: str, limits: ImageLimits,
               roots: Sequence[PathLike]) -> bytes:
    try:
        resolved = os.path.realpath(path)
    except (OSError, ValueError):  # ValueError: embedded NUL byte
        raise ImageNotOpened(path) from None
    if not _inside_roots(resolved, roots):
        log.info("image path %r refused: resolves to %r, outside the allowed directories %s",
                 path, resolved, [str(r) for r in roots])
        raise ImageNotOpened(path)
    # O_NOFOLLOW: the final component was already resolved, a symlink there now means it
    # was swapped in after the check. O_NONBLOCK: opening a FIFO must not hang a worker.
    # O_NOCTTY: a terminal device under a root must not become the daemon's.
    flags = os.O_RDONLY
    for name in ("O_NOFOLLOW", "O_NONBLOCK", "O_NOCTTY"):
        flags |= getattr(os, name, 0)
    try:
        fd = os.open(resolved, flags)
    except (OSError, ValueError) as exc:
        log.debug("image path %r not opened: %s", path, exc)
        raise ImageNotOpened(path) from None
    try:
        return _read_regular_file(fd, path, param, limits, roots)
    finally:
        os.close(fd)


def _read_regular_file(fd: int, path: str, param: str, limits: ImageLimits,
                       roots: Sequence[PathLike]) -> bytes:
    opened_as = _path_of_fd(fd)
    if opened_as is not None and not _inside_roots(opened_as, roots):
        # a directory on the way was replaced by a symlink between the check and the open
        log.warning("image path %r refused: opened %r, outside the allowed directories",
                    path, opened_as)
        raise ImageNotOpened(path)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        log.debug("image path %r not opened: not a regular file", path)
        raise ImageNotOpened(path)
    if st.st_size > limits.max_encoded_bytes:
        raise ImageSizeTooLargeError(param)
    # At most one byte more than allowed, since the file may have grown after fstat;
    # decode_image_bytes refuses that byte.
    chunks = []
    remaining = limits.max_encoded_bytes + 1
    try:
        while remaining > 0:
            chunk = os.read(fd, min(remaining, _READ_CHUNK_BYTES))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError as exc:
        log.debug("image path %r not read: %s", path, exc)
        raise ImageNotOpened(path) from None
    return b"".join(chunks)


def _inside_roots(resolved: str, roots: Sequence[PathLike]) -> bool:
    for root in roots:
        real_root = os.path.realpath(root)
        try:
            if os.path.commonpath([resolved, real_root]) == real_root:
                return True
        except ValueError:  # different drives, or mixing absolute and relative
            continue
    return False


def _path_of_fd(fd: int) -> Optional[str]:
    """What the kernel says an open descriptor refers to, where /proc can tell."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# --- header probes --------------------------------------------------------------------

def _sniff_format(data: bytes) -> Optional[str]:
    # These signatures are the ones OpenCV's decoders check, so the decoder OpenCV picks
    # is the one whose header we probed.
    if data.startswith(_JPEG_SIGNATURE):
        return "jpeg"
    if data.startswith(_PNG_SIGNATURE):
        return "png"
    if data.startswith(_BMP_SIGNATURE):
        return "bmp"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _probe_dimensions(fmt: str, data: bytes, param: str) -> Tuple[int, int]:
    """(width, height) as the header declares them; IMAGE_DECODE_ERROR if unreadable."""
    if fmt == "jpeg":
        size = _jpeg_dimensions(data)
    elif fmt == "png":
        size = _png_dimensions(data)
    elif fmt == "bmp":
        size = _bmp_dimensions(data)
    else:
        size = _webp_dimensions(data)
    if size is None or size[0] <= 0 or size[1] <= 0:
        log.debug("%s: %s header unreadable or declares no pixels", param, fmt)
        raise ImageDecodeError(param)
    return size


def _jpeg_segments(data: bytes):
    """Yield (marker, payload offset, payload length) for each marker after SOI.

    Scan data after SOS is skipped by searching for the next marker, which also steps
    over garbage between segments the way libjpeg does. Stops at the end of the data.
    """
    pos = 2
    while True:
        match = _JPEG_MARKER.search(data, pos)
        if match is None:
            return
        marker = data[match.start() + 1]
        pos = match.end()
        if marker in _JPEG_STANDALONE or marker == _JPEG_EOI:
            yield marker, pos, 0
            continue
        if pos + 2 > len(data):
            return
        length = int.from_bytes(data[pos:pos + 2], "big")
        if length < 2:
            return
        yield marker, pos + 2, length - 2
        pos += length


def _jpeg_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    for marker, start, length in _jpeg_segments(data):
        if marker in _JPEG_SOF:
            if length < 5 or start + 5 > len(data):
                return None
            height = int.from_bytes(data[start + 1:start + 3], "big")
            width = int.from_bytes(data[start + 3:start + 5], "big")
            return width, height
        if marker in (_JPEG_SOS, _JPEG_EOI):
            return None  # no frame header before the first scan
    return None


def _jpeg_is_complete(data: bytes) -> bool:
    """True when the marker walk reaches EOI; data after it (MPF, vendor trailers) is fine.

    The walk skips segments by their lengths, so an EOI inside the EXIF thumbnail of a
    truncated file is not mistaken for the end of the main image.
    """
    return any(marker == _JPEG_EOI for marker, _, _ in _jpeg_segments(data))


def _png_chunks_fit(data: bytes) -> bool:
    """True when every chunk's declared length lies inside ``data``, up to IEND."""
    pos = len(_PNG_SIGNATURE)
    while pos + 12 <= len(data):  # length, type, payload, CRC
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        pos += 12 + length
        if pos > len(data):
            return False
        if kind == _PNG_IEND:
            return True
    return False


def _png_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    # The IHDR chunk must come first: length 13, type, width, height (big-endian).
    if len(data) < 24 or data[8:16] != b"\x00\x00\x00\x0dIHDR":
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _bmp_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    if len(data) < 26:
        return None
    header_bytes = int.from_bytes(data[14:18], "little")
    if header_bytes == _BMP_CORE_HEADER_BYTES:
        return int.from_bytes(data[18:20], "little"), int.from_bytes(data[20:22], "little")
    if header_bytes < 16:
        return None
    width = int.from_bytes(data[18:22], "little", signed=True)
    # a negative height marks a top-down bitmap
    height = abs(int.from_bytes(data[22:26], "little", signed=True))
    return width, height


def _webp_dimensions(data: bytes) -> Optional[Tuple[int, int]]:
    chunk = data[12:16]
    payload = data[20:]
    if chunk == b"VP8 ":  # lossy: 3-byte frame tag, start code, 14-bit sizes
        if len(payload) < 10 or payload[3:6] != b"\x9d\x01\x2a":
            return None
        return (int.from_bytes(payload[6:8], "little") & 0x3FFF,
                int.from_bytes(payload[8:10], "little") & 0x3FFF)
    if chunk == b"VP8L":  # lossless: signature byte, then 14-bit sizes minus one
        if len(payload) < 5 or payload[0] != 0x2F:
            return None
        bits = int.from_bytes(payload[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes minus one
        if len(payload) < 10:
            return None
        return (int.from_bytes(payload[4:7], "little") + 1,
                int.from_bytes(payload[7:10], "little") + 1)
    return None


def _check_dimensions(width: int, height: int, param: str, limits: ImageLimits) -> None:
    if (max(width, height) > limits.max_side_px
            or width * height > limits.max_pixels):
        log.debug("%s: %dx%d pixels exceeds the limits (%d px side, %d pixels)",
                  param, width, height, limits.max_side_px, limits.max_pixels)
        raise ImageSizeTooLargeError(param)


# --- pixels ---------------------------------------------------------------------------

def _decode_pixels(data: bytes, param: str) -> np.ndarray:
    # IMREAD_COLOR applies the EXIF orientation, expands grey to three channels, drops
    # alpha and scales 16-bit samples down to 8 bits.
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:
        log.debug("%s: OpenCV failed to decode: %s", param, exc)
        raise ImageDecodeError(param) from None
    if image is None or image.size == 0:
        raise ImageDecodeError(param)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        # IMREAD_COLOR promises this layout and every later stage relies on it
        log.warning("%s: OpenCV returned %s %s instead of H x W x 3 uint8",
                    param, image.shape, image.dtype)
        raise ImageDecodeError(param)
    return image
