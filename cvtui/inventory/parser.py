"""inventory.yaml's keys and rules, read from YAML nodes with path:line:column errors."""

from __future__ import annotations

import posixpath
import re
from typing import Any

import yaml

from cvtui.errors import InventoryError, InventoryErrors
from cvtui.history_policy import HistoryTier, check_tiers
from cvtui.inventory.model import (
    FOREIGN_PROCESS_MODES,
    HOST_KEY_MODES,
    MAX_SIMULATED_GPUS,
    Host,
    Inventory,
    NotifyTarget,
    Policy,
    SimulateSpec,
    parse_jump,
)
from cvtui.run_env import parse_links, parse_run_env
from cvtui.slurm_settings import HOST_KINDS, SlurmSettings, parse_slurm_settings
from cvtui.yaml_nodes import AlreadyReported, NodeParser, Pairs, compose_document

_DEFAULT_KEYS = (
    "user", "port", "identity", "python", "root", "leases_dir", "known_hosts", "jump",
    "run_env", "links", "disk_usage",
)  # fmt: skip
_HOST_KEYS = (
    "address", *_DEFAULT_KEYS, "tags", "gpus", "max_runs", "gpu_order", "simulate",
    "kind", "slurm",  # cvtui/slurm_settings.py
)  # fmt: skip
_NOT_ON_SLURM = ("simulate", "gpus", "gpu_order", "max_runs")  # Slurm allocates the GPUs
_POLICY_KEYS = (
    "interval",
    "stale_after",
    "disconnected_after",
    "host_keys",
    "foreign_processes",
    "max_grid",
    "history",
    "idle_util",
    "idle_after",
    "preempt",
    "preempt_grace",
)
_HISTORY_KEYS = ("every", "keep")
_SIMULATE_KEYS = ("gpus", "model", "memory")
_NOTIFY_KEYS = ("command", "webhook")
_TOP_KEYS = ("defaults", "policy", "hosts", "notify", "command_template")
_NULLABLE_KEYS = {
    "user", "port", "identity", "known_hosts", "jump", "gpus", "max_runs", "gpu_order", "simulate",
    "run_env", "links", "slurm", "disk_usage",
}  # fmt: skip

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class InventoryParser(NodeParser[InventoryError]):
    """The inventory's sections, hosts and settings; every problem located in the file."""

    error_type = InventoryError

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

    def disk_usage(self, node: yaml.Node) -> tuple[str, ...]:
        """Absolute remote paths whose top-level dirs the agent sizes per owner."""
        paths: list[str] = []
        for item in self.sequence(node, "disk_usage", "[/home, /data]"):
            text = self.string(item, "disk_usage")
            if not text.startswith("/"):
                raise self.error(item, f"disk_usage: {text!r} is not an absolute path (/home)")
            path = posixpath.normpath(text)
            if path == "/":
                raise self.error(item, "disk_usage: '/' would size the whole machine; name dirs")
            if path in paths:
                raise self.error(item, f"disk_usage: {path!r} is listed twice")
            paths.append(path)
        return tuple(paths)

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
        if key == "kind":
            return self.choice(node, key, HOST_KINDS)
        if key == "slurm":
            return SlurmSettings(**parse_slurm_settings(self, node, key))
        if key == "simulate":
            return self.simulate(node)
        if key == "run_env":
            return parse_run_env(self, node, "run_env")
        if key == "links":
            return tuple(parse_links(self, node, "links").items())
        if key == "disk_usage":
            return self.disk_usage(node)
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
        for key_with_default in ("links", "disk_usage"):
            if settings.get(key_with_default) is None:
                settings.pop(key_with_default, None)
        self.check_kind(name, pairs, settings)
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

    def check_kind(self, name: str, pairs: Pairs, settings: dict[str, Any]) -> None:
        """Keys that make no sense for the host's kind are errors, not silently ignored."""
        if settings.get("kind", "ssh") != "slurm":
            if "slurm" in pairs:
                problem = f"host {name!r}: 'slurm' settings need 'kind: slurm' on the host"
                self.report(self.error(pairs["slurm"][0], problem))
            return
        for key in _NOT_ON_SLURM:
            if key in pairs and settings.get(key) is not None:
                problem = (
                    f"host {name!r}: {key!r} does not apply to kind: slurm (Slurm allocates GPUs)"
                )
                self.report(self.error(pairs[key][0], problem))

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
                elif key == "history":
                    values[key] = self.history(value)
                elif key == "idle_util":
                    values[key] = self.percent(value, "policy.idle_util")
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

    def history(self, node: yaml.Node) -> tuple[HistoryTier, ...]:
        example = "[{every: sample, keep: 1h}, {every: 10s, keep: 1d}, {every: 1m, keep: 30d}]"
        tiers = []
        for item in self.sequence(node, "policy.history", example):
            pairs = self.mapping(item, "policy.history entry")
            self.check_keys(pairs, _HISTORY_KEYS, "policy.history entry")
            for key in _HISTORY_KEYS:
                if key not in pairs:
                    raise self.error(item, f"policy.history entry: {key!r} is required")
            every = pairs["every"][1]
            sample = self.value(every) == "sample" if isinstance(every, yaml.ScalarNode) else False
            step = 0.0 if sample else self.duration(every, "policy.history every")
            tiers.append(HistoryTier(step, self.duration(pairs["keep"][1], "policy.history keep")))
            problem = check_tiers(tiers) if len(tiers) > 1 or step else None
            if problem:
                raise self.error(item, f"policy.history: {problem}")
        if not tiers:
            raise self.error(node, f"policy.history: expected at least one tier, like {example}")
        return tuple(tiers)

    def percent(self, node: yaml.Node, label: str) -> float:
        value = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 100:
            return float(value)
        raise self.error(node, f"{label}: expected a percentage 0-100, got {self.describe(node)}")

    def notify_target(self, node: yaml.Node) -> NotifyTarget:
        example = "{command: 'my-alert --lab'} or {webhook: 'https://hooks.slack.com/...'}"
        if not isinstance(node, yaml.MappingNode):
            got = self.describe(node)
            raise self.error(node, f"notify: expected an entry like {example}, got {got}")
        pairs = self.mapping(node, "notify entry")
        if not self.check_keys(pairs, _NOTIFY_KEYS, "notify entry"):
            raise AlreadyReported  # which of the two it meant is anyone's guess
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
    root = compose_document(text, path)
    parser = InventoryParser(path, collect=True)
    if root is None or parser.is_null(root):
        raise InventoryError(path, 1, 1, "the inventory is empty; expected a 'hosts' section")
    inventory = None
    with parser.gathering():
        inventory = parser.inventory(root)
    if parser.problems:
        raise InventoryErrors.of(parser.problems)
    assert inventory is not None  # no problem was gathered, so the walk finished
    return inventory
