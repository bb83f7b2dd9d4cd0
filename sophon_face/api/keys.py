"""Typed application keys shared by the handlers (aiohttp AppKey, no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Tuple

from aiohttp import web

from ..service.analysis import FaceAnalysis
from ..service.groups import GroupService
from ..service.identities import IdentityService
from ..service.search import SearchService

HealthCheck = Callable[[], Awaitable[Tuple[Dict[str, Any], bool]]]


@dataclass(frozen=True)
class Services:
    """The use cases the handlers call; built by app.py's lifecycle context."""

    analysis: FaceAnalysis
    identities: IdentityService
    groups: GroupService
    search: SearchService
    health: HealthCheck


SERVICES = web.AppKey("services", Services)
