"""The whole URL map in one table (api/README.md section 2 and the 2.1 aliases)."""

from __future__ import annotations

from typing import List, Tuple

from aiohttp import web

from . import (compare, config, data, device, docs, event, health, identity, login, metrics,
               permission)

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
    # event.md
    ("POST", "/getevent", event.get_one),
    ("POST", "/getevents", event.get_many),
    ("POST", "/searchbyimage", event.search_by_image),
    ("GET", "/getspotimage/{image_id}", event.spot_image_by_path),
    ("GET", "/getspotimage", event.spot_image_by_path),
    ("POST", "/getspotimage", event.spot_image_by_body),  # R5
    # config.md
    ("POST", "/getconfigs", config.get_configs),
    ("POST", "/setconfigs", config.set_configs),
    # data.md
    ("POST", "/wipedata", data.wipe),
    ("POST", "/checkeventimagepath", data.check_event_image_path),
    # login.md
    ("POST", "/login", login.login),
    ("POST", "/changepassword", login.change_password),
    # device.md
    ("POST", "/addmediadevice", device.add),
    ("POST", "/getmediadevices", device.get_many),
    ("POST", "/updatemediadevice", device.update),
    ("POST", "/deletemediadevice", device.delete),
    ("POST", "/deletemediadevices", device.delete_all),  # R47: both served
    ("POST", "/getpreview", device.get_preview),
    ("POST", "/updatepreview", device.update_preview),
]


def add_routes(app: web.Application) -> None:
    for method, path, handler in ROUTES:
        for variant in (BASE + path, BASE + path + "/"):
            app.router.add_route(method, variant, handler)  # type: ignore[arg-type]
    app.router.add_get("/health", health.health)
    app.router.add_get("/metrics", metrics.metrics)  # Prometheus text format
    app.router.add_get("/openapi.json", docs.openapi_json)  # generated from this router
    app.router.add_get("/docs", docs.docs_page)  # renders /openapi.json
