"""A run as the engine starts it: RunSpec, its resources, and command templating."""

from __future__ import annotations

import copy
import posixpath
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from cvtui.errors import ConfigError
from cvtui.run_env import DEFAULT_PYTHON, RunEnv
from cvtui.run_inputs import INPUT_PLACEHOLDER, Resume, resume_words
from cvtui.states import PRIORITIES
from cvtui.templates import fill_template, lookup_values

DEFAULT_OUTPUTS = ("*.csv", "*.jsonl", "*.yaml", "*.log", "*.pt", "*.pth", "*.ckpt")
# Filled by render_command at dispatch: the run's id, its work dir (where the command runs and
# its outputs go), the resolved config file, its GPU indexes, and the run environment's python.
BUILTIN_PLACEHOLDERS = ("run_id", "run_dir", "config_file", "gpus", "python")
CONFIG_FILE_NAME = "config.yaml"  # the resolved config, written beside the work dir
DEFAULT_GPUS = 1  # a config that names no GPU count trains on one GPU; gpus: 0 is CPU-only


@dataclass(frozen=True)
class Resources:
    """What one run needs from a host."""

    gpus: int = DEFAULT_GPUS
    min_free_mem: int = 0  # bytes free on each of its GPUs
    hosts: tuple[str, ...] = ()  # allowed hosts; empty: any
    tags: tuple[str, ...] = ()  # a host must carry every one
    # On a Slurm host: sbatch settings over the host's (partition, account, qos, time, gres_type)
    slurm: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """One run of a config: one grid point, params substituted, built-ins left for the engine."""

    name: str  # "sweep[lr=0.1,batch.size=32]"; the config name alone when it has one run
    project: str
    command: tuple[str, ...] | str  # a str runs under sh -c; a tuple is argv
    params: Mapping[str, Any]  # this point's values by dotted key: {"batch.size": 32}
    config: Mapping[str, Any]  # the resolved config as data (tuples as lists)
    code_dir: str  # absolute local path of the directory to snapshot
    exclude: tuple[str, ...]
    resources: Resources
    priority: str  # one of PRIORITIES
    env: Mapping[str, str]
    outputs: tuple[str, ...]  # globs synced back
    retries: int  # extra attempts after a lost or failed run
    source: str  # the config file path, or "<string>"
    index: int  # position in the grid, 0-based: axes in document order, last axis fastest
    # The text of config.yaml as written for the run: for an experiment config, YAML that its
    # framework expands to exactly this run again (tuples keep their !!python/tuple tag).
    config_text: str = ""
    run_env: RunEnv = field(default_factory=RunEnv)  # the config's own, added to its host's
    links: Mapping[str, str] = field(default_factory=dict)  # work-dir name -> host path
    axes: tuple[str, ...] = ()  # dotted keys of the grid's axes (what tells its runs apart)
    # name -> "model:NAME" or "run:RUN:PATH", pinned to bytes at submit (cvtui/repro/inputs.py)
    inputs: Mapping[str, str] = field(default_factory=dict)
    resume: Resume | None = None  # how a retry starts from the last checkpoint
    # Axes of the grid that list a value twice (so some runs are copies), "key: [values]";
    # known while the config is expanded, for the submit's warning (not stored).
    repeats: tuple[str, ...] = field(default=(), compare=False)

    def render_command(
        self,
        *,
        run_id: str,
        run_dir: str,
        gpus: Sequence[int],
        config_file: str | None = None,
        python: str = DEFAULT_PYTHON,
        inputs: Mapping[str, str] | None = None,
        checkpoint: str | None = None,
    ) -> tuple[str, ...] | str:
        """The command with built-ins filled (shell-quoted in a str command) and {{ }} undone.

        run_dir is the work dir the command runs in; config_file defaults to config.yaml
        beside it, as the agent writes it. inputs: each input's path on the host, by name,
        for {inputs.NAME}; checkpoint: the staged checkpoint a retry resumes from, which
        appends the resume arg.
        """
        values = {
            "run_id": run_id,
            "run_dir": run_dir,
            "config_file": config_file
            or posixpath.join(posixpath.dirname(run_dir.rstrip("/")) or "/", CONFIG_FILE_NAME),
            "gpus": ",".join(str(gpu) for gpu in gpus),
            "python": python,
            **{f"{INPUT_PLACEHOLDER}{name}": path for name, path in (inputs or {}).items()},
        }
        resume = self.resume if checkpoint is not None else None
        if isinstance(self.command, str):
            text = fill_template(self.command, lookup_values(values, shlex.quote), final=True)
            if resume is not None and checkpoint is not None:
                text = " ".join([text, *resume_words(resume.arg, checkpoint, quoted=True)])
            return text
        argv = tuple(
            fill_template(part, lookup_values(values, str), final=True) for part in self.command
        )
        if resume is not None and checkpoint is not None:
            argv += tuple(resume_words(resume.arg, checkpoint, quoted=False))
        return argv

    def config_yaml(self) -> str:
        """config.yaml's text (specs from before config_text: the config as safe YAML)."""
        if self.config_text:
            return self.config_text
        from cvtui.grid import plain_yaml

        return plain_yaml(self.config)

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
                **({"slurm": dict(self.resources.slurm)} if self.resources.slurm else {}),
            },
            "priority": self.priority,
            "env": dict(self.env),
            "outputs": list(self.outputs),
            "retries": self.retries,
            "source": self.source,
            "index": self.index,
            "config_text": self.config_text,
            "run_env": self.run_env.to_json(),
            "links": dict(self.links),
            "axes": list(self.axes),
            "inputs": dict(self.inputs),
            "resume": self.resume.to_json() if self.resume else None,
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
                slurm=dict(resources.get("slurm") or {}),
            ),
            priority=data["priority"],
            env=dict(data["env"]),
            outputs=tuple(data["outputs"]),
            retries=data["retries"],
            source=data["source"],
            index=data["index"],
            config_text=data.get("config_text", ""),
            run_env=RunEnv.from_json(data.get("run_env")),
            links=dict(data.get("links") or {}),
            axes=tuple(data.get("axes") or ()),
            inputs=dict(data.get("inputs") or {}),
            resume=Resume.from_json(data.get("resume")),
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
