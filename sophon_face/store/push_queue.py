"""The durable history-push queue (api/event.md section 8): one entry per undelivered event.

An entry is written in the same transaction as its event, so an event can never exist
without its delivery being owed, and is removed only once every configured URL answered
2xx. The entry remembers which URLs already took the event: after a crash or a failing
receiver only the URLs still owed get it again.

Keys are event keys (8-byte big-endian event ids), so a cursor walks the queue oldest
first, which is the delivery order.
"""

from __future__ import annotations

from typing import Iterable, List, Set, Tuple

from sophon_face.store import codec, keys
from sophon_face.store.env import Txn

KIND = "push"


def _entry(delivered: Iterable[str]) -> bytes:
    return codec.pack(KIND, {"delivered": sorted(delivered)})


def _delivered(value: bytes) -> Set[str]:
    return set(codec.unpack(KIND, value)["delivered"])


def enqueue(txn: Txn, event_id: str) -> None:
    """Owe the event to every URL (the set of URLs is read when it is delivered)."""
    txn.raw.put(keys.event_key(int(event_id)), _entry(()), db=txn.dbs.push_queue)


def oldest(txn: Txn, limit: int) -> List[Tuple[str, Set[str]]]:
    """Up to ``limit`` queued events, oldest first, each with the URLs that already took it."""
    entries: List[Tuple[str, Set[str]]] = []
    cursor = txn.raw.cursor(db=txn.dbs.push_queue)
    for key, value in cursor.iternext(keys=True, values=True):
        if len(entries) >= limit:
            break
        entries.append((str(keys.event_id_from_key(key)), _delivered(value)))
    return entries


def mark_delivered(txn: Txn, event_id: str, url: str) -> None:
    """Record that ``url`` answered 2xx for the event (no-op when the entry is gone)."""
    key = keys.event_key(int(event_id))
    value = txn.raw.get(key, db=txn.dbs.push_queue)
    if value is None:
        return
    txn.raw.put(key, _entry(_delivered(value) | {url}), db=txn.dbs.push_queue)


def remove(txn: Txn, event_ids: Iterable[str]) -> None:
    for event_id in event_ids:
        txn.raw.delete(keys.event_key(int(event_id)), db=txn.dbs.push_queue)


def contains(txn: Txn, event_id: str) -> bool:
    return txn.raw.get(keys.event_key(int(event_id)), db=txn.dbs.push_queue) is not None


def count(txn: Txn) -> int:
    return txn.entries(txn.dbs.push_queue)


def clear(txn: Txn) -> None:
    txn.raw.drop(txn.dbs.push_queue, delete=False)
