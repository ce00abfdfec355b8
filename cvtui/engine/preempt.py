"""Preemption (policy.preempt): an urgent run that cannot start ends `low` runs that declared
`resume`. They get SIGTERM and policy.preempt_grace to save a checkpoint, then SIGKILL; each
is retried as a resume once the urgent run has taken its GPUs."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cvtui.engine import scheduler
from cvtui.engine.agent_client import AgentClosedError
from cvtui.states import PREEMPTED_REASON
from remote_agent import protocol
from remote_agent.protocol import RemoteError

if TYPE_CHECKING:
    from cvtui.engine.runner import RunController

log = logging.getLogger("cvtui.engine.preempt")

PREEMPTIBLE_PRIORITY = "low"
PREEMPTING_PRIORITY = "urgent"
BY_PREFIX = PREEMPTED_REASON.removeprefix("cancelled by ")  # the cancel's `by`: its reason


@dataclass(frozen=True)
class Preemptible:
    """A running low run that declared resume: what ending it would free."""

    run_id: str
    host: str
    gpus: tuple[int, ...]


def freed(
    hosts: Sequence[scheduler.HostState], victims: Sequence[Preemptible]
) -> list[scheduler.HostState]:
    """The hosts as they would be with the victims' GPUs given back (pure). A freed GPU keeps
    its load figure, so the scheduler still prefers GPUs that are idle already."""
    gone = {(v.host, g) for v in victims for g in v.gpus}
    per_host = {h.name: sum(1 for v in victims if v.host == h.name) for h in hosts}
    found = []
    for host in hosts:
        gpus = tuple(
            replace(gpu, leased_by=None, ours=False, mem_used=0)
            if (host.name, gpu.index) in gone and not gpu.foreign
            else gpu
            for gpu in host.gpus
        )
        found.append(replace(host, gpus=gpus, running=max(0, host.running - per_host[host.name])))
    return found


def choose_victims(
    ahead: Sequence[scheduler.QueuedRun],
    run: scheduler.QueuedRun,
    hosts: Sequence[scheduler.HostState],
    preemptible: Sequence[Preemptible],
    *,
    foreign_processes: str = "avoid",
) -> list[str]:
    """The fewest runs, on one host, whose end lets run start: per host, where the scheduler
    would put it with that host's preemptible runs gone, those holding the GPUs it would
    take. ahead: the runs placed before it in this pass, which keep their GPUs. Pure."""
    best: list[str] | None = None
    for name in sorted({v.host for v in preemptible}):
        mine = [v for v in preemptible if v.host == name]
        plan = scheduler.plan(
            [*ahead, run], freed(hosts, mine), foreign_processes=foreign_processes
        )
        target = next((p for p in plan.placements if p.run_id == run.run_id), None)
        if target is None or target.host != name:
            continue
        holders = {(v.host, g): v.run_id for v in mine for g in v.gpus}
        victims = sorted({holders[(name, g)] for g in target.gpus if (name, g) in holders})
        if victims and (best is None or len(victims) < len(best)):
            best = victims
    return best or []


class Preemption:
    """The engine's preemptions: at most one urgent run is served at a time."""

    def __init__(self, runs: RunController) -> None:
        self.runs = runs
        self.asked: dict[str, str] = {}  # victim run id -> the urgent run it yields to

    def consider(
        self,
        queue: Sequence[scheduler.QueuedRun],
        hosts: Sequence[scheduler.HostState],
        plan: scheduler.Plan,
    ) -> None:
        """After a dispatch pass: the first urgent run left waiting may preempt."""
        for run_id in list(self.asked):  # ended some other way (its host went down...)
            if (self.runs.catalog.get_run(run_id) or {}).get("state") != "running":
                del self.asked[run_id]
        if self.asked:
            return  # victims are still saving their checkpoints: wait for their GPUs
        placed = {p.run_id for p in plan.placements}
        ordered = scheduler.queue_order(queue)
        urgent = [r for r in ordered if r.priority == PREEMPTING_PRIORITY]
        waiting = [index for index, r in enumerate(urgent) if r.run_id not in placed]
        if not waiting:
            return
        run = urgent[waiting[0]]
        preemptible = self.preemptible()
        if not preemptible:
            return
        ahead = urgent[: waiting[0]]  # urgent runs before it: all placed in this pass
        policy = self.runs.engine.inventory.policy
        victims = choose_victims(
            ahead, run, hosts, preemptible, foreign_processes=policy.foreign_processes
        )
        for victim in victims:
            self.asked[victim] = run.run_id
            self.runs.spawn(self.preempt(victim, run.run_id, policy.preempt_grace_s))

    def preemptible(self) -> list[Preemptible]:
        found = []
        for row in self.runs.catalog.list_runs(states=["running"]):
            if (
                row["priority"] == PREEMPTIBLE_PRIORITY
                and (row["spec"] or {}).get("resume")
                and row["host"]
                and row["id"] not in self.asked
            ):
                found.append(Preemptible(row["id"], row["host"], tuple(row["gpus"] or ())))
        return found

    async def preempt(self, run_id: str, urgent: str, grace_s: float) -> None:
        """SIGTERM now, SIGKILL after grace_s: the supervisor records it cancelled with a
        reason saying it was preempted, and the engine queues its resume (runner.retry)."""
        run: Mapping[str, Any] = self.runs.catalog.get_run(run_id) or {}
        session = self.runs.engine.sessions.get(run.get("host") or "")
        client = session.client if session is not None else None
        if client is None:
            self.asked.pop(run_id, None)
            return
        said = (
            f"preempted for urgent run {urgent}: SIGTERM, SIGKILL after {grace_s:g} s unless it "
            "ends first; it resumes from its last checkpoint"
        )
        self.runs.catalog.note_run_event(run_id, said)
        log.info("run %s: %s", run_id, said, extra={"event": "preempt", "run": run_id})
        try:
            await client.call(
                protocol.OP_CANCEL, run_id=run_id, grace=grace_s, by=f"{BY_PREFIX} for {urgent}"
            )
        except (RemoteError, TimeoutError, AgentClosedError) as exc:
            log.warning("run %s: preemption not sent: %s", run_id, exc)
            self.asked.pop(run_id, None)

    def ended(self, run_id: str) -> None:
        self.asked.pop(run_id, None)
        self.runs.wake.set()
