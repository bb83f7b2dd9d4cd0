"""Typed application keys shared by the handlers (aiohttp AppKey, no module globals)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, Tuple

from aiohttp import web

if TYPE_CHECKING:
    from ..service.analysis import FaceAnalysis
    from ..service.data import DataService
    from ..service.devices import DeviceService
    from ..service.event_search import EventSearch
    from ..service.events import EventService
    from ..service.groups import GroupService
    from ..service.identities import IdentityService
    from ..service.login import LoginService
    from ..service.search import SearchService
    from ..service.settings import RuntimeSettings

HealthCheck = Callable[[], Awaitable[Tuple[Dict[str, Any], bool]]]


@dataclass(frozen=True)
class Services:
    """The use cases the handlers call; built by app.py's lifecycle context."""

    analysis: FaceAnalysis
    identities: IdentityService
    groups: GroupService
    search: SearchService
    devices: DeviceService
    events: EventService
    event_search: EventSearch
    settings: RuntimeSettings
    data: DataService
    login: LoginService
    health: HealthCheck


SERVICES = web.AppKey("services", Services)
