"""Run config YAML -> one RunSpec per grid point, with file:line:column errors.

Two shapes. A config with a top-level `command:` is cvtui's own: `params` is the grid, and
the other keys are cvtui settings (experiment keys beside them are written to config.yaml).
A config without one is an experiment config (CVLab-Kit style): the whole file is passed to
the run untouched as its config.yaml, every list in it is a grid axis under the framework's
rules (see cvtui.grid), and cvtui's own settings go under one `cvtui:` block, or come from
the inventory (`command_template`).
"""

from __future__ import annotations

import copy
import datetime
import difflib
import pathlib
import re
import shlex
import subprocess
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import yaml

from cvtui import grid
from cvtui.errors import ConfigError
from cvtui.run_env import RunEnv, parse_links, parse_run_env
from cvtui.run_inputs import INPUT_PLACEHOLDER, parse_inputs, parse_resume
from cvtui.runspec import BUILTIN_PLACEHOLDERS, DEFAULT_OUTPUTS, Resources, RunSpec
from cvtui.slurm_settings import parse_slurm_settings
from cvtui.states import PRIORITIES
from cvtui.templates import fill_template, lookup_values, param_text, placeholders
from cvtui.yaml_nodes import NodeParser, Pairs, compose_document, compose_yaml

CVTUI_BLOCK = "cvtui"  # an experiment config's own cvtui settings
DEFAULT_MAX_GRID = 10_000  # runs one config may queue unless --max-runs says more

_SETTING_KEYS = (
    "name",
    "project",
    "command",
    "code",
    "exclude",
    "resources",
    "priority",
    "env",
    "outputs",
    "retries",
    "keep_lists",
    "axes",
    "run_env",
    "links",
    "inputs",
    "resume",
)
_TOP_KEYS = (*_SETTING_KEYS[:4], "params", *_SETTING_KEYS[4:])
_RESOURCE_KEYS = ("gpus", "min_free_mem", "host", "hosts", "tags", "slurm")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OVERRIDE_KEY_RE = re.compile(r"[^\s=.]+(?:\.[^\s=.]+)*")
_TUPLE_TAG = "tag:yaml.org,2002:python/tuple"
_EXPERIMENT_NEEDS = (
    "an experiment config (no 'command:' at the top) runs with a command that takes "
    "{config_file}: give one under 'cvtui: {command: ...}', or the inventory's command_template"
)

_Path = tuple[str, ...]
_Where = dict[_Path, yaml.Node | str]  # key path -> its YAML node, or the --set text that set it


@dataclass(frozen=True)
class RunGrid:
    """The runs of one config, made one at a time: `count` is known before any is made."""

    count: int
    specs: Iterator[RunSpec]


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
            problem = f"{text!r}: {where} is {param_text(child)}, not a mapping of keys"
            raise ConfigError("--set", None, None, problem)
        tree = child
    tree[keys[-1]] = copy.deepcopy(value)


def git_top(directory: pathlib.Path) -> pathlib.Path | None:
    """The top of the git work tree holding directory, or None."""
    try:
        done = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "--show-toplevel"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    top = done.stdout.decode("utf-8", "surrogateescape").strip()
    return pathlib.Path(top) if done.returncode == 0 and top else None


class _ConfigParser(NodeParser[ConfigError]):
    """The YAML node walker, raising ConfigError, plus the run config's own values."""

    error_type = ConfigError

    def __init__(self, path: str, code_base: pathlib.Path | None = None) -> None:
        super().__init__(path)
        self.code_base = code_base or pathlib.Path.cwd()

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
        """The data of a node (a !!python/tuple as a tuple); with where, notes the node of
        every mapping value by its key path."""
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
            is_tuple = node.tag == _TUPLE_TAG
            items = list(node.value) if is_tuple else self.sequence(node, label, "[1, 2]")
            values = [
                self.plain(item, f"{label}[{n}]", None, (), seen) for n, item in enumerate(items)
            ]
            return tuple(values) if is_tuple else values
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
            parts.append(param_text(value))
        return tuple(parts), items

    def fields(self, template: str, node: yaml.Node | None, label: str) -> list[str]:
        try:
            return placeholders(template)
        except ValueError as exc:
            raise self.located(node, f"{label}: {exc}") from exc

    def check_placeholders(
        self,
        parts: list[tuple[str, yaml.Node | None]],
        everywhere: set[str],
        anywhere: list[str],
        label: str,
    ) -> None:
        """Every placeholder of the command names a param set in every run, or a built-in."""
        known_everywhere = everywhere | set(BUILTIN_PLACEHOLDERS)
        for template, node in parts:
            for name in self.fields(template, node, label):
                if name in known_everywhere:
                    continue
                if name in anywhere:
                    problem = f"placeholder {{{name}}} is not set in every grid point"
                elif name.startswith(INPUT_PLACEHOLDER):
                    problem = (
                        f"placeholder {{{name}}} names no input; declare it under inputs: "
                        f"({name[len(INPUT_PLACEHOLDER) :]}: model:NAME or run:RUN:PATH)"
                    )
                else:
                    close = difflib.get_close_matches(name, sorted(anywhere), n=1)
                    hint = f" (did you mean {{{close[0]}}}?)" if close else ""
                    shown = ", ".join(anywhere[:12]) + (", ..." if len(anywhere) > 12 else "")
                    problem = (
                        f"unknown placeholder {{{name}}}{hint}; params: {shown or 'none'}; "
                        f"built-ins: {', '.join(BUILTIN_PLACEHOLDERS)}"
                    )
                raise self.located(node, f"{label}: {problem}")

    def resources(self, node: yaml.Node, label: str) -> Resources:
        pairs = self.present(self.mapping(node, label))
        self.check_keys(pairs, _RESOURCE_KEYS, label)
        if "host" in pairs and "hosts" in pairs:
            raise self.error(pairs["hosts"][0], f"{label}: give 'host' or 'hosts', not both")
        found = Resources()
        if "gpus" in pairs:
            gpus = self.integer(
                pairs["gpus"][1], f"{label}.gpus", "an integer >= 0 (0: CPU only)", 0
            )
            found = replace(found, gpus=gpus)
        if "min_free_mem" in pairs:
            found = replace(
                found, min_free_mem=self.size(pairs["min_free_mem"][1], f"{label}.min_free_mem")
            )
        if "host" in pairs:
            found = replace(found, hosts=(self.string(pairs["host"][1], f"{label}.host"),))
        if "hosts" in pairs:
            found = replace(
                found,
                hosts=self.strings(pairs["hosts"][1], f"{label}.hosts", "[gpu-01, gpu-02]"),
            )
        if "tags" in pairs:
            found = replace(found, tags=self.strings(pairs["tags"][1], f"{label}.tags", "[a100]"))
        if "slurm" in pairs:
            slurm = parse_slurm_settings(self, pairs["slurm"][1], f"{label}.slurm")
            found = replace(found, slurm=slurm)
        return found

    def env(self, node: yaml.Node, label: str) -> dict[str, str]:
        env = {}
        for name, (key, value) in self.mapping(node, label, "variable").items():
            if not _ENV_NAME_RE.fullmatch(name):
                raise self.error(
                    key, f"{label}: {name!r} is not a variable name (letters, digits, _)"
                )
            scalar = self.value(value) if isinstance(value, yaml.ScalarNode) else None
            if not isinstance(scalar, str | int | float):
                got = self.describe(value)
                raise self.error(
                    value, f"{label}.{name}: expected a string, number or boolean, got {got}"
                )
            env[name] = param_text(scalar)
        return env

    def code_dir(self, node: yaml.Node | None, label: str) -> str:
        """The code dir: as written (relative to the config's folder), else the git work tree
        holding the config, else the config's folder."""
        if node is None:
            return str((git_top(self.code_base) or self.code_base).resolve())
        written = pathlib.Path(self.string(node, label)).expanduser()
        directory = (self.code_base / written).resolve()
        if not directory.is_dir():
            what = "not a directory" if directory.exists() else "no such directory"
            raise self.located(node, f"{label}: {what}: {directory}")
        return str(directory)

    def present(self, pairs: Pairs) -> Pairs:
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

    # -- the two shapes ---------------------------------------------------------------

    def run_grid(
        self,
        root: yaml.Node,
        overrides: Sequence[tuple[_Path, object, str]],
        template: str | None,
        max_runs: int | None,
    ) -> RunGrid:
        if not isinstance(root, yaml.MappingNode):
            got = self.describe(root)
            raise self.error(
                root, f"expected a mapping (a 'command' and params, or an experiment), got {got}"
            )
        all_pairs = self.mapping(root, "the top level")
        if "command" in all_pairs:
            if CVTUI_BLOCK in all_pairs:
                raise self.error(
                    all_pairs[CVTUI_BLOCK][0],
                    f"{CVTUI_BLOCK}: a config with a top-level 'command' takes its settings at "
                    "the top level; a 'cvtui:' block is for experiment configs without one",
                )
            settings = {n: p for n, p in self.present(all_pairs).items() if n in _TOP_KEYS}
            settings["command"] = all_pairs["command"]  # null is an error there, not a default
            experiment = {n: p for n, p in all_pairs.items() if n not in _TOP_KEYS}
            prefix = "" if experiment else "params."
            labels = {name: name for name in _TOP_KEYS}
            mixed = True
        else:
            settings = {}
            if CVTUI_BLOCK in all_pairs:
                block = all_pairs[CVTUI_BLOCK][1]
                if not self.is_null(block):
                    settings = self.mapping(block, CVTUI_BLOCK)
                    self.check_keys(settings, _SETTING_KEYS, CVTUI_BLOCK)
                    if "command" in settings and self.is_null(settings["command"][1]):
                        raise self.error(settings["command"][1], "cvtui.command: give a command")
                    settings = {
                        n: p
                        for n, p in settings.items()
                        if n == "command" or not self.is_null(p[1])
                    }
            experiment = {n: p for n, p in all_pairs.items() if n != CVTUI_BLOCK}
            prefix = ""
            labels = {name: f"{CVTUI_BLOCK}.{name}" for name in _SETTING_KEYS}
            mixed = False
            if not experiment and "command" not in settings:
                raise self.error(
                    root,
                    "missing 'command': give one (a string or a list), or write an experiment "
                    "config with the inventory's command_template",
                )
        return self._grid(
            root, settings, experiment, labels, prefix, mixed, overrides, template, max_runs
        )

    def _grid(
        self,
        root: yaml.Node,
        settings: Pairs,
        experiment: Pairs,
        labels: Mapping[str, str],
        prefix: str,
        mixed: bool,
        overrides: Sequence[tuple[_Path, object, str]],
        template: str | None,
        max_runs: int | None,
    ) -> RunGrid:
        framework = bool(experiment)
        command, parts, label = self.effective_command(settings, template, labels["command"])
        if command is None:
            raise self.error(root, f"missing 'command'; {_EXPERIMENT_NEEDS}")
        if experiment:
            self.check_experiment(experiment, settings, parts, label, mixed)
        keep: tuple[str, ...] = ()
        if "keep_lists" in settings:
            keep = self.strings(settings["keep_lists"][1], labels["keep_lists"], "[milestones]")
        named = "axes" in settings
        if named and "keep_lists" in settings:
            raise self.error(
                settings["axes"][0],
                f"{labels['axes']}: give the lists that are axes (axes) or the lists that are "
                "not (keep_lists), not both",
            )
        # Named axes: every other list is data, and each run's config is written as plain YAML
        # (for a framework other than CVLab-Kit, such as LightningCLI or Hydra).
        tree = self.grid_tree(settings, experiment, overrides, keep, framework or named, prefix)
        if named:
            paths = self.named_axes(settings["axes"][1], labels["axes"], tree)
            framework = False
        else:
            paths = grid.axis_paths(tree, keep, framework=framework)
        count = grid.grid_size(tree, paths)
        if max_runs is not None and count > max_runs:
            axes = " x ".join(
                f"{'.'.join(path)} ({len(grid.get_path(tree, path))})" for path in paths
            )
            raise ConfigError(
                self.path,
                None,
                None,
                f"the grid makes {count:,} runs ({axes}), over the limit of {max_runs:,} "
                f"(policy.max_grid); give --max-runs {count} to queue them all",
            )
        everywhere, anywhere = _param_keys(tree, paths)
        inputs = (
            parse_inputs(self, settings["inputs"][1], labels["inputs"])
            if "inputs" in settings
            else {}
        )
        declared = {f"{INPUT_PLACEHOLDER}{name}" for name in inputs}
        clash = sorted(declared & (everywhere | set(anywhere)))
        if clash:
            raise self.error(
                settings["inputs"][1],
                f"{labels['inputs']}: {{{clash[0]}}} would name both a param and an input; "
                "rename one of them",
            )
        self.check_placeholders(parts, everywhere | declared, anywhere, label)
        base = self.base_spec(settings, labels)
        base = replace(
            base,
            axes=tuple(".".join(path) for path in paths),
            inputs=inputs,
            repeats=grid.repeating_axes(tree, paths),
        )
        document = {} if experiment else {k: self.plain(n, k) for k, (_, n) in settings.items()}
        specs = self._specs(base, command, tree, paths, count, framework, document, experiment)
        return RunGrid(count, specs)

    def named_axes(self, node: yaml.Node, label: str, tree: Mapping[str, Any]) -> list[_Path]:
        """The axes a config names (`axes: [optimizer.lr, seed]`), in document order: each a
        key of the config holding a non-empty list; [] makes one run of the file as it is."""
        names = self.strings(node, label, "[optimizer.lr, seed]")
        lists = grid.axis_paths(tree, (), framework=True)  # every list reached through keys
        wanted: list[_Path] = []
        for name in names:
            path = tuple(name.split("."))
            try:
                value = grid.get_path(tree, path)
            except (KeyError, TypeError):
                raise self.error(node, f"{label}: {name!r} is not a key of the config") from None
            if path not in lists:
                got = "an empty list" if value == [] else f"{type(value).__name__} {value!r:.40}"
                raise self.error(
                    node, f"{label}: {name!r} is {got}, not a list of values to make runs of"
                )
            if path not in wanted:
                wanted.append(path)
        return [path for path in lists if path in wanted]

    def _specs(
        self,
        base: RunSpec,
        command: str | tuple[str, ...],
        tree: dict[str, Any],
        paths: list[_Path],
        count: int,
        framework: bool,
        document: dict[str, Any],
        experiment: Pairs,
    ) -> Iterator[RunSpec]:
        for index, (nested, chosen) in enumerate(grid.points(tree, paths)):
            flat = grid.flatten(nested)
            values = {key: value for key, value in flat.items() if key not in BUILTIN_PLACEHOLDERS}
            rendered: str | tuple[str, ...]
            if isinstance(command, str):
                rendered = fill_template(command, lookup_values(values, shlex.quote), final=False)
            else:
                rendered = tuple(
                    fill_template(part, lookup_values(values, str), final=False) for part in command
                )
            suffix = ",".join(f"{key}={param_text(value)}" for key, value in chosen.items())
            config: dict[str, Any]
            if framework:
                config = nested
                text = grid.framework_yaml(nested)
            else:
                config = nested if experiment else self.resolved(document, nested)
                text = grid.plain_yaml(config)
            yield replace(
                base,
                name=f"{base.name}[{suffix}]" if count > 1 else base.name,
                command=rendered,
                params=_listed(flat),
                config=_listed(config),
                config_text=text,
                index=index,
            )

    def base_spec(self, settings: Pairs, labels: Mapping[str, str]) -> RunSpec:
        def node(key: str) -> yaml.Node | None:
            return settings[key][1] if key in settings else None

        name = (
            self.string(settings["name"][1], labels["name"])
            if "name" in settings
            else self.default_name()
        )
        return RunSpec(
            name=name,
            project=(
                self.string(settings["project"][1], labels["project"])
                if "project" in settings
                else name
            ),
            command=(),
            params={},
            config={},
            code_dir=self.code_dir(node("code"), labels["code"]),
            exclude=self.optional_strings(settings, "exclude", labels, '["data/*"]', ()),
            resources=(
                self.resources(settings["resources"][1], labels["resources"])
                if "resources" in settings
                else Resources()
            ),
            priority=(
                self.choice(settings["priority"][1], labels["priority"], PRIORITIES)
                if "priority" in settings
                else "normal"
            ),
            env=self.env(settings["env"][1], labels["env"]) if "env" in settings else {},
            outputs=self.optional_strings(
                settings, "outputs", labels, '["*.csv"]', DEFAULT_OUTPUTS
            ),
            retries=(
                self.integer(settings["retries"][1], labels["retries"], "an integer >= 0", 0)
                if "retries" in settings
                else 0
            ),
            source=self.path,
            index=0,
            run_env=(
                parse_run_env(self, settings["run_env"][1], labels["run_env"])
                if "run_env" in settings
                else RunEnv()
            ),
            links=(
                parse_links(self, settings["links"][1], labels["links"])
                if "links" in settings
                else {}
            ),
            resume=(
                parse_resume(self, settings["resume"][1], labels["resume"])
                if "resume" in settings
                else None
            ),
        )

    def effective_command(
        self, settings: Pairs, template: str | None, label: str
    ) -> tuple[str | tuple[str, ...] | None, list[tuple[str, yaml.Node | None]], str]:
        """The config's command, else the template; its parts with their nodes; its label."""
        if "command" in settings:
            command, nodes = self.command(settings["command"][1])
            parts = [command] if isinstance(command, str) else list(command)
            return command, list(zip(parts, nodes, strict=True)), label
        if template is None:
            return None, [], label
        return template, [(template, None)], f"command template {template!r}"

    def check_experiment(
        self,
        experiment: Pairs,
        settings: Pairs,
        parts: list[tuple[str, yaml.Node | None]],
        label: str,
        mixed: bool,
    ) -> None:
        """Experiment keys need a command that reads the resolved config.

        mixed: beside a top-level `command:` (cvtui's own config with extra keys), where an
        unknown key is more likely a typo of a setting than an experiment key.
        """
        if any("config_file" in self.fields(text, node, label) for text, node in parts):
            if mixed and "params" in settings:
                name = next(iter(experiment))
                raise self.error(
                    settings["params"][0],
                    f"params: not used with experiment keys (such as {name!r}) at the top "
                    "level; put the grid lists in the experiment keys",
                )
            return
        if not mixed:
            node = settings["command"][1] if "command" in settings else None
            raise self.located(node, f"{label}: does not take {{config_file}}; {_EXPERIMENT_NEEDS}")
        name, (key, _) = next(iter(experiment.items()))
        # Stricter than difflib's default: experiment keys like 'model' are not typos of 'code'.
        close = difflib.get_close_matches(name, _TOP_KEYS, n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        allowed = ", ".join(_TOP_KEYS)
        raise self.error(
            key,
            f"unknown key {name!r} in the top level{hint}; allowed: {allowed}; or, for an "
            "experiment config beside the command, a command that takes {config_file}",
        )

    def grid_tree(
        self,
        settings: Pairs,
        experiment: Pairs,
        overrides: Sequence[tuple[_Path, object, str]],
        keep: Collection[str],
        framework: bool,
        prefix: str,
    ) -> dict[str, Any]:
        """params (or the experiment keys) with the overrides applied; empty axes are errors."""
        where: _Where = {}
        tree: dict[str, Any] = {}
        for name, (key, value) in experiment.items():
            if "." in name:
                raise self.error(
                    key, f"key {name!r} has a '.', which separates nested keys; nest it instead"
                )
            tree[name] = self.plain(value, name, where, (name,))
        if not experiment and "params" in settings:
            node = settings["params"][1]
            if not isinstance(node, yaml.MappingNode):
                got = self.describe(node)
                raise self.error(node, f"params: expected a mapping of names to values, got {got}")
            tree = self.plain(node, "params", where)
        for keys, replacement, text in overrides:
            _apply_override(tree, keys, replacement, text)
            for stale in [path for path in where if path[: len(keys)] == keys]:
                del where[stale]
            where[keys] = text
        if not framework:
            for path in grid.axis_paths(tree, keep, framework=False):
                if not grid.get_path(tree, path):
                    raise self.at(
                        where,
                        path,
                        f"{prefix}{'.'.join(path)}: an empty list makes an empty grid (no runs); "
                        "give at least one value, or name it in keep_lists to keep it as a value",
                    )
        return tree

    def optional_strings(
        self,
        settings: Pairs,
        key: str,
        labels: Mapping[str, str],
        example: str,
        default: tuple[str, ...],
    ) -> tuple[str, ...]:
        return self.strings(settings[key][1], labels[key], example) if key in settings else default

    @staticmethod
    def resolved(document: dict[str, Any], nested: dict[str, Any]) -> dict[str, Any]:
        config = dict(document)  # shared values: the spec keeps _listed(config), a copy
        if nested or "params" in config:
            config["params"] = nested
        return config

    def default_name(self) -> str:
        return "run" if self.path == "<string>" else pathlib.Path(self.path).stem


def _param_keys(tree: dict[str, Any], paths: list[_Path]) -> tuple[set[str], list[str]]:
    """(dotted keys every grid point has, every key some point has in document order),
    computed per axis, without making the points."""
    fixed = grid.flatten({**tree})
    axis_names = {".".join(path) for path in paths}
    everywhere = {key for key in fixed if key not in axis_names}
    anywhere = [key for key in fixed if key not in axis_names]
    for path in paths:
        dotted = ".".join(path)
        sets = [set(grid.flatten({dotted: value})) for value in grid.get_path(tree, path)]
        if sets:
            everywhere |= set.intersection(*sets)
            anywhere += [key for key in dict.fromkeys(k for s in sets for k in sorted(s))]
    return everywhere, list(dict.fromkeys(anywhere))


def _listed(value: Any) -> Any:
    """The data as JSON sees it: tuples become lists (config_text keeps them)."""
    if isinstance(value, Mapping):
        return {key: _listed(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_listed(item) for item in value]
    return value


def open_run_config(
    text: str,
    path: str = "<string>",
    *,
    overrides: Sequence[str] = (),
    command_template: str | None = None,
    base_dir: str | None = None,
    max_runs: int | None = DEFAULT_MAX_GRID,
) -> RunGrid:
    """The runs of a config in text, made lazily; path names it in errors, base_dir anchors
    ``code``.

    base_dir defaults to the directory of path (the current one for "<string>"). Overrides
    (``--set`` texts) change params, or the keys of an experiment config, before expansion.
    command_template is used when the config has no command. A grid over max_runs (None: no
    limit) is refused before any run is made.
    """
    parsed = [(*parse_override(text), text) for text in overrides]
    root = compose_document(text, path, ConfigError)
    if base_dir is not None:
        code_base = pathlib.Path(base_dir).expanduser().absolute()
    elif path != "<string>":
        code_base = pathlib.Path(path).absolute().parent
    else:
        code_base = pathlib.Path.cwd()
    parser = _ConfigParser(path, code_base)
    if root is None or parser.is_null(root):
        raise ConfigError(path, 1, 1, "the run config is empty; expected at least a 'command'")
    return parser.run_grid(root, parsed, command_template, max_runs)


def parse_run_config(text: str, path: str = "<string>", **options: Any) -> list[RunSpec]:
    """Every run of a config in text (see open_run_config for the options)."""
    return list(open_run_config(text, path, **options).specs)


def read_run_config(path: str | pathlib.Path) -> tuple[str, str]:
    """(the text, the path as given with ~ expanded) of a config file; ConfigError if unreadable."""
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
        return data.decode("utf-8-sig"), expanded  # Windows editors may add a BOM
    except UnicodeDecodeError as exc:
        raise ConfigError(expanded, None, None, f"not UTF-8 text (byte {exc.start})") from exc


def load_run_config(path: str | pathlib.Path, **options: Any) -> list[RunSpec]:
    """Every run of the config file at path (~ expanded); see open_run_config."""
    text, expanded = read_run_config(path)
    return parse_run_config(text, expanded, **options)
