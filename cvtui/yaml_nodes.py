"""A YAML-node walker with path:line:column errors, shared by the inventory and run configs.

Values are read from composed nodes (not loaded data), so every value keeps the line and column
it came from; with ``collect`` a walk gathers every independent problem instead of stopping at
the first. Parsers of a file kind subclass NodeParser and add their own keys.
"""

from __future__ import annotations

import contextlib
import difflib
import pathlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

import yaml

from cvtui.errors import InventoryError
from cvtui.quantities import parse_duration, parse_size

NULL_TAG = "tag:yaml.org,2002:null"
MERGE_TAG = "tag:yaml.org,2002:merge"
MAP_TAG = "tag:yaml.org,2002:map"
SEQ_TAG = "tag:yaml.org,2002:seq"

Pairs = dict[str, tuple[yaml.Node, yaml.Node]]  # key text -> (key node, value node)
LocatedError = TypeVar("LocatedError", bound=InventoryError)

_FAST_LOADER = getattr(yaml, "CSafeLoader", None)  # libyaml: about 15x faster to compose


MAX_YAML_DEPTH = 100  # nesting levels; deeper is refused before any recursive walk sees it


def compose_yaml(text: str) -> yaml.Node | None:
    """yaml.compose, with libyaml when PyYAML has it. On any error the pure-Python loader
    composes again, so error messages read the same with or without libyaml. A document
    nested deeper than MAX_YAML_DEPTH is a MarkedYAMLError at the node that goes too deep
    (never a RecursionError from the recursive composer or the walkers after it)."""
    if _FAST_LOADER is not None:
        try:
            root = yaml.compose(text, Loader=_FAST_LOADER)
        except yaml.YAMLError:
            pass
        else:
            _check_depth(root)
            return root
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise _too_deep(_deep_mark(text)) from None
    _check_depth(root)
    return root


def _too_deep(mark: yaml.Mark | None) -> yaml.MarkedYAMLError:
    return yaml.MarkedYAMLError(
        problem=f"nested deeper than {MAX_YAML_DEPTH} levels", problem_mark=mark
    )


def _check_depth(root: yaml.Node | None) -> None:
    """Refuse a composed document nested deeper than MAX_YAML_DEPTH (walked without recursion)."""
    stack = [(root, 1)] if root is not None else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_YAML_DEPTH:
            raise _too_deep(node.start_mark)
        if isinstance(node, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            stack.extend((child, depth + 1) for pair in node.value for child in pair)


def _deep_mark(text: str) -> Any:  # a yaml.Mark (pure or libyaml) or None
    """Where the document first goes deeper than MAX_YAML_DEPTH (the parser is not recursive)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    return event.start_mark
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        pass
    return None


def syntax_error(
    path: str, exc: yaml.MarkedYAMLError, error_type: type[InventoryError] = InventoryError
) -> InventoryError:
    """The located error for a YAML syntax error, worded for the file's reader."""
    mark = exc.problem_mark or exc.context_mark
    problem = f"invalid YAML: {exc.problem or exc.context or 'unreadable'}"
    if exc.context and exc.problem:
        if not exc.context.startswith("while") or exc.context_mark is None:
            problem = f"invalid YAML: {exc.context} {exc.problem}"
        elif exc.problem_mark is None or exc.context_mark.line != exc.problem_mark.line:
            problem += f" ({exc.context} on line {exc.context_mark.line + 1})"
    if mark is None:
        return error_type(path, None, None, problem)
    return error_type(path, mark.line + 1, mark.column + 1, problem)


def compose_document(
    text: str, path: str, error_type: type[InventoryError] = InventoryError
) -> yaml.Node | None:
    """compose_yaml, with every syntax or character problem an error_type at path:line:column."""
    try:
        return compose_yaml(text)
    except yaml.MarkedYAMLError as exc:
        raise syntax_error(path, exc, error_type) from exc
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        problem = f"invalid YAML: unacceptable character #x{exc.character:04x} ({exc.reason})"
        raise error_type(path, line, column, problem) from exc


class AlreadyReported(Exception):
    """A part of the file whose error is already reported: the walk skips the rest of it."""


class NodeParser(Generic[LocatedError]):
    """Walks composed YAML nodes, so every value keeps the line and column it came from.

    Errors are the subclass's ``error_type`` (InventoryError, or ConfigError for run configs),
    located as path:line:column.
    """

    error_type: type[LocatedError]

    def __init__(self, path: str, *, collect: bool = False) -> None:
        self.path = path
        # Relative paths in the file are relative to the file, whatever the current directory.
        self.base_dir = None if path == "<string>" else pathlib.Path(path).absolute().parent
        self.loader = yaml.SafeLoader("")
        # With collect, a problem that leaves the rest of the file readable is kept here and
        # the walk goes on, so one pass reports every error; without it the first one raises.
        self.problems: list[InventoryError] | None = [] if collect else None

    def report(self, error: InventoryError) -> None:
        if self.problems is None:
            raise error
        self.problems.append(error)

    @contextlib.contextmanager
    def gathering(self) -> Iterator[None]:
        """One independent part of the walk: with collect on, its error is kept, not raised."""
        try:
            yield
        except InventoryError as error:
            self.report(error)
        except AlreadyReported:
            pass

    def error(self, node: yaml.Node, problem: str) -> LocatedError:
        mark = node.start_mark
        return self.error_type(self.path, mark.line + 1, mark.column + 1, problem)

    @staticmethod
    def is_null(node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == NULL_TAG

    def value(self, node: yaml.Node) -> object:
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            raise self.error(node, f"unsupported value: {exc.problem}") from exc
        except ValueError as exc:
            raise self.error(node, f"unreadable value {node.value!r}: {exc}") from exc

    def describe(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.SequenceNode):
            return "a list"
        if isinstance(node, yaml.MappingNode):
            return "a mapping"
        if self.is_null(node):
            return "nothing"
        value = self.value(node)
        text = repr(value) if isinstance(value, str) else str(node.value)
        return text if len(text) <= 40 else text[:37] + "..."

    def mapping(self, node: yaml.Node, label: str, what: str = "key") -> Pairs:
        """Key text -> nodes, in file order; a repeated key is an error (PyYAML keeps the last)."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{label}: expected a mapping, got {self.describe(node)}")
        if node.tag != MAP_TAG:
            raise self.error(node, f"{label}: unsupported tag {node.tag!r} on a mapping")
        explicit: Pairs = {}
        merged: Pairs = {}
        for key, value in node.value:
            if key.tag == MERGE_TAG:
                sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
                for source in sources:
                    for name, pair in self.mapping(source, f"{label} (<< merge)", what).items():
                        merged.setdefault(name, pair)  # YAML merge: the first source wins
                continue
            if not isinstance(key, yaml.ScalarNode):
                raise self.error(
                    key, f"{label}: expected a plain name as {what}, got a complex key"
                )
            if key.value in explicit:
                first = explicit[key.value][0].start_mark.line + 1
                self.report(
                    self.error(key, f"duplicate {what} {key.value!r} (first on line {first})")
                )
                continue
            explicit[key.value] = (key, value)
        return merged | explicit

    def check_keys(self, pairs: Pairs, allowed: tuple[str, ...], label: str) -> bool:
        """Report each key that is not allowed; whether all were (with collect on)."""
        known = True
        for name, (key, _) in pairs.items():
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problem = f"unknown key {name!r} in {label}{hint}; allowed: {', '.join(allowed)}"
                self.report(self.error(key, problem))
                known = False
        return known

    def integer(
        self, node: yaml.Node, label: str, expected: str, low: int, high: int | None = None
    ) -> int:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or value < low
            or (high is not None and value > high)
        ):
            raise self.error(node, f"{label}: expected {expected}, got {self.describe(node)}")
        return value

    def string(self, node: yaml.Node, label: str) -> str:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, str) and value.strip():
            return value
        quote = "" if value is None or isinstance(value, str) else " (quote it to use it as text)"
        raise self.error(
            node, f"{label}: expected a non-empty string, got {self.describe(node)}{quote}"
        )

    def local_path(self, node: yaml.Node, label: str) -> str:
        path = pathlib.Path(self.string(node, label)).expanduser()
        return str(self.base_dir / path if self.base_dir else path)

    def sequence(self, node: yaml.Node, label: str, example: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            got = self.describe(node)
            raise self.error(node, f"{label}: expected a list like {example}, got {got}")
        if node.tag != SEQ_TAG:
            raise self.error(node, f"{label}: unsupported tag {node.tag!r} on a list")
        return list(node.value)

    def size(self, node: yaml.Node, label: str) -> int:
        try:
            return parse_size(self.value(node) if isinstance(node, yaml.ScalarNode) else [])
        except ValueError as exc:
            raise self.error(node, f"{label}: {exc}") from exc

    def duration(self, node: yaml.Node, label: str) -> float:
        try:
            return parse_duration(self.value(node) if isinstance(node, yaml.ScalarNode) else [])
        except ValueError as exc:
            raise self.error(node, f"{label}: {exc}") from exc

    def choice(self, node: yaml.Node, label: str, allowed: tuple[str, ...]) -> str:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if value in allowed:
            return str(value)
        options = " or ".join(repr(option) for option in allowed)
        raise self.error(node, f"{label}: expected {options}, got {self.describe(node)}")
