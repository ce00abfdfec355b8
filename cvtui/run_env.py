"""A run's environment on its host: setup lines, PATH entries, its python, and data links.

Given per host (inventory host or `defaults`) and per run config; a config's own adds to its
host's. Paths are host paths: `~` is the remote user's home, expanded by the engine at dispatch.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import xxhash

if TYPE_CHECKING:
    import yaml

    from cvtui.yaml_nodes import NodeParser

RUN_ENV_KEYS = ("setup", "path", "python")
DEFAULT_PYTHON = "python3"  # what {python} means when nothing names one: found on PATH
RESERVED_LINK_PREFIX = ".cvtui"  # names cvtui's own files in the sync namespace


@dataclass(frozen=True)
class RunEnv:
    """What runs on the host before a run's command, and which python it means.

    setup: shell lines, run in order by bash -e in the work dir (`source ~/venv/bin/activate`,
    `conda activate cv`, `module load cuda/12.1`); the command gets the environment they leave.
    path: directories put first on PATH after the setup. python: fills {python} in commands
    and names the interpreter recorded as the run's provenance; None means python3 on PATH.
    """

    setup: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    python: str | None = None

    def plus(self, other: RunEnv) -> RunEnv:
        """This (a host's) environment with a run config's added: its setup runs after, its
        PATH entries come first, its python wins."""
        return RunEnv(
            setup=self.setup + other.setup,
            path=other.path + tuple(p for p in self.path if p not in other.path),
            python=other.python or self.python,
        )

    @property
    def empty(self) -> bool:
        return not self.setup and not self.path and self.python is None

    def key(self) -> str:
        """Names this environment in caches: runs with the same key share a package listing."""
        text = json.dumps([self.setup, self.path, self.python], separators=(",", ":"))
        return xxhash.xxh3_64_hexdigest(text.encode())

    def to_json(self) -> dict[str, Any]:
        return {"setup": list(self.setup), "path": list(self.path), "python": self.python}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> RunEnv:
        if not data:
            return cls()
        return cls(tuple(data.get("setup", ())), tuple(data.get("path", ())), data.get("python"))


def expand_home(path: str, home: str) -> str:
    """A host path with a leading ~ made the remote home (other paths as they are)."""
    if path == "~":
        return home
    if path.startswith("~/") and home:
        return posixpath.join(home, path[2:])
    return path


def merge_links(host: Mapping[str, str], config: Mapping[str, str]) -> dict[str, str]:
    """A host's links with a run config's added (the config's win on a shared name)."""
    return {**host, **config}


def parse_run_env(parser: NodeParser[Any], node: yaml.Node, label: str) -> RunEnv:
    """`run_env: {setup: ..., path: [...], python: ...}` with file:line:column errors."""
    if parser.is_null(node):
        return RunEnv()
    pairs = parser.mapping(node, label)
    parser.check_keys(pairs, RUN_ENV_KEYS, label)
    setup: tuple[str, ...] = ()
    path: tuple[str, ...] = ()
    python = None
    if "setup" in pairs:
        value = pairs["setup"][1]
        if parser.is_null(value):
            setup = ()
        elif hasattr(value, "value") and isinstance(value.value, list):
            setup = tuple(
                parser.string(item, f"{label}.setup")
                for item in parser.sequence(value, f"{label}.setup", '["module load cuda"]')
            )
        else:
            setup = (parser.string(value, f"{label}.setup"),)
    if "path" in pairs:
        value = pairs["path"][1]
        if parser.is_null(value):
            entries: list[tuple[str, yaml.Node]] = []
        elif hasattr(value, "value") and isinstance(value.value, list):
            items = parser.sequence(value, f"{label}.path", "[~/bin, /opt/tools/bin]")
            entries = [(parser.string(item, f"{label}.path"), item) for item in items]
        else:
            entries = [(parser.string(value, f"{label}.path"), value)]
        for entry, item in entries:
            if not (entry.startswith("/") or entry == "~" or entry.startswith("~/")):
                raise parser.error(
                    item, f"{label}.path: {entry!r} is not an absolute path (or one under ~/)"
                )
        path = tuple(entry for entry, _ in entries)
    if "python" in pairs and not parser.is_null(pairs["python"][1]):
        python = parser.string(pairs["python"][1], f"{label}.python")
    return RunEnv(setup, path, python)


def parse_links(parser: NodeParser[Any], node: yaml.Node, label: str) -> dict[str, str]:
    """`links: {data: /mnt/datasets}`: names in the work dir -> absolute host paths."""
    if parser.is_null(node):
        return {}
    found = {}
    for name, (key, value) in parser.mapping(node, label, "link name").items():
        parts = name.split("/")
        if (
            name.startswith("/")
            or any(part in ("", ".", "..") for part in parts)
            or parts[0] == RESERVED_LINK_PREFIX
        ):
            raise parser.error(
                key,
                f"{label}: {name!r} must be a relative name in the run's work dir "
                f"(like data or data/imagenet; no '..', not {RESERVED_LINK_PREFIX})",
            )
        target = parser.string(value, f"{label}.{name}")
        if not (target.startswith("/") or target == "~" or target.startswith("~/")):
            raise parser.error(
                value, f"{label}.{name}: {target!r} is not an absolute host path (or one under ~/)"
            )
        found[name] = target
    return found


_PYTHON_NAME = re.compile(r"python[0-9.]*\Z")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def run_interpreter(command: str | Sequence[str], python: str) -> str:
    """The interpreter a run's command starts: its program when that is a python
    (`python main.py`, `/opt/venv/bin/python3 -m x`), else the environment's python."""
    if isinstance(command, str):
        try:
            words = shlex.split(command)
        except ValueError:
            return python
        while words and _ASSIGNMENT.match(words[0]):
            words = words[1:]  # FOO=1 python ...
    else:
        words = list(command)
    if words and _PYTHON_NAME.match(posixpath.basename(words[0])):
        return words[0]
    return python
