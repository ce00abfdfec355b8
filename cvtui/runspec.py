"""Run config YAML -> one RunSpec per grid point: grid expansion, command templating, resources."""

from __future__ import annotations

import copy
import datetime
import difflib
import itertools
import json
import pathlib
import posixpath
import re
import shlex
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import yaml

from cvtui.errors import ConfigError
from cvtui.inventory import _Pairs, _Parser, _syntax_error, compose_yaml

PRIORITIES = ("urgent", "high", "normal", "low")  # rank 0..3: PRIORITIES.index(priority)
DEFAULT_OUTPUTS = ("*.csv", "*.jsonl", "*.yaml", "*.log", "*.pt", "*.pth", "*.ckpt")
BUILTIN_PLACEHOLDERS = ("run_id", "run_dir", "config_file", "gpus")  # filled by render_command
CONFIG_FILE_NAME = "config.yaml"  # the resolved config, written in the run dir

_TOP_KEYS = (
    "name",
    "project",
    "command",
    "code",
    "exclude",
    "params",
    "resources",
    "priority",
    "env",
    "outputs",
    "retries",
    "keep_lists",
)
_RESOURCE_KEYS = ("gpus", "min_free_mem", "host", "hosts", "tags")
_TEMPLATE_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_PLACEHOLDER_RE = re.compile(r"\w[\w.-]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OVERRIDE_KEY_RE = re.compile(r"[^\s=.]+(?:\.[^\s=.]+)*")
_CVLAB_NEEDS = (
    "a CVLab-Kit style config (experiment keys at the top level) needs a command that takes "
    "{config_file}, from a 'command:' key or the inventory's command template"
)

_Path = tuple[str, ...]
_Where = dict[_Path, yaml.Node | str]  # key path -> its YAML node, or the --set text that set it


@dataclass(frozen=True)
class Resources:
    """What one run needs from a host."""

    gpus: int = 0
    min_free_mem: int = 0  # bytes free on each of its GPUs
    hosts: tuple[str, ...] = ()  # allowed hosts; empty: any
    tags: tuple[str, ...] = ()  # a host must carry every one


@dataclass(frozen=True)
class RunSpec:
    """One run of a config: one grid point, params substituted, built-ins left for the engine."""

    name: str  # "sweep[lr=0.1,batch.size=32]"; the config name alone when it has one run
    project: str
    command: tuple[str, ...] | str  # a str runs under sh -c; a tuple is argv
    params: Mapping[str, Any]  # this point's values by dotted key: {"batch.size": 32}
    config: Mapping[str, Any]  # written to config.yaml in the run dir
    code_dir: str  # absolute local path of the directory to snapshot
    exclude: tuple[str, ...]
    resources: Resources
    priority: str  # one of PRIORITIES
    env: Mapping[str, str]
    outputs: tuple[str, ...]  # globs synced back
    retries: int  # extra attempts after a lost or failed run
    source: str  # the config file path, or "<string>"
    index: int  # position in the grid, 0-based: axes in document order, last axis fastest

    def render_command(
        self, *, run_id: str, run_dir: str, gpus: Sequence[int]
    ) -> tuple[str, ...] | str:
        """The command with built-ins filled (shell-quoted in a str command) and {{ }} undone."""
        values = {
            "run_id": run_id,
            "run_dir": run_dir,
            "config_file": posixpath.join(run_dir, CONFIG_FILE_NAME),
            "gpus": ",".join(str(gpu) for gpu in gpus),
        }
        if isinstance(self.command, str):
            return _fill(self.command, _lookup(values, shlex.quote), final=True)
        return tuple(_fill(part, _lookup(values, str), final=True) for part in self.command)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "project": self.project,
            "command": self.command if isinstance(self.command, str) else list(self.command),
            "params": copy.deepcopy(dict(self.params)),
            "config": copy.deepcopy(dict(self.config)),
            "code_dir": self.code_dir,
            "exclude": list(self.exclude),
            "resources": {
                "gpus": self.resources.gpus,
                "min_free_mem": self.resources.min_free_mem,
                "hosts": list(self.resources.hosts),
                "tags": list(self.resources.tags),
            },
            "priority": self.priority,
            "env": dict(self.env),
            "outputs": list(self.outputs),
            "retries": self.retries,
            "source": self.source,
            "index": self.index,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunSpec:
        command = data["command"]
        resources = data["resources"]
        return cls(
            name=data["name"],
            project=data["project"],
            command=command if isinstance(command, str) else tuple(command),
            params=dict(data["params"]),
            config=dict(data["config"]),
            code_dir=data["code_dir"],
            exclude=tuple(data["exclude"]),
            resources=Resources(
                gpus=resources["gpus"],
                min_free_mem=resources["min_free_mem"],
                hosts=tuple(resources["hosts"]),
                tags=tuple(resources["tags"]),
            ),
            priority=data["priority"],
            env=dict(data["env"]),
            outputs=tuple(data["outputs"]),
            retries=data["retries"],
            source=data["source"],
            index=data["index"],
        )


def with_overrides(
    spec: RunSpec,
    *,
    gpus: int | None = None,
    priority: str | None = None,
    hosts: Sequence[str] | None = None,
) -> RunSpec:
    """spec with the CLI's --gpus, --priority and --host applied (None: keep the config's).

    hosts replaces the allowed hosts (an empty sequence allows any); tags are kept. The resolved
    ``config`` is left as the file wrote it.
    """
    resources = spec.resources
    if gpus is not None:
        if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
            raise ConfigError("--gpus", None, None, f"expected an integer >= 0, got {gpus!r}")
        resources = replace(resources, gpus=gpus)
    if hosts is not None:
        if isinstance(hosts, str) or not all(isinstance(h, str) and h.strip() for h in hosts):
            raise ConfigError("--host", None, None, f"expected host names, got {hosts!r}")
        resources = replace(resources, hosts=tuple(hosts))
    if priority is not None and priority not in PRIORITIES:
        expected = ", ".join(PRIORITIES)
        raise ConfigError("--priority", None, None, f"expected one of {expected}, got {priority!r}")
    return replace(spec, resources=resources, priority=priority or spec.priority)


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


def _fill(template: str, lookup: Callable[[str], str | None], *, final: bool) -> str:
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


def _lookup(
    values: Mapping[str, object], render: Callable[[str], str]
) -> Callable[[str], str | None]:
    return lambda name: render(_text(values[name])) if name in values else None


def _text(value: object) -> str:
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


def _is_axis(path: _Path, value: object, keep: Collection[str]) -> bool:
    """A list is a grid axis unless it is a list of lists or kept by name or dotted path."""
    if not isinstance(value, list):
        return False
    if path[-1] in keep or ".".join(path) in keep:
        return False
    return not (value and all(isinstance(item, list) for item in value))


def _axes(tree: Mapping[str, Any], keep: Collection[str], prefix: _Path = ()) -> list[_Path]:
    found: list[_Path] = []
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            found += _axes(value, keep, path)
        elif _is_axis(path, value, keep):
            found.append(path)
    return found


def _get(tree: Mapping[str, Any], path: _Path) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def _copy_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(key): _copy_tree(value) if isinstance(value, Mapping) else copy.deepcopy(value)
        for key, value in tree.items()
    }


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat |= _flatten(value, f"{name}.")
        else:
            flat[name] = value
    return flat


def _grid(
    tree: Mapping[str, Any], keep: Collection[str]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(the tree with each axis replaced by one value, that point's axis values flattened)."""
    paths = _axes(tree, keep)
    points = []
    for combo in itertools.product(*(_get(tree, path) for path in paths)):
        nested = _copy_tree(tree)
        chosen: dict[str, Any] = {}
        for path, value in zip(paths, combo, strict=True):
            parent = _get(nested, path[:-1])
            parent[path[-1]] = copy.deepcopy(value)
            chosen |= _flatten({".".join(path): value})
        points.append((nested, chosen))
    return points


def expand_grid(
    params: Mapping[str, Any], *, keep_lists: Collection[str] = ()
) -> list[dict[str, Any]]:
    """Every combination of the lists in params (cartesian product), as dotted-key dicts.

    Lists at any depth of nested mappings are axes, in document order, the last varying fastest;
    a list of lists, or a list under a key (or dotted path) in keep_lists, is a plain value. An
    axis whose values are mappings gives their keys together: ``opt: [{lr: 1}, {lr: 2}]``.
    """
    return [_flatten(nested) for nested, _ in _grid(params, frozenset(keep_lists))]


def parse_override(text: str) -> tuple[tuple[str, ...], object]:
    """``--set a.b=3`` -> (("a", "b"), 3); the value is YAML, so "[1,2]" makes a grid axis."""
    key, sep, raw = text.partition("=")
    if not sep or not _OVERRIDE_KEY_RE.fullmatch(key.strip()):
        raise ConfigError(
            "--set",
            None,
            None,
            f"expected KEY=VALUE such as lr=0.1 or batch.size=[32,64], got {text!r}",
        )
    keys = tuple(key.strip().split("."))
    try:
        node = compose_yaml(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(
            "--set", None, None, f"{text!r}: the value is not YAML ({problem})"
        ) from exc
    if node is None:
        return keys, None
    try:
        return keys, _ConfigParser("--set").plain(node, ".".join(keys))
    except ConfigError as exc:
        raise ConfigError("--set", None, None, f"{text!r}: {exc.problem}") from exc


def _apply_override(tree: dict[str, Any], keys: _Path, value: object, text: str) -> None:
    for depth, key in enumerate(keys[:-1]):
        child = tree.get(key)
        if child is None:
            child = tree[key] = {}
        elif not isinstance(child, dict):
            where = ".".join(keys[: depth + 1])
            problem = f"{text!r}: {where} is {_text(child)}, not a mapping of keys"
            raise ConfigError("--set", None, None, problem)
        tree = child
    tree[keys[-1]] = copy.deepcopy(value)


class _ConfigParser(_Parser):
    """The inventory's node walker, raising ConfigError, plus the run config's own values."""

    def __init__(self, path: str, code_base: pathlib.Path | None = None) -> None:
        super().__init__(path)
        self.code_base = code_base or pathlib.Path.cwd()

    def error(self, node: yaml.Node, problem: str) -> ConfigError:
        mark = node.start_mark
        return ConfigError(self.path, mark.line + 1, mark.column + 1, problem)

    def located(self, node: yaml.Node | None, problem: str) -> ConfigError:
        return (
            self.error(node, problem)
            if node is not None
            else ConfigError(self.path, None, None, problem)
        )

    def plain(
        self,
        node: yaml.Node,
        label: str,
        where: _Where | None = None,
        path: _Path = (),
        seen: frozenset[int] = frozenset(),
    ) -> Any:
        """JSON-able data of a node; with where, notes the node of every mapping value by path."""
        if id(node) in seen:
            raise self.error(node, f"{label}: an alias that contains itself")
        seen |= {id(node)}
        if where is not None:
            where[path] = node
        if isinstance(node, yaml.MappingNode):
            result = {}
            for key, (key_node, value_node) in self.mapping(node, label).items():
                if where is not None and ("." in key or not key):
                    raise self.error(
                        key_node,
                        f"{label}: key {key!r} is empty or has a '.', which separates nested keys "
                        "in placeholders and --set; nest it instead",
                    )
                sub = (*path, key) if where is not None else path
                result[key] = self.plain(value_node, f"{label}.{key}", where, sub, seen)
            return result
        if isinstance(node, yaml.SequenceNode):
            items = self.sequence(node, label, "[1, 2]")
            return [
                self.plain(item, f"{label}[{n}]", None, (), seen) for n, item in enumerate(items)
            ]
        value = self.value(node)
        if isinstance(value, datetime.date):
            return str(node.value)  # a date stays the text it was written as
        if value is None or isinstance(value, str | int | float | bool):
            return value
        raise self.error(node, f"{label}: unsupported value {self.describe(node)}")

    def strings(self, node: yaml.Node, label: str, example: str) -> tuple[str, ...]:
        return tuple(self.string(item, label) for item in self.sequence(node, label, example))

    def command(self, node: yaml.Node) -> tuple[str | tuple[str, ...], list[yaml.Node]]:
        """The command as written, and the node of each templated part."""
        if not isinstance(node, yaml.SequenceNode):
            return self.string(node, "command"), [node]
        items = self.sequence(node, "command", '["python", "train.py"]')
        if not items:
            raise self.error(node, "command: an empty list; give the program and its arguments")
        parts = []
        for item in items:
            value = self.value(item) if isinstance(item, yaml.ScalarNode) else None
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                got = self.describe(item)
                raise self.error(item, f"command: list items must be strings or numbers, got {got}")
            parts.append(_text(value))
        return tuple(parts), items

    def fields(self, template: str, node: yaml.Node | None, label: str) -> list[str]:
        try:
            return placeholders(template)
        except ValueError as exc:
            raise self.located(node, f"{label}: {exc}") from exc

    def check_placeholders(
        self, parts: list[tuple[str, yaml.Node | None]], flats: list[dict[str, Any]], label: str
    ) -> None:
        everywhere = set.intersection(*(set(flat) for flat in flats)) | set(BUILTIN_PLACEHOLDERS)
        anywhere = set().union(*flats)
        for template, node in parts:
            for name in self.fields(template, node, label):
                if name in everywhere:
                    continue
                if name in anywhere:
                    problem = f"placeholder {{{name}}} is not set in every grid point"
                else:
                    close = difflib.get_close_matches(name, sorted(anywhere), n=1)
                    hint = f" (did you mean {{{close[0]}}}?)" if close else ""
                    known = list(dict.fromkeys(key for flat in flats for key in flat))
                    shown = ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
                    problem = (
                        f"unknown placeholder {{{name}}}{hint}; params: {shown or 'none'}; "
                        f"built-ins: {', '.join(BUILTIN_PLACEHOLDERS)}"
                    )
                raise self.located(node, f"{label}: {problem}")

    def resources(self, node: yaml.Node) -> Resources:
        pairs = self.present(self.mapping(node, "resources"))
        self.check_keys(pairs, _RESOURCE_KEYS, "resources")
        if "host" in pairs and "hosts" in pairs:
            raise self.error(pairs["hosts"][0], "resources: give 'host' or 'hosts', not both")
        found = Resources()
        if "gpus" in pairs:
            gpus = self.integer(pairs["gpus"][1], "resources.gpus", "an integer >= 0", 0)
            found = replace(found, gpus=gpus)
        if "min_free_mem" in pairs:
            found = replace(
                found, min_free_mem=self.size(pairs["min_free_mem"][1], "resources.min_free_mem")
            )
        if "host" in pairs:
            found = replace(found, hosts=(self.string(pairs["host"][1], "resources.host"),))
        if "hosts" in pairs:
            found = replace(
                found, hosts=self.strings(pairs["hosts"][1], "resources.hosts", "[gpu-01, gpu-02]")
            )
        if "tags" in pairs:
            found = replace(found, tags=self.strings(pairs["tags"][1], "resources.tags", "[a100]"))
        return found

    def env(self, node: yaml.Node) -> dict[str, str]:
        env = {}
        for name, (key, value) in self.mapping(node, "env", "variable").items():
            if not _ENV_NAME_RE.fullmatch(name):
                raise self.error(key, f"env: {name!r} is not a variable name (letters, digits, _)")
            scalar = self.value(value) if isinstance(value, yaml.ScalarNode) else None
            if not isinstance(scalar, str | int | float):
                got = self.describe(value)
                raise self.error(
                    value, f"env.{name}: expected a string, number or boolean, got {got}"
                )
            env[name] = _text(scalar)
        return env

    def code_dir(self, node: yaml.Node | None) -> str:
        written = (
            pathlib.Path(self.string(node, "code")).expanduser()
            if node is not None
            else pathlib.Path()
        )
        directory = (self.code_base / written).resolve()
        if not directory.is_dir():
            what = "not a directory" if directory.exists() else "no such directory"
            raise self.located(node, f"code: {what}: {directory}")
        return str(directory)

    def present(self, pairs: _Pairs) -> _Pairs:
        """The pairs whose value is not null: an empty key means its default."""
        return {name: pair for name, pair in pairs.items() if not self.is_null(pair[1])}

    def at(self, where: _Where, path: _Path, problem: str) -> ConfigError:
        """An error at the node (or --set) that gave the value at path."""
        for length in range(len(path), -1, -1):
            found = where.get(path[:length])
            if isinstance(found, str):
                return ConfigError("--set", None, None, f"{found!r}: {problem}")
            if found is not None:
                return self.error(found, problem)
        return ConfigError(self.path, None, None, problem)

    def run_specs(
        self, root: yaml.Node, overrides: Sequence[tuple[_Path, object, str]], template: str | None
    ) -> list[RunSpec]:
        if not isinstance(root, yaml.MappingNode):
            got = self.describe(root)
            raise self.error(root, f"expected a mapping with a 'command' at the top, got {got}")
        all_pairs = self.mapping(root, "the top level")
        pairs = {name: pair for name, pair in self.present(all_pairs).items() if name in _TOP_KEYS}
        if "command" in all_pairs:
            pairs["command"] = all_pairs["command"]  # null is an error there, not a default
        foreign = {name: pair for name, pair in all_pairs.items() if name not in _TOP_KEYS}
        command, parts, label = self.effective_command(pairs, template)
        if foreign:
            self.check_cvlab(foreign, pairs, parts, label)
        elif command is None:
            raise self.error(
                root,
                "missing 'command': give one (a string or a list), or use a command template "
                "taking {config_file} from the inventory",
            )
        keep: tuple[str, ...] = ()
        if "keep_lists" in pairs:
            keep = self.strings(pairs["keep_lists"][1], "keep_lists", "[milestones]")
        tree = self.grid_tree(pairs, foreign, overrides, keep)
        points = _grid(tree, keep)
        flats = [_flatten(nested) for nested, _ in points]
        self.check_placeholders(parts, flats, label)

        name = self.string(pairs["name"][1], "name") if "name" in pairs else self.default_name()
        base = RunSpec(
            name=name,
            project=self.string(pairs["project"][1], "project") if "project" in pairs else name,
            command=(),
            params={},
            config={},
            code_dir=self.code_dir(pairs["code"][1] if "code" in pairs else None),
            exclude=self.optional_strings(pairs, "exclude", '["data/*"]', ()),
            resources=self.resources(pairs["resources"][1])
            if "resources" in pairs
            else Resources(),
            priority=(
                self.choice(pairs["priority"][1], "priority", PRIORITIES)
                if "priority" in pairs
                else "normal"
            ),
            env=self.env(pairs["env"][1]) if "env" in pairs else {},
            outputs=self.optional_strings(pairs, "outputs", '["*.csv"]', DEFAULT_OUTPUTS),
            retries=(
                self.integer(pairs["retries"][1], "retries", "an integer >= 0", 0)
                if "retries" in pairs
                else 0
            ),
            source=self.path,
            index=0,
        )
        document = (
            {} if foreign else {key: self.plain(node, key) for key, (_, node) in pairs.items()}
        )
        specs = []
        for index, ((nested, chosen), flat) in enumerate(zip(points, flats, strict=True)):
            values = {key: value for key, value in flat.items() if key not in BUILTIN_PLACEHOLDERS}
            rendered: str | tuple[str, ...] = ()
            if isinstance(command, str):
                rendered = _fill(command, _lookup(values, shlex.quote), final=False)
            elif command is not None:
                rendered = tuple(_fill(part, _lookup(values, str), final=False) for part in command)
            suffix = ",".join(f"{key}={_text(value)}" for key, value in chosen.items())
            specs.append(
                replace(
                    base,
                    name=f"{name}[{suffix}]" if len(points) > 1 else name,
                    command=rendered,
                    params=flat,
                    config=nested if foreign else self.resolved(document, nested),
                    index=index,
                )
            )
        return specs

    def effective_command(
        self, pairs: _Pairs, template: str | None
    ) -> tuple[str | tuple[str, ...] | None, list[tuple[str, yaml.Node | None]], str]:
        """The config's command, else the template; its parts with their nodes; its label."""
        if "command" in pairs:
            command, nodes = self.command(pairs["command"][1])
            parts = [command] if isinstance(command, str) else list(command)
            return command, list(zip(parts, nodes, strict=True)), "command"
        if template is None:
            return None, [], "command"
        return template, [(template, None)], f"command template {template!r}"

    def check_cvlab(
        self,
        foreign: _Pairs,
        pairs: _Pairs,
        parts: list[tuple[str, yaml.Node | None]],
        label: str,
    ) -> None:
        """Experiment keys at the top level need a command that reads the resolved config."""
        name, (key, _) = next(iter(foreign.items()))
        if not any("config_file" in self.fields(text, node, label) for text, node in parts):
            # Stricter than difflib's default: experiment keys like 'model' are not typos of 'code'.
            close = difflib.get_close_matches(name, _TOP_KEYS, n=1, cutoff=0.75)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            allowed = ", ".join(_TOP_KEYS)
            raise self.error(
                key,
                f"unknown key {name!r} in the top level{hint}; allowed: {allowed}; {_CVLAB_NEEDS}",
            )
        if "params" in pairs:
            raise self.error(
                pairs["params"][0],
                f"params: not used in a CVLab-Kit style config (it has experiment key {name!r} "
                "at the top level); put the grid lists in the experiment keys",
            )

    def grid_tree(
        self,
        pairs: _Pairs,
        foreign: _Pairs,
        overrides: Sequence[tuple[_Path, object, str]],
        keep: Collection[str],
    ) -> dict[str, Any]:
        """params (or the experiment keys) with the overrides applied; empty axes are errors."""
        where: _Where = {}
        tree: dict[str, Any] = {}
        prefix = "" if foreign else "params."
        for name, (key, value) in foreign.items():
            if "." in name:
                raise self.error(
                    key, f"key {name!r} has a '.', which separates nested keys; nest it instead"
                )
            tree[name] = self.plain(value, name, where, (name,))
        if not foreign and "params" in pairs:
            node = pairs["params"][1]
            if not isinstance(node, yaml.MappingNode):
                got = self.describe(node)
                raise self.error(node, f"params: expected a mapping of names to values, got {got}")
            tree = self.plain(node, "params", where)
        for keys, replacement, text in overrides:
            _apply_override(tree, keys, replacement, text)
            for stale in [path for path in where if path[: len(keys)] == keys]:
                del where[stale]
            where[keys] = text
        for path in _axes(tree, keep):
            if not _get(tree, path):
                raise self.at(
                    where,
                    path,
                    f"{prefix}{'.'.join(path)}: an empty list makes an empty grid (no runs); "
                    "give at least one value, or name it in keep_lists to keep it as a value",
                )
        return tree

    def optional_strings(
        self, pairs: _Pairs, key: str, example: str, default: tuple[str, ...]
    ) -> tuple[str, ...]:
        return self.strings(pairs[key][1], key, example) if key in pairs else default

    @staticmethod
    def resolved(document: dict[str, Any], nested: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(document)
        if nested or "params" in config:
            config["params"] = nested
        return config

    def default_name(self) -> str:
        return "run" if self.path == "<string>" else pathlib.Path(self.path).stem


def parse_run_config(
    text: str,
    path: str = "<string>",
    *,
    overrides: Sequence[str] = (),
    command_template: str | None = None,
    base_dir: str | None = None,
) -> list[RunSpec]:
    """The runs of a config in text; path names it in errors, base_dir anchors ``code``.

    base_dir defaults to the directory of path (the current one for "<string>"). Overrides
    (``--set`` texts) change params, or the experiment keys of a CVLab-Kit style config, before
    expansion. command_template is used when the config has no ``command``.
    """
    parsed = [(*parse_override(text), text) for text in overrides]
    try:
        root = compose_yaml(text)
    except yaml.MarkedYAMLError as exc:
        located = _syntax_error(path, exc)
        raise ConfigError(path, located.line, located.column, located.problem) from exc
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        problem = f"invalid YAML: unacceptable character #x{exc.character:04x} ({exc.reason})"
        raise ConfigError(path, line, column, problem) from exc
    if base_dir is not None:
        code_base = pathlib.Path(base_dir).expanduser().absolute()
    elif path != "<string>":
        code_base = pathlib.Path(path).absolute().parent
    else:
        code_base = pathlib.Path.cwd()
    parser = _ConfigParser(path, code_base)
    if root is None or parser.is_null(root):
        raise ConfigError(path, 1, 1, "the run config is empty; expected at least a 'command'")
    return parser.run_specs(root, parsed, command_template)


def load_run_config(
    path: str | pathlib.Path,
    *,
    overrides: Sequence[str] = (),
    command_template: str | None = None,
) -> list[RunSpec]:
    """The runs of the config file at path (~ expanded); see parse_run_config."""
    expanded = str(pathlib.Path(path).expanduser())
    try:
        data = pathlib.Path(expanded).read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError(expanded, None, None, "no such file") from exc
    except IsADirectoryError as exc:
        raise ConfigError(expanded, None, None, "is a directory, not a run config file") from exc
    except OSError as exc:
        raise ConfigError(expanded, None, None, f"cannot read: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8-sig")  # Windows editors may add a BOM
    except UnicodeDecodeError as exc:
        raise ConfigError(expanded, None, None, f"not UTF-8 text (byte {exc.start})") from exc
    return parse_run_config(text, expanded, overrides=overrides, command_template=command_template)
