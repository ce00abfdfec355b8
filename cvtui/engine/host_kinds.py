"""The engine's one interface to a host, per kind: `ssh` (agent, supervisor, GPU leases) or
`slurm` (agent on the login node, Slurm places and runs the jobs; hosts_slurm.py).

Files, logs, sync, cancel and telemetry travel the same agent protocol on every kind: the
agent on a login node answers them from the shared file system and Slurm. What differs, and
what this interface names, is who places a run, what starting one means, what a telemetry
sample says about the host's health, and how `cvtui exec` runs a command there.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from cvtui.engine.deploy import remote_path
from cvtui.engine.start_request import start_request
from cvtui.runspec import RunSpec
from remote_agent.protocol import Hello, StartRequest, Telemetry

if TYPE_CHECKING:
    from cvtui.catalog.run_inputs import RunInput
    from cvtui.engine.engine import HostSession
    from cvtui.engine.runner import RunController
    from cvtui.inventory import Host

# One queued run as the catalog lists the queue: (id, priority, submitted, resources).
QueueEntry = tuple[str, str, float, dict[str, Any]]


class HostKind(Protocol):
    """How the engine starts work on one kind of host and reads its health."""

    name: str  # the inventory's `kind:`
    places_runs: bool  # cvtui's scheduler places runs on its GPUs (else the host's own queue)

    def agent_options(self, host: Host) -> list[str]:
        """Extra arguments of `agent.pyz serve` on this host."""
        ...

    def start_request(
        self,
        run: Mapping[str, Any],
        spec: RunSpec,
        host: Host,
        hello: Hello,
        gpus: Sequence[int],
        inputs: Sequence[RunInput] = (),
        staged: Sequence[Mapping[str, Any]] = (),
    ) -> StartRequest:
        """OP_START's request for a run (gpus: the placement's, empty where the host picks;
        inputs: those staged on the host, as stage_inputs answered)."""
        ...

    def dispatch(self, controller: RunController, entries: list[QueueEntry]) -> None:
        """Hand these queued runs (ones meant for this kind) to their hosts, or say why not."""
        ...

    def health(self, sample: Telemetry) -> str | None:
        """Why a host whose agent sent this sample cannot take work (None: it can)."""
        ...

    def on_running(self, controller: RunController, session: HostSession, run_id: str) -> None:
        """A run the host started (or whose GPUs it just named) is running."""
        ...

    def exec_command(
        self,
        host: Host,
        agent: str | None,
        argv: Sequence[str],
        gpus: Sequence[int],
        tty: bool = False,
    ) -> str:
        """The remote command line of `cvtui exec` (gpus: how many and which, if the host says;
        tty: it runs in the pty asked for with it)."""
        ...


class SshKind:
    """A GPU server cvtui schedules itself: leases, placement by its scheduler."""

    name = "ssh"
    places_runs = True

    def agent_options(self, host: Host) -> list[str]:
        return []

    def start_request(
        self,
        run: Mapping[str, Any],
        spec: RunSpec,
        host: Host,
        hello: Hello,
        gpus: Sequence[int],
        inputs: Sequence[RunInput] = (),
        staged: Sequence[Mapping[str, Any]] = (),
    ) -> StartRequest:
        return start_request(run, spec, host, hello, gpus, inputs, staged)

    def dispatch(self, controller: RunController, entries: list[QueueEntry]) -> None:
        controller.place(entries)

    def health(self, sample: Telemetry) -> str | None:
        return None

    def on_running(self, controller: RunController, session: HostSession, run_id: str) -> None:
        pass  # start_run recorded its provenance when the agent answered the start

    def exec_command(
        self,
        host: Host,
        agent: str | None,
        argv: Sequence[str],
        gpus: Sequence[int],
        tty: bool = False,
    ) -> str:
        """Plain when no GPU is wanted, else through the agent's leases (in the session's pty
        either way: the agent's exec hands the command its own stdin and stdout)."""
        if not gpus or agent is None:
            return shlex.join(argv)
        wrapper = [
            host.python,
            agent,
            "exec",
            "--leases-dir",
            remote_path(host.leases_dir),
            "--root",
            remote_path(host.root),
            "--gpus",
            ",".join(str(g) for g in gpus),
            "--",
            *argv,
        ]
        return "exec " + shlex.join(wrapper)


def engine_kinds() -> dict[str, HostKind]:
    """One instance of each kind for an engine (a kind may keep notes on its runs)."""
    from cvtui.engine.hosts_slurm import SlurmKind

    return {"ssh": SshKind(), "slurm": SlurmKind()}


def kind_of(host: Host) -> HostKind:
    """The kind of a host, for callers outside an engine (deploy, exec): a fresh instance."""
    return engine_kinds()[host.kind]
