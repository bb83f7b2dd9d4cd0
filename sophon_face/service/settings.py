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
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Set, Tuple

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
        #: Counts setconfigs commits (bumped on the writer thread, in commit order). The
        #: loop swaps in a committed snapshot only if it is newer than the one it holds,
        #: so two overlapping setconfigs cannot leave the older values live. (Writes
        #: resume their callers in commit order anyway; this makes it not matter.)
        self._commits = 0
        self._live_commit = 0

    async def load(self) -> None:
        self._values = self._merged(await self._store.read(stored.get_all))

    def _merged(self, saved: Mapping[str, Any]) -> Dict[str, Any]:
        values = dict(self._defaults)
        values.update({k: v for k, v in saved.items() if k in KEYS})  # a dropped key: ignored
        return values

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
        return {name: self._values[key]}  # R34: under the name as sent

    async def set_configs(self, body: Dict[str, Any]) -> Dict[str, Any]:
        """R35: every valid key is committed (one transaction) even when others fail."""
        # Conversion and the rules that need no store: here, in request order. ``None``
        # marks a key that failed.
        converted: List[Tuple[str, Optional[str], Any]] = []
        for sent_name, raw in body["config_dict"].items():
            name = canonical(sent_name)
            try:
                if name is None or KEYS[name].readonly:
                    raise ValueError("unknown or read-only key")
                converted.append((sent_name, name, coerce(name, raw)))
            except ValueError as exc:
                # The key name only: values (MQ_PASSWORD) are never logged.
                log.debug("setconfigs: %.100r refused: %s", sent_name, exc)
                converted.append((sent_name, None, None))

        def write(txn: Txn) -> Tuple[_Outcome, list]:
            changed: Set[str] = set()
            echoed: Dict[str, Any] = {}
            failed: List[str] = []
            for sent_name, name, value in converted:
                # R37 needs the face count of this very transaction. There is no stranger
                # library yet (0 faces), so GATE_STRANGER_GROUP_SIZE has its range rule only.
                if name is None or (name == "GATE_DEFAULT_GROUP_SIZE"
                                    and value < faces.count(txn)):
                    failed.append(sent_name)
                    continue
                stored.put(txn, name, value)
                changed.add(name)
                echoed[sent_name] = value
            if not changed:
                return _Outcome(echoed, failed, changed, None, 0), []
            self._commits += 1  # the writer thread runs one write at a time
            return _Outcome(echoed, failed, changed, stored.get_all(txn), self._commits), []

        if any(name is not None for _, name, _ in converted):
            outcome = await self._store.write(write)
        else:  # nothing to store ({} or only refused keys): no write transaction
            outcome = _Outcome({}, [sent for sent, _, _ in converted], set(), None, 0)
        if outcome.snapshot is not None and outcome.commit > self._live_commit:
            self._values = self._merged(outcome.snapshot)
            self._live_commit = outcome.commit
        if outcome.changed:
            self._announce(outcome.changed)
        if outcome.failed:
            log.info("setconfigs: %d key(s) refused", len(outcome.failed))
            raise ConfigItemFail(",".join(outcome.failed))
        return outcome.echoed


class _Outcome(NamedTuple):
    echoed: Dict[str, Any]
    failed: List[str]
    changed: Set[str]
    snapshot: Optional[Dict[str, Any]]  # every stored value after the commit
    commit: int


__all__ = ["ALIASES", "RuntimeSettings", "in_window"]
