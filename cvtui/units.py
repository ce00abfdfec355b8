"""How cvtui writes sizes and durations, everywhere (CLI, dashboard, notifications, stats).

Sizes are binary (IEC): 1 KiB = 1024 B, written KiB, MiB, GiB, TiB; the dashboard's narrow
columns write the same units with one letter (K, M, G, T). Durations are at most two units,
rounded down: 0.3s, 42s, 3m12s, 2h05m, 1d03h.
"""

from __future__ import annotations

import time

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def size(value: float | None) -> str:
    """Bytes in binary units: 512B, 3.5KiB, 1.9GiB, 12.0TiB ('-' when unknown)."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in _UNITS:
        if abs(amount) < 1024 or unit == _UNITS[-1]:
            return f"{amount:.0f}{unit}" if unit == "B" else f"{amount:.1f}{unit}"
        amount /= 1024
    return "-"  # not reached: the last unit takes any amount


def short_size(value: float | None) -> str:
    """Bytes in at most 5 characters, binary with one-letter units: 512M, 1.9T, 24G."""
    if value is None:
        return "-"
    amount = float(value)
    for unit in ("B", "K", "M", "G", "T", "P"):
        if amount < 1000 or unit == "P":
            return f"{amount:.1f}{unit}" if amount < 10 and unit != "B" else f"{amount:.0f}{unit}"
        amount /= 1024
    return "-"


def duration(seconds: float | None) -> str:
    """0.3s, 42s, 3m12s, 2h05m, 1d03h: two units at most, rounded down ('-' when unknown)."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{max(0.0, int(seconds * 10) / 10):.1f}s"
    total = int(seconds)
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def ago(timestamp: float | None, now: float | None = None) -> str:
    """How long ago a unix time was: '42s ago', 'never' for None."""
    if timestamp is None:
        return "never"
    return f"{duration(max(0.0, (now or time.time()) - timestamp))} ago"
