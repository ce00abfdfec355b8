"""Load inventory.yaml into frozen dataclasses, with file:line:column errors and live reload."""

from __future__ import annotations

import contextlib
import difflib
import math
import os
import pathlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import yaml

from cvtui.errors import InventoryError, InventoryErrors, UnknownHostError
from cvtui.run_env import RunEnv, parse_links, parse_run_env

if TYPE_CHECKING:
    import asyncio

HOST_KEY_MODES = ("strict", "accept-new")
FOREIGN_PROCESS_MODES = ("avoid", "share")
MAX_SIMULATED_GPUS = 64
DEFAULT_SIMULATED_MEMORY = 24 * 2**30  # bytes per GPU when the model name does not say

_DEFAULT_KEYS = (
    "user", "port", "identity", "python", "root", "leases_dir", "known_hosts", "jump",
    "run_env", "links",
)  # fmt: skip
_HOST_KEYS = ("address", *_DEFAULT_KEYS, "tags", "gpus", "max_runs", "gpu_order", "simulate")
_POLICY_KEYS = (
    "interval",
    "stale_after",
    "disconnected_after",
    "host_keys",
    "foreign_processes",
    "max_grid",
    "preempt",
    "preempt_grace",
)
_SIMULATE_KEYS = ("gpus", "model", "memory")
_NOTIFY_KEYS = ("command", "webhook")
_TOP_KEYS = ("defaults", "policy", "hosts", "notify", "command_template")
_NULLABLE_KEYS = {
    "user", "port", "identity", "known_hosts", "jump", "gpus", "max_runs", "gpu_order", "simulate",
    "run_env", "links",
}  # fmt: skip

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DURATION_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h)?\s*", re.IGNORECASE)
_DURATION_UNITS_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20}
_SIZE_UNITS |= {"gb": 10**9, "gib": 2**30, "tb": 10**12, "tib": 2**40}
# Vendors' "80GB" is what nvidia-smi reports as 81920 MiB, so the number is read as GiB.
_MODEL_MEMORY_RE = re.compile(r"(\d+)\s*Gi?B", re.IGNORECASE)
_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_WATCH_TIMEOUT_MS = 200  # how often the watcher thread hands back control when nothing changes


def parse_duration(value: object) -> float:
    """Seconds from 2, 2.5, "500ms", "1s", "2.5s", "2m" or "1h" (a bare number is seconds)."""
    seconds: float | None = None
    try:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
            seconds = float(match[1]) * _DURATION_UNITS_S[(match[2] or "s").lower()]
    except OverflowError:
        seconds = None
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"expected a duration such as 500ms, 1s, 2.5s, 2m or 1h, got {value!r}")
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


def simulated_memory_for(model: str) -> int:
    """Bytes per simulated GPU implied by a model name: "A100-SXM4-80GB" -> 80 GiB."""
    match = _MODEL_MEMORY_RE.search(model)
    return int(match[1]) * 2**30 if match and int(match[1]) > 0 else DEFAULT_SIMULATED_MEMORY


_JUMP_HOP_RE = re.compile(
    r"(?:ssh://)?(?:(?P<user>[^@\s,/]+)@)?"
    r"(?:\[(?P<bracketed>[^\]\s]+)\]|(?P<host>[^\s:@,\[\]/]+))(?::(?P<port>\d{1,5}))?/?"
)


@dataclass(frozen=True)
class JumpHop:
    """One jump host of a ProxyJump list: [user@]host[:port] (or an ssh:// URI), as written."""

    host: str  # a name ~/.ssh/config may know, or an address
    user: str | None = None
    port: int | None = None


def parse_jump(text: str) -> tuple[JumpHop, ...]:
    """The hops of a ProxyJump value in connection order; none for "none".

    ValueError names the part that is not [user@]host[:port].
    """
    if text.strip().lower() == "none":
        return ()
    hops = []
    for part in text.split(","):
        match = _JUMP_HOP_RE.fullmatch(part.strip())
        port = int(match["port"]) if match and match["port"] else None
        if match is None or (port is not None and not 1 <= port <= 65535):
            raise ValueError(
                f"expected [user@]host[:port] jump hosts separated by commas, or none; "
                f"got {part.strip()!r}"
            )
        hops.append(JumpHop(match["bracketed"] or match["host"], match["user"], port))
    return tuple(hops)


@dataclass(frozen=True)
class SimulateSpec:
    """Fake GPUs the agent reports instead of real ones; always labelled with backend simulated."""

    gpus: int
    model: str = "A100-SXM4-80GB"
    memory: int = 0  # bytes per GPU; 0 derives it from the model name, see simulated_memory_for

    def __post_init__(self) -> None:
        if self.memory == 0:
            object.__setattr__(self, "memory", simulated_memory_for(self.model))


@dataclass(frozen=True)
class Policy:
    """How often hosts report and when they count as stale or gone; lab-wide choices."""

    interval_s: float = 1.0  # telemetry push period
    stale_after_s: float = 5.0
    disconnected_after_s: float = 30.0
    host_keys: str = "strict"  # one of HOST_KEY_MODES
    foreign_processes: str = "avoid"  # one of FOREIGN_PROCESS_MODES: GPUs others use are avoided
    max_grid: int = 10_000  # runs one config may queue unless `cvtui run --max-runs` says more
    preempt: bool = False  # a starving urgent run may end low runs that declared `resume`
    preempt_grace_s: float = 60.0  # SIGTERM to SIGKILL for a preempted run (time to save)


@dataclass(frozen=True)
class Host:
    """One GPU server of the inventory, with the defaults already applied."""

    name: str
    address: str = ""  # empty means the host name; may be a ~/.ssh/config alias
    port: int | None = None  # None: ~/.ssh/config's Port, else 22
    user: str | None = None  # None: ~/.ssh/config or the local login name
    identity: str | None = None  # local private key path, ~ expanded
    python: str = "python3"
    root: str = "~/.cache/cvtui"  # remote path: its ~ is the remote user's home, left as written
    leases_dir: str = "/tmp/cvtui-leases"  # remote, shared by every user of the host
    known_hosts: str | None = None  # local path, ~ expanded; None: as ~/.ssh/config says
    jump: str | None = None  # ProxyJump list ("[user@]host[:port],..." or "none"); None: config
    tags: tuple[str, ...] = ()
    gpus: tuple[int, ...] | None = None  # GPU indexes cvtui may use; None: all
    max_runs: int | None = None  # None: no limit beyond free GPUs
    gpu_order: tuple[int, ...] | None = None  # preferred placement order of GPU indexes
    simulate: SimulateSpec | None = None
    # What runs before a run's command there (setup lines, PATH, python); see cvtui.run_env.
    run_env: RunEnv | None = None
    links: tuple[tuple[str, str], ...] = ()  # (name in a run's work dir, host path) pairs
    line: int = field(default=0, compare=False)  # 1-based line of the host's key in the file

    def __post_init__(self) -> None:
        if not self.address:
            object.__setattr__(self, "address", self.name)

    def settings_key(self) -> tuple[object, ...]:
        """Everything whose change needs a new SSH connection and agent."""
        return (
            self.address,
            self.port,
            self.user,
            self.identity,
            self.python,
            self.root,
            self.leases_dir,
            self.known_hosts,
            self.jump,
            self.simulate,
        )


@dataclass(frozen=True)
class NotifyTarget:
    """Where the engine reports runs that ended and hosts that went down or came back.

    Exactly one of command (run locally, the event as JSON on stdin) and webhook (an http(s)
    URL that gets the event POSTed as JSON with a Slack-compatible ``text``) is set.
    """

    command: str | None = None  # as written; argv() splits it as a shell would, none runs
    webhook: str | None = None
    line: int = field(default=0, compare=False)  # 1-based line of the entry in the file

    def argv(self) -> list[str]:
        import shlex  # deferred, like every import the CLI's quick commands do not need

        return shlex.split(self.command) if self.command else []

    def describe(self) -> str:
        return f"command {self.command!r}" if self.command else f"webhook {self.webhook}"


@dataclass(frozen=True)
class Inventory:
    """The lab: its policy, its hosts in file order, and whom to notify of events."""

    path: str  # the file it came from, or "<string>"
    policy: Policy
    hosts: tuple[Host, ...]
    notify: tuple[NotifyTarget, ...] = ()
    # The command for run configs that have none (CVLab-Kit style), e.g.
    # "python main.py --config {config_file}"; None: such configs must name their own.
    command_template: str | None = None

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise UnknownHostError(name, self.names())

    def names(self) -> list[str]:
        return [host.name for host in self.hosts]


_Pairs = dict[str, tuple[yaml.Node, yaml.Node]]  # key text -> (key node, value node)


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


class _Reported(Exception):
    """A part of the file whose error is already reported: the walk skips the rest of it."""


class _Parser:
    """Walks composed YAML nodes, so every value keeps the line and column it came from."""

    def __init__(self, path: str, *, collect: bool = False) -> None:
        self.path = path
        # Relative key paths are relative to the inventory file, whatever the current directory.
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
        except _Reported:
            pass

    def error(self, node: yaml.Node, problem: str) -> InventoryError:
        mark = node.start_mark
        return InventoryError(self.path, mark.line + 1, mark.column + 1, problem)

    @staticmethod
    def is_null(node: yaml.Node) -> bool:
        return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG

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

    def mapping(self, node: yaml.Node, label: str, what: str = "key") -> _Pairs:
        """Key text -> nodes, in file order; a repeated key is an error (PyYAML keeps the last)."""
        if not isinstance(node, yaml.MappingNode):
            raise self.error(node, f"{label}: expected a mapping, got {self.describe(node)}")
        if node.tag != _MAP_TAG:
            raise self.error(node, f"{label}: unsupported tag {node.tag!r} on a mapping")
        explicit: _Pairs = {}
        merged: _Pairs = {}
        for key, value in node.value:
            if key.tag == _MERGE_TAG:
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

    def check_keys(self, pairs: _Pairs, allowed: tuple[str, ...], label: str) -> bool:
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
        if node.tag != _SEQ_TAG:
            raise self.error(node, f"{label}: unsupported tag {node.tag!r} on a list")
        return list(node.value)

    def gpu_indexes(self, node: yaml.Node, label: str) -> tuple[int, ...]:
        indexes: list[int] = []
        for item in self.sequence(node, label, "[0, 1] (GPU indexes)"):
            index = self.integer(item, label, "GPU indexes (integers >= 0)", 0)
            if index in indexes:
                raise self.error(item, f"{label}: GPU {index} is listed twice")
            indexes.append(index)
        return tuple(indexes)

    def tags(self, node: yaml.Node) -> tuple[str, ...]:
        return tuple(self.string(item, "tags") for item in self.sequence(node, "tags", "[a100]"))

    def simulate(self, node: yaml.Node) -> SimulateSpec:
        pairs = self.mapping(node, "simulate")
        self.check_keys(pairs, _SIMULATE_KEYS, "simulate")
        if "gpus" not in pairs:
            raise self.error(node, "simulate: 'gpus' is required (how many GPUs to simulate, 1-64)")
        gpus = self.integer(
            pairs["gpus"][1], "simulate.gpus", "an integer 1-64", 1, MAX_SIMULATED_GPUS
        )
        spec = SimulateSpec(gpus)
        if "model" in pairs:
            spec = SimulateSpec(gpus, self.string(pairs["model"][1], "simulate.model"))
        if "memory" in pairs:
            memory_node = pairs["memory"][1]
            memory = self.size(memory_node, "simulate.memory")
            if memory <= 0:
                raise self.error(memory_node, "simulate.memory: expected a size greater than 0")
            spec = SimulateSpec(gpus, spec.model, memory)
        return spec

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

    def setting(self, key: str, node: yaml.Node) -> Any:
        """The value of one host (or defaults) key, converted and checked."""
        if key in _NULLABLE_KEYS and self.is_null(node):
            return None
        if key == "port":
            return self.integer(node, key, "an integer 1-65535", 1, 65535)
        if key == "max_runs":
            return self.integer(node, key, "an integer >= 0", 0)
        if key in ("identity", "known_hosts"):
            return self.local_path(node, key)
        if key in ("gpus", "gpu_order"):
            return self.gpu_indexes(node, key)
        if key == "tags":
            return () if self.is_null(node) else self.tags(node)
        if key == "simulate":
            return self.simulate(node)
        if key == "run_env":
            return parse_run_env(self, node, "run_env")
        if key == "links":
            return tuple(parse_links(self, node, "links").items())
        if key == "jump":
            text = self.string(node, key)
            try:
                parse_jump(text)
            except ValueError as exc:
                raise self.error(node, f"jump: {exc}") from exc
            return text
        return self.string(node, key)  # address, user, python, root, leases_dir

    def host(self, key: yaml.Node, body: yaml.Node, defaults: dict[str, Any]) -> Host:
        name = str(key.value)
        if not _NAME_RE.fullmatch(name):
            raise self.error(
                key,
                f"invalid host name {name!r}: use letters, digits, '.', '_' and '-', "
                "starting with a letter or digit",
            )
        settings = dict(defaults)
        pairs = {} if self.is_null(body) else self.mapping(body, f"host {name!r}")
        self.check_keys(pairs, _HOST_KEYS, f"host {name!r}")
        parsed = set()
        for setting_key, (_, node) in pairs.items():
            if setting_key in _HOST_KEYS:
                with self.gathering():
                    value = self.setting(setting_key, node)
                    if setting_key == "links" and value is not None:
                        # A host's links add to the defaults' (the host's win on a shared name).
                        value = tuple({**dict(settings.get("links") or ()), **dict(value)}.items())
                    settings[setting_key] = value
                    parsed.add(setting_key)
        if settings.get("links") is None:
            settings.pop("links", None)
        simulate = settings.get("simulate")
        for setting_key in ("gpus", "gpu_order"):
            if simulate is None or setting_key not in parsed or settings[setting_key] is None:
                continue
            for item, index in zip(pairs[setting_key][1].value, settings[setting_key], strict=True):
                if index >= simulate.gpus:
                    self.report(
                        self.error(
                            item,
                            f"{setting_key}: GPU {index} does not exist; "
                            f"simulate has {simulate.gpus} GPUs (0-{simulate.gpus - 1})",
                        )
                    )
        return Host(name=name, line=key.start_mark.line + 1, **settings)

    def policy(self, node: yaml.Node) -> Policy:
        if self.is_null(node):
            return Policy()
        pairs = self.mapping(node, "policy")
        self.check_keys(pairs, _POLICY_KEYS, "policy")
        values: dict[str, Any] = {}
        unreadable = False
        for key, (_, value) in pairs.items():
            if key not in _POLICY_KEYS:
                continue
            read = False
            with self.gathering():
                if key == "host_keys":
                    values[key] = self.choice(value, "policy.host_keys", HOST_KEY_MODES)
                elif key == "foreign_processes":
                    modes = FOREIGN_PROCESS_MODES
                    values[key] = self.choice(value, "policy.foreign_processes", modes)
                elif key == "max_grid":
                    values[key] = self.integer(value, "policy.max_grid", "an integer >= 1", 1)
                elif key == "preempt":
                    flag = self.value(value) if isinstance(value, yaml.ScalarNode) else None
                    if not isinstance(flag, bool):
                        got = self.describe(value)
                        raise self.error(
                            value, f"policy.preempt: expected true or false, got {got}"
                        )
                    values[key] = flag
                else:
                    values[f"{key}_s"] = self.duration(value, f"policy.{key}")
                read = True
            unreadable = unreadable or not read
        policy = Policy(**values)
        if unreadable:
            return policy  # the ordering checks below would compare against a default
        for shorter, longer in (("interval", "stale_after"), ("stale_after", "disconnected_after")):
            short_s = getattr(policy, f"{shorter}_s")
            long_s = getattr(policy, f"{longer}_s")
            if long_s <= short_s:
                where = pairs[longer][1] if longer in pairs else pairs[shorter][1]
                raise self.error(
                    where,
                    f"policy.{longer} ({long_s:g}s) must be longer than "
                    f"policy.{shorter} ({short_s:g}s)",
                )
        return policy

    def notify_target(self, node: yaml.Node) -> NotifyTarget:
        example = "{command: 'my-alert --lab'} or {webhook: 'https://hooks.slack.com/...'}"
        if not isinstance(node, yaml.MappingNode):
            got = self.describe(node)
            raise self.error(node, f"notify: expected an entry like {example}, got {got}")
        pairs = self.mapping(node, "notify entry")
        if not self.check_keys(pairs, _NOTIFY_KEYS, "notify entry"):
            raise _Reported  # which of the two it meant is anyone's guess
        if len(pairs) != 1:
            raise self.error(
                node, f"notify: an entry needs exactly one of 'command' or 'webhook', {example}"
            )
        line = node.start_mark.line + 1
        if "command" in pairs:
            value = pairs["command"][1]
            target = NotifyTarget(command=self.string(value, "notify.command"), line=line)
            try:
                argv = target.argv()
            except ValueError as exc:
                raise self.error(value, f"notify.command: cannot split it: {exc}") from exc
            if not argv:
                raise self.error(value, "notify.command: names no program")
            return target
        from urllib.parse import urlsplit

        value = pairs["webhook"][1]
        url = self.string(value, "notify.webhook")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise self.error(
                value, f"notify.webhook: expected an http:// or https:// URL, got {url!r}"
            )
        return NotifyTarget(webhook=url, line=line)

    def notify(self, node: yaml.Node) -> tuple[NotifyTarget, ...]:
        if self.is_null(node):
            return ()
        items = self.sequence(node, "notify", "[{command: 'my-alert'}, {webhook: 'https://...'}]")
        targets = []
        for item in items:
            with self.gathering():
                targets.append(self.notify_target(item))
        return tuple(targets)

    def inventory(self, root: yaml.Node) -> Inventory:
        if not isinstance(root, yaml.MappingNode):
            raise self.error(
                root,
                f"expected a mapping with a 'hosts' section at the top, got {self.describe(root)}",
            )
        pairs = self.mapping(root, "the top level")
        self.check_keys(pairs, _TOP_KEYS, "the top level")
        defaults: dict[str, Any] = {}
        if "defaults" in pairs and not self.is_null(pairs["defaults"][1]):
            with self.gathering():
                default_pairs = self.mapping(pairs["defaults"][1], "defaults")
                self.check_keys(default_pairs, _DEFAULT_KEYS, "defaults")
                for key, (_, node) in default_pairs.items():
                    if key in _DEFAULT_KEYS:
                        with self.gathering():
                            defaults[key] = self.setting(key, node)
        policy = Policy()
        if "policy" in pairs:
            with self.gathering():
                policy = self.policy(pairs["policy"][1])
        example = "e.g. 'hosts: {gpu-01: {address: 10.0.0.11}}'"
        hosts: list[Host] = []
        if "hosts" not in pairs:
            # A misspelt top-level key ('host:') is already reported and says it better.
            if not any(key not in _TOP_KEYS for key in pairs):
                self.report(self.error(root, f"missing 'hosts': list at least one host, {example}"))
        else:
            hosts_key, hosts_node = pairs["hosts"]
            with self.gathering():
                host_pairs = (
                    {} if self.is_null(hosts_node) else self.mapping(hosts_node, "hosts", "host")
                )
                if not host_pairs:
                    problem = f"hosts: no hosts listed; add at least one, {example}"
                    raise self.error(hosts_key, problem)
                for host_key, host_body in host_pairs.values():
                    with self.gathering():
                        hosts.append(self.host(host_key, host_body, defaults))
        notify: tuple[NotifyTarget, ...] = ()
        if "notify" in pairs:
            with self.gathering():
                notify = self.notify(pairs["notify"][1])
        template = None
        if "command_template" in pairs:
            with self.gathering():
                template = self.command_template(pairs["command_template"][1])
        return Inventory(self.path, policy, tuple(hosts), notify, template)

    def command_template(self, node: yaml.Node) -> str:
        template = self.string(node, "command_template")
        if "{config_file}" not in template:
            raise self.error(
                node,
                "command_template: expected a command that takes {config_file}, "
                "e.g. 'python main.py --config {config_file}'",
            )
        return template


def parse_inventory(text: str, path: str = "<string>") -> Inventory:
    """The inventory in text; path names the file in errors and anchors relative key paths."""
    try:
        root = compose_yaml(text)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(path, exc) from exc
    except yaml.reader.ReaderError as exc:
        before = text[: exc.position]
        line, column = before.count("\n") + 1, exc.position - (before.rfind("\n") + 1) + 1
        problem = f"invalid YAML: unacceptable character #x{exc.character:04x} ({exc.reason})"
        raise InventoryError(path, line, column, problem) from exc
    parser = _Parser(path, collect=True)
    if root is None or parser.is_null(root):
        raise InventoryError(path, 1, 1, "the inventory is empty; expected a 'hosts' section")
    inventory = None
    with parser.gathering():
        inventory = parser.inventory(root)
    if parser.problems:
        raise InventoryErrors.of(parser.problems)
    assert inventory is not None  # no problem was gathered, so the walk finished
    return inventory


def _syntax_error(path: str, exc: yaml.MarkedYAMLError) -> InventoryError:
    mark = exc.problem_mark or exc.context_mark
    problem = f"invalid YAML: {exc.problem or exc.context or 'unreadable'}"
    if exc.context and exc.problem:
        if not exc.context.startswith("while") or exc.context_mark is None:
            problem = f"invalid YAML: {exc.context} {exc.problem}"
        elif exc.problem_mark is None or exc.context_mark.line != exc.problem_mark.line:
            problem += f" ({exc.context} on line {exc.context_mark.line + 1})"
    if mark is None:
        return InventoryError(path, None, None, problem)
    return InventoryError(path, mark.line + 1, mark.column + 1, problem)


def _read_inventory_bytes(path: str) -> bytes:
    """The file's bytes; every way reading it can fail is an InventoryError."""
    try:
        return pathlib.Path(path).read_bytes()
    except FileNotFoundError as exc:
        problem = "no such file (write one, or name another with --inventory or $CVTUI_INVENTORY)"
        raise InventoryError(path, None, None, problem) from exc
    except IsADirectoryError as exc:
        raise InventoryError(path, None, None, "is a directory, not an inventory file") from exc
    except OSError as exc:
        raise InventoryError(path, None, None, f"cannot read: {exc.strerror}") from exc


def _decode(data: bytes, path: str) -> Inventory:
    try:
        text = data.decode("utf-8-sig")  # Windows editors may add a BOM
    except UnicodeDecodeError as exc:
        raise InventoryError(path, None, None, f"not UTF-8 text (byte {exc.start})") from exc
    return parse_inventory(text, path)


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """The inventory in the file at path (~ expanded, also in the errors and Inventory.path)."""
    expanded = str(pathlib.Path(path).expanduser())
    return _decode(_read_inventory_bytes(expanded), expanded)


def default_inventory_path(explicit: str | None = None) -> pathlib.Path:
    """explicit (--inventory), else $CVTUI_INVENTORY, else ./inventory.yaml if it exists, else
    the user config dir's: the more deliberate choice wins, as with KUBECONFIG."""
    if explicit:
        return pathlib.Path(explicit).expanduser()
    from_env = os.environ.get("CVTUI_INVENTORY")
    if from_env:
        return pathlib.Path(from_env).expanduser()
    local = pathlib.Path.cwd() / "inventory.yaml"
    if local.is_file():
        return local
    import platformdirs

    return pathlib.Path(platformdirs.user_config_dir("cvtui")) / "inventory.yaml"


def _watch_targets(path: str | os.PathLike[str]) -> tuple[str, set[pathlib.Path], list[str]]:
    """The path to read, the file's paths (as given and through symlinks), the dirs to watch."""
    expanded = pathlib.Path(path).expanduser()
    targets = {expanded.absolute(), expanded.resolve()}
    directories = sorted({target.parent for target in targets})
    for directory in directories:
        if not directory.is_dir():
            problem = f"cannot watch: no such directory {directory}"
            raise InventoryError(str(expanded), None, None, problem)
    return str(expanded), targets, [str(directory) for directory in directories]


def _snapshot(path: str) -> bytes | InventoryError:
    try:
        return _read_inventory_bytes(path)
    except InventoryError as exc:
        return exc


async def _relay(source: asyncio.Event, target: asyncio.Event) -> None:
    await source.wait()
    target.set()


async def watch_inventory(
    path: str | os.PathLike[str],
    on_change: Callable[[Inventory], None],
    on_error: Callable[[InventoryError], None],
    stop: asyncio.Event | None = None,
    debounce_ms: int = 50,
    ready: asyncio.Event | None = None,
) -> None:
    """Call on_change with each valid new version of the file, on_error with each invalid one.

    The parent directory is watched, so editors that save by renaming a new file over the old
    one are seen. Content identical to the last version seen (valid or not) is not reported
    again. ``ready`` is set once the OS watch is in place; an edit made after the call but
    before that is still reported. Returns when ``stop`` is set.
    """
    import asyncio  # deferred like watchfiles: the CLI's quick commands never watch

    import watchfiles  # deferred: it pulls in anyio and starts a watcher thread

    if stop is not None and stop.is_set():
        return
    shown, targets, directories = _watch_targets(path)
    last = _snapshot(shown)
    # awatch sets its stop event when cancelled; ours, so the caller's shared event is untouched.
    halt = asyncio.Event()
    relay = asyncio.create_task(_relay(stop, halt)) if stop is not None else None

    def is_target(_change: watchfiles.Change, changed: str) -> bool:
        return pathlib.Path(changed) in targets

    first = True
    try:
        async for changes in watchfiles.awatch(
            *directories,
            watch_filter=is_target,
            debounce=debounce_ms,
            step=max(1, min(50, debounce_ms)),
            stop_event=halt,
            rust_timeout=_WATCH_TIMEOUT_MS,
            yield_on_timeout=True,
            recursive=False,
        ):
            if not changes and not first:
                continue
            if first:
                first = False
                if ready is not None:
                    ready.set()
            current = _snapshot(shown)
            if current == last:
                continue
            last = current
            if isinstance(current, InventoryError):
                on_error(current)
                continue
            try:
                inventory = _decode(current, shown)
            except InventoryError as exc:
                on_error(exc)
                continue
            on_change(inventory)
    finally:
        if relay is not None:
            relay.cancel()
