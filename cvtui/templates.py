"""Command templates: {name} placeholders, {{ and }} for literal braces, and how a value is
written into one (as YAML writes a scalar). Shared by run specs, inputs and resume args."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping

_TEMPLATE_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_PLACEHOLDER_RE = re.compile(r"\w[\w.-]*")


def placeholders(template: str) -> list[str]:
    """The placeholder names of a command template, in order; ValueError on a stray brace."""
    names = []
    for match in _TEMPLATE_RE.finditer(template):
        token = match[0]
        if token in ("{{", "}}"):
            continue
        if match[1] is None:
            raise ValueError(
                f"unmatched {token!r} at character {match.start() + 1}; "
                "write {{ or }} for a literal brace"
            )
        if not _PLACEHOLDER_RE.fullmatch(match[1]):
            raise ValueError(
                f"{token!r} is not a placeholder; write {{{{ and }}}} for literal braces"
            )
        names.append(match[1])
    return names


def fill_template(template: str, lookup: Callable[[str], str | None], *, final: bool) -> str:
    """Substitute placeholders that lookup knows; the rest stay for a later, final pass."""
    pieces = []
    last = 0
    for match in _TEMPLATE_RE.finditer(template):
        pieces.append(template[last : match.start()])
        last = match.end()
        token = match[0]
        if token in ("{{", "}}"):
            pieces.append(token[0] if final else token)
            continue
        text = lookup(match[1]) if match[1] is not None else None
        if text is None:
            if final:
                raise ValueError(f"unresolved {token!r} in {template!r}")
            pieces.append(token)
        else:
            # Braces in a value must survive the final pass as themselves.
            pieces.append(text if final else text.replace("{", "{{").replace("}", "}}"))
    pieces.append(template[last:])
    return "".join(pieces)


def lookup_values(
    values: Mapping[str, object], render: Callable[[str], str]
) -> Callable[[str], str | None]:
    return lambda name: render(param_text(values[name])) if name in values else None


def param_text(value: object) -> str:
    """A value as it goes on a command line or in a run name: as YAML would write a scalar."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
