"""Checks of the values one side of the wire reads from the other: types, ranges, lengths.

A host is not trusted: a field that SQLite, os.ftruncate or datetime would choke on (an mtime
of 10**30, a size of -5, a name of a megabyte) is refused here, naming the field and the value,
so one bad entry fails alone instead of an OverflowError deep in the engine. Python 3.8+, stdlib.
"""

from __future__ import annotations

import math
from typing import Any

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1  # what SQLite stores as an INTEGER
PID_MAX = (1 << 31) - 1
UID_MAX = (1 << 32) - 1
TIME_MAX_S = 1e10  # unix seconds, year 2286: later host clocks are wrong, not the future
MAX_NAME = 256  # a hostname, a GPU name, a user, an algorithm, a state
MAX_ID = 128  # a run id, a GPU uuid, a container id
MAX_PATH = 4096
MAX_TEXT = 4000  # a reason, a message: longer text is cut, never refused
MAX_ITEMS = 100_000  # entries in one list of a reply


class FieldError(ValueError):
    """A field that is missing or not what the protocol allows; str() names it."""


def _bound(value: float) -> str:
    if value == INT64_MAX:
        return "2^63-1"
    if value == INT64_MIN:
        return "-2^63"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _range(low: float, high: float) -> str:
    return f"[{_bound(low)}, {_bound(high)}]"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def get(data: dict[str, Any], name: str, default: Any = ...) -> Any:
    if not isinstance(data, dict):
        raise FieldError(f"expected an object, got {type(data).__name__}")
    if name in data:
        return data[name]
    if default is ...:
        raise FieldError(f"{name} is missing")
    return default


def integer(
    data: dict[str, Any],
    name: str,
    low: int = INT64_MIN,
    high: int = INT64_MAX,
    *,
    optional: bool = False,
    default: Any = ...,
) -> int | None:
    """An int (not a bool) within [low, high]; None allowed when optional."""
    value = get(data, name, None if optional and default is ... else default)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise FieldError(f"{name} {_show(value)} is not an integer")
    if not low <= value <= high:
        raise FieldError(f"{name} {_show(value)} is out of range {_range(low, high)}")
    return value


def number(
    data: dict[str, Any],
    name: str,
    low: float,
    high: float,
    *,
    optional: bool = False,
    default: Any = ...,
) -> float | None:
    """A finite int or float (not a bool) within [low, high], as a float."""
    value = get(data, name, None if optional and default is ... else default)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise FieldError(f"{name} {_show(value)} is not a number")
    if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
        raise FieldError(f"{name} {_show(value)} is out of range {_range(low, high)}")
    result = float(value)
    if not math.isfinite(result) or not low <= result <= high:
        raise FieldError(f"{name} {_show(value)} is out of range {_range(low, high)}")
    return result


def text(
    data: dict[str, Any],
    name: str,
    longest: int,
    *,
    optional: bool = False,
    default: Any = ...,
    cut: bool = False,
) -> str | None:
    """A str of at most longest characters (cut to that length with ``cut``)."""
    value = get(data, name, None if optional and default is ... else default)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise FieldError(f"{name} {_show(value)} is not a string")
    if len(value) > longest:
        if not cut:
            raise FieldError(f"{name} of {len(value)} characters is over {longest}")
        value = value[:longest]
    return value


def boolean(data: dict[str, Any], name: str, default: Any = ...) -> bool:
    value = get(data, name, default)
    if not isinstance(value, bool):
        raise FieldError(f"{name} {_show(value)} is not true or false")
    return value


def items(data: dict[str, Any], name: str, longest: int = MAX_ITEMS) -> list[Any]:
    """A JSON list (absent means empty) of at most longest items."""
    value = get(data, name, [])
    if not isinstance(value, (list, tuple)):
        raise FieldError(f"{name} {_show(value)} is not a list")
    if len(value) > longest:
        raise FieldError(f"{name} has {len(value)} items, over {longest}")
    return list(value)


def one_of(data: dict[str, Any], name: str, allowed: Any, *, default: Any = ...) -> str:
    value = get(data, name, default)
    if not isinstance(value, str) or value not in allowed:
        raise FieldError(f"{name} {_show(value)} is not one of {', '.join(allowed)}")
    return value


def relative_path(data: dict[str, Any], name: str = "path") -> str:
    """A '/'-separated path inside a directory: not empty, not absolute, no '..', no NUL."""
    value = text(data, name, MAX_PATH) or ""
    parts = value.split("/")
    if not value or value.startswith("/") or ".." in parts or "\0" in value or "" in parts:
        raise FieldError(f"{name} {_show(value)} is not a relative path inside the directory")
    return value


def shown_path(value: Any) -> str:
    """A host's path made fit to name an entry that was refused (display only)."""
    if isinstance(value, str) and 0 < len(value) <= MAX_PATH and "\0" not in value:
        return value
    return f"<bad path {_show(value)}>"
