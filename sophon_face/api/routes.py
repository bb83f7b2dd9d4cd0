"""The whole URL map in one table (api/README.md section 2 and the 2.1 aliases)."""

from __future__ import annotations

from typing import List, Tuple

from aiohttp import web

from . import compare, health, identity, permission

BASE = "/sophon/v2/face"

#: (method, path under BASE, handler). One trailing "/" is also served (README 3.1).
ROUTES: List[Tuple[str, str, object]] = [
    # permission.md
    ("POST", "/createpermission", permission.create),
    ("POST", "/getpermission", permission.get_one),
    ("POST", "/getpermissions", permission.get_many),
    ("POST", "/updatepermission", permission.update),
    ("POST", "/deletepermission", permission.delete),
    # identity.md
    ("POST", "/createidentity", identity.create),
    ("POST", "/getidentity", identity.get_one),
    ("POST", "/getidentities", identity.get_many),
    ("POST", "/getidentitys", identity.get_many),  # R2
    ("POST", "/updateidentity", identity.update),
    ("POST", "/updateidenity", identity.update),  # R1
    ("POST", "/deleteidentities", identity.delete_many),
    ("POST", "/addface", identity.add_face),
    ("POST", "/deleteface", identity.delete_face),
    ("POST", "/replaceface", identity.replace_face),
    ("POST", "/updateimage", identity.replace_face),  # R2
    ("GET", "/getregisterimage/{image_id}", identity.register_image_by_path),
    ("GET", "/getregisterimage", identity.register_image_by_path),  # empty id: R4's 404
    ("POST", "/getregisterimage", identity.register_image_by_body),  # R3
    # compare.md
    ("POST", "/detect", compare.detect),
    ("POST", "/compare", compare.compare),
    ("POST", "/fiqa", compare.fiqa),
    ("POST", "/search", compare.search),
]


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        for variant in (BASE + path, BASE + path + "/"):
            app.router.add_route(method, variant, handler)  # type: ignore[arg-type]
    app.router.add_get("/health", health.health)
