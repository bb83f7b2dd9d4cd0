"""Request-body validation at the edge: declarative per-endpoint schemas into plain dicts.

Order (api/README.md 3.7 with each endpoint's "in this order" table, which is
authoritative): first every presence check in the row order of the endpoint's request
table (MISSING_ARGUMENTS), then every type/value check in the same order
(INVALID_ARGUMENTS). Every endpoint table lists its "absent" rows before its "wrong type"
rows, so one two-pass rule serves them all. ``null`` counts as absent (3.4); unknown keys
are ignored (3.3). A one-of group is checked at the position of its first row; only its
highest-priority present member is used and validated, the others are ignored (3.6).
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..errors import InvalidArguments, MissingArguments, invalid_argument
from ..store.codec import storable

#: Client-supplied ids and names (api/README.md 3.5, our decision).
MAX_ID_CHARS = 128
MAX_NAME_CHARS = 128
#: List parameters (ids to delete, groups to bind) are bounded so a hostile body cannot
#: make one request do unbounded work.
MAX_LIST_ITEMS = 10000

Parser = Callable[[Any, str, "Context"], Any]


@dataclass(frozen=True)
class Context:
    """What a parser may need beyond the value: the active recognizer's dimension."""

    feature_dim: int = 512


@dataclass(frozen=True)
class Param:
    name: str
    parse: Parser
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class OneOf:
    """A "one of N" group: ``names`` in table order, ``priority`` highest first.

    The parsed body gets the chosen member under its own name and the member's name
    under ``key`` (e.g. ``{"source": "register_image", "register_image": "..."}``).
    """

    key: str
    names: Tuple[str, ...]
    priority: Tuple[str, ...]
    parsers: Mapping[str, Parser]
    required: bool = True


@dataclass(frozen=True)
class Schema:
    items: Tuple[Union[Param, OneOf], ...]
    #: False for endpoints with no required parameter: an empty body is then ``{}``.
    empty_body_is_error: bool = True
    aliases: Mapping[str, str] = field(default_factory=dict)  # legacy key -> key
    #: Presence then type per row, row by row (login.md's tables), instead of two passes.
    interleaved: bool = False

    def parse(self, body: Mapping[str, Any], ctx: Context, prefix: str = "") -> Dict[str, Any]:
        """Validate ``body``; ``prefix`` names a nested object in messages (``filters.``)."""
        body = dict(body)
        for legacy, key in self.aliases.items():
            if body.get(key) is None and body.get(legacy) is not None:
                body[key] = body[legacy]
        present = {k for k, v in body.items() if v is not None}
        if self.interleaved:
            return self._parse_interleaved(body, present, ctx, prefix)
        chosen: Dict[str, Optional[str]] = {}
        for item in self.items:  # pass 1: presence
            if isinstance(item, Param):
                if item.required and item.name not in present:
                    raise MissingArguments(prefix + item.name)
            else:
                member = next((n for n in item.priority if n in present), None)
                if member is None and item.required:
                    raise MissingArguments("/".join(prefix + n for n in item.names))
                chosen[item.key] = member
        out: Dict[str, Any] = {}
        for item in self.items:  # pass 2: types and values
            if isinstance(item, Param):
                out[item.name] = (item.parse(body[item.name], prefix + item.name, ctx)
                                  if item.name in present else item.default)
            else:
                member = chosen[item.key]
                out[item.key] = member
                for name in item.names:
                    out[name] = None
                if member is not None:
                    out[member] = item.parsers[member](body[member], prefix + member, ctx)
        return out


    def _parse_interleaved(self, body: Mapping[str, Any], present: set, ctx: Context,
                           prefix: str) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for item in self.items:
            assert isinstance(item, Param), "one-of groups need the two-pass order"
            if item.name not in present:
                if item.required:
                    raise MissingArguments(prefix + item.name)
                out[item.name] = item.default
            else:
                out[item.name] = item.parse(body[item.name], prefix + item.name, ctx)
        return out


# --- parsers: each takes (value, name, ctx), returns the clean value or raises ---------

def string(max_chars: Optional[int] = None, non_empty: bool = False) -> Parser:
    def parse(value: Any, name: str, ctx: Context) -> str:
        if not isinstance(value, str) or (non_empty and value == "") or (
                max_chars is not None and len(value) > max_chars):
            raise invalid_argument(name, value)
        return value
    return parse


def integer(minimum: Optional[int] = None, maximum: Optional[int] = None) -> Parser:
    def parse(value: Any, name: str, ctx: Context) -> int:
        # 10.0 is an int (3.5); booleans are not.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_argument(name, value)
        if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
            raise invalid_argument(name, value)
        number = int(value)
        if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
            raise invalid_argument(name, value)
        return number
    return parse


def boolean(value: Any, name: str, ctx: Context) -> bool:
    if not isinstance(value, bool):
        raise invalid_argument(name, value)
    return value


def obj(value: Any, name: str, ctx: Context) -> dict:
    if not isinstance(value, dict) or not storable(value):
        raise invalid_argument(name, value)
    return value


def string_list(max_item_chars: Optional[int] = MAX_ID_CHARS, dedupe: bool = False) -> Parser:
    """A list of strings; element errors are named ``name[i]`` (R10)."""
    def parse(value: Any, name: str, ctx: Context) -> list:
        if not isinstance(value, list) or len(value) > MAX_LIST_ITEMS:
            raise invalid_argument(name, value)
        for i, item in enumerate(value):
            if not isinstance(item, str) or (max_item_chars is not None and len(item) > max_item_chars):
                raise invalid_argument(f"{name}[{i}]", item)
        if dedupe:  # keep the first occurrence (identity.md 1: no duplicates)
            return list(dict.fromkeys(value))
        return list(value)
    return parse


def choice(values: Sequence[str], synonyms: Optional[Mapping[str, str]] = None) -> Parser:
    """An enumerated string, matched case-insensitively, returned canonical (3.5)."""
    canonical = {v.lower(): v for v in values}
    for alias, target in (synonyms or {}).items():
        canonical[alias.lower()] = target

    def parse(value: Any, name: str, ctx: Context) -> str:
        if not isinstance(value, str) or value.lower() not in canonical:
            raise invalid_argument(name, value)
        return canonical[value.lower()]
    return parse


def feature_vector(value: Any, name: str, ctx: Context) -> np.ndarray:
    """``register_feature``: ``feature_dim`` finite numbers, or the base64 of that many
    little-endian float32 (api/README.md 4.3). Returned L2-normalised as float32."""
    dim = ctx.feature_dim
    if isinstance(value, str):
        try:
            raw = base64.b64decode("".join(value.split()), validate=True)
        except (binascii.Error, ValueError):
            raise invalid_argument(name, value) from None
        if len(raw) != 4 * dim:
            raise invalid_argument(name, value)
        with np.errstate(invalid="ignore"):  # a signalling NaN; refused just below
            vector = np.frombuffer(raw, dtype="<f4").astype(np.float64)
    elif isinstance(value, list):
        if len(value) != dim or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise invalid_argument(name, value)
        try:
            vector = np.asarray(value, dtype=np.float64)
        except OverflowError:  # an integer beyond float range, e.g. 10**400 (issue 12)
            raise invalid_argument(name, value) from None
    else:
        raise invalid_argument(name, value)
    if not np.all(np.isfinite(vector)):
        raise invalid_argument(name, value)
    # Scaled by the largest magnitude first, so that the norm of finite values as large
    # as 1e308 (or as small as 5e-324) neither overflows nor underflows (README 4.3).
    peak = float(np.max(np.abs(vector)))
    if peak == 0.0:  # all-zero
        raise invalid_argument(name, value)
    scaled = vector / peak
    unit = (scaled / np.linalg.norm(scaled)).astype(np.float32)
    if not np.all(np.isfinite(unit)):
        raise invalid_argument(name, value)
    return unit


# Common shapes.
IDENTIFIER = string(MAX_ID_CHARS)
NAME = string(MAX_NAME_CHARS)
ANY_STRING = string()
PAGE_LIMIT = integer(minimum=1)
PAGE_INDEX = integer(minimum=0)


def number(minimum: Optional[float] = None, maximum: Optional[float] = None) -> Parser:
    """A finite JSON number (int or float, not a boolean), returned as sent (3.5), so an
    error about it later can still echo it exactly."""
    def parse(value: Any, name: str, ctx: Context) -> Union[int, float]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise invalid_argument(name, value)
        try:
            result = float(value)
        except OverflowError:  # an integer beyond float range
            raise invalid_argument(name, value) from None
        if not math.isfinite(result) or (minimum is not None and result < minimum) or (
                maximum is not None and result > maximum):
            raise invalid_argument(name, value)
        return value
    return parse


def obj_any(value: Any, name: str, ctx: Context) -> dict:
    """Any JSON object (values checked by the endpoint, e.g. setconfigs per key)."""
    if not isinstance(value, dict):
        raise invalid_argument(name, value)
    return value


def secret(min_chars: int = 0, max_chars: Optional[int] = None) -> Parser:
    """A password: a string whose value is never echoed (README 12.2: ``<redacted>``)."""
    def parse(value: Any, name: str, ctx: Context) -> str:
        if not isinstance(value, str) or len(value) < min_chars or (
                max_chars is not None and len(value) > max_chars):
            raise InvalidArguments(f"{name}: <redacted>")
        return value
    return parse
