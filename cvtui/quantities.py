"""Sizes and durations as people write them in YAML: 10GiB, 512, 500ms, 2.5s, 1h."""

from __future__ import annotations

import math
import re
from fractions import Fraction

_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d|w|y)?\s*", re.IGNORECASE)
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_UNITS_S |= {"w": 7 * 86400.0, "y": 365 * 86400.0}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20}
_SIZE_UNITS |= {"gb": 10**9, "gib": 2**30, "tb": 10**12, "tib": 2**40}


def parse_duration(value: object) -> float:
    """Seconds from 2, 2.5, "500ms", "1s", "2.5s", "2m", "1h", "30d", "2w" or "2y" (365 d)
    (a bare number is seconds)."""
    seconds: float | None = None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
            seconds = float(match[1]) * _DURATION_UNITS_S[(match[2] or "s").lower()]
    except OverflowError:
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(
            f"expected a duration such as 500ms, 1s, 2.5s, 2m, 1h or 30d, got {value!r}"
        )
    if seconds <= 0:
        raise ValueError(f"a duration must be greater than 0, got {value!r}")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from 512, "512", "10GB" (10**9) or "10GiB" (2**30); units are case-insensitive."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"a size must not be negative, got {value!r}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match and match[2].lower() in _SIZE_UNITS:
            size = Fraction(match[1]) * _SIZE_UNITS[match[2].lower()]
            if size.denominator != 1:
                raise ValueError(f"{value!r} is not a whole number of bytes")
            return int(size)
    raise ValueError(
        "expected a size such as 512, 10GB or 10GiB "
        f"(units B, KB, KiB, MB, MiB, GB, GiB, TB, TiB), got {value!r}"
    )
