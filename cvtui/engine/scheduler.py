"""Queue order and GPU placement: scheduler state in, dispatch decisions out (pure, no I/O)."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

PRIORITY_RANK: dict[str, int] = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
FOREIGN_PROCESS_MODES = ("avoid", "share")
GIB = 1 << 30
MIB = 1 << 20
_NO_LIMIT = 1 << 62  # max_runs None, as a number the hot loop can compare with

# A free GPU as the placement loop sees it, sorted best first:
# (busy 0|1, -free bytes (1 when unknown), gpu_order rank, -telemetry time, index, free bytes or -1)
_Entry = tuple[int, int, int, float, int, int]
_Shape = tuple[int, int, tuple[str, ...], tuple[str, ...]]  # gpus, min_free_mem, hosts, tags
# A host that can take a shape: (how good, lower is better; position; version seen; GPUs it gives)
_Candidate = tuple[object, int, int, list[_Entry]]


@dataclass(frozen=True)
class GpuState:
    """One GPU as the scheduler sees it: the latest telemetry plus who holds its lease."""

    index: int
    mem_total: int | None = None  # bytes; None when telemetry has not said
    mem_used: int | None = None  # bytes
    util: float | None = None  # percent
    leased_by: str | None = None  # run id holding the host lease, "?" when the holder is unknown
    foreign: bool = False  # a process that cvtui did not start is on it
    ours: bool = False  # a process of one of our runs is on it
    telemetry_time: float = 0.0  # epoch seconds of the sample

    @property
    def mem_free(self) -> int | None:
        """Bytes free, None when telemetry lacks either figure."""
        if self.mem_total is None or self.mem_used is None:
            return None
        return max(self.mem_total - self.mem_used, 0)

    @property
    def idle(self) -> bool:
        """No process on it and no load; util without a visible process is someone unseen."""
        return not self.foreign and not self.ours and not (self.util or 0.0) > 0.0


@dataclass(frozen=True)
class HostState:
    """One host: health and inventory limits, with its GPUs."""

    name: str
    healthy: bool
    drained: bool = False
    tags: tuple[str, ...] = ()
    max_runs: int | None = None  # None: no limit beyond free GPUs
    running: int = 0  # runs of ours active there
    allowed_gpus: tuple[int, ...] | None = None  # inventory `gpus`; None: all
    gpu_order: tuple[int, ...] | None = None  # inventory preference order of GPU indexes
    gpus: tuple[GpuState, ...] = ()


@dataclass(frozen=True)
class QueuedRun:
    """A run waiting for a host, with what it needs."""

    run_id: str
    priority: str  # a key of PRIORITY_RANK
    submitted: float  # epoch seconds
    gpus: int = 0
    min_free_mem: int = 0  # bytes free needed on each of its GPUs
    hosts: tuple[str, ...] = ()  # allowed host names; empty: any
    tags: tuple[str, ...] = ()  # a host must carry all of them

    def __post_init__(self) -> None:
        if self.priority not in PRIORITY_RANK:
            raise ValueError(f"run {self.run_id}: unknown priority {self.priority!r}")
        if self.gpus < 0 or self.min_free_mem < 0:
            raise ValueError(f"run {self.run_id}: gpus and min_free_mem must not be negative")
        # Callers build these from YAML lists; tuples keep the run hashable.
        object.__setattr__(self, "hosts", tuple(self.hosts))
        object.__setattr__(self, "tags", tuple(self.tags))


@dataclass(frozen=True)
class Placement:
    """Start run_id on host with these GPU indexes (ascending)."""

    run_id: str
    host: str
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Plan:
    """The outcome of one scheduling pass."""

    placements: tuple[Placement, ...]
    waiting: dict[str, str]  # run id -> why it waits, in queue order
    reserved: dict[str, tuple[str, tuple[int, ...]]]  # urgent run id -> (host, GPUs held for it)


@dataclass(frozen=True)
class _Reservation:
    run_id: str
    pos: int  # host position
    held: tuple[_Entry, ...]


def queue_order(runs: Iterable[QueuedRun]) -> list[QueuedRun]:
    """Runs in dispatch order: priority, then submit time, then run id."""
    # Buckets and a C-level sort key: this runs over the whole queue on every pass.
    buckets: dict[str, list[QueuedRun]] = {priority: [] for priority in PRIORITY_RANK}
    for run in runs:
        buckets[run.priority].append(run)
    ordered: list[QueuedRun] = []
    by_age = attrgetter("submitted", "run_id")
    for bucket in buckets.values():
        bucket.sort(key=by_age)
        ordered += bucket
    return ordered


def gpu_is_free(gpu: GpuState, run: QueuedRun, foreign_processes: str) -> bool:
    """Whether run may use gpu (the host's allowed list aside)."""
    if gpu.leased_by is not None:
        return False
    # A process of ours without a lease is a run whose supervisor died: the GPU is still in use.
    if (gpu.foreign or gpu.ours) and foreign_processes != "share":
        return False
    if run.min_free_mem <= 0:
        return True
    free = gpu.mem_free
    return free is not None and free >= run.min_free_mem


def plan(
    queue: Sequence[QueuedRun], hosts: Sequence[HostState], *, foreign_processes: str = "avoid"
) -> Plan:
    """One scheduling pass: place what fits in queue order, hold GPUs for one starved urgent run."""
    if foreign_processes not in FOREIGN_PROCESS_MODES:
        raise ValueError(f"foreign_processes must be one of {FOREIGN_PROCESS_MODES}")
    state = _PassState(hosts, foreign_processes)
    return state.run(queue_order(queue))


def _fitting(free: Sequence[_Entry], min_free: int) -> list[_Entry]:
    """The entries with min_free bytes free, best first."""
    if min_free <= 0:
        return list(free)
    return [entry for entry in free if entry[5] >= min_free]


def _top(free: list[_Entry], n: int, min_free: int) -> list[_Entry] | None:
    """The best n entries with min_free bytes free each, None when fewer exist."""
    if min_free > 0:
        free = [entry for entry in free if entry[5] >= min_free]
    return free[:n] if len(free) >= n else None


def _gib(size: int) -> str:
    if size >= GIB:
        return f"{size // GIB} GiB" if size % GIB == 0 else f"{size / GIB:.1f} GiB"
    return f"{size // MIB} MiB" if size >= MIB else f"{size} bytes"


def _need(run: QueuedRun) -> str:
    plural = "" if run.gpus == 1 else "s"
    if run.min_free_mem > 0:
        return f"needs {run.gpus} GPU{plural} with {_gib(run.min_free_mem)} free"
    return f"needs {run.gpus} free GPU{plural}"


