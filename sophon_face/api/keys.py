"""Typed application keys shared by the handlers (aiohttp AppKey, no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

from aiohttp import web

from ..service.analysis import FaceAnalysis


@dataclass
class Services:
    """The use cases the handlers call; built by app.py's lifecycle context."""

    analysis: FaceAnalysis
    health: Any  # callable returning the /health payload and whether it is healthy
    identities: Any = None
    groups: Any = None
    search: Any = None
    extra: Dict[str, Any] = None  # type: ignore[assignment]


SERVICES = web.AppKey("services", Services)
