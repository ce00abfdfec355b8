"""Choosing what to preempt (pure): the fewest low runs, on one host, whose GPUs let a starving
urgent run start where the scheduler would put it."""

from __future__ import annotations

from cvtui.engine.preempt import Preemptible, choose_victims, freed
from cvtui.engine.scheduler import GpuState, HostState, QueuedRun

GIB = 1 << 30


def host(name: str, leases: dict[int, str | None], *, running: int = 0) -> HostState:
    gpus = tuple(
        GpuState(
            index,
            mem_total=80 * GIB,
            mem_used=40 * GIB if holder else 0,
            util=90.0 if holder else 0.0,
            leased_by=holder,
            ours=holder is not None,
        )
        for index, holder in leases.items()
    )
    return HostState(name, healthy=True, running=running, gpus=gpus)


def urgent(run_id: str = "u", gpus: int = 2, hosts: tuple[str, ...] = ()) -> QueuedRun:
    return QueuedRun(run_id, "urgent", 1.0, gpus=gpus, hosts=hosts)


def test_the_fewest_runs_on_one_host_are_chosen() -> None:
    hosts = [
        host("a", {0: "low1", 1: "low2", 2: "busy", 3: None}, running=3),
        host("b", {0: "low3", 1: "low4"}, running=2),
    ]
    preemptible = [
        Preemptible("low1", "a", (0,)),
        Preemptible("low2", "a", (1,)),
        Preemptible("low3", "b", (0,)),
        Preemptible("low4", "b", (1,)),
    ]
    # Host a has a free GPU already: one victim there is enough for a 2-GPU run.
    assert choose_victims([], urgent(), hosts, preemptible) == ["low1"]
    # Pinned to b: both of b's.
    assert choose_victims([], urgent(hosts=("b",)), hosts, preemptible) == ["low3", "low4"]
    # 3 GPUs: only a can give them (its own free one, and two of its low runs).
    assert choose_victims([], urgent(gpus=3), hosts, preemptible) == ["low1", "low2"]


def test_nothing_is_preempted_when_it_would_not_help() -> None:
    hosts = [host("a", {0: "busy", 1: "low1"}, running=2)]
    preemptible = [Preemptible("low1", "a", (1,))]
    assert choose_victims([], urgent(gpus=2), hosts, preemptible) == []  # busy is not low
    assert choose_victims([], urgent(gpus=5), hosts, preemptible) == []
    assert choose_victims([], urgent(gpus=1), hosts, []) == []


def test_runs_placed_before_it_keep_their_gpus() -> None:
    hosts = [host("a", {0: None, 1: "low1", 2: "low2"}, running=2)]
    preemptible = [Preemptible("low1", "a", (1,)), Preemptible("low2", "a", (2,))]
    ahead = [QueuedRun("u0", "urgent", 0.5, gpus=1)]
    # u0 takes the free GPU 0 in this pass; u needs 2 more: both low runs go.
    assert choose_victims(ahead, urgent(), hosts, preemptible) == ["low1", "low2"]


def test_freed_hosts_show_the_gpus_given_back() -> None:
    [before] = [host("a", {0: "low1", 1: "busy"}, running=2)]
    [after] = freed([before], [Preemptible("low1", "a", (0,))])
    assert after.running == 1
    assert after.gpus[0].leased_by is None and after.gpus[0].mem_used == 0
    assert not after.gpus[0].ours and after.gpus[0].util == 90.0  # idle GPUs still come first
    assert after.gpus[1] == before.gpus[1]
