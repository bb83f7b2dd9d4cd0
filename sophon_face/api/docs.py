"""``GET /openapi.json`` (the generated OpenAPI 3.1 document) and ``GET /docs`` (a small
page of our own that renders it; nothing is fetched from anywhere but this daemon)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Dict, Tuple

from aiohttp import web

from .http import VALIDATION_CONTEXT
from .openapi import OPENAPI_VERSION, Operation, Route, build_document, served_routes
from .openapi_catalogue import COMPONENTS, FIELD_DOCS, INFO, MEANINGS, OPERATIONS, TAGS
from .validation import Context

DOCS_PAGE = Path(__file__).resolve().parent / "static" / "docs.html"


def document(app: web.Application) -> Dict[str, Any]:
    """The document of what ``app`` serves. Before the lifecycle has set the validation
    context (the recognizer's feature dimension), the default context is described."""
    return _build(tuple(served_routes(app.router)), app.get(VALIDATION_CONTEXT) or Context())


def _build(routes: Tuple[Route, ...], ctx: Context) -> Dict[str, Any]:
    operations = dict(OPERATIONS)
    operations.update(_OWN_OPERATIONS)
    return build_document(routes, operations, ctx, info=INFO, components=COMPONENTS,
                          tags=TAGS, docs=FIELD_DOCS, meanings=MEANINGS)


@functools.lru_cache(maxsize=4)
def _document_bytes(routes: Tuple[Route, ...], ctx: Context) -> bytes:
    """A pure function of the routes and the context, so built once: a few milliseconds
    here are tens on the box's cores, and they would hold the event loop."""
    text = json.dumps(_build(routes, ctx), ensure_ascii=False, separators=(",", ":"))
    return text.encode("utf-8")


async def openapi_json(request: web.Request) -> web.Response:
    app = request.app
    body = _document_bytes(tuple(served_routes(app.router)),
                           app.get(VALIDATION_CONTEXT) or Context())
    return web.Response(body=body, content_type="application/json", charset="utf-8")


@functools.lru_cache(maxsize=1)
def _page() -> bytes:
    return DOCS_PAGE.read_bytes()


async def docs_page(request: web.Request) -> web.Response:
    return web.Response(body=_page(), content_type="text/html", charset="utf-8")


_OWN_OPERATIONS = {
    openapi_json: Operation(
        "This document (OpenAPI 3.1), generated from the request schemas", "operations",
        responses={"200": {"description": "The document.", "content": {"application/json": {
            "schema": {"type": "object", "required": ["openapi", "info", "paths"],
                       "properties": {"openapi": {"const": OPENAPI_VERSION},
                                      "info": {"type": "object"},
                                      "paths": {"type": "object"}}}}}}}),
    docs_page: Operation(
        "A page that renders this document (self-contained, no external resources)",
        "operations",
        responses={"200": {"description": "HTML.", "content": {"text/html": {
            "schema": {"type": "string"}}}}}),
}
