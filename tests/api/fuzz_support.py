"""What the OpenAPI fuzz passes share: the daemon they fuzz, the images they feed it, and the
rule every answer must keep (issue 12, "Hardening", part 2).

Used by tests/api/test_fuzz_openapi.py (the quick pass in ``make test``) and by
bench/fuzz/openapi.py (the long pass). Schemathesis writes the bodies from /openapi.json;
two things are then changed in each body before it is sent, deterministically from the body
itself so that a failing case replays and shrinks:

* image fields (``*_base64``, ``register_image``, ``*image_path``) often get an entry of a
  small pool: real photos scaled down (so the face pipeline runs, but quickly), the same
  photo in each accepted encoding, and hostile files (truncated, headers declaring
  gigapixel sizes, a FIFO, a symlink out of the image root...). Random strings alone never
  get past the base64 / header checks;
* every ``scheme://host`` in any string is pointed at 127.0.0.1:9 (nothing listens there),
  so a fuzzed camera URL or push URL (setconfigs' HISTORY_EVENT_UPLOAD_URL) can never make
  the daemon contact another host.

The rule (``answer_problem``): no 5xx except a documented domain answer
(NOT_SUPPORT_IR_LIVENESS, 501), and every non-2xx answer is the spec's envelope
``{"error": {"code", "message"}}`` with a (code, status) the document lists for that
operation (its ``x-error-codes``) or a routing code (README 3.1).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import cv2
import numpy as np

from sophon_face.api.docs import document
from sophon_face.api.http import VALIDATION_CONTEXT
from sophon_face.api.validation import Context
from sophon_face.app import build_app
from sophon_face.config import Config, config_from_mapping
from sophon_face.manifest.schema import load_manifest

TEST_DATA_DIR = Path(__file__).resolve().parents[1] / "data"
CPU_MANIFEST = Path(__file__).resolve().parents[2] / "models" / "cpu.yaml"

#: Test photos (tests/data) and the longest side they are scaled down to: a face (the
#: pipeline's whole path), several faces, none.
PHOTOS: Tuple[Tuple[str, str, int], ...] = (
    ("portrait", "sunak.jpg", 256),
    ("small_portrait", "macron_2014.jpg", 244),
    ("group", "solvay_1927_group.jpg", 640),
    ("no_face", "no_face_coffee.jpg", 200),
)

#: A body field holding in-band image data / a local image path (README 4.1, 4.2).
_BASE64_FIELD = re.compile(r"(_base64|_base64_str|^register_image)$")
_PATH_FIELD = re.compile(r"image_path$")
#: How often a present image field is replaced by a pool entry (else the fuzzed string).
POOL_SHARE = 0.6

#: ``scheme://`` followed by the authority (userinfo, host, port).
_URL_AUTHORITY = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#\s,;\"']*)")
#: Loopback, port 9 (discard): refused at once, reaches nothing.
CONFINED_AUTHORITY = "127.0.0.1:9"

#: The router's own answers, valid on any path (README 3.1).
ROUTER_CODES = frozenset({("NOT_FOUND", 404), ("METHOD_NOT_ALLOWED", 405)})
#: 5xx answers that are a documented domain answer, not a server failure: search with
#: ``liveness_rgb_ir`` on a daemon without an infrared liveness model (compare.md 5).
DOMAIN_5XX_CODES = frozenset({"NOT_SUPPORT_IR_LIVENESS"})


def fuzz_config(work_dir: Path, image_root: Path) -> Config:
    """The daemon under fuzz: its own store and event folders under ``work_dir``, path
    inputs confined to ``image_root``, every port ephemeral, no free-space floor (so
    INSUFFICIENT_SPACE_LEFT cannot hide another answer)."""
    return config_from_mapping({
        "server": {"ws_port": 0},
        "preview": {"port": 0, "control_port": 0},
        "storage": {"data_dir": str(work_dir / "daemon"), "min_free_bytes": 0},
        "images": {"roots": [str(image_root)]},
        "events": {"remote_image_dir": str(work_dir / "remote-events")},
        "workers": {"count": 1, "intra_op_threads": 2},
        "video": {"decoder": "opencv", "reconnect_min_s": 5.0},
    })


def cpu_document() -> Dict[str, Any]:
    """/openapi.json as a CPU-profile daemon serves it, built without starting one (the
    pytest pass needs the operations at collection time; it checks the served document
    is this one before fuzzing)."""
    app = build_app(fuzz_config(Path("unused"), Path("unused")))
    app[VALIDATION_CONTEXT] = Context(
        feature_dim=int(load_manifest(CPU_MANIFEST).recognizer.feature_dim or 512))
    return document(app)


# ------------------------------------------------------------------------- image pool

def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG header that declares ``width`` x ``height`` with a few bytes of "pixels"."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b""))


def jpeg_declaring(width: int, height: int) -> bytes:
    """SOI, a baseline frame header declaring ``width`` x ``height``, junk, EOI."""
    sof = struct.pack(">BHHB", 8, height, width, 3) + b"\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return (b"\xff\xd8" + b"\xff\xc0" + struct.pack(">H", len(sof) + 2) + sof
            + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00" + b"\x12\x34" * 16 + b"\xff\xd9")


def bmp_declaring(width: int, height: int) -> bytes:
    """A BITMAPINFOHEADER declaring ``width`` x ``height`` (negative: top-down) 24-bit."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    header = struct.pack("<IHHI", 14 + len(info) + 12, 0, 0, 14 + len(info))
    return b"BM" + header + info + b"\0" * 12


def with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """``jpeg`` with an APP1 EXIF segment whose only tag is Orientation."""
    tiff = (b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
            + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0))
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]


def _encode(image_bgr: np.ndarray, ext: str, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, image_bgr, list(params))
    if not ok:
        raise RuntimeError(f"OpenCV could not encode {ext}")
    return buf.tobytes()


def _scaled(name: str, longest_px: int) -> np.ndarray:
    image = cv2.imread(str(TEST_DATA_DIR / name), cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(TEST_DATA_DIR / name)
    scale = longest_px / max(image.shape[:2])
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)),
                                   max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    return image


def image_files() -> Dict[str, bytes]:
    """Name -> bytes of every pool image: small real photos in each format, then hostile."""
    files: Dict[str, bytes] = {}
    for label, name, longest_px in PHOTOS:
        files[f"{label}.jpg"] = _encode(_scaled(name, longest_px), ".jpg",
                                        cv2.IMWRITE_JPEG_QUALITY, 85)
    portrait = _scaled(PHOTOS[0][1], PHOTOS[0][2])
    files["portrait.png"] = _encode(portrait, ".png")
    files["portrait.bmp"] = _encode(portrait, ".bmp")
    files["portrait.webp"] = _encode(portrait, ".webp", cv2.IMWRITE_WEBP_QUALITY, 80)
    files["portrait_grey.jpg"] = _encode(cv2.cvtColor(portrait, cv2.COLOR_BGR2GRAY), ".jpg")
    rgba = cv2.cvtColor(portrait, cv2.COLOR_BGR2BGRA)
    files["portrait_rgba.png"] = _encode(rgba, ".png")
    files["portrait_16bit.png"] = _encode(portrait.astype(np.uint16) * 257, ".png")
    files["portrait_rotated.jpg"] = with_exif_orientation(files["portrait.jpg"], 6)
    files["one_pixel.png"] = _encode(np.zeros((1, 1, 3), np.uint8), ".png")
    files["tall_strip.jpg"] = _encode(np.full((4000, 2, 3), 128, np.uint8), ".jpg")
    jpeg = files["portrait.jpg"]
    files["truncated.jpg"] = jpeg[:len(jpeg) // 2]
    files["no_eoi.jpg"] = jpeg[:-2]
    files["garbage_after_soi.jpg"] = jpeg[:4] + bytes(range(256)) * 4 + b"\xff\xd9"
    png = files["portrait.png"]
    files["truncated.png"] = png[:len(png) // 3]
    files["bomb.png"] = png_declaring(100000, 100000)
    files["bomb_area.png"] = png_declaring(8192, 8192)
    files["zero_width.png"] = png_declaring(0, 10)
    files["bomb.jpg"] = jpeg_declaring(65535, 65535)
    files["zero.jpg"] = jpeg_declaring(0, 0)
    files["bomb.bmp"] = bmp_declaring(60000, -60000)
    files["negative.bmp"] = bmp_declaring(-16, 16)
    files["short.bmp"] = b"BM" + b"\0" * 10
    files["riff_not_webp.webp"] = b"RIFF\x10\x00\x00\x00WEBPVP8X" + b"\xff" * 14
    files["text.jpg"] = b"not an image at all\n"
    files["empty.jpg"] = b""
    return files


@dataclass
class ImagePool:
    """Values for image fields: base64 strings and local paths (under ``root``)."""

    root: Path
    base64_values: List[str] = field(default_factory=list)
    path_values: List[str] = field(default_factory=list)

    @classmethod
    def build(cls, work_dir: Path) -> "ImagePool":
        """Writes the pool files into ``work_dir/images`` (the daemon's image root) and a
        few traps beside and inside it."""
        root = work_dir / "images"
        root.mkdir(parents=True, exist_ok=True)
        pool = cls(root)
        files = image_files()
        for name, data in files.items():
            (root / name).write_bytes(data)
        outside = work_dir / "outside.jpg"  # a real photo just outside the root
        outside.write_bytes(files["portrait.jpg"])
        (root / "sub").mkdir(exist_ok=True)
        traps = {"escape_link.jpg": outside, "passwd_link.jpg": Path("/etc/passwd"),
                 "dir_link": root / "sub"}
        for name, target in traps.items():
            link = root / name
            if not link.is_symlink():
                link.symlink_to(target)
        fifo = root / "fifo.jpg"
        if hasattr(os, "mkfifo") and not fifo.exists():
            os.mkfifo(str(fifo))  # opening it for reading would block a naive reader

        for name in ("portrait.jpg", "small_portrait.jpg", "group.jpg", "no_face.jpg",
                     "portrait.png", "portrait.bmp", "portrait.webp", "portrait_rotated.jpg"):
            pool.base64_values.append(base64.b64encode(files[name]).decode("ascii"))
        portrait = files["portrait.jpg"]
        text = base64.b64encode(portrait).decode("ascii")
        pool.base64_values += [
            "data:image/jpeg;base64," + text,                      # data-URL prefix
            base64.encodebytes(portrait).decode("ascii"),          # a newline every 76
            base64.urlsafe_b64encode(portrait).decode("ascii").rstrip("="),  # url-safe
            text[:-1] if text.endswith("=") else text + "=",       # padding off by one
            " ".join(text[i:i + 64] for i in range(0, len(text), 64)),  # spaces
            "data:" + text,                                         # no comma
            "DATA:image/png;base64," + base64.b64encode(files["portrait.png"]).decode(),
            text[:len(text) // 2] + "!" + text[len(text) // 2:],   # a foreign character
            text + "====",
            "\u00e9" + text,                                        # non-ASCII
        ]
        for name, data in files.items():
            if name not in ("portrait.jpg", "small_portrait.jpg", "group.jpg", "no_face.jpg"):
                pool.base64_values.append(base64.b64encode(data).decode("ascii"))

        for name in files:
            pool.path_values.append(str(root / name))
        pool.path_values += [
            str(root / "escape_link.jpg"), str(root / "passwd_link.jpg"),
            str(root / "dir_link"), str(root / "sub"), str(root), str(fifo),
            str(root / "missing.jpg"), str(root / "sub" / ".." / ".." / "outside.jpg"),
            str(outside), "portrait.jpg", "/etc/passwd", "/proc/self/environ", "/dev/zero",
            str(root / "portrait.jpg") + "\x00.png", str(root / ("x" * 5000)),
            str(root / "portrait.jpg") + "/", "", "~/portrait.jpg", "file://" + str(root),
        ]
        return pool


# ------------------------------------------------------------------- shaping a body

def case_rng(body: Any) -> random.Random:
    """A generator seeded by the body itself: the same body is shaped the same way."""
    text = json.dumps(body, sort_keys=True, default=repr)
    return random.Random(zlib.crc32(text.encode("utf-8", "surrogatepass")))


def confine_urls(value: Any) -> Any:
    """``value`` with every ``scheme://authority`` pointed at 127.0.0.1:9, recursively."""
    if isinstance(value, str):
        return _URL_AUTHORITY.sub(lambda m: m.group(1) + CONFINED_AUTHORITY, value)
    if isinstance(value, list):
        return [confine_urls(v) for v in value]
    if isinstance(value, dict):
        return {confine_urls(k): confine_urls(v) for k, v in value.items()}
    return value


def shape_body(body: Any, pool: ImagePool) -> Any:
    """The body to send instead of ``body`` (see the module docstring)."""
    if not isinstance(body, dict):
        return confine_urls(body)
    rng = case_rng(body)
    out = dict(body)
    for key in sorted(out):
        if not isinstance(key, str) or rng.random() >= POOL_SHARE:
            continue
        if _BASE64_FIELD.search(key):
            out[key] = rng.choice(pool.base64_values)
        elif _PATH_FIELD.search(key):
            out[key] = rng.choice(pool.path_values)
    return confine_urls(out)


# ------------------------------------------------------------------------ the rule

def operations(doc: Mapping[str, Any]) -> Dict[Tuple[str, str], Dict[str, Any]]:
    """(METHOD, path template) -> the document's Operation object."""
    return {(method.upper(), path): op for path, item in doc["paths"].items()
            for method, op in item.items()}


def answer_problem(operation: Mapping[str, Any], status: int, content_type: Optional[str],
                   body: bytes) -> Optional[str]:
    """Why this answer breaks the rule, or None when it keeps it."""
    if status < 300:
        return None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        declared = operation.get("responses", {}).get(str(status), {}).get("content", {})
        if status < 500 and media in declared:
            return None  # e.g. getregisterimage's bare image/jpeg 404 (R4)
        return f"HTTP {status} with {content_type or 'no Content-Type'}: not the error envelope"
    try:
        payload = json.loads(body.decode("utf-8"))
    except ValueError:
        return f"HTTP {status}: body is not JSON: {body[:200]!r}"
    error = payload.get("error") if isinstance(payload, dict) else None
    if not (isinstance(payload, dict) and set(payload) == {"error"}
            and isinstance(error, dict) and set(error) == {"code", "message"}
            and isinstance(error["code"], str) and isinstance(error["message"], str)):
        return f"HTTP {status}: not the error envelope: {body[:200]!r}"
    code = error["code"]
    documented = {(c["code"], c["status"]) for c in operation.get("x-error-codes", ())}
    if status >= 500 and code not in DOMAIN_5XX_CODES:
        return f"server error: HTTP {status} {code} {error['message'][:200]!r}"
    if (code, status) not in documented | ROUTER_CODES:
        return f"HTTP {status} {code} is not documented for this operation"
    return None


# ------------------------------------------------------------------ one case, end to end

#: One answer may run the whole face pipeline on a pool photo; none takes near this.
REQUEST_TIMEOUT_S = 60.0


def conformance_checks() -> List[Any]:
    """Schemathesis' own checks of an answer against the document (imported late: the
    module is usable where schemathesis is not installed)."""
    from schemathesis.specs.openapi import checks

    return [checks.status_code_conformance, checks.content_type_conformance,
            checks.response_schema_conformance]


@dataclass
class Outcome:
    status: int
    #: What broke the rule, or the conformance check's report; None when all is well.
    problem: Optional[str]


def run_case(case: Any, base_url: str, pool: ImagePool,
             operations_by_key: Mapping[Tuple[str, str], Mapping[str, Any]],
             checks: Optional[List[Any]] = None) -> Outcome:
    """Shape ``case``'s body, send it, judge the answer (the rule, then conformance)."""
    if case.body is not None and not isinstance(case.body, (bytes, str)):
        case.body = shape_body(case.body, pool)
    response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT_S)
    operation = operations_by_key[(case.operation.method.upper(), case.operation.path)]
    content_type = (response.headers.get("content-type") or [None])[0]
    problem = answer_problem(operation, response.status_code, content_type, response.content)
    if problem is None:
        try:
            case.validate_response(response, checks=conformance_checks() if checks is None
                                   else checks)
        except Exception as exc:  # schemathesis' failure group: its text is the report
            problem = f"conformance: {exc}"
    return Outcome(response.status_code, problem)
