"""Who holds each GPU, which held GPUs sit idle, and how much energy each user and run used.

The engine hands every telemetry sample to UsageTracker.observe. A GPU is *held* when a
cvtui run has it (its lease, from the catalog's running runs, or a process carrying its run
id) or another user's process is on it; it is *idle-held* when, held, its utilisation stays
under ``policy.idle_util`` with memory allocated for ``policy.idle_after``. Energy is NVML's
power times the time to the next sample, shared among the GPU's holders; gaps longer than
a few telemetry intervals (a lost connection) count nothing. flush() writes what changed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cvtui.catalog import Catalog
from cvtui.catalog.usage import ENERGY_BUCKET_S
from cvtui.inventory import Policy
from remote_agent.protocol import BACKEND_SIMULATED, GpuSample, Telemetry

log = logging.getLogger("cvtui.engine.usage")

MAX_GAP_INTERVALS = 3.0  # a sample covers at most this many telemetry intervals
RUNS_REFRESH_S = 1.0  # how often the running runs (lease holders) are read again: an ended
# run keeps being charged for its GPU until then
FOREIGN = None  # run id of a holder that is another user's process


@dataclass(frozen=True)
class Holder:
    """One holder of a GPU: a cvtui run (run_id set) or another user's process."""

    user: str
    run_id: str | None
    mem: int  # bytes of GPU memory its processes hold (0 when none is visible yet)


@dataclass
class IdleState:
    """One GPU's current idle stretch."""

    since: float  # the first idle sample
    last: float  # the latest idle sample
    holder: Holder
    episode: int | None = None  # catalog id once it counts as idle-held


@dataclass(frozen=True)
class IdleGpu:
    """A GPU that became idle-held: what the notification says."""

    host: str
    gpu: int
    holder: Holder
    since: float
    util: float | None
    mem_used: int | None
    simulated: bool


class UsageTracker:
    """Integrates power per run and user and follows idle-held GPUs, for one engine."""

    def __init__(
        self,
        catalog: Catalog,
        policy: Callable[[], Policy],
        on_idle: Callable[[IdleGpu], None],
    ) -> None:
        self.catalog = catalog
        self.policy = policy
        self.on_idle = on_idle
        self._last_seen: dict[str, float] = {}  # host -> arrival time of its last sample
        self._idle: dict[tuple[str, int], IdleState] = {}
        self._ended: list[tuple[int, float]] = []  # episodes that ended, not yet written
        self._by_user: dict[tuple[float, str, bool], float] = {}  # joules not yet written
        self._by_run: dict[str, list[Any]] = {}  # run id -> [joules, simulated]
        self._leases: dict[tuple[str, int], tuple[str, str]] = {}  # -> (run id, user)
        self._run_users: dict[str, str] = {}
        self._leases_read = -math.inf

    # -- what the engine reports ------------------------------------------------------

    def observe(self, host: str, sample: Telemetry, arrived: float) -> None:
        """Account one sample of host that arrived (controller clock) at ``arrived``."""
        policy = self.policy()
        previous = self._last_seen.get(host)
        self._last_seen[host] = arrived
        cap = MAX_GAP_INTERVALS * policy.interval_s
        dt = 0.0 if previous is None else min(max(0.0, arrived - previous), cap)
        simulated = sample.backend == BACKEND_SIMULATED
        self._refresh_leases(arrived)
        hour = math.floor(arrived / ENERGY_BUCKET_S) * ENERGY_BUCKET_S
        for gpu in sample.gpus:
            holders = self.holders(host, gpu)
            if dt and holders and gpu.power is not None:
                share = gpu.power * dt / len(holders)
                for holder in holders:
                    key = (hour, holder.user, simulated)
                    self._by_user[key] = self._by_user.get(key, 0.0) + share
                    if holder.run_id:
                        entry = self._by_run.setdefault(holder.run_id, [0.0, simulated])
                        entry[0] += share
            self._follow_idle(host, gpu, holders, arrived, simulated, policy)

    def holders(self, host: str, gpu: GpuSample) -> list[Holder]:
        """The runs and other users on a GPU, each once; a run's lease counts without a process."""
        found: dict[tuple[str, str | None], int] = {}
        for proc in gpu.processes:
            key: tuple[str, str | None]
            if proc.run_id:
                user = self._run_users.get(proc.run_id) or proc.user or "?"
                key = (user, proc.run_id)
            else:
                key = (proc.user or "?", FOREIGN)
            found[key] = found.get(key, 0) + (proc.mem or 0)
        lease = self._leases.get((host, gpu.index))
        if lease is not None and not any(run == lease[0] for _, run in found):
            found[(lease[1], lease[0])] = 0
        return [Holder(user, run, mem) for (user, run), mem in found.items()]

    def _refresh_leases(self, now: float) -> None:
        if now - self._leases_read < RUNS_REFRESH_S:
            return
        self._leases_read = now
        leases: dict[tuple[str, int], tuple[str, str]] = {}
        users: dict[str, str] = {}
        for run in self.catalog.list_runs(states=["running"]):
            users[run["id"]] = run.get("user") or "?"
            for index in run.get("gpus") or ():
                if run.get("host"):
                    leases[(run["host"], index)] = (run["id"], run.get("user") or "?")
        self._leases, self._run_users = leases, users

    def _follow_idle(
        self,
        host: str,
        gpu: GpuSample,
        holders: list[Holder],
        now: float,
        simulated: bool,
        policy: Policy,
    ) -> None:
        key = (host, gpu.index)
        idle = (
            bool(holders)
            and gpu.util is not None
            and gpu.util < policy.idle_util
            and (gpu.mem_used or 0) > 0
        )
        state = self._idle.get(key)
        if not idle:
            if state is not None:
                del self._idle[key]
                if state.episode is not None:
                    self._ended.append((state.episode, state.last))
            return
        # The run, if one holds it, else the process with the most memory, names the holder.
        holder = max(holders, key=lambda h: (h.run_id is not None, h.mem))
        if state is None or state.holder.run_id != holder.run_id:
            if state is not None and state.episode is not None:
                self._ended.append((state.episode, state.last))
            state = self._idle[key] = IdleState(now, now, holder)
        state.last = now
        if state.episode is None and now - state.since >= policy.idle_after_s:
            state.episode = self.catalog.open_idle_episode(
                host,
                gpu.index,
                user=holder.user,
                run_id=holder.run_id,
                simulated=simulated,
                since=state.since,
                until=now,
            )
            self.on_idle(
                IdleGpu(host, gpu.index, holder, state.since, gpu.util, gpu.mem_used, simulated)
            )

    def host_lost(self, host: str) -> None:
        """A host's session ended: its GPUs' idle stretches end at their last sample."""
        self._last_seen.pop(host, None)
        for key in [k for k in self._idle if k[0] == host]:
            state = self._idle.pop(key)
            if state.episode is not None:
                self._ended.append((state.episode, state.last))

    # -- writing ----------------------------------------------------------------------

    def flush(self, now: float | None = None) -> None:
        """Write energy and idle episodes gathered since the last flush, in one transaction."""
        now = time.time() if now is None else now
        idle = [(episode, until, False) for episode, until in self._ended]
        idle += [(s.episode, s.last, True) for s in self._idle.values() if s.episode is not None]
        if not (idle or self._by_user or self._by_run):
            return
        by_run = {run: (entry[0], bool(entry[1])) for run, entry in self._by_run.items()}
        self.catalog.record_usage(idle, self._by_user, by_run, now=now)
        self._ended, self._by_user, self._by_run = [], {}, {}

    def idle_now(self) -> Mapping[tuple[str, int], IdleState]:
        """GPUs whose idle stretch counts as idle-held now."""
        return {k: s for k, s in self._idle.items() if s.episode is not None}
