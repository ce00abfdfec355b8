"""The pure scheduler: queue order, placement rules, reasons, and invariants under hypothesis."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvtui.engine.scheduler import (
    GIB,
    PRIORITY_RANK,
    GpuState,
    HostState,
    Placement,
    Plan,
    QueuedRun,
    plan,
    queue_order,
)


def gpu(
    index: int,
    *,
    used: int = 0,  # GiB
    total: int | None = 80,  # GiB
    util: float = 0.0,
    lease: str | None = None,
    foreign: bool = False,
    ours: bool = False,
    seen: float = 100.0,
) -> GpuState:
    return GpuState(
        index=index,
        mem_total=None if total is None else total * GIB,
        mem_used=None if total is None else used * GIB,
        util=util,
        leased_by=lease,
        foreign=foreign,
        ours=ours,
        telemetry_time=seen,
    )


def host(
    name: str, count: int = 4, *, gpus: Sequence[GpuState] | None = None, **fields: Any
) -> HostState:
    """A healthy host with `count` idle 80 GiB GPUs unless told otherwise."""
    fields.setdefault("healthy", True)
    listed = tuple(gpus) if gpus is not None else tuple(gpu(i) for i in range(count))
    return HostState(name=name, gpus=listed, **fields)


def run(run_id: str, priority: str = "normal", submitted: float = 0.0, **fields: Any) -> QueuedRun:
    """A one-GPU run unless told otherwise."""
    fields.setdefault("gpus", 1)
    return QueuedRun(run_id=run_id, priority=priority, submitted=submitted, **fields)


def placed(result: Plan) -> dict[str, tuple[str, tuple[int, ...]]]:
    return {p.run_id: (p.host, p.gpus) for p in result.placements}


# --- queue order -----------------------------------------------------------------------------


def test_queue_order_is_priority_then_submit_time_then_run_id() -> None:
    runs = [
        run("n2", "normal", 5.0),
        run("low", "low", 0.0),
        run("n1b", "normal", 1.0),
        run("n1a", "normal", 1.0),
        run("u", "urgent", 9.0),
        run("h", "high", 7.0),
    ]
    assert [r.run_id for r in queue_order(runs)] == ["u", "h", "n1a", "n1b", "n2", "low"]


def test_unknown_priority_and_negative_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown priority 'asap'"):
        run("r", "asap")
    with pytest.raises(ValueError, match="must not be negative"):
        run("r", gpus=-1)


def test_bad_foreign_mode_and_duplicate_hosts_are_refused() -> None:
    with pytest.raises(ValueError, match="foreign_processes"):
        plan([], [host("a")], foreign_processes="ignore")
    with pytest.raises(ValueError, match="appears twice"):
        plan([], [host("a"), host("a")])


# --- placement rules, one table row each -----------------------------------------------------


def test_urgent_goes_before_an_older_low_run() -> None:
    result = plan([run("old-low", "low", 0.0), run("new-urgent", "urgent", 50.0)], [host("g", 1)])
    assert placed(result) == {"new-urgent": ("g", (0,))}
    assert result.waiting == {"old-low": "needs 1 free GPU; best host g has 0"}


def test_fifo_inside_a_priority() -> None:
    queue = [run("b", submitted=2.0), run("a", submitted=1.0), run("c", submitted=1.0)]
    result = plan(queue, [host("g", 2)])
    assert set(placed(result)) == {"a", "c"}
    assert list(result.waiting) == ["b"]


def test_a_big_run_that_does_not_fit_does_not_block_smaller_ones() -> None:
    queue = [run("big", "high", 0.0, gpus=4), run("small", "low", 1.0, gpus=1)]
    result = plan(queue, [host("g", gpus=[gpu(0), gpu(1), gpu(2, lease="x"), gpu(3, lease="x")])])
    assert placed(result) == {"small": ("g", (0,))}
    assert result.reserved == {}  # only urgent runs hold GPUs
    assert result.waiting == {"big": "needs 4 free GPUs; best host g has 1"}


def test_waiting_urgent_run_holds_the_free_gpus_of_its_closest_host() -> None:
    hosts = [
        host("g1", gpus=[gpu(0, lease="x"), gpu(1, lease="y"), gpu(2), gpu(3)]),
        host("g2", gpus=[gpu(0, lease="z"), gpu(1, lease="z"), gpu(2, lease="z"), gpu(3)]),
        host("g3", 1),
    ]
    queue = [run("u", "urgent", gpus=4), *(run(f"l{i}", "low", float(i)) for i in range(4))]
    result = plan(queue, hosts)
    assert result.reserved == {"u": ("g1", (2, 3))}
    # Backfill still uses every GPU that is not held: g2's last GPU and g3's.
    assert sorted(placed(result).values()) == [("g2", (3,)), ("g3", (0,))]
    assert result.waiting == {
        "u": "needs 4 free GPUs; best host g1 has 2; holding g1 GPUs 2, 3 for it",
        "l2": "GPUs held for urgent run u on g1",
        "l3": "GPUs held for urgent run u on g1",
    }


def test_urgent_run_that_can_never_fit_holds_nothing() -> None:
    result = plan([run("u", "urgent", gpus=8), run("l", "low")], [host("g", 4)])
    assert result.reserved == {}
    assert placed(result) == {"l": ("g", (0,))}
    assert (
        result.waiting["u"] == "needs 8 free GPUs on one host; largest matching host g has 4 GPUs"
    )


def test_only_the_first_starved_urgent_run_holds_gpus() -> None:
    hosts = [host("g", gpus=[gpu(0, lease="x"), gpu(1)])]
    result = plan([run("u1", "urgent", 0.0, gpus=2), run("u2", "urgent", 1.0, gpus=2)], hosts)
    assert result.reserved == {"u1": ("g", (1,))}
    assert result.waiting["u2"] == "needs 2 free GPUs; best host g has 0"


@pytest.mark.parametrize(
    ("run_tags", "expected"),
    [
        (("a100",), {"r": ("a", (0,))}),
        (("a100", "ib"), {"r": ("b", (0,))}),
        (("v100",), {}),
    ],
)
def test_tags_pick_hosts(run_tags: tuple[str, ...], expected: dict[str, object]) -> None:
    hosts = [host("a", 1, tags=("a100",)), host("b", 1, tags=("a100", "ib")), host("c", 1)]
    result = plan([run("r", tags=run_tags)], hosts)
    assert placed(result) == expected
    if not expected:
        assert result.waiting == {"r": "no host matches tags [v100]"}


def test_no_healthy_host_with_the_tags() -> None:
    hosts = [host("a", tags=("a100",), healthy=False), host("b", tags=("a100",), healthy=False)]
    result = plan([run("r", tags=("a100",))], [*hosts, host("c")])
    assert result.waiting == {"r": "no healthy host matches tags [a100]"}


def test_host_list_restricts_placement_and_unknown_hosts_are_named() -> None:
    hosts = [host("g1", gpus=[gpu(0)]), host("g2", gpus=[gpu(0, used=70)])]
    result = plan([run("pinned", hosts=("g2",)), run("lost", hosts=("gpu-09",))], hosts)
    assert placed(result) == {"pinned": ("g2", (0,))}
    assert result.waiting == {"lost": "unknown host gpu-09"}


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"drained": True}, "host g3 is drained"),
        ({"healthy": False}, "host g3 is unhealthy"),
        ({"max_runs": 4, "running": 4}, "g3 at max_runs 4"),
    ],
)
def test_unusable_host_states(fields: dict[str, Any], reason: str) -> None:
    result = plan([run("r"), run("cpu", gpus=0)], [host("g3", **fields)])
    assert result.placements == ()
    assert result.waiting == {"r": reason, "cpu": reason}


def test_runs_placed_in_the_pass_count_toward_max_runs() -> None:
    result = plan(
        [run("a", submitted=0), run("b", submitted=1)], [host("g", max_runs=2, running=1)]
    )
    assert set(placed(result)) == {"a"}
    assert result.waiting == {"b": "g at max_runs 2"}


def test_host_at_max_runs_with_enough_gpus_is_mentioned() -> None:
    hosts = [host("full", max_runs=1, running=1), host("busy", gpus=[gpu(0), gpu(1, lease="x")])]
    result = plan([run("r", gpus=2)], hosts)
    assert result.waiting == {
        "r": "needs 2 free GPUs; best host busy has 1; full has 4 but is at max_runs 1"
    }


def test_only_allowed_gpus_are_used() -> None:
    result = plan([run("a"), run("b"), run("c")], [host("g", 4, allowed_gpus=(1, 3))])
    assert sorted(placed(result).values()) == [("g", (1,)), ("g", (3,))]
    assert list(result.waiting) == ["c"]


def test_gpu_order_breaks_ties() -> None:
    result = plan([run("a"), run("b", submitted=1)], [host("g", 4, gpu_order=(2, 0))])
    assert placed(result) == {"a": ("g", (2,)), "b": ("g", (0,))}


def test_idle_gpus_come_before_busy_ones_even_with_less_memory() -> None:
    # util without a visible process: someone we cannot see is computing there.
    gpus = [gpu(0, util=30.0), gpu(1, used=40)]
    assert placed(plan([run("r")], [host("g", gpus=gpus)])) == {"r": ("g", (1,))}


def test_most_free_memory_wins_among_idle_gpus() -> None:
    gpus = [gpu(0, used=10), gpu(1, used=2), gpu(2, used=5)]
    assert placed(plan([run("r")], [host("g", gpus=gpus)])) == {"r": ("g", (1,))}


def test_freshest_telemetry_breaks_the_last_tie() -> None:
    gpus = [gpu(0, seen=10.0), gpu(1, seen=30.0), gpu(2, seen=20.0)]
    assert placed(plan([run("r")], [host("g", gpus=gpus)])) == {"r": ("g", (1,))}


def test_best_host_is_judged_by_its_weakest_gpu() -> None:
    hosts = [
        host("mixed", gpus=[gpu(0), gpu(1, util=50.0)]),
        host("calm", gpus=[gpu(0, used=30), gpu(1, used=30)]),
    ]
    assert placed(plan([run("r", gpus=2)], hosts)) == {"r": ("calm", (0, 1))}


@pytest.mark.parametrize(
    ("mode", "min_free_gib", "placed_on"),
    [
        ("avoid", 0, None),
        ("share", 0, 0),
        ("share", 40, 0),
        ("share", 60, None),
    ],
)
def test_foreign_processes_avoid_or_share(
    mode: str, min_free_gib: int, placed_on: int | None
) -> None:
    hosts = [host("g", gpus=[gpu(0, used=30, foreign=True, util=80.0)])]
    result = plan([run("r", min_free_mem=min_free_gib * GIB)], hosts, foreign_processes=mode)
    assert placed(result) == ({} if placed_on is None else {"r": ("g", (placed_on,))})


def test_shared_gpus_come_after_idle_ones() -> None:
    hosts = [host("g", gpus=[gpu(0, foreign=True), gpu(1, used=20)])]
    assert placed(plan([run("r")], hosts, foreign_processes="share")) == {"r": ("g", (1,))}


@pytest.mark.parametrize("holder", ["run-1", "?"])
def test_leased_gpus_are_never_used(holder: str) -> None:
    hosts = [host("g", gpus=[gpu(0, lease=holder), gpu(1, lease=holder)])]
    for mode in ("avoid", "share"):
        assert plan([run("r")], hosts, foreign_processes=mode).placements == ()


def test_our_process_without_a_lease_keeps_the_gpu_busy() -> None:
    hosts = [host("g", gpus=[gpu(0, ours=True), gpu(1)])]
    assert placed(plan([run("a"), run("b", submitted=1)], hosts)) == {"a": ("g", (1,))}


def test_all_gpus_of_a_run_are_on_one_host() -> None:
    hosts = [host("g1", 2), host("g2", 2)]
    result = plan([run("three", gpus=3), run("two", gpus=2, submitted=1)], hosts)
    assert placed(result) == {"two": ("g1", (0, 1))}
    assert result.waiting == {
        "three": "needs 3 free GPUs on one host; largest matching host g1 has 2 GPUs"
    }


def test_min_free_mem_applies_to_each_gpu() -> None:
    hosts = [host("g1", gpus=[gpu(0, used=50), gpu(1)]), host("g2", gpus=[gpu(0, used=50)])]
    result = plan([run("r", gpus=2, min_free_mem=40 * GIB)], hosts)
    assert result.waiting == {"r": "needs 2 GPUs with 40.0GiB free; best host g1 has 1"}


def test_unknown_memory_only_serves_runs_without_a_memory_need() -> None:
    hosts = [host("g", gpus=[gpu(0, total=None)])]
    assert placed(plan([run("any")], hosts)) == {"any": ("g", (0,))}
    assert plan([run("mem", min_free_mem=GIB)], hosts).placements == ()


def test_runs_without_gpus_need_only_a_healthy_host_with_room() -> None:
    hosts = [host("sick", 0, healthy=False), host("a", 0, max_runs=1), host("b", 0)]
    result = plan([run(f"c{i}", gpus=0, submitted=i) for i in range(3)], hosts)
    # Spread over the least loaded hosts; a's single slot goes in the first round.
    assert placed(result) == {"c0": ("a", ()), "c1": ("b", ()), "c2": ("b", ())}


def test_urgent_run_at_a_full_host_keeps_its_slot() -> None:
    hosts = [host("g", max_runs=2, running=2, gpus=[gpu(0), gpu(1), gpu(2, lease="x")])]
    result = plan([run("u", "urgent", gpus=2), run("cpu", "low", gpus=0)], hosts)
    assert result.reserved == {"u": ("g", (0, 1))}
    assert result.waiting == {
        "u": "g at max_runs 2; holding g GPUs 0, 1 for it",
        "cpu": "g at max_runs 2",
    }


def gpu_is_free(g: GpuState, r: QueuedRun, mode: str) -> bool:
    """Whether r may use g (the host's allowed list aside): the rule written out again,
    independently of the scheduler, for the invariants below."""
    if g.leased_by is not None:
        return False
    if (g.foreign or g.ours) and mode != "share":
        return False
    if r.min_free_mem <= 0:
        return True
    free = g.mem_free
    return free is not None and free >= r.min_free_mem


@pytest.mark.parametrize(
    ("one_gpu", "min_free_gib", "mode", "fits"),
    [
        (gpu(0, used=30), 40, "avoid", True),
        (gpu(0, used=50), 40, "avoid", False),
        (gpu(0, lease="?"), 0, "share", False),
        (gpu(0, foreign=True), 0, "avoid", False),
        (gpu(0, ours=True), 0, "avoid", False),
        (gpu(0, foreign=True, used=30), 40, "share", True),
        (gpu(0, total=None), 40, "avoid", False),
        (gpu(0, total=None), 0, "avoid", True),
    ],
)
def test_which_gpu_a_run_may_take(
    one_gpu: GpuState, min_free_gib: int, mode: str, fits: bool
) -> None:
    needs = run("r", min_free_mem=min_free_gib * GIB)
    result = plan([needs], [host("g", gpus=[one_gpu])], foreign_processes=mode)
    assert placed(result) == ({"r": ("g", (0,))} if fits else {})
    assert gpu_is_free(one_gpu, needs, mode) == fits  # the oracle agrees with the scheduler


# --- hypothesis: invariants over random labs and queues --------------------------------------

HOST_NAMES = ("h0", "h1", "h2", "h3")
TAGS = ("a100", "ib")


def sometimes(percent: int) -> st.SearchStrategy[bool]:
    return st.integers(0, 99).map(lambda x: x < percent)


@st.composite
def gpu_states(draw: st.DrawFn, index: int) -> GpuState:
    total = draw(st.sampled_from([None, 24, 80, 80]))
    return gpu(
        index,
        total=total,
        used=draw(st.sampled_from([0, 0, 1, 30, 60, 80])) if total else 0,
        util=draw(st.sampled_from([0.0, 0.0, 50.0])),
        lease=draw(st.sampled_from([None, None, None, None, "run-x", "?"])),
        foreign=draw(sometimes(15)),
        ours=draw(sometimes(10)),
        seen=draw(st.sampled_from([1.0, 2.0])),
    )


@st.composite
def host_states(draw: st.DrawFn, name: str) -> HostState:
    count = draw(st.sampled_from([0, 1, 2, 3, 4, 4]))
    indexes = list(range(count))
    allowed = st.lists(st.sampled_from(indexes or [0]), unique=True).map(tuple)
    return HostState(
        name=name,
        healthy=draw(sometimes(85)),
        drained=draw(sometimes(10)),
        tags=tuple(t for t in TAGS if draw(st.booleans())),
        max_runs=draw(st.sampled_from([None, None, None, None, 0, 1, 2, 4])),
        running=draw(st.integers(0, 1)),
        allowed_gpus=draw(st.none() | allowed) if draw(sometimes(30)) else None,
        gpu_order=draw(st.none() | st.permutations(indexes).map(tuple)),
        gpus=tuple(draw(gpu_states(i)) for i in indexes),
    )


@st.composite
def labs(draw: st.DrawFn) -> list[HostState]:
    count = draw(st.integers(1, len(HOST_NAMES)))
    return [draw(host_states(name)) for name in HOST_NAMES[:count]]


@st.composite
def queued_runs(draw: st.DrawFn, run_id: str) -> QueuedRun:
    names = st.lists(st.sampled_from([*HOST_NAMES, "nowhere"]), min_size=1, max_size=2, unique=True)
    return QueuedRun(
        run_id=run_id,
        priority=draw(st.sampled_from(list(PRIORITY_RANK))),
        submitted=float(draw(st.integers(0, 3))),  # ties: the run id decides
        gpus=draw(st.sampled_from([0, 1, 1, 1, 2, 2, 3])),
        min_free_mem=draw(st.sampled_from([0, 0, 0, 20, 40])) * GIB,
        hosts=tuple(draw(names)) if draw(sometimes(20)) else (),
        tags=tuple(t for t in TAGS if draw(sometimes(20))),
    )


@st.composite
def queues(draw: st.DrawFn) -> list[QueuedRun]:
    count = draw(st.integers(1, 12))
    return [draw(queued_runs(f"r{i:02d}")) for i in range(count)]


def can_host(h: HostState, r: QueuedRun, extra_runs: int) -> bool:
    """The host rules, written out again independently of the scheduler."""
    if not h.healthy or h.drained:
        return False
    if r.hosts and h.name not in r.hosts:
        return False
    if not set(r.tags) <= set(h.tags):
        return False
    return h.max_runs is None or h.running + extra_runs < h.max_runs


def usable(h: HostState, r: QueuedRun, taken: set[tuple[str, int]], mode: str) -> list[GpuState]:
    return [
        g
        for g in h.gpus
        if (h.allowed_gpus is None or g.index in h.allowed_gpus)
        and (h.name, g.index) not in taken
        and gpu_is_free(g, r, mode)
    ]


def preference(h: HostState, g: GpuState) -> tuple[object, ...]:
    free = g.mem_free
    order = h.gpu_order or ()
    rank = order.index(g.index) if g.index in order else len(order)
    return (not g.idle, -(free if free is not None else -1), rank, -g.telemetry_time)


def could_ever_host(h: HostState, r: QueuedRun, mode: str) -> bool:
    """Whether r fits on h once every lease there has ended (foreign processes may stay)."""
    if not can_host(h, r, -h.running):
        return False
    lasting = [
        g
        for g in h.gpus
        if (h.allowed_gpus is None or g.index in h.allowed_gpus)
        and (mode == "share" or not g.foreign)
        and (r.min_free_mem <= 0 or (g.mem_total or 0) >= r.min_free_mem)
    ]
    return len(lasting) >= r.gpus


def assert_best(h: HostState, free_now: list[GpuState], picked: Sequence[int], count: int) -> None:
    """picked are the `count` best of free_now by the documented preference."""
    keys = sorted(preference(h, g) for g in free_now)
    chosen = sorted(preference(h, g) for g in free_now if g.index in picked)
    assert len(picked) == len(set(picked)) == count
    assert chosen == keys[:count], (h.name, picked)


def replay(queue: list[QueuedRun], hosts: list[HostState], mode: str, result: Plan) -> None:
    """Walk the queue in order and check every decision against the state at that point.

    At each run's turn the state is the input minus what earlier runs in queue order got
    (placements, and the urgent hold once its run has been seen). A placed run must fit on its
    host and GPUs in that state; a waiting run must fit nowhere in it. So no run ever got GPUs or
    a run slot that a waiting run ahead of it (higher priority, or same priority and older) could
    have used at its turn: priority is strict, and lower runs only backfill what is left.
    The first waiting urgent run that could ever fit somewhere must hold, on the matching host
    with the most usable free GPUs (first host on ties), its best free GPUs and one run slot.
    """
    by_name = {h.name: h for h in hosts}
    placements = {p.run_id: p for p in result.placements}
    taken: set[tuple[str, int]] = set()
    extra: Counter[str] = Counter()
    holder = None
    assert len(placements) == len(result.placements)
    for r in queue_order(queue):
        p = placements.get(r.run_id)
        if p is not None:
            h = by_name[p.host]
            assert r.run_id not in result.waiting
            assert can_host(h, r, extra[h.name]), (r, h)
            free_now = usable(h, r, taken, mode)
            assert set(p.gpus) <= {g.index for g in free_now}, (r, p)
            assert_best(h, free_now, p.gpus, r.gpus)
            taken |= {(h.name, i) for i in p.gpus}
            extra[h.name] += 1
            continue
        assert result.waiting.get(r.run_id)
        for h in hosts:
            if can_host(h, r, extra[h.name]):
                assert len(usable(h, r, taken, mode)) < r.gpus, (r, h, result)
        if holder is not None or r.priority != "urgent":
            continue
        hopeful = [h for h in hosts if could_ever_host(h, r, mode)]
        if not hopeful:
            continue
        holder = r.run_id
        best = max(hopeful, key=lambda h: (len(usable(h, r, taken, mode)), -hosts.index(h)))
        name, held = result.reserved[r.run_id]
        assert name == best.name
        free_now = usable(best, r, taken, mode)
        assert_best(best, free_now, held, min(r.gpus, len(free_now)))
        taken |= {(name, i) for i in held}
        extra[name] += 1
    assert list(result.reserved) == ([] if holder is None else [holder])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hosts=labs(), queue=queues(), mode=st.sampled_from(["avoid", "share"]))
def test_every_decision_holds_at_its_turn(
    hosts: list[HostState], queue: list[QueuedRun], mode: str
) -> None:
    result = plan(queue, hosts, foreign_processes=mode)
    ids = [r.run_id for r in queue_order(queue)]
    assert list(result.waiting) == [i for i in ids if i in result.waiting]
    assert {p.run_id for p in result.placements} | set(result.waiting) == set(ids)
    assert len(result.reserved) <= 1
    replay(queue, hosts, mode, result)


@settings(max_examples=80, deadline=None)
@given(hosts=labs(), queue=queues(), seed=st.integers(0, 1000))
def test_input_order_does_not_matter(
    hosts: list[HostState], queue: list[QueuedRun], seed: int
) -> None:
    shuffled = list(queue)
    random.Random(seed).shuffle(shuffled)
    assert plan(shuffled, hosts) == plan(queue, hosts)


@settings(max_examples=80, deadline=None)
@given(
    hosts=labs(),
    template=queued_runs("template"),
    priorities=st.lists(st.sampled_from(list(PRIORITY_RANK)), min_size=2, max_size=8),
)
def test_identical_runs_are_placed_in_priority_then_submit_order(
    hosts: list[HostState], template: QueuedRun, priorities: list[str]
) -> None:
    # Same size, same constraints: placement must be a prefix of the queue order.
    queue = [
        QueuedRun(
            f"c{i}",
            p,
            float(i),
            template.gpus,
            template.min_free_mem,
            template.hosts,
            template.tags,
        )
        for i, p in enumerate(priorities)
    ]
    result = plan(queue, hosts)
    flags = [r.run_id not in result.waiting for r in queue_order(queue)]
    assert flags == sorted(flags, reverse=True), flags


# --- no starvation: repeated passes while runs finish and lower ones keep coming -------------


def lab_state(
    sizes: list[int],
    max_runs: list[int | None],
    leases: dict[tuple[int, int], str],
    jobs: dict[str, list[int]],
) -> list[HostState]:
    hosts = []
    for h, size in enumerate(sizes):
        gpus = tuple(gpu(i, lease=leases.get((h, i))) for i in range(size))
        running = sum(1 for job in jobs.values() if job[0] == h)
        hosts.append(HostState(f"h{h}", True, max_runs=max_runs[h], running=running, gpus=gpus))
    return hosts


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 4), min_size=1, max_size=3),
    limited=st.booleans(),
    seed=st.integers(0, 10_000),
    longest=st.integers(2, 4),
)
def test_an_urgent_run_is_placed_within_a_bounded_number_of_passes(
    sizes: list[int], limited: bool, seed: int, longest: int
) -> None:
    """Runs end after 1..longest passes, freeing GPUs at scattered times, while enough lower
    runs arrive to take every GPU that frees; an urgent run needing several GPUs on one host
    must still start. Without the hold it would wait for all its GPUs to free in one pass."""
    rng = random.Random(seed)
    need = rng.randint(2, max(sizes))
    max_runs: list[int | None] = [size + 1 if limited else None for size in sizes]
    leases: dict[tuple[int, int], str] = {}
    jobs: dict[str, list[int]] = {}  # run id -> [host, passes left, *gpu indexes]
    for h, size in enumerate(sizes):  # every GPU busy at the start
        for i in range(size):
            jobs[f"bg{h}{i}"] = [h, rng.randint(1, longest), i]
            leases[(h, i)] = f"bg{h}{i}"
    queue = [QueuedRun("urgent", "urgent", 0.0, gpus=need)]
    # The held host changes only to one with strictly more free GPUs, and once a host is
    # held every lease on it ends within `longest` passes.
    bound = (max(sizes) + 2) * (longest + 1)
    for round_no in range(1, bound + 1):
        for k in range(sum(sizes)):
            queue.append(
                QueuedRun(
                    f"n{round_no}-{k}",
                    rng.choice(["high", "normal", "low"]),
                    float(round_no),
                    gpus=rng.choice([0, 1, 1, 1, 2]),
                )
            )
        result = plan(queue, lab_state(sizes, max_runs, leases, jobs))
        for p in result.placements:
            if p.run_id == "urgent":
                return
            h = int(p.host[1:])
            jobs[p.run_id] = [h, rng.randint(1, longest), *p.gpus]
            leases.update({(h, i): p.run_id for i in p.gpus})
        done = {p.run_id for p in result.placements}
        queue = [r for r in queue if r.run_id not in done]
        for run_id, job in list(jobs.items()):
            job[1] -= 1
            if job[1] <= 0:
                del jobs[run_id]
                for i in job[2:]:
                    del leases[(job[0], i)]
    pytest.fail(f"urgent run still waiting after {bound} passes")


def test_urgent_run_is_not_starved_by_gpus_freeing_one_at_a_time() -> None:
    # Without a hold, each GPU that frees would go to the next 1-GPU low run.
    leases = {(0, 0): "a", (0, 1): "b"}
    jobs = {"a": [0, 1, 0], "b": [0, 2, 1]}
    queue = [
        QueuedRun("u", "urgent", 0.0, gpus=2),
        *(QueuedRun(f"l{i}", "low", float(i), gpus=1) for i in range(5)),
    ]
    first = plan(queue, lab_state([2], [None], leases, jobs))
    assert first.placements == () and first.reserved == {"u": ("h0", ())}
    # GPU 0 frees: held for u, not given to l0.
    second = plan(queue, lab_state([2], [None], {(0, 1): "b"}, {"b": [0, 1, 1]}))
    assert second.placements == () and second.reserved == {"u": ("h0", (0,))}
    assert second.waiting["l0"] == "GPUs held for urgent run u on h0"
    third = plan(queue, lab_state([2], [None], {}, {}))
    assert third.placements[0] == Placement("u", "h0", (0, 1))
