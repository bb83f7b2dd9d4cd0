"""Handlers of the compare family (api/compare.md): detect, compare, fiqa, search."""

from __future__ import annotations

from . import schemas
from .http import json_endpoint

detect = json_endpoint(schemas.DETECT, lambda services, body: services.analysis.detect(body))
compare = json_endpoint(schemas.COMPARE, lambda services, body: services.analysis.compare(body))
fiqa = json_endpoint(schemas.FIQA, lambda services, body: services.analysis.fiqa(body))
search = json_endpoint(schemas.SEARCH, lambda services, body: services.search.search(body))
