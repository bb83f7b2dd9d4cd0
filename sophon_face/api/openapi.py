"""The OpenAPI 3.1 document of the daemon (issue 11), generated, never written by hand.

One source of truth for each fact:

* paths and methods: the app's own router (what is served is what is documented);
* request bodies: the very ``Schema`` objects the handlers validate with (api/schemas.py),
  walked parameter by parameter and parser by parser into JSON Schema 2020-12 — types,
  defaults, required fields, one-of groups with their priority, length and range limits;
* error codes: the request-level ones follow from the schema (an endpoint with a required
  parameter can answer MISSING_ARGUMENTS...), the service-level ones are listed per
  endpoint in openapi_catalogue.py, and every HTTP status comes from errors.py;
* summaries, success shapes and the spec's examples: openapi_catalogue.py.

The parsers of api/validation.py are closures (``string(128)`` returns a ``parse``); their
limits are read back from the closure's variables. A parser this module cannot translate
is an error, not a silently untyped field: tests/api/test_openapi.py builds the document.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from aiohttp import web

from .. import __version__, errors
from ..errors import ApiError, ServiceBusy, describe_value, error_class
from ..store.codec import storable
from . import validation
from .http import BODY_TOO_LARGE_MESSAGE
from .validation import Context, OneOf, Param, Parser, Schema

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"
ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"

#: (method, path, handler), as served.
Route = Tuple[str, str, Callable[..., Any]]


@dataclass(frozen=True)
class Operation:
    """What the code cannot say about one endpoint (written in openapi_catalogue.py)."""

    summary: str
    #: Where the spec defines it, e.g. ``"identity.md §2"``; the file names the tag.
    spec: str
    description: str = ""
    #: The schema the handler validates its JSON body with; None for GET routes and for
    #: bodies validated by hand in a service (then ``body_schema``).
    request: Optional[Schema] = None
    #: Object parameters checked by a second schema after the first (getidentities' filters).
    nested: Mapping[str, Schema] = field(default_factory=dict)
    #: A JSON Schema written by hand, for a body validated by hand (device.md).
    body_schema: Optional[Dict[str, Any]] = None
    #: For ``body_schema`` only: False when an empty body counts as ``{}`` (README 3.3).
    body_required: bool = True
    #: Presence rule checked by the handler itself: at least one of these (wipedata, R39).
    at_least_one: Tuple[str, ...] = ()
    #: Codes the endpoint raises after its body is parsed (state, images, services), in the
    #: order of the spec's "Validation and errors" table.
    errors: Tuple[str, ...] = ()
    #: It writes to the store: INSUFFICIENT_SPACE_LEFT is possible.
    writes: bool = False
    #: It queues a job for the inference workers: a full queue answers 503 (ServiceBusy).
    inference: bool = False
    #: JSON Schema of the HTTP 200 JSON body.
    response: Optional[Dict[str, Any]] = None
    #: Named examples of the request body and of the HTTP 200 body.
    request_examples: Mapping[str, Any] = field(default_factory=dict)
    response_examples: Mapping[str, Any] = field(default_factory=dict)
    #: Non-JSON or extra responses, as OpenAPI Response objects by status.
    responses: Mapping[str, Dict[str, Any]] = field(default_factory=dict)
    #: OpenAPI Parameter objects; a path parameter is used only on paths that have it.
    parameters: Tuple[Dict[str, Any], ...] = ()
    #: The handler of the canonical form when this route is another form of it with its
    #: own handler (POST getregisterimage, R3). Routes sharing a handler need nothing: the
    #: first one served is canonical, the others are its aliases (README 2.1).
    alias_of: Optional[Callable[..., Any]] = None
    #: Field descriptions for this endpoint, over the shared ones.
    fields: Mapping[str, str] = field(default_factory=dict)

    @property
    def tag(self) -> str:
        return self.spec.split(".md", 1)[0] if ".md" in self.spec else self.spec


# --------------------------------------------------------------------- parsers -> JSON Schema

ClosureVars = inspect.ClosureVars


def _string(cv: ClosureVars, ctx: Context) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": "string"}
    if cv.nonlocals["non_empty"]:
        out["minLength"] = 1
    if cv.nonlocals["max_chars"] is not None:
        out["maxLength"] = cv.nonlocals["max_chars"]
    return out


def _integer(cv: ClosureVars, ctx: Context) -> Dict[str, Any]:
    return _bounded("integer", cv.nonlocals["minimum"], cv.nonlocals["maximum"])


def _number(cv: ClosureVars, ctx: Context) -> Dict[str, Any]:
    return _bounded("number", cv.nonlocals["minimum"], cv.nonlocals["maximum"])


def _bounded(kind: str, minimum: Any, maximum: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": kind}
    if minimum is not None:
        out["minimum"] = minimum
    if maximum is not None:
        out["maximum"] = maximum
    return out


def _choice(cv: ClosureVars, ctx: Context) -> Dict[str, Any]:
    canonical: Mapping[str, str] = cv.nonlocals["canonical"]  # lower-case spelling -> value
    values = list(dict.fromkeys(canonical.values()))
    synonyms = {k: v for k, v in canonical.items() if k != v.lower()}
    text = "Matched case-insensitively; answered in the spelling listed."
    if synonyms:
        text += " Synonyms: " + ", ".join(f'"{k}" = "{v}"' for k, v in synonyms.items()) + "."
    return {"type": "string", "enum": values + list(synonyms), "description": text}


def _string_list(cv: ClosureVars, ctx: Context) -> Dict[str, Any]:
    item: Dict[str, Any] = {"type": "string"}
    if cv.nonlocals["max_item_chars"] is not None:
        item["maxLength"] = cv.nonlocals["max_item_chars"]
    out = {"type": "array", "items": item, "maxItems": cv.globals["MAX_LIST_ITEMS"]}
    if cv.nonlocals["dedupe"]:
        out["description"] = "Duplicates are dropped, keeping the first occurrence."
    return out


def _secret(cv: ClosureVars, ctx: Context) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": "string", "format": "password", "writeOnly": True,
                           "description": "Never echoed, not even in error messages."}
    if cv.nonlocals["min_chars"]:
        out["minLength"] = cv.nonlocals["min_chars"]
    if cv.nonlocals["max_chars"] is not None:
        out["maxLength"] = cv.nonlocals["max_chars"]
    return out


def _boolean(ctx: Context) -> Dict[str, Any]:
    return {"type": "boolean"}


def _stored_object(ctx: Context) -> Dict[str, Any]:
    depth = inspect.signature(storable).parameters["max_depth"].default
    return {"type": "object", "description": (
        f"Any JSON object, stored as given: at most {depth} levels of nesting, integers "
        "within 64 bits.")}


def _any_object(ctx: Context) -> Dict[str, Any]:
    return {"type": "object"}


def feature_schema(dim: int) -> Dict[str, Any]:
    """README 4.3: ``dim`` finite numbers, not all zero, or the base64 of ``dim`` float32."""
    n_bytes = 4 * dim
    pads = (3 - n_bytes % 3) % 3
    chars = 4 * ((n_bytes + 2) // 3)
    return {"oneOf": [
        {"type": "array", "items": {"type": "number"}, "minItems": dim, "maxItems": dim,
         "not": {"items": {"const": 0}}, "description": f"{dim} numbers, not all zero."},
        {"type": "string", "contentEncoding": "base64",
         "pattern": f"^[A-Za-z0-9+/]{{{chars - pads}}}={{{pads}}}$",
         "description": f"base64 of {dim} little-endian float32 ({n_bytes} bytes), the "
                        "format of detect's feature_base64_str."},
    ], "description": "A face feature from the same recognizer; L2-normalised on arrival."}


def _feature_vector(ctx: Context) -> Dict[str, Any]:
    return feature_schema(ctx.feature_dim)


#: Parsers that are plain functions, by identity.
_PLAIN: Dict[Parser, Callable[[Context], Dict[str, Any]]] = {
    validation.boolean: _boolean,
    validation.obj: _stored_object,
    validation.obj_any: _any_object,
    validation.feature_vector: _feature_vector,
}

#: Parser factories, by name: the closure each returns is read through its variables.
_FACTORIES: Dict[str, Callable[[ClosureVars, Context], Dict[str, Any]]] = {
    validation.string.__qualname__: _string,
    validation.integer.__qualname__: _integer,
    validation.number.__qualname__: _number,
    validation.choice.__qualname__: _choice,
    validation.string_list.__qualname__: _string_list,
    validation.secret.__qualname__: _secret,
}


def parser_schema(parse: Parser, ctx: Context) -> Dict[str, Any]:
    """The JSON Schema of the values ``parse`` accepts."""
    plain = _PLAIN.get(parse)
    if plain is not None:
        return plain(ctx)
    qualname = getattr(parse, "__qualname__", "")
    if getattr(parse, "__module__", None) == validation.__name__ and ".<locals>." in qualname:
        factory = _FACTORIES.get(qualname.split(".<locals>.", 1)[0])
        if factory is not None:
            return factory(inspect.getclosurevars(parse), ctx)
    raise TypeError(f"no JSON Schema translation for the parser {parse!r} "
                    "(teach api/openapi.py about it)")


def nullable(schema: Dict[str, Any]) -> Dict[str, Any]:
    """README 3.4: ``null`` is the same as absent, so every optional field accepts it."""
    out = dict(schema)
    if "oneOf" in out or "anyOf" in out:
        key = "oneOf" if "oneOf" in out else "anyOf"
        out[key] = list(out[key]) + [{"type": "null"}]
        return out
    kind = out.get("type")
    if isinstance(kind, str):
        out["type"] = [kind, "null"]
    if "enum" in out:
        out["enum"] = list(out["enum"]) + [None]
    return out


def _present(name: str) -> Dict[str, Any]:
    return {"required": [name], "properties": {name: {"not": {"type": "null"}}}}


def _describe(schema: Dict[str, Any], text: str) -> Dict[str, Any]:
    if not text:
        return schema
    out = dict(schema)
    out["description"] = (text + " " + out["description"]) if out.get("description") else text
    return out


def body_schema(schema: Schema, ctx: Context, nested: Optional[Mapping[str, Schema]] = None,
                docs: Optional[Mapping[str, str]] = None,
                at_least_one: Sequence[str] = ()) -> Dict[str, Any]:
    """JSON Schema 2020-12 of a request body validated by ``schema`` (README 3.3-3.6)."""
    nested = nested or {}
    docs = docs or {}
    properties: Dict[str, Any] = {}
    required: List[str] = []
    presence: List[Dict[str, Any]] = []  # anyOf groups, all of which must hold
    groups: List[Dict[str, Any]] = []
    legacy_of: Dict[str, List[str]] = {}
    for legacy, key in schema.aliases.items():
        legacy_of.setdefault(key, []).append(legacy)

    def value_schema(name: str, parse: Parser) -> Dict[str, Any]:
        if name in nested:
            return body_schema(nested[name], ctx, docs=docs)
        return parser_schema(parse, ctx)

    for item in schema.items:
        if isinstance(item, Param):
            sub = _describe(value_schema(item.name, item.parse), docs.get(item.name, ""))
            if item.default is not None:
                sub["default"] = item.default
            legacies = legacy_of.get(item.name, [])
            if item.required and legacies:
                presence.append({"anyOf": [_present(n) for n in [item.name] + legacies]})
            elif item.required:
                required.append(item.name)
            properties[item.name] = nullable(sub) if (legacies or not item.required) else sub
            for legacy in legacies:
                properties[legacy] = dict(nullable(value_schema(item.name, item.parse)),
                                          deprecated=True, description=(
                    f"Legacy name of {item.name}, used only when {item.name} is absent."))
        else:
            group = "/".join(item.names)
            for name in item.names:
                rank = item.priority.index(name) + 1
                note = (f"One of {group} ({'required' if item.required else 'optional'}); "
                        f"priority {rank} of {len(item.priority)}.")
                sub = _describe(value_schema(name, item.parsers[name]),
                                (docs.get(name, "") + " " + note).strip())
                properties[name] = nullable(sub)
            if item.required:
                presence.append({"anyOf": [_present(n) for n in item.priority]})
            groups.append({"members": list(item.names), "priority": list(item.priority),
                           "required": item.required})
    if at_least_one:
        presence.append({"anyOf": [_present(n) for n in at_least_one]})
        groups.append({"members": list(at_least_one), "priority": [], "required": True})
    out: Dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        out["required"] = required
    if presence:
        out["allOf"] = presence
    if groups:
        out["x-one-of"] = groups
        out["description"] = (
            "One-of groups (x-one-of): at least one member of a required group must be "
            "present and not null, or the answer is MISSING_ARGUMENTS naming all members "
            "joined by '/'. When several are sent the daemon uses the one of highest "
            "priority and ignores the others without validating them (README 3.6).")
    return out


# ------------------------------------------------------------------------------ errors

#: README 12.2: example messages for the codes whose message is a value, not a fixed text.
_EXAMPLE_MESSAGES = {
    "CONFIG_ITEM_FAIL": "MATCH_THRESHOLD,FOO",
    "DEVICE_ADDRESS_DUPLICATE_ERROR": "rtsp://192.168.1.100:554/main/av",
    "DEVICE_ID_NOT_FOUND": "192.168.1.22",
    "DEVICE_PERVIEW_ID_NOT_EXIST": "2c1a6a12-ecf4-4490-a2fc-8d7a5023bfcd",
    "DEVICE_RTMP_ADDRESS_DUPLICATE_ERROR": "rtmp://192.168.1.10/live/cam1",
    "ID_NOT_FOUND": "100000",
    "ID_REPEAT_ERROR": "100000",
    "IMAGE_DECODE_ERROR": "register_image",
    "IMAGE_NOT_OPENED": "/data/image/test.jpg",
    "IMAGE_SIZE_TOO_LARGE_ERROR": "register_image",
    "LIVENESS_DETECT_FAIL": "liveness_rgb",
    "LOW_QUALITY_ERROR": "headpose,clarity",
    "NAME_REPEAT_ERROR": "测试组",
    "NO_FACE_ERROR": "image_base64_str",
    "PERMISSION_ID_NOT_FOUND": "270ec5e6",
    "UNSUPPORT_CONTENT_TYPE": "text/plain",
    "NOT_FOUND": "/sophon/v2/face/nosuchpath",
    "METHOD_NOT_ALLOWED": "GET",
}


@dataclass(frozen=True)
class ErrorCase:
    code: str
    status: int
    message: str


#: Codes whose message is the name of the image parameter concerned (README 12.2).
_NAMES_THE_IMAGE = ("IMAGE_DECODE_ERROR", "IMAGE_SIZE_TOO_LARGE_ERROR", "NO_FACE_ERROR")


def _image_param(schema: Optional[Schema]) -> Optional[str]:
    """The first in-band image parameter of ``schema``: a one-of member taking a plain
    string that is not a path (``register_image``, ``image_1_base64``...)."""
    for item in schema.items if schema is not None else ():
        if isinstance(item, OneOf):
            for name in item.priority:
                if item.parsers[name] is validation.ANY_STRING and not name.endswith("_path"):
                    return name
    return None


def _case(code: str, message: Optional[str] = None, status: Optional[int] = None) -> ErrorCase:
    cls = error_class(code)  # KeyError for a code errors.py does not know
    text = message if message is not None else (
        cls.default_message or _EXAMPLE_MESSAGES.get(code, "<value>"))
    return ErrorCase(code, cls.http_status if status is None else status, text)


def _first_missing(schema: Schema, at_least_one: Sequence[str]) -> Optional[str]:
    """The MISSING_ARGUMENTS message of an empty object body (README 3.6, R11)."""
    for item in schema.items:
        if isinstance(item, Param) and item.required:
            return item.name
        if isinstance(item, OneOf) and item.required:
            return "/".join(item.names)
    return "/".join(at_least_one) if at_least_one else None


def _first_invalid(schema: Schema) -> Optional[str]:
    """An INVALID_ARGUMENTS message (R10): a value of the wrong type where the first field
    is (for a one-of group, its highest-priority member: the one that is validated)."""
    for item in schema.items:
        name, parse = ((item.name, item.parse) if isinstance(item, Param)
                       else (item.priority[0], item.parsers[item.priority[0]]))
        wrong: Any = [] if parse in (validation.obj, validation.obj_any) else {}
        return f"{name}: {describe_value(wrong)}"
    return None


def error_cases(method: str, op: Operation) -> List[ErrorCase]:
    """Every error this endpoint can answer, in the order of README 3.7."""
    cases: List[ErrorCase] = []
    json_body = method == "POST"
    if json_body:
        cases.append(_case("IMAGE_SIZE_TOO_LARGE_ERROR", BODY_TOO_LARGE_MESSAGE,
                           web.HTTPRequestEntityTooLarge.status_code))
        cases.append(_case("UNSUPPORT_CONTENT_TYPE"))
        if op.body_required if op.request is None else op.request.empty_body_is_error:
            cases.append(_case("EMPTY_REQUEST_JSON"))
        cases.append(_case("INVALID_REQUEST_JSON"))
    if op.request is not None:
        missing = _first_missing(op.request, op.at_least_one)
        if missing is not None:
            cases.append(_case("MISSING_ARGUMENTS", missing))
        invalid = _first_invalid(op.request)
        if invalid is not None:
            cases.append(_case("INVALID_ARGUMENTS", invalid))
    image = _image_param(op.request)
    for code in op.errors:  # a code already derived from the schema is not repeated
        case = _case(code, image if code in _NAMES_THE_IMAGE and image else None)
        if all((c.code, c.status) != (case.code, case.status) for c in cases):
            cases.append(case)
    if op.writes:
        cases.append(_case("INSUFFICIENT_SPACE_LEFT"))
    cases.append(_case("INTERNAL_ERROR"))
    if op.inference:
        cases.append(ErrorCase(ServiceBusy.code, ServiceBusy.http_status,
                               ServiceBusy.default_message))
    return cases


def all_codes() -> List[str]:
    """Every code errors.py defines, in its table order."""
    codes = [v.code for v in vars(errors).values()
             if isinstance(v, type) and issubclass(v, ApiError) and v is not ApiError]
    return list(dict.fromkeys(codes))


def _error_responses(cases: Sequence[ErrorCase],
                     meanings: Mapping[str, str]) -> Dict[str, Dict[str, Any]]:
    by_status: Dict[int, List[ErrorCase]] = {}
    for case in cases:
        by_status.setdefault(case.status, []).append(case)
    out: Dict[str, Dict[str, Any]] = {}
    for status in sorted(by_status):
        group = by_status[status]
        codes = list(dict.fromkeys(c.code for c in group))
        out[str(status)] = {
            "description": ", ".join(codes),
            "content": {JSON: {
                "schema": {"allOf": [{"$ref": ENVELOPE_REF}, {"properties": {"error": {
                    "properties": {"code": {"enum": codes}}}}}]},
                "examples": {c.code: {"summary": meanings.get(c.code, c.code),
                                      "value": {"error": {"code": c.code,
                                                          "message": c.message}}}
                             for c in group},
            }},
        }
    return out


def envelope_schema() -> Dict[str, Any]:
    return {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "description": "Every failure (README 12.1): a machine-readable code from the "
                       "upstream table and a message; the HTTP status is fixed per code.",
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string", "enum": all_codes()},
                           "message": {"type": "string"}}}},
    }


# ---------------------------------------------------------------------------- document

def served_routes(router: web.UrlDispatcher) -> List[Route]:
    """(method, path, handler) in registration order, without the automatic HEAD of a GET
    and without the tolerated trailing-slash twin of a path (README 3.1)."""
    routes = [(r.method, r.resource.canonical, r.handler) for r in router.routes()
              if r.method != "HEAD" and r.resource is not None]
    paths = {path for _m, path, _h in routes}
    return [(m, p, h) for m, p, h in routes
            if not (p.endswith("/") and len(p) > 1 and p[:-1] in paths)]


_PATH_PARAM = re.compile(r"{([^}/]+)}")


def _operation_id(method: str, path: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "_", path).strip("_")
    return f"{method.lower()}_{slug}"


def _operation(method: str, path: str, op: Operation, ctx: Context, alias_of: Optional[str],
               docs: Mapping[str, str],
               meanings: Mapping[str, str]) -> Dict[str, Any]:
    out: Dict[str, Any] = {"operationId": _operation_id(method, path), "tags": [op.tag],
                           "summary": op.summary}
    text = [op.description] if op.description else []
    text.append(f"Spec: {op.spec}.")
    if alias_of is not None:
        out["summary"] = f"{op.summary} (alias of {alias_of})"
        out["x-alias-of"] = alias_of
        text.insert(0, f"Another path for {alias_of}, same contract (README 2.1).")
    out["description"] = " ".join(text)
    in_path = set(_PATH_PARAM.findall(path))
    parameters = [p for p in op.parameters if p["in"] != "path" or p["name"] in in_path]
    if parameters:
        out["parameters"] = parameters
    if op.request is not None or op.body_schema is not None:
        field_docs = dict(docs)
        field_docs.update(op.fields)
        if op.request is not None:
            schema = body_schema(op.request, ctx, op.nested, field_docs, op.at_least_one)
            required = op.request.empty_body_is_error
        else:
            schema, required = dict(op.body_schema or {}), op.body_required
        media: Dict[str, Any] = {"schema": schema}
        if op.request_examples:
            media["examples"] = {k: {"value": v} for k, v in op.request_examples.items()}
        out["requestBody"] = {"required": required, "content": {JSON: media}, "description": (
            "A JSON object (Content-Type application/json). Unknown keys are ignored; null is "
            "the same as absent" + ("." if required else "; an empty body counts as {}.")) }
    responses: Dict[str, Any] = {}
    if op.response is not None:
        media = {"schema": op.response}
        if op.response_examples:
            media["examples"] = {k: {"value": v} for k, v in op.response_examples.items()}
        responses["200"] = {"description": "Success.", "content": {JSON: media}}
    responses.update({k: dict(v) for k, v in op.responses.items()})
    cases = error_cases(method, op)
    for status, response in _error_responses(cases, meanings).items():
        if status in responses:  # e.g. getregisterimage's bare 404 beside an envelope 404
            content = dict(responses[status].get("content", {}))
            content.update(response["content"])
            responses[status] = dict(responses[status], content=content, description=(
                responses[status]["description"] + " Or the envelope: " +
                response["description"] + "."))
        else:
            responses[status] = response
    out["responses"] = dict(sorted(responses.items()))
    out["x-error-codes"] = [{"code": c.code, "status": c.status} for c in cases]
    return out


def build_document(routes: Iterable[Route], operations: Mapping[Any, Operation],
                   ctx: Context, *, info: Mapping[str, Any],
                   components: Mapping[str, Any], tags: Sequence[Dict[str, str]],
                   docs: Mapping[str, str], meanings: Mapping[str, str]) -> Dict[str, Any]:
    """The whole document for ``routes``; every handler must have an ``Operation``."""
    routes = list(routes)
    canonical: Dict[Any, str] = {}
    for method, path, handler in routes:
        canonical.setdefault(handler, f"{method} {path}")
    paths: Dict[str, Dict[str, Any]] = {}
    for method, path, handler in routes:
        op = operations.get(handler)
        if op is None:
            raise KeyError(f"{method} {path}: no Operation for its handler in "
                           "api/openapi_catalogue.py")
        alias_of: Optional[str] = None
        if op.alias_of is not None:
            alias_of = canonical[op.alias_of]
        elif canonical[handler] != f"{method} {path}":
            alias_of = canonical[handler]
        paths.setdefault(path, {})[method.lower()] = _operation(
            method, path, op, ctx, alias_of, docs, meanings)
    schemas = dict(components)
    schemas["ErrorEnvelope"] = envelope_schema()
    return {
        "openapi": OPENAPI_VERSION,
        "info": dict(info, version=__version__),
        "tags": list(tags),
        "paths": paths,
        # The optional API token (api/guard.py): "{}" first, since by default there is none.
        "security": [{}, {"bearerToken": []}, {"apiTokenHeader": []}],
        "components": {
            "schemas": schemas,
            "responses": {
                "NotFound": _routing_response("NOT_FOUND", meanings),
                "MethodNotAllowed": _routing_response("METHOD_NOT_ALLOWED", meanings),
            },
            "securitySchemes": SECURITY_SCHEMES,
        },
    }


_TOKEN_NOTE = ("Only when the daemon is configured with server.api_token (or "
               "SOPHON_FACE_API_TOKEN); by default, as upstream, no authentication. Every "
               "path but /health, /openapi.json and /docs then needs it; a missing or wrong "
               "token is HTTP 401 with PASSWORD_ERROR. The WebSocket servers take it too, "
               "also as ?token=.")
SECURITY_SCHEMES = {
    "bearerToken": {"type": "http", "scheme": "bearer",
                    "description": "Authorization: Bearer <token>. " + _TOKEN_NOTE},
    "apiTokenHeader": {"type": "apiKey", "in": "header", "name": "X-Api-Token",
                       "description": "X-Api-Token: <token>. " + _TOKEN_NOTE},
}


def _routing_response(code: str, meanings: Mapping[str, str]) -> Dict[str, Any]:
    """Answers of the router itself, to any path (README 3.1)."""
    case = _case(code)
    return {"description": f"{code}: {meanings.get(code, code)}", "content": {JSON: {
        "schema": {"$ref": ENVELOPE_REF},
        "examples": {code: {"value": {"error": {"code": code, "message": case.message}}}}}}}
