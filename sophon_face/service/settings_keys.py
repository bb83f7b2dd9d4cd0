"""The 62 configuration keys of api/config.md section 4: type, default, rule, read-only.

``coerce(key, value)`` turns a ``setconfigs`` value into the key's stored value (the
coercion table of section 3) or raises ``ValueError``; the rule of each key is checked
there too, except rules that need the store (library sizes), which the service checks.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

from ..store.codec import storable

Rule = Optional[Callable[[Any], bool]]

_CLOCK = r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
#: Used with ``fullmatch`` (a ``$`` would also accept a trailing newline).
TIME_WINDOW = re.compile(f"{_CLOCK},{_CLOCK}")
URL = re.compile(r"https?://[^\s/?#]+[^\s]*", re.IGNORECASE)
#: Numeric strings accepted for int and float keys: ASCII only (``float()`` alone would
#: also take "1_000", Arabic-Indic digits, "nan" and "infinity").
NUMERIC_TEXT = re.compile(r"\s*[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*")
#: Our bounds where section 4 gives none: int keys fit a signed 32-bit integer, strings
#: are at most 4096 characters, objects nest at most 32 levels.
MAX_INT = 2 ** 31 - 1
MAX_STRING_CHARS = 4096
MAX_OBJECT_DEPTH = 32
DEFAULT_GROUP_RANGE = [10000, 100000, 200000, 300000, 400000, 500000]
STRANGER_GROUP_RANGE = [30000, 50000, 100000]


@dataclass(frozen=True)
class Key:
    type: str  # "int" | "float" | "bool" | "str" | "object" | "list"
    default: Any
    choices: Tuple[str, ...] = ()  # enumerated strings, canonical spelling
    rule: Rule = None
    readonly: bool = False


def split_urls(value: str) -> list:
    """The URLs of a comma-separated value; spaces and empty entries ignored (event.md 8)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def _urls_ok(value: str) -> bool:
    return all(URL.fullmatch(url) for url in split_urls(value))


def _window_ok(value: str) -> bool:
    return TIME_WINDOW.fullmatch(value) is not None


def _between(low: float, high: float) -> Rule:
    return lambda v: low <= v <= high


def _s(default: str = "", *choices: str, rule: Rule = None, readonly: bool = False) -> Key:
    return Key("str", default, tuple(choices), rule, readonly)


def _b(default: bool = False) -> Key:
    return Key("bool", default)


def _i(default: int, rule: Rule = None, readonly: bool = False) -> Key:
    return Key("int", default, rule=rule, readonly=readonly)


def _f(default: float, rule: Rule = None) -> Key:
    return Key("float", default, rule=rule)


_IMAGE_TYPES = ("recognize_face", "spot_image", "all")
_POSE = ("off", "low", "middle", "high")
_WINDOW = "00:00:00,23:59:59"

KEYS: Dict[str, Key] = {
    # 4.1 history push
    "HISTORY_EVENT_UPLOAD_URL": _s("", rule=_urls_ok),
    "HISTORY_REPORT_PEROID": _i(5, lambda v: v >= 1),
    # 4.2 device status push
    "MEDIA_DEVICE_MONITOR_URL": _s("", rule=_urls_ok),
    "MEDIA_DEVICE_MONITOR_REPORT_PEROID": _i(60, lambda v: v >= 1),
    # 4.3 gate application
    "GATE_MONGO_IP": _s("127.0.0.1"),
    "GATE_WORK_MODE": _s("local", "mq", "local"),
    "GATE_DUPLICATE_REMOVAL_TIMEOUT": _f(6.0, lambda v: v >= 0),
    "GATE_SUPPORT_STRANGER_GROUP": _b(),
    "GATE_INIT": _s("0", "0", "1"),
    "GATE_EVENT_IMAGE_PATH": _s("local", "local", "remote"),
    "GATE_APPLY_MODE": _s("recognize", "grab", "recognize"),
    "GATE_BOX_USAGE": _s("normal", "normal", "fiqa", "feature"),
    "GATE_PASS_MODE": _s("normal", "normal", "allpass", "allforbidden"),
    "GATE_DEFAULT_GROUP_SIZE": _i(100000, lambda v: v in DEFAULT_GROUP_RANGE),
    "GATE_STRANGER_GROUP_SIZE": _i(30000, lambda v: v in STRANGER_GROUP_RANGE),
    "GATE_PRODUCT_TYPE": _s("docker", readonly=True),
    # 4.4 matching
    "MATCH_THRESHOLD": _f(82.0, _between(0, 100)),
    # 4.5 MQ (stored only)
    "MQ_LOGIN_URL": _s(),
    "MQ_LOGIN_STATUS": _i(0, readonly=True),
    "MQ_LICENSE_KEY": _s(),
    "MQ_USERNAME": _s(),
    "MQ_PASSWORD": _s(),
    "MQ_SERVER_IP": _s(),
    "MQ_SERVER_PORT": _i(5672, _between(1, 65535)),
    "MQ_EXCHANGE_NAME": _s(),
    "MQ_EXCHANGE_TYPE": _s(),
    "MQ_EXCHANGE_DURABLE": _b(),
    "MQ_EXCHANGE_PASSIVE": _b(),
    "MQ_EXCHANGE_AUTO_DELETE": _b(),
    "MQ_EXCHANGE_ARGUMENTS": Key("object", {}),
    "MQ_DOWN_QUEUE": _s(),
    "MQ_UP_QUEUE": _s(),
    "MQ_FIQA_DOWN_QUEUE": _s(),
    "MQ_FIQA_UP_QUEUE": _s(),
    "MQ_VHOST": _s(),
    "MQ_UPLOAD_VHOST": _s(),
    "MQ_UNNEED_BIND_EXCHANGE": _b(),
    "MQ_LOGIN_TOKEN": _s(),
    "MQ_REMOTE_SERVER_ADDR": _s(),
    "MQ_IMG_SERVER_ADDR": _s(),
    # 4.6 algorithm
    "ALG_ATTRIBUTE_DETECT": _b(),
    "ALG_SUPPORT_MASK": _b(),
    "ALG_DEFAULT_GROUP_RANGE": Key("list", DEFAULT_GROUP_RANGE, readonly=True),
    "ALG_STRANGER_GROUP_RANGE": Key("list", STRANGER_GROUP_RANGE, readonly=True),
    # 4.7 grab mode
    "GRAB_MIN_FACE": _i(40, _between(20, 300)),
    "GRAB_TIME_PART1": _s(_WINDOW, rule=_window_ok),
    "GRAB_TIME_PART1_SWITCH": _b(),
    "GRAB_TIME_PART2": _s(_WINDOW, rule=_window_ok),
    "GRAB_TIME_PART2_SWITCH": _b(),
    "GRAB_THRESHOLD": _f(44.0, _between(0, 100)),
    "GRAB_MODE": _s("quality", "quality", "speed"),
    "GRAB_IMAGE_TYPE": _s("recognize_face", *_IMAGE_TYPES),
    "GRAB_POSE_THRESH": _s("high", *_POSE),
    "GRAB_VIDEO_FIQA": _b(True),
    # 4.8 recognition mode
    "REGN_MIN_FACE": _i(40, _between(20, 300)),
    "REGN_TIME_PART1": _s(_WINDOW, rule=_window_ok),
    "REGN_TIME_PART1_SWITCH": _b(),
    "REGN_TIME_PART2": _s(_WINDOW, rule=_window_ok),
    "REGN_TIME_PART2_SWITCH": _b(),
    "REGN_POSE_THRESH": _s("high", *_POSE),
    "REGN_VIDEO_FIQA": _b(True),
    "REGN_IMAGE_TYPE": _s("all", *_IMAGE_TYPES),
}
assert len(KEYS) == 62

#: R34: legacy names accepted by getconfigs and setconfigs, echoed as sent.
ALIASES = {"EVENT_IMAGE_PATH": "GATE_EVENT_IMAGE_PATH"}


def canonical(name: Any) -> Optional[str]:
    if not isinstance(name, str):
        return None
    name = ALIASES.get(name, name)
    return name if name in KEYS else None


def _number(value: Any) -> float:
    """A finite number from a JSON number or an ASCII numeric string (section 3)."""
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    if isinstance(value, str):
        if not NUMERIC_TEXT.fullmatch(value):
            raise ValueError("not a numeric string")
        value = float(value)
    elif not isinstance(value, (int, float)):
        raise ValueError("not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range
        raise ValueError("out of range") from None
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _integer(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        number: Any = value  # exact, however large (float() would round it)
    else:
        real = _number(value)
        if not real.is_integer():
            raise ValueError("not an integer")
        number = int(real)
    if abs(number) > MAX_INT:
        raise ValueError("out of range")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0"):
        return value.strip().lower() in ("true", "1")
    raise ValueError("not a boolean")


def coerce(name: str, value: Any) -> Any:
    """The stored value for ``setconfigs``' ``value`` of key ``name``; ValueError if not."""
    key = KEYS[name]
    if key.type == "int":
        result: Any = _integer(value)
    elif key.type == "float":
        result = _number(value)
    elif key.type == "bool":
        result = _boolean(value)
    elif key.type == "object":
        if value == "":
            result = {}
        elif isinstance(value, dict) and storable(value, MAX_OBJECT_DEPTH):
            result = value
        else:
            raise ValueError("not an object")
    else:
        if name == "GATE_INIT" and isinstance(value, int) and not isinstance(value, bool) \
                and value in (0, 1):
            value = str(value)
        if not isinstance(value, str):
            raise ValueError("not a string")
        if len(value) > MAX_STRING_CHARS:
            raise ValueError("too long")
        result = value
        if key.choices:
            by_lower = {c.lower(): c for c in key.choices}
            if value.lower() not in by_lower:
                raise ValueError("not an allowed value")
            result = by_lower[value.lower()]
    if key.rule is not None and not key.rule(result):
        raise ValueError("violates the key's rule")
    return result
