"""Pagination of list endpoints (api/README.md section 9)."""

from __future__ import annotations

import itertools
from typing import Callable, Dict, Iterable, Iterator, List, Tuple, TypeVar

T = TypeVar("T")

#: page_limit values above this are clamped (our decision, README 9).
MAX_PAGE_LIMIT = 1000


def page_of(items: Iterable[T], page_limit: int, page_index: int) -> Tuple[List[T], Dict[str, int]]:
    """One page of ``items`` (already filtered, in order) and the pagination object.

    Consumes the whole iterable to count it: ``total_count`` ignores paging.
    """
    limit = min(page_limit, MAX_PAGE_LIMIT)
    start = page_index * limit
    page: List[T] = []
    total = 0
    for item in items:
        if start <= total < start + limit:
            page.append(item)
        total += 1
    return page, _pagination(page_index, limit, total)


def page_of_counted(total: int, items_after: Callable[[int], Iterator[T]], page_limit: int,
                    page_index: int) -> Tuple[List[T], Dict[str, int]]:
    """``page_of`` for an unfiltered list whose size is known (``total``) and which can
    start at any position (``items_after(skip)``): reads the page's items only."""
    limit = min(page_limit, MAX_PAGE_LIMIT)
    start = page_index * limit
    page = list(itertools.islice(items_after(start), limit)) if start < total else []
    return page, _pagination(page_index, limit, total)


def _pagination(page_index: int, limit: int, total: int) -> Dict[str, int]:
    return {"page_index": page_index, "page_limit": limit, "total_count": total}
