"""Handlers of the login family (api/login.md)."""

from __future__ import annotations

from . import schemas
from .http import json_endpoint

login = json_endpoint(schemas.LOGIN, lambda s, body: s.login.login(body))
change_password = json_endpoint(schemas.CHANGE_PASSWORD,
                                lambda s, body: s.login.change_password(body))
