"""Runtime configuration (api/config.md): getconfigs / setconfigs and the live values.

Every key of section 4 always has a value: the stored one if it was set, else its default
(conf.yaml's ``recognition`` section supplies the defaults of MATCH_THRESHOLD,
REGN_MIN_FACE and GATE_DEFAULT_GROUP_SIZE). Values are read on any thread through
``value()`` (a dict lookup); a change is committed first, then swapped into memory, then
announced to subscribers on the event loop (the history pusher wakes on a new URL).

R35: ``setconfigs`` applies every valid key in ONE transaction and reports the failed
ones with CONFIG_ITEM_FAIL. R37: a library size below the current face count fails.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, Tuple

from ..errors import ConfigItemFail, invalid_argument
from ..store import faces
from ..store import settings as stored
from ..store.env import Store, Txn
from .settings_keys import ALIASES, KEYS, canonical, coerce, split_urls

log = logging.getLogger(__name__)


def _seconds_of(text: str) -> int:
    hours, minutes, seconds = (int(part) for part in text.split(":"))
    return hours * 3600 + minutes * 60 + seconds


def in_window(window: str, now_s: int) -> bool:
    """``"HH:MM:SS,HH:MM:SS"``, inclusive; a start after the end wraps past midnight."""
    start, end = (_seconds_of(part) for part in window.split(","))
    if start <= end:
        return start <= now_s <= end
    return now_s >= start or now_s <= end


class RuntimeSettings:
    def __init__(self, store: Store, defaults: Mapping[str, Any] = {}) -> None:
        self._store = store
        self._defaults = {name: key.default for name, key in KEYS.items()}
        self._defaults.update(defaults)
        self._values: Dict[str, Any] = dict(self._defaults)
        self._subscribers: List[Callable[[Set[str]], None]] = []

    async def load(self) -> None:
        saved = await self._store.read(stored.get_all)
        values = dict(self._defaults)
        values.update({k: v for k, v in saved.items() if k in KEYS})
        self._values = values

    def value(self, name: str) -> Any:
        return self._values[name]

    def urls(self, name: str) -> List[str]:
        return split_urls(self._values[name])

    def is_armed(self, now: Optional[datetime.datetime] = None) -> bool:
        """compare.md 5 "Armed time": inside an enabled REGN window, or no window enabled."""
        windows = [self._values[f"REGN_TIME_PART{i}"] for i in (1, 2)
                   if self._values[f"REGN_TIME_PART{i}_SWITCH"]]
        if not windows:
            return True
        moment = (now or datetime.datetime.now()).time()
        now_s = moment.hour * 3600 + moment.minute * 60 + moment.second
        return any(in_window(window, now_s) for window in windows)

    def subscribe(self, callback: Callable[[Set[str]], None]) -> None:
        self._subscribers.append(callback)

    def _announce(self, names: Set[str]) -> None:
        for callback in self._subscribers:
            try:
                callback(names)
            except Exception:
                log.exception("settings subscriber failed")

    def reset_to_defaults(self) -> None:
        """After a committed ``settings.clear`` (wipedata all)."""
        self._values = dict(self._defaults)
        self._announce(set(KEYS))

    # ------------------------------------------------------------------ the API

    async def get_configs(self, body: Dict[str, Any]) -> Dict[str, Any]:
        name = body.get("config_name")
        if name is None:
            return dict(self._values)
        key = canonical(name)
        if key is None:
            raise invalid_argument("config_name", name)
        return {name: self._values[key]}

    async def set_configs(self, body: Dict[str, Any]) -> Dict[str, Any]:
        requested = body["config_dict"]

        def write(txn: Txn) -> Tuple[Tuple[Dict[str, Any], Dict[str, Any], List[str]], list]:
            applied: Dict[str, Any] = {}
            echoed: Dict[str, Any] = {}
            failed: List[str] = []
            for sent_name, raw in requested.items():
                name = canonical(sent_name)
                try:
                    if name is None or KEYS[name].readonly:
                        raise ValueError("unknown or read-only key")
                    value = coerce(name, raw)
                    if name == "GATE_DEFAULT_GROUP_SIZE" and value < faces.count(txn):
                        raise ValueError("below the number of stored faces (R37)")
                except ValueError as exc:
                    log.info("setconfigs: %s refused: %s", sent_name, exc)
                    failed.append(sent_name)
                    continue
                stored.put(txn, name, value)
                applied[name] = value
                echoed[sent_name] = value
            return (applied, echoed, failed), []

        applied, echoed, failed = await self._store.write(write)
        if applied:
            values = dict(self._values)
            values.update(applied)
            self._values = values
            self._announce(set(applied))
        if failed:
            raise ConfigItemFail(",".join(failed))
        return echoed


__all__ = ["ALIASES", "RuntimeSettings", "in_window"]
