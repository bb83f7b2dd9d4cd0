"""``/openapi.json`` and ``/docs`` (issue 11 item 4) on a real daemon.

The document must be valid OpenAPI 3.1, describe every route the app serves, take its
request bodies from the schemas the handlers validate with (the translation agrees with
``Schema.parse`` on probe bodies), and every example in it must validate against its own
schema. Its error examples and success schemas are checked against real answers.
"""

from __future__ import annotations

import base64
import inspect
import json
import re
import struct
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple

import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from sophon_face import errors
from sophon_face.api import schemas
from sophon_face.api.openapi import Operation, body_schema, error_cases
from sophon_face.api.openapi_catalogue import OPERATIONS
from sophon_face.api.routes import BASE, ROUTES
from sophon_face.api.validation import Context, OneOf, Param, Schema
from sophon_face.app import build_app

from .conftest import make_config, photo
from .live import LiveServer

JSON = "application/json"
DOC_URI = "urn:sophon-face:openapi"


@pytest.fixture(scope="module")
def doc(server: LiveServer) -> Dict[str, Any]:
    reply = server.request("GET", "/openapi.json")
    assert reply.status == 200, reply
    assert reply.headers["content-type"].startswith(JSON)
    return reply.json


def validator(doc: Mapping[str, Any], pointer: str) -> Draft202012Validator:
    """A validator for the schema at ``pointer`` whose ``#/components/...`` refs resolve
    inside the document."""
    registry: Registry = Registry().with_resource(
        DOC_URI, Resource.from_contents(doc, default_specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=registry)


def escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def walk(node: Any, pointer: str = "") -> Iterator[Tuple[str, Any]]:
    yield pointer, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{pointer}/{escape(key)}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{pointer}/{i}")


def operations(doc: Mapping[str, Any]) -> Iterator[Tuple[str, str, Dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield method.upper(), path, op


def op_of(doc: Mapping[str, Any], endpoint: str, method: str = "post") -> Dict[str, Any]:
    return doc["paths"][f"{BASE}/{endpoint}"][method]


# ------------------------------------------------------------------------ the document

def test_document_is_valid_openapi_3_1(doc: Dict[str, Any]) -> None:
    assert doc["openapi"].startswith("3.1")
    validate_openapi(doc)  # raises with the offending path
    ids = [op["operationId"] for _m, _p, op in operations(doc)]
    assert len(ids) == len(set(ids))


def test_every_served_route_is_documented_and_nothing_else(doc: Dict[str, Any],
                                                           tmp_path: Path) -> None:
    app = build_app(make_config(tmp_path / "daemon"))  # the router, not started
    served = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical
        if path.endswith("/") and path != "/":
            path = path[:-1]  # the tolerated trailing slash (README 3.1)
        served.add((route.method, path))
    documented = {(m, p) for m, p, _op in operations(doc)}
    assert served == documented
    # ... which includes the whole routes table, the operations routes and this one.
    assert {(m, BASE + p) for m, p, _h in ROUTES} <= documented
    for path in ("/health", "/metrics", "/openapi.json", "/docs"):
        assert ("GET", path) in documented


def test_aliases_are_marked(doc: Dict[str, Any]) -> None:
    alias = {(m, p): op.get("x-alias-of") for m, p, op in operations(doc)}
    assert alias[("POST", f"{BASE}/updateidenity")] == f"POST {BASE}/updateidentity"
    assert alias[("POST", f"{BASE}/getidentitys")] == f"POST {BASE}/getidentities"
    assert alias[("POST", f"{BASE}/updateimage")] == f"POST {BASE}/replaceface"
    assert alias[("POST", f"{BASE}/getregisterimage")] == (
        f"GET {BASE}/getregisterimage/{{image_id}}")
    assert alias[("POST", f"{BASE}/getspotimage")] == f"GET {BASE}/getspotimage/{{image_id}}"
    assert alias[("POST", f"{BASE}/updateidentity")] is None
    assert alias[("GET", f"{BASE}/getregisterimage/{{image_id}}")] is None
    spot = op_of(doc, "getspotimage/{image_id}", "get")
    assert {(p["name"], p["in"], p["required"]) for p in spot["parameters"]} == {
        ("image_id", "path", True), ("timestamp", "query", True)}


def test_handlers_validate_with_the_documented_schemas() -> None:
    """One source of truth: the Operation names the very Schema its handler parses with."""
    for handler, op in OPERATIONS.items():
        closure = inspect.getclosurevars(handler).nonlocals
        if "schema" in closure:  # json_endpoint / list_endpoint
            assert op.request is closure["schema"], handler
            if "filters_schema" in closure:
                assert op.nested == {"filters": closure["filters_schema"]}
        elif "use_case" in closure:  # device.py: validated by hand in the service
            assert op.request is None and op.body_schema is not None
            assert op.body_required == closure["empty_body_is_error"], handler
        else:  # a plain handler: the schemas it names in its code
            used = [getattr(schemas, name) for name in handler.__code__.co_names
                    if isinstance(getattr(schemas, name, None), Schema)]
            assert used == ([op.request] if op.request is not None else []), handler


# ---------------------------------------------------------------------------- examples

def test_every_example_validates_against_its_schema(doc: Dict[str, Any]) -> None:
    checked = 0
    for pointer, node in walk(doc):
        if not isinstance(node, dict):
            continue
        if "schema" in node and ("examples" in node or "example" in node):
            # a Media Type or Parameter object
            check = validator(doc, pointer + "/schema")
            values = [e["value"] for e in node.get("examples", {}).values()]
            if "example" in node:
                values.append(node["example"])
            for value in values:
                errors_ = [e.message for e in check.iter_errors(value)]
                assert not errors_, (pointer, value, errors_)
                checked += 1
        if "default" in node and not pointer.endswith("/properties"):
            # ``default`` is an annotation: the schema holding it judges the value
            problems = list(validator(doc, pointer).iter_errors(node["default"]))
            assert not problems, (pointer, node["default"])
            checked += 1
    assert checked > 100  # request, success and error examples, defaults


def test_request_examples_pass_the_handlers_own_validation() -> None:
    for handler, op in OPERATIONS.items():
        for name, example in op.request_examples.items():
            if op.request is None:
                continue
            parsed = op.request.parse(example, Context())
            for key, nested in op.nested.items():
                nested.parse(parsed[key], Context(), prefix=key + ".")


# ------------------------------------------- the translation agrees with Schema.parse

def _feature_b64(dim: int) -> str:
    return base64.b64encode(struct.pack(f"<{dim}f", *([0.5] * dim))).decode("ascii")


PROBES: List[Any] = [
    None, "", "x", "x" * 129, "high", "MIDDLE", "middle", "employee", "VIP", "liveness_rgb",
    0, -1, 1, 10.0, 2.5, 100.5, 1e300, True, False, [], ["a"], ["a", "a"], [1], ["x" * 129],
    {}, {"a": 1}, {"identity_name": 5}, {"score_min": "high"},
]


def _parse_outcome(schema: Schema, nested: Mapping[str, Schema], body: Dict[str, Any],
                   ctx: Context) -> Optional[str]:
    """None when the handler's validation accepts ``body``, else the error code."""
    try:
        parsed = schema.parse(body, ctx)
        for key, inner in nested.items():
            inner.parse(parsed[key], ctx, prefix=key + ".")
    except (errors.MissingArguments, errors.InvalidArguments) as exc:
        return exc.code
    return None


def _ignored_members(schema: Schema, body: Mapping[str, Any]) -> set:
    """One-of members the daemon ignores (not validated) for ``body`` (README 3.6)."""
    out = set()
    for item in schema.items:
        if isinstance(item, OneOf):
            present = [n for n in item.priority if body.get(n) is not None]
            out.update(present[1:])
    return out


@pytest.mark.parametrize("dim", [512, 128])
def test_json_schema_and_schema_parse_agree_on_probe_bodies(dim: int) -> None:
    """A body valid against the document is accepted by the handler's validation, and one
    the handler refuses is invalid against the document. The document may be stricter in
    two documented ways: enumerations list their canonical spelling (the daemon matches
    case-insensitively) and it types every member of a one-of group (the daemon ignores
    the lower-priority ones)."""
    ctx = Context(feature_dim=dim)
    feature_probes = [[0.1] * dim, [0] * dim, [0.1] * (dim - 1), _feature_b64(dim),
                      _feature_b64(dim)[:-4], [True] * dim]
    compared = 0
    for op in OPERATIONS.values():
        if op.request is None:
            continue
        check = Draft202012Validator(body_schema(op.request, ctx, op.nested,
                                                 at_least_one=op.at_least_one))
        names = {}
        for item in op.request.items:
            for name in ([item.name] if isinstance(item, Param) else item.names):
                names[name] = None
        bases = list(op.request_examples.values()) or [{}]
        bodies = [dict(base, **{name: value}) for base in bases for name in names
                  for value in PROBES + (feature_probes if name == "register_feature" else [])]
        for key, inner in op.nested.items():
            for item in inner.items:
                assert isinstance(item, Param)
                bodies += [{key: {item.name: value}} for value in PROBES]
        for body in bodies:
            outcome = _parse_outcome(op.request, op.nested, body, ctx)
            if op.at_least_one and outcome is None and all(
                    body.get(n) is None for n in op.at_least_one):
                outcome = "MISSING_ARGUMENTS"  # the handler's own presence rule (R39)
            valid = check.is_valid(body)
            if valid:
                assert outcome is None, (op.summary, body, outcome)
            elif outcome is None:
                case_variant = any(isinstance(v, str) and v != v.lower() for v in body.values())
                ignored = _ignored_members(op.request, body)
                assert case_variant or ignored, (op.summary, body,
                                                 list(check.iter_errors(body))[:1])
            compared += 1
    assert compared > 3000


# -------------------------------------------------------------------------- spot checks

def test_createidentity_registration_source_is_a_one_of_group(doc: Dict[str, Any],
                                                             server: LiveServer) -> None:
    dim = server.request("GET", "/health").json["feature_dim"]
    op = op_of(doc, "createidentity")
    schema = op["requestBody"]["content"][JSON]["schema"]
    members = ["register_feature", "register_image", "register_image_path"]
    assert schema["x-one-of"] == [{"members": members, "priority": members, "required": True}]
    assert "required" not in schema  # no single member is required...
    check = Draft202012Validator(schema)
    assert not check.is_valid({})  # ... but one of them is
    assert not check.is_valid({"register_image": None, "identity_name": "x"})
    for member, value in (("register_image", "/9j/"), ("register_image_path", "/a.jpg"),
                          ("register_feature", [0.5] * dim)):
        assert check.is_valid({member: value}), member
    assert op["requestBody"]["required"] is True
    props = schema["properties"]
    assert props["identity_name"]["default"] == "佚名"
    assert props["fiqa_level"]["default"] == "high"
    assert "middle" in props["fiqa_level"]["enum"]
    assert props["identity_id"]["maxLength"] == 128
    assert props["ext_info"]["deprecated"] is True  # the legacy alias


def test_error_codes_carry_their_statuses(doc: Dict[str, Any]) -> None:
    create = op_of(doc, "createidentity")
    codes = {(c["code"], c["status"]) for c in create["x-error-codes"]}
    assert {("GROUP_LEN_ERROR", 409), ("ID_REPEAT_ERROR", 409), ("MISSING_ARGUMENTS", 400),
            ("PERMISSION_ID_NOT_FOUND", 404), ("LOW_QUALITY_ERROR", 400),
            ("UNSUPPORT_CONTENT_TYPE", 415), ("IMAGE_SIZE_TOO_LARGE_ERROR", 413),
            ("INSUFFICIENT_SPACE_LEFT", 507), ("INTERNAL_ERROR", 503)} <= codes
    assert "GROUP_LEN_ERROR" in create["responses"]["409"]["content"][JSON]["examples"]
    conflict = create["responses"]["409"]["content"][JSON]["schema"]["allOf"][1]
    assert set(conflict["properties"]["error"]["properties"]["code"]["enum"]) == {
        "GROUP_LEN_ERROR", "ID_REPEAT_ERROR"}
    assert ("PASSWORD_ERROR", 401) in {(c["code"], c["status"])
                                       for c in op_of(doc, "login")["x-error-codes"]}
    assert ("NOT_SUPPORT_IR_LIVENESS", 501) in {(c["code"], c["status"])
                                                for c in op_of(doc, "search")["x-error-codes"]}
    getidentities = {c["code"] for c in op_of(doc, "getidentities")["x-error-codes"]}
    assert "MISSING_ARGUMENTS" not in getidentities and "EMPTY_REQUEST_JSON" not in getidentities
    # Every status is errors.py's, except the two cases errors.py cannot carry.
    for method, path, op in operations(doc):
        for case in op["x-error-codes"]:
            status = errors.error_class(case["code"]).http_status
            special = {("IMAGE_SIZE_TOO_LARGE_ERROR", 413), ("INTERNAL_ERROR", 503)}
            assert case["status"] == status or (case["code"], case["status"]) in special
            assert case["code"] in op["responses"][str(case["status"])]["content"][JSON][
                "examples"], (path, case)


def test_error_examples_are_what_the_daemon_answers(doc: Dict[str, Any],
                                                    server: LiveServer) -> None:
    """Bodies that fail validation (so nothing is changed): the status, code and message
    of each documented example are the real ones."""
    checked = 0
    for method, path, op in operations(doc):
        if method != "POST" or not path.startswith(BASE):
            continue
        endpoint = path[len(BASE) + 1:]
        examples = {(c["code"], c["status"]): op["responses"][str(c["status"])]["content"][
            JSON]["examples"][c["code"]]["value"] for c in op["x-error-codes"]}
        if ("EMPTY_REQUEST_JSON", 400) in examples:
            reply = server.request("POST", path, b"", {"Content-Type": JSON})
            assert (reply.status, reply.json) == (400, examples[("EMPTY_REQUEST_JSON", 400)])
            checked += 1
        reply = server.request("POST", path, b"{}", {"Content-Type": "text/plain"})
        assert (reply.status, reply.json) == (415, examples[("UNSUPPORT_CONTENT_TYPE", 415)])
        reply = server.request("POST", path, b"[1]", {"Content-Type": JSON})
        assert (reply.status, reply.json) == (400, examples[("INVALID_REQUEST_JSON", 400)])
        checked += 2
        handler_op = _operation_of(endpoint)
        if handler_op is None or handler_op.request is None:
            continue
        missing = examples.get(("MISSING_ARGUMENTS", 400))
        if missing is not None:
            reply = server.post(endpoint, {})
            assert (reply.status, reply.json) == (400, missing), endpoint
            checked += 1
        invalid = examples.get(("INVALID_ARGUMENTS", 400))
        if invalid is not None and handler_op.request_examples:
            name, wrong = invalid["error"]["message"].split(": ", 1)
            body = dict(next(iter(handler_op.request_examples.values())),
                        **{name: json.loads(wrong)})
            reply = server.post(endpoint, body)
            assert (reply.status, reply.json) == (400, invalid), endpoint
            checked += 1
    assert checked > 100


def _operation_of(endpoint: str) -> Optional[Operation]:
    for method, path, handler in ROUTES:
        if method == "POST" and path == "/" + endpoint:
            return OPERATIONS[handler]
    return None


def test_every_code_an_endpoint_lists_is_a_known_code(doc: Dict[str, Any]) -> None:
    known = set(doc["components"]["schemas"]["ErrorEnvelope"]["properties"]["error"][
        "properties"]["code"]["enum"])
    for _m, _p, op in operations(doc):
        assert {c["code"] for c in op["x-error-codes"]} <= known
    for op in OPERATIONS.values():
        error_cases("POST", op)  # every hand-listed code exists in errors.py (KeyError)


# ------------------------------------------- the spec's per-endpoint error tables agree

SPEC_DIRS = [Path(__file__).resolve().parents[3] / "shared" / "api", Path("/work/shared/api")]
SPEC_DIR = next((d for d in SPEC_DIRS if (d / "README.md").is_file()), None)
#: Our deliberate differences from the spec tables, each with its reason.
NOT_FROM_SPEC = {
    # The device family is implemented: the "still initialising" answer never happens.
    "DEVICE_INIT_ERROR",
}


def spec_error_tables() -> Dict[str, Tuple[set, set]]:
    """{endpoint: (codes in its error tables, codes it calls "never returned")}."""
    assert SPEC_DIR is not None
    known = {c for c in vars(errors).values() if isinstance(c, type)
             and issubclass(c, errors.ApiError)}
    codes = {c.code for c in known}
    out: Dict[str, Tuple[set, set]] = {}
    for md in sorted(SPEC_DIR.glob("*.md")):
        endpoint, in_errors, in_never = None, False, False
        for line in md.read_text(encoding="utf-8").splitlines():
            header = re.match(r"^## \d+\. (\w+)\s*$", line)
            if header:
                endpoint, in_errors = header.group(1), False
                out.setdefault(endpoint, (set(), set()))
                continue
            if line.startswith("## "):
                endpoint = None
            if endpoint is None:
                continue
            if line.startswith("### "):
                in_errors = bool(re.match(r"^### (Validation and errors|Errors|Responses)", line))
                continue
            found = set(re.findall(r"`([A-Z_]+)`", line)) & codes
            if "never returned" in line:
                in_never = True  # until the paragraph ends (the list may wrap)
            elif not line.strip():
                in_never = False
            if in_never:
                out[endpoint][1].update(found)
            elif in_errors or line.startswith("Errors:"):
                out[endpoint][0].update(found)
    return out


@pytest.mark.skipif(SPEC_DIR is None, reason="the spec folder (shared/api) is not beside the repo")
def test_documented_codes_match_the_spec_tables(doc: Dict[str, Any]) -> None:
    tables = spec_error_tables()
    common = {"UNSUPPORT_CONTENT_TYPE", "EMPTY_REQUEST_JSON", "INVALID_REQUEST_JSON",
              "INTERNAL_ERROR", "INSUFFICIENT_SPACE_LEFT"}
    compared = 0
    for method, path, op in operations(doc):
        if not path.startswith(BASE) or op.get("x-alias-of"):
            continue
        endpoint = path[len(BASE) + 1:].split("/", 1)[0]
        listed, never = tables[endpoint]
        # IMAGE_SIZE_TOO_LARGE_ERROR at 413 is the router's answer to any oversized body;
        # the spec's tables speak of the image case (400).
        ours = {c["code"] for c in op["x-error-codes"]
                if (c["code"], c["status"]) != ("IMAGE_SIZE_TOO_LARGE_ERROR", 413)}
        assert listed - NOT_FROM_SPEC <= ours, (endpoint, listed - ours)
        assert not (ours & (never - listed)), (endpoint, ours & never)
        assert ours - common <= listed | {"MISSING_ARGUMENTS", "INVALID_ARGUMENTS"}, (
            endpoint, ours - common - listed)
        compared += 1
    assert compared >= 35


# ---------------------------------------------- success schemas against real answers

def test_success_answers_match_their_schemas(doc: Dict[str, Any], server: LiveServer) -> None:
    def check(endpoint: str, body: Any) -> Dict[str, Any]:
        reply = server.post(endpoint, body)
        assert reply.status == 200, (endpoint, reply)
        pointer = "/paths/" + escape(f"{BASE}/{endpoint}") + \
            "/post/responses/200/content/application~1json/schema"
        problems = [e.message for e in validator(doc, pointer).iter_errors(reply.json)]
        assert not problems, (endpoint, reply.json, problems)
        return reply.json

    tag = uuid.uuid4().hex[:8]
    group = check("createpermission", {"permission_name": f"openapi-{tag}"})
    check("getpermission", {"permission_id": group["permission_id"]})
    check("getpermissions", {})
    created = check("createidentity", {"identity_id": f"openapi-{tag}", "fiqa_level": "no",
                                       "register_image_path": str(photo("macron_2014.jpg")),
                                       "permission_ids": [group["permission_id"]]})
    check("getidentity", {"identity_id": created["identity_id"]})
    check("getidentities", {"filters": {"identity_id": created["identity_id"]}})
    check("addface", {"identity_id": created["identity_id"],
                      "register_image_path": str(photo("macron_2025.jpg")),
                      "fiqa_level": "no"})
    check("detect", {"image_path": str(photo("macron_2025.jpg")), "with_feature": True,
                     "with_attribute": True, "with_headpose": True, "with_landmark": True})
    check("compare", {"image_1_path": str(photo("macron_2014.jpg")),
                      "image_2_path": str(photo("macron_2025.jpg"))})
    check("fiqa", {"image_path": str(photo("macron_2025.jpg"))})
    check("search", {"rgb_image_path": str(photo("macron_2025.jpg")),
                     "permission_name": f"openapi-{tag}", "with_register_photo": True,
                     "with_result_modification": False, "with_attribute": True})
    events = check("getevents", {"filters": {"identity_id": created["identity_id"]}})
    check("getevent", {"event_id": events["events"][0]["event_id"]})
    check("searchbyimage", {"face_image_path": str(photo("macron_2025.jpg"))})
    check("getconfigs", {})
    check("checkeventimagepath", {})
    check("login", {"username": "admin", "password": "admin"})
    check("getmediadevices", {})
    check("getpreview", {})
    check("updateidentity", {"identity_id": created["identity_id"], "user_type": "VIP"})
    check("deleteidentities", {"identity_ids": [created["identity_id"]]})
    check("deletepermission", {"permission_id": group["permission_id"]})


# ---------------------------------------------------------------------------- /docs

def test_docs_page_is_served_self_contained(server: LiveServer) -> None:
    reply = server.request("GET", "/docs")
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/html")
    page = reply.body.decode("utf-8")
    assert "/openapi.json" in page
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert not [s for s in sources if re.match(r"^(https?:)?//", s)], sources
    assert "http://" not in page and "https://" not in page  # not even in the script


def test_document_describes_the_live_recognizer(doc: Dict[str, Any],
                                                server: LiveServer) -> None:
    dim = server.request("GET", "/health").json["feature_dim"]
    feature = op_of(doc, "addface")["requestBody"]["content"][JSON]["schema"]["properties"][
        "register_feature"]
    array = next(s for s in feature["oneOf"] if s.get("type") == "array")
    assert array["minItems"] == array["maxItems"] == dim
