"""The `/` filter language of the tables: `state:running host:gpu-0 user:alice lr=0.1`.

``key:value`` terms match a field (several values of one key: any of them; different keys:
all of them); other words must each appear in the row's text (name, id, ...). Case-insensitive
substring matches throughout, so `state:run` finds running runs.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RowFilter:
    """A parsed filter; the empty filter matches everything."""

    terms: tuple[tuple[str, tuple[str, ...]], ...] = ()
    words: tuple[str, ...] = ()
    text: str = ""

    def __bool__(self) -> bool:
        return bool(self.terms or self.words)

    def matches(self, fields: Mapping[str, str | Iterable[str] | None], text: str) -> bool:
        for key, wanted in self.terms:
            value = fields.get(key)
            values = [value] if isinstance(value, str) or value is None else list(value)
            present = [v.lower() for v in values if v]
            if not any(w in v for w in wanted for v in present):
                return False
        haystack = text.lower()
        return all(word in haystack for word in self.words)


def parse_filter(query: str, keys: Collection[str]) -> RowFilter:
    """Split a query into field terms (for the given keys) and free words."""
    terms: dict[str, list[str]] = {}
    words: list[str] = []
    for token in query.split():
        key, sep, value = token.partition(":")
        if sep and key.lower() in keys and value:
            terms.setdefault(key.lower(), []).append(value.lower())
        else:
            words.append(token.lower())
    return RowFilter(
        tuple((k, tuple(v)) for k, v in terms.items()), tuple(words), text=query.strip()
    )
