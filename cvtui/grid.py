"""Parameter grids: which values are axes, how many runs they make, and each run's values.

Two rule sets. A cvtui config's `params` follow cvtui's rules: a list is an axis unless it is a
list of lists or named in keep_lists, and an empty list is an error. An experiment config (a
config without `command:`, CVLab-Kit style) follows the rules of the framework that reads it:
a list reached through mappings is an axis whatever it holds (a list of lists is an axis whose
values are lists), an empty list is one value (itself), a !!python/tuple is a value, and a
string such as "[1, 2]" is a value. Axes come in document order, the last varying fastest.

`framework_yaml` writes one run's config so that the framework, reading it again, finds
exactly that one run: lists that are values there are written as the "[...]" strings the
framework reads as data lists, and tuples keep their tag.
"""

from __future__ import annotations

import ast
import copy
import itertools
import math
from collections.abc import Collection, Iterator, Mapping
from typing import Any

import yaml

Path = tuple[str, ...]


def axis_paths(
    tree: Mapping[str, Any], keep: Collection[str], *, framework: bool, prefix: Path = ()
) -> list[Path]:
    """The key paths of the grid axes of a tree, in document order."""
    found: list[Path] = []
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            found += axis_paths(value, keep, framework=framework, prefix=path)
        elif is_axis(path, value, keep, framework=framework):
            found.append(path)
    return found


def is_axis(path: Path, value: object, keep: Collection[str], *, framework: bool) -> bool:
    if not isinstance(value, list):  # a tuple is a value under both rule sets
        return False
    if path[-1] in keep or ".".join(path) in keep:
        return False
    if framework:
        return bool(value)  # an empty list is one value: itself
    return not (value and all(isinstance(item, list) for item in value))


def repeating_axes(tree: Mapping[str, Any], paths: list[Path]) -> tuple[str, ...]:
    """The axes that list one value twice, as "key: [values]" (each makes copies of runs)."""
    found = []
    for path in paths:
        values = get_path(tree, path)
        seen = {repr(_untupled(value)) for value in values}
        if len(seen) < len(values):
            found.append(f"{'.'.join(path)}: {_untupled(values)!r:.60}")
    return tuple(found)


def get_path(tree: Mapping[str, Any], path: Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def grid_size(tree: Mapping[str, Any], paths: list[Path]) -> int:
    """How many runs the axes make, computed without making them."""
    return math.prod(len(get_path(tree, path)) for path in paths)


def copy_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """New mappings at every level; the values that are not mappings are shared (a point's
    consumers copy what they keep: run_config._listed, flatten)."""
    return {
        str(key): copy_tree(value) if isinstance(value, Mapping) else value
        for key, value in tree.items()
    }


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for nested mappings: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def points(
    tree: Mapping[str, Any], paths: list[Path]
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Each grid point, one at a time: (the tree with each axis replaced by one value, that
    point's axis values flattened)."""
    for combo in itertools.product(*(get_path(tree, path) for path in paths)):
        nested = copy_tree(tree)
        chosen: dict[str, Any] = {}
        for path, value in zip(paths, combo, strict=True):
            parent = get_path(nested, path[:-1])
            parent[path[-1]] = copy.deepcopy(value)
            chosen |= flatten({".".join(path): value})
        yield nested, chosen


# -- writing an experiment config back ------------------------------------------------------


class _DataList(str):
    """A list the framework must read as one value: written as its "[...]" literal."""


# libyaml's emitter when PyYAML has it: a 10,000-run grid writes 10,000 configs.
_SafeDumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class _FrameworkDumper(_SafeDumper):  # type: ignore[valid-type,misc]
    """Safe YAML plus the !!python/tuple the framework's FullLoader reads back as a tuple."""


def _represent_tuple(dumper: yaml.SafeDumper, value: tuple[Any, ...]) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:python/tuple", list(value), True)


def _represent_data_list(dumper: yaml.SafeDumper, value: _DataList) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", str(value), style='"')


_FrameworkDumper.add_representer(tuple, _represent_tuple)
_FrameworkDumper.add_representer(_DataList, _represent_data_list)


def _as_data(value: list[Any]) -> _DataList | list[Any]:
    """The "[...]" text ast.literal_eval reads back as this list, when there is one."""
    text = repr(value)
    try:
        if ast.literal_eval(text) == value:
            return _DataList(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        pass
    return value  # nan, inf: no literal reads back equal; written as a list (an axis again)


def _fixed(tree: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = _fixed(value)
        elif isinstance(value, list) and value:
            out[key] = _as_data(value)
        else:
            out[key] = value
    return out


def framework_yaml(tree: Mapping[str, Any]) -> str:
    """One run's experiment config as YAML that expands to exactly this run again."""
    return yaml.dump(
        _fixed(tree),
        Dumper=_FrameworkDumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=4096,
    )


def plain_yaml(tree: Mapping[str, Any]) -> str:
    """A cvtui config's resolved config: safe YAML (tuples written as lists)."""
    return yaml.dump(_untupled(tree), Dumper=_SafeDumper, sort_keys=False, allow_unicode=True)


def _untupled(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _untupled(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_untupled(item) for item in value]
    return value
