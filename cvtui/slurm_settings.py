"""A Slurm host's job settings (partition, account, qos, time, GPU type) and how a run gets them.

Given on a `kind: slurm` host of the inventory and, per run config, under `resources.slurm`
(the config's win). Slurm is the judge of the values: a partition or QOS it does not know is
refused by sbatch, with its own message, when the run is submitted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from cvtui.yaml_nodes import NodeParser

HOST_KINDS = ("ssh", "slurm")
SLURM_KEYS = ("partition", "account", "qos", "time", "gres_type")
DEFAULT_GRES_TYPE = "gpu"  # --gres=gpu:N: any GPU; another value asks for that type: gpu:a100:N
# cvtui priority -> sbatch --nice. Only Slurm operators may go below 0, so urgent is 0 and the
# others step down from it: they order cvtui's own jobs and leave other users' priority alone.
PRIORITY_NICE = {"urgent": 0, "high": 10, "normal": 20, "low": 100}


@dataclass(frozen=True)
class SlurmSettings:
    """sbatch settings of a host or a run config; None: not given (Slurm's default)."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | None = None  # as sbatch --time takes it: 30, 4:00:00, 1-00:00:00, ...
    gres_type: str | None = None

    def plus(self, other: Mapping[str, str]) -> SlurmSettings:
        """These settings with a run config's `resources.slurm` over them."""
        values = {key: getattr(self, key) for key in SLURM_KEYS}
        values.update({key: value for key, value in other.items() if key in SLURM_KEYS})
        return SlurmSettings(**values)

    def to_json(self) -> dict[str, str]:
        return {key: value for key in SLURM_KEYS if (value := getattr(self, key)) is not None}


def job_settings(
    host: SlurmSettings | None,
    config: Mapping[str, str],
    *,
    gpus: int,
    priority: str,
    name: str,
) -> dict[str, Any]:
    """What the agent's start request carries for sbatch (protocol.SLURM_OPTION_KEYS)."""
    settings = (host or SlurmSettings()).plus(config).to_json()
    settings.setdefault("gres_type", DEFAULT_GRES_TYPE)
    return {**settings, "gpus": gpus, "nice": PRIORITY_NICE.get(priority, 0), "name": name}


def parse_slurm_settings(parser: NodeParser[Any], node: yaml.Node, label: str) -> dict[str, str]:
    """`{partition: gpu, account: vision, qos: normal, time: "1-00:00:00", gres_type: a100}`
    with file:line:column errors; values are passed to sbatch as written."""
    if parser.is_null(node):
        return {}
    pairs = parser.mapping(node, label)
    parser.check_keys(pairs, SLURM_KEYS, label)
    found = {}
    for key, (_, value) in pairs.items():
        if key not in SLURM_KEYS or parser.is_null(value):
            continue
        # The text as written: YAML would read `time: 4:00:00` as the number 14400.
        text = value.value if isinstance(value, yaml.ScalarNode) else None
        if not isinstance(text, str) or not text.strip():
            raise parser.error(
                value,
                f"{label}.{key}: expected a value such as gpu or 1-00:00:00, "
                f"got {parser.describe(value)}",
            )
        if any(ch.isspace() for ch in text):
            raise parser.error(value, f"{label}.{key}: {text!r} has a space; sbatch takes none")
        found[key] = text
    return found
