"""Handlers of the permission family (api/permission.md)."""

from __future__ import annotations

from . import schemas
from .http import json_endpoint

create = json_endpoint(schemas.CREATE_PERMISSION, lambda s, body: s.groups.create(body))
get_one = json_endpoint(schemas.GET_PERMISSION, lambda s, body: s.groups.get(body))
get_many = json_endpoint(schemas.GET_PERMISSIONS, lambda s, body: s.groups.list(
    body["permission_name"], body["page_limit"], body["page_index"]))
update = json_endpoint(schemas.UPDATE_PERMISSION, lambda s, body: s.groups.update(body))
delete = json_endpoint(schemas.DELETE_PERMISSION, lambda s, body: s.groups.delete(body))
