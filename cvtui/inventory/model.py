"""The inventory as frozen dataclasses: the lab's hosts, its policy, whom to notify."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from cvtui.errors import UnknownHostError
from cvtui.history_policy import DEFAULT_HISTORY, HistoryTier
from cvtui.run_env import RunEnv
from cvtui.slurm_settings import SlurmSettings

HOST_KEY_MODES = ("strict", "accept-new")
FOREIGN_PROCESS_MODES = ("avoid", "share")
MAX_SIMULATED_GPUS = 64
DEFAULT_SIMULATED_MEMORY = 24 * 2**30  # bytes per GPU when the model name does not say
# Vendors' "80GB" is what nvidia-smi reports as 81920 MiB, so the number is read as GiB.
_MODEL_MEMORY_RE = re.compile(r"(\d+)\s*Gi?B", re.IGNORECASE)


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
    history: tuple[HistoryTier, ...] = DEFAULT_HISTORY  # telemetry kept: (step, keep) tiers
    idle_util: float = 5.0  # percent: a held GPU below this ...
    idle_after_s: float = 1800.0  # ... for this long (memory allocated) is idle-held
    preempt: bool = False  # a starving urgent run may end low runs that declared `resume`
    preempt_grace_s: float = 60.0  # SIGTERM to SIGKILL for a preempted run (time to save)

    def session_key(self) -> tuple[object, ...]:
        """The fields whose change needs host sessions restarted (history and idle do not)."""
        return (
            self.interval_s,
            self.stale_after_s,
            self.disconnected_after_s,
            self.host_keys,
            self.foreign_processes,
        )


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
    # Absolute host paths whose top-level dirs the agent sizes per owner, hourly at most.
    disk_usage: tuple[str, ...] = ()
    kind: str = "ssh"  # one of HOST_KINDS: "slurm" is a cluster reached through its login node
    slurm: SlurmSettings | None = None  # a Slurm host's sbatch defaults
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
            self.kind,
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
