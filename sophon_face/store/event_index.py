"""The in-memory event index: every stored event's filter columns and probe feature.

``getevents`` filters and ``searchbyimage`` scans run over these columns with numpy, never
one LMDB record at a time: unpacking 100k msgpack records costs about a second, a masked
column scan a few milliseconds. Only the events of the page (or the matches) are read from
LMDB afterwards.

Rows are in event-id order (ids only grow, and events commit on the one writer thread).
Columns: id (int64), timestamp (float64), score (float64), interned device, identity and
user type (int32), the lower-cased identity name (object), the feature (float32, D wide)
and whether there is one. Like the gallery, the index is loaded at open and follows each
commit on the writer thread (``AddEvent``/``RemoveEvents``); one lock guards it.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from sophon_face.store import events
from sophon_face.store.codec import FEATURE_DTYPE
from sophon_face.store.env import Txn

_MIN_CAPACITY = 1024


@dataclass(frozen=True, eq=False)
class AddEvent:
    record: Mapping[str, Any]


@dataclass(frozen=True)
class RemoveEvents:
    event_ids: Tuple[int, ...]


@dataclass(frozen=True)
class EventFilter:
    """getevents' filters (api/event.md 4); None = no restriction."""

    datetime_gte: Optional[float] = None
    datetime_lte: Optional[float] = None
    identity_name: Optional[str] = None
    identity_id: Optional[str] = None
    score_min: Optional[float] = None
    score_max: Optional[float] = None
    user_type: Optional[str] = None
    media_device_ids: Optional[Sequence[str]] = None


class ScanResult(NamedTuple):
    matches: List[Tuple[int, float]]  # (event id, score 0-100) in scan order
    scanned: int
    have_more: bool
    last_timestamp: Optional[float]  # of the last scanned event


class _Interner:
    def __init__(self) -> None:
        self.numbers: Dict[str, int] = {}

    def number(self, value: str) -> int:
        number = self.numbers.get(value)
        if number is None:
            number = self.numbers[value] = len(self.numbers)
        return number

    def lookup(self, value: str) -> int:
        return self.numbers.get(value, -1)


class EventIndex:
    CHANGE_TYPES = (AddEvent, RemoveEvents)

    def __init__(self, dim: int) -> None:
        self._dim = dim
        self._lock = threading.Lock()
        self._reset(_MIN_CAPACITY)

    def _reset(self, capacity: int) -> None:
        self._n = 0
        self._ids = np.zeros(capacity, np.int64)
        self._ts = np.zeros(capacity, np.float64)
        self._score = np.zeros(capacity, np.float64)  # exact 2-decimal bounds
        self._device = np.zeros(capacity, np.int32)
        self._identity = np.zeros(capacity, np.int32)
        self._user_type = np.zeros(capacity, np.int32)
        self._has_feature = np.zeros(capacity, bool)
        self._names = np.empty(capacity, dtype=object)
        self._features = np.zeros((capacity, self._dim), np.float32)
        self._devices = _Interner()
        self._identities = _Interner()
        self._user_types = _Interner()
        self._monotonic = True
        #: (device id, identity id) -> timestamp of its newest event (duplicate suppression).
        self._last_seen: Dict[Tuple[str, str], float] = {}

    # ------------------------------------------------------------------ maintenance

    def load_from_txn(self, txn: Txn) -> None:
        with self._lock:
            self._reset(max(_MIN_CAPACITY, events.count(txn)))
            for record in events.iter_all(txn):
                self._append(record)

    def apply(self, changes: Sequence[Any]) -> None:
        with self._lock:
            for change in changes:
                if isinstance(change, AddEvent):
                    self._append(change.record)
                else:
                    self._remove(change.event_ids)

    def _append(self, record: Mapping[str, Any]) -> None:
        if self._n == len(self._ids):
            self._grow(2 * len(self._ids))
        i = self._n
        self._ids[i] = int(record["event_id"])
        ts = float(record["timestamp"])
        if i and ts < self._ts[i - 1]:
            self._monotonic = False
        self._ts[i] = ts
        self._score[i] = float(record["score"])
        device_id = record["media_device_info"]["media_device_id"]
        self._device[i] = self._devices.number(device_id)
        self._identity[i] = self._identities.number(record["identity_id"])
        self._user_type[i] = self._user_types.number(record["user_type"].lower())
        self._names[i] = record["identity_name"].lower()
        feature = record["feature"]
        if feature and len(feature) == self._dim * FEATURE_DTYPE.itemsize:
            self._features[i] = np.frombuffer(feature, FEATURE_DTYPE)
            self._has_feature[i] = True
        else:
            self._features[i] = 0.0
            self._has_feature[i] = False
        self._n += 1
        if device_id and record["identity_id"]:
            key = (device_id, record["identity_id"])
            self._last_seen[key] = max(ts, self._last_seen.get(key, ts))

    def _remove(self, event_ids: Sequence[int]) -> None:
        if not event_ids:
            return
        n = self._n
        keep = ~np.isin(self._ids[:n], np.asarray(event_ids, np.int64))
        kept = int(keep.sum())
        for column in (self._ids, self._ts, self._score, self._device, self._identity,
                       self._user_type, self._has_feature, self._names, self._features):
            column[:kept] = column[:n][keep]
        self._n = kept
        self._names[kept:n] = None

    def _grow(self, capacity: int) -> None:
        def grown(column: np.ndarray) -> np.ndarray:
            new = np.zeros((capacity,) + column.shape[1:], column.dtype) \
                if column.dtype != object else np.empty(capacity, dtype=object)
            new[:self._n] = column[:self._n]
            return new

        self._ids, self._ts, self._score = grown(self._ids), grown(self._ts), grown(self._score)
        self._device, self._identity = grown(self._device), grown(self._identity)
        self._user_type, self._has_feature = grown(self._user_type), grown(self._has_feature)
        self._names, self._features = grown(self._names), grown(self._features)

    # ------------------------------------------------------------------ queries

    def count(self) -> int:
        with self._lock:
            return self._n

    def id_strings(self) -> Set[str]:
        """Every indexed event id as the API writes it (for the orphan-image sweep)."""
        with self._lock:
            return {str(i) for i in self._ids[:self._n].tolist()}

    def last_seen(self, device_id: str, identity_id: str) -> Optional[float]:
        """Timestamp of the newest event of this device for this identity."""
        with self._lock:
            return self._last_seen.get((device_id, identity_id))

    def query(self, flt: EventFilter, offset: int, limit: int) -> Tuple[int, List[int]]:
        """(total matching, ids of the page) newest first, ties by id descending."""
        with self._lock:
            n = self._n
            mask = np.ones(n, bool)
            ts = self._ts[:n]
            if flt.datetime_gte is not None:
                mask &= ts >= flt.datetime_gte
            if flt.datetime_lte is not None:
                mask &= ts <= flt.datetime_lte
            if flt.score_min is not None:
                mask &= self._score[:n] >= flt.score_min  # compared in float64: no overflow
            if flt.score_max is not None:
                mask &= self._score[:n] <= flt.score_max
            if flt.identity_id is not None:
                mask &= self._identity[:n] == self._identities.lookup(flt.identity_id)
            if flt.user_type is not None:
                mask &= self._user_type[:n] == self._user_types.lookup(flt.user_type.lower())
            if flt.media_device_ids:
                wanted = [self._devices.lookup(d) for d in flt.media_device_ids]
                mask &= np.isin(self._device[:n], np.asarray(wanted, np.int32))
            rows = np.flatnonzero(mask)
            if flt.identity_name is not None and rows.size:
                needle = flt.identity_name.lower()
                names = self._names[rows]
                rows = rows[np.fromiter((needle in name for name in names), bool, rows.size)]
            rows = self._newest_first(rows)
            return int(rows.size), self._ids[rows[offset:offset + limit]].tolist()

    def _newest_first(self, rows: np.ndarray) -> np.ndarray:
        if self._monotonic:
            return rows[::-1]
        order = np.lexsort((self._ids[rows], self._ts[rows]))
        return rows[order[::-1]]

    def scan(self, probe: np.ndarray, start: float, end: float, after: Optional[float],
             device_ids: Optional[Sequence[str]], reverse: bool,
             to_score: Callable[[np.ndarray], np.ndarray], threshold: float,
             max_scanned: int, max_matches: int) -> ScanResult:
        """searchbyimage (api/event.md 5): candidates in the window (and past ``after``),
        in time order, scored in one matrix product; stops after ``max_scanned`` events
        or at the ``max_matches``-th match."""
        with self._lock:
            n = self._n
            ts = self._ts[:n]
            mask = self._has_feature[:n] & (ts >= start) & (ts <= end)
            if after is not None:
                mask &= (ts < after) if reverse else (ts > after)
            if device_ids:
                wanted = [self._devices.lookup(d) for d in device_ids]
                mask &= np.isin(self._device[:n], np.asarray(wanted, np.int32))
            rows = np.flatnonzero(mask)
            if self._monotonic:
                rows = rows[::-1] if reverse else rows
            else:
                order = np.lexsort((self._ids[rows], self._ts[rows]))
                rows = rows[order[::-1] if reverse else order]
            candidates = rows.size
            rows = rows[:max_scanned]
            scores = to_score(self._features[rows] @ np.asarray(probe, np.float32))
            hits = np.flatnonzero(scores >= threshold)
            if hits.size >= max_matches:
                hits = hits[:max_matches]
                scanned = int(hits[-1]) + 1
            else:
                scanned = int(rows.size)
            last_ts = float(self._ts[rows[scanned - 1]]) if scanned else None
            matches = [(int(self._ids[rows[h]]), float(scores[h])) for h in hits]
            stopped_early = scanned < candidates and (
                hits.size >= max_matches or scanned >= max_scanned)
            return ScanResult(matches, scanned, bool(stopped_early), last_ts)
