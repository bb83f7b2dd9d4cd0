"""Handlers of the configuration family (api/config.md)."""

from __future__ import annotations

from . import schemas
from .http import json_endpoint

get_configs = json_endpoint(schemas.GET_CONFIGS, lambda s, body: s.settings.get_configs(body))
set_configs = json_endpoint(schemas.SET_CONFIGS, lambda s, body: s.settings.set_configs(body))
