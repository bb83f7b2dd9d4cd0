"""atheris harness: request bodies through the daemon's own parsing and validation.

Each input is one POST to one endpoint of the routes table (aliases included): the
Content-Type header, then the body through ``read_json_object`` (Content-Type, BOM, UTF-8,
JSON, object, depth and list limits: api/http.py) and the endpoint's ``Schema.parse``
(api/schemas.py), the nested ``filters`` schema of the list endpoints, and setconfigs'
per-key rules (service/settings_keys.py). The device family validates in its service,
inside the write transaction: only its body parsing runs here (the OpenAPI fuzzing covers
the rest through the real daemon).

Input layout: byte 0 picks the mode (even: the rest is the raw body; odd: the rest drives
a structured body of the endpoint's own keys, with values of every JSON type, huge
integers, NaN and infinities, surrogates, enumerations in odd case, 512-number lists),
byte 1 the endpoint, byte 2 the Content-Type.

The rule: parsing either returns, or raises an ApiError with a 4xx status whose envelope
renders (messages are strings, an INVALID_ARGUMENTS / MISSING_ARGUMENTS message stays
short whatever the body). Anything else raised is a bug.

Run (from the project root; ``python -m bench.fuzz`` runs it with the seeds it writes):
    .venv/bin/python bench/fuzz/atheris_requests.py --seconds 60 --seed-dir DIR
    .venv/bin/python bench/fuzz/atheris_requests.py --replay bench/results/fuzz/crash-...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Tuple

PROJECT_DIR = Path(__file__).resolve().parents[2]
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from bench.fuzz.harness import TestOneInput, main  # noqa: E402

CONTENT_TYPES: Tuple[Any, ...] = (
    "application/json", "application/json; charset=utf-8", " Application/JSON ;x=1", None,
    "text/plain", "", "application/jsonx", "multipart/form-data; boundary=x",
)
#: An INVALID_ARGUMENTS / MISSING_ARGUMENTS message names a parameter and echoes a value
#: cut at errors.MAX_ECHOED_VALUE_CHARS (R10): it never grows with the body.
MAX_ARGUMENT_MESSAGE_CHARS = 1024
#: Strings a structured body draws from: enumerations in odd case, numeric text, ids.
WORDS = ("", " ", "high", "HIGH", "Middle", "normal", "low", "no", "employee", "VIP",
         "liveness_rgb", "LIVENESS_RGB_IR", "rtsp", "photo", "file", "true", "1", "0",
         "1e999", "-0", "NaN", "10.0", "270ec5e6", "\u4f5a\u540d", "\ud800", "a" * 129,
         "data:image/jpeg;base64,", "/9j/", "..", "/etc/passwd", "MATCH_THRESHOLD",
         "HISTORY_EVENT_UPLOAD_URL", "EVENT_IMAGE_PATH", "GATE_EVENT_IMAGE_PATH", "admin")


def endpoints() -> List[Tuple[str, Any]]:
    """(path, Operation) of every POST route, in the routes table's order."""
    from sophon_face.api.openapi_catalogue import OPERATIONS
    from sophon_face.api.routes import BASE, ROUTES

    return [(BASE + path, OPERATIONS[handler]) for method, path, handler in ROUTES
            if method == "POST"]


def key_names(op: Any) -> List[str]:
    """The body keys an endpoint knows (its schema's, the nested and legacy ones)."""
    from sophon_face.api.validation import Param

    names: List[str] = []
    schemas = ([op.request] if op.request is not None else []) + list(op.nested.values())
    for schema in schemas:
        for item in schema.items:
            names += [item.name] if isinstance(item, Param) else list(item.names)
        names += list(schema.aliases)
    if op.body_schema is not None:
        names += list(op.body_schema.get("properties", {}))
    return list(dict.fromkeys(names + list(op.at_least_one))) or ["x"]


def structured_body(fdp: Any, names: List[str]) -> bytes:
    def edge_number() -> Any:
        kind = fdp.ConsumeIntInRange(0, 5)
        if kind == 0:  # an integer past 64 bits, often past float range (2 ** 1024)
            return fdp.ConsumeInt(fdp.ConsumeIntInRange(8, 160))
        if kind == 1:
            return fdp.ConsumeFloat()  # NaN and infinities included
        if kind == 2:
            return fdp.ConsumeBool()
        if kind == 3:
            return WORDS[fdp.ConsumeIntInRange(0, len(WORDS) - 1)]
        if kind == 4:
            return None
        return fdp.ConsumeIntInRange(-1, 1)

    def value(depth: int) -> Any:
        kind = fdp.ConsumeIntInRange(0, 11 if depth < 4 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return fdp.ConsumeBool()
        if kind == 2:
            return fdp.ConsumeIntInRange(-2, 100)
        if kind == 3:
            return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 160))  # past 64 bits and float range
        if kind == 4:
            return fdp.ConsumeFloat()  # NaN and infinities included
        if kind == 5:
            return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40))
        if kind == 6:
            return WORDS[fdp.ConsumeIntInRange(0, len(WORDS) - 1)]
        if kind == 7:
            return [value(depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
        if kind == 8:
            return {fdp.ConsumeUnicode(8) if fdp.ConsumeBool() else
                    names[fdp.ConsumeIntInRange(0, len(names) - 1)]: value(depth + 1)
                    for _ in range(fdp.ConsumeIntInRange(0, 4))}
        if kind == 9:  # a feature-sized list of one number, and one odd element
            n = (128, 512, 511, 513)[fdp.ConsumeIntInRange(0, 3)]
            items: List[Any] = [fdp.ConsumeFloat()] * n
            items[fdp.ConsumeIntInRange(0, n - 1)] = edge_number()
            return items
        if kind == 10:
            return [WORDS[fdp.ConsumeIntInRange(0, len(WORDS) - 1)]
                    for _ in range(fdp.ConsumeIntInRange(0, 3))]
        return fdp.ConsumeIntInRange(0, 2 ** 31)

    body: Dict[str, Any] = {}
    for _ in range(fdp.ConsumeIntInRange(0, 8)):
        body[names[fdp.ConsumeIntInRange(0, len(names) - 1)]] = value(1)
    return json.dumps(body).encode("utf-8", "surrogatepass")


class _Body:
    """Just what ``web.Request.read`` asks of its payload stream."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def set_read_chunk_size(self, size: int) -> None:
        pass

    async def readany(self) -> bytes:
        data, self._data = self._data, b""
        return data


def load() -> TestOneInput:
    import asyncio

    from aiohttp.test_utils import make_mocked_request

    from sophon_face.api.http import (VALIDATION_CONTEXT, error_response, parse_request,
                                      read_json_object)
    from sophon_face.api.validation import Context
    from sophon_face.app import build_app
    from sophon_face.config import config_from_mapping
    from sophon_face.errors import ApiError
    from sophon_face.service.settings_keys import canonical, coerce

    app = build_app(config_from_mapping({}))
    app[VALIDATION_CONTEXT] = Context(feature_dim=128)
    table = endpoints()
    names = [key_names(op) for _path, op in table]
    loop = asyncio.new_event_loop()
    provider = _provider()

    async def parse(path: str, op: Any, headers: Dict[str, str], body: bytes) -> None:
        request = make_mocked_request("POST", path, headers=headers, app=app,
                                      payload=_Body(body), client_max_size=1 << 25)
        if op.request is None:
            await read_json_object(request, op.body_required)
            return
        parsed = await parse_request(request, op.request)
        ctx = app[VALIDATION_CONTEXT]
        for key, nested in op.nested.items():
            nested.parse(parsed[key], ctx, prefix=key + ".")
        if path.endswith("/setconfigs"):
            for name, raw in parsed["config_dict"].items():
                key = canonical(name)
                if key is not None:
                    try:
                        coerce(key, raw)
                    except ValueError:
                        pass

    def test_one_input(data: bytes) -> None:
        if len(data) < 3:
            return
        index = data[1] % len(table)
        path, op = table[index]
        content_type = CONTENT_TYPES[data[2] % len(CONTENT_TYPES)]
        if data[0] % 2:
            body = structured_body(provider(data[3:]), names[index])
        else:
            body = data[3:]
        headers = {"Content-Length": str(len(body))}
        if content_type is not None:
            headers["Content-Type"] = content_type
        try:
            loop.run_until_complete(parse(path, op, headers, body))
        except ApiError as error:
            assert 400 <= error.http_status < 500, (error.code, error.http_status)
            assert isinstance(error.message, str), repr(error.message)
            if error.code in ("INVALID_ARGUMENTS", "MISSING_ARGUMENTS"):
                assert len(error.message) <= MAX_ARGUMENT_MESSAGE_CHARS, (
                    error.code, len(error.message), error.message[:200])
            rendered = error_response(error)
            envelope = json.loads(rendered.text)
            assert envelope == {"error": {"code": error.code, "message": error.message}}

    return test_one_input


def _provider() -> Any:
    """atheris' FuzzedDataProvider, or a small stand-in with the same methods."""
    try:
        import atheris
        return atheris.FuzzedDataProvider
    except ImportError:
        return _Provider


class _Provider:
    """The few FuzzedDataProvider methods used above, for the run without atheris."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def _take(self, n: int) -> bytes:
        chunk = self._data[self._pos:self._pos + n]
        self._pos += len(chunk)
        return chunk

    def ConsumeIntInRange(self, low: int, high: int) -> int:  # noqa: N802 (atheris' name)
        span = high - low + 1
        raw = int.from_bytes(self._take((span.bit_length() + 7) // 8 or 1), "little")
        return low + raw % span

    def ConsumeBool(self) -> bool:  # noqa: N802
        return bool(self.ConsumeIntInRange(0, 1))

    def ConsumeInt(self, n_bytes: int) -> int:  # noqa: N802
        return int.from_bytes(self._take(n_bytes), "little", signed=True)

    def ConsumeFloat(self) -> float:  # noqa: N802
        import struct
        raw = self._take(8).ljust(8, b"\0")
        return struct.unpack("<d", raw)[0]

    def ConsumeUnicode(self, n: int) -> str:  # noqa: N802
        raw = self._take(n * 2)
        return raw[:len(raw) // 2 * 2].decode("utf-16-le", "surrogatepass")


if __name__ == "__main__":
    sys.exit(main("requests", load))
