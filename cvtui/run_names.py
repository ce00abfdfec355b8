"""Run names as people read them: a grid's runs named by the values that tell them apart.

A grid point is named `sweep[model.depth=18,optimizer.lr=0.1,...]`; cut to a column width,
those names all read `sweep[model.depth=18,opt` and a sweep cannot be told apart. Listings show
`sweep[depth=18,lr=0.1]` instead: only the values that differ among the runs listed with the
same config name, keys shortened to their last part where that stays unambiguous.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

_OPEN, _CLOSE = "[{(", "]})"


def split_run_name(name: str) -> tuple[str, list[tuple[str, str]] | None]:
    """(config name, [(key, value)...]) of a grid point's name; None pairs for a plain name."""
    if not name.endswith("]") or "[" not in name:
        return name, None
    base, _, rest = name.partition("[")
    inner = rest[:-1]
    parts: list[str] = []
    depth = 0
    quoted = False
    current = ""
    for char in inner:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in _OPEN:
            depth += 1
        elif not quoted and char in _CLOSE:
            depth -= 1
        if char == "," and depth == 0 and not quoted:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    pairs: list[tuple[str, str]] = []
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep and pairs:  # a comma inside a plain string value
            pairs[-1] = (pairs[-1][0], f"{pairs[-1][1]},{part}")
        elif not sep:
            return name, None
        else:
            pairs.append((key, value))
    return base, pairs


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key by its shortest tail that no other key shares."""
    short = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            tail = ".".join(parts[-size:])
            if not any(o != key and (o == tail or o.endswith(f".{tail}")) for o in keys):
                short[key] = tail
                break
        else:
            short[key] = key
    return short


def display_names(runs: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Run id -> the name to show among these runs (see the module doc)."""
    split = {run["id"]: split_run_name(run["name"]) for run in runs}
    groups: dict[str, list[str]] = {}
    for run_id, (base, pairs) in split.items():
        if pairs is not None:
            groups.setdefault(base, []).append(run_id)
    shown = {run["id"]: run["name"] for run in runs}
    for base, ids in groups.items():
        values: dict[str, set[str]] = {}
        for run_id in ids:
            for key, value in split[run_id][1] or ():
                values.setdefault(key, set()).add(value)
        differing = [key for key, seen in values.items() if len(seen) > 1]
        if len(ids) < 2 or not differing:
            continue
        short = _short_keys(differing)
        for run_id in ids:
            pairs = dict(split[run_id][1] or ())
            inner = ",".join(f"{short[k]}={pairs[k]}" for k in differing if k in pairs)
            shown[run_id] = f"{base}[{inner}]"
    return shown
