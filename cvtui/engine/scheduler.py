"""Queue order and GPU placement: scheduler state in, dispatch decisions out (pure, no I/O)."""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from cvtui.states import PRIORITIES
from cvtui.units import size

PRIORITY_RANK: dict[str, int] = {name: rank for rank, name in enumerate(PRIORITIES)}
FOREIGN_PROCESS_MODES = ("avoid", "share")
GIB = 1 << 30
MIB = 1 << 20
_NO_LIMIT = 1 << 62  # max_runs None, as a number the hot loop can compare with

# A free GPU as the placement loop sees it: (rank among all free GPUs of the pass, best first;
# GPU index; free bytes, -1 when unknown). One int ranks a GPU so that heap keys compare fast.
_Entry = tuple[int, int, int]
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
    condition: str = "unhealthy"  # what a host that is not healthy is: stale, disconnected...
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
    by_id, by_time = attrgetter("run_id"), attrgetter("submitted")
    for bucket in buckets.values():
        # Two stable sorts: by submit time, ties by run id; no key tuples to build.
        bucket.sort(key=by_id)
        bucket.sort(key=by_time)
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
    """One scheduling pass: place what fits in queue order, hold GPUs for one starved urgent run.

    Runs are tried in queue_order; each takes the best host it fits on now (a host is as good as
    the weakest GPU it would give). A run that does not fit is skipped, so smaller runs behind
    it backfill. The first urgent run that does not fit but could once leases end holds, on
    the host where the most usable GPUs are free, those GPUs and one run slot; later runs of
    the pass cannot take them, so its host fills up as runs end and it is never starved.
    Waiting reasons describe the state left at the end of the pass.

    Cost: O(runs + shapes x hosts + placements x log hosts), a shape being a distinct
    (gpus, min_free_mem, hosts, tags); runs whose shape already failed cost one set lookup.
    """
    if foreign_processes not in FOREIGN_PROCESS_MODES:
        raise ValueError(f"foreign_processes must be one of {FOREIGN_PROCESS_MODES}")
    state = _PassState(hosts, foreign_processes)
    return state.run(queue_order(queue))


def _fitting(free: Sequence[_Entry], min_free: int) -> list[_Entry]:
    """The entries with min_free bytes free, best first."""
    if min_free <= 0:
        return list(free)
    return [entry for entry in free if entry[2] >= min_free]


def _fitting_totals(totals: list[int], min_free: int) -> list[int]:
    return totals if min_free <= 0 else [total for total in totals if total >= min_free]


def _top(free: list[_Entry], n: int, min_free: int) -> list[_Entry] | None:
    """The best n entries with min_free bytes free each, None when fewer exist."""
    if min_free > 0:
        free = [entry for entry in free if entry[2] >= min_free]
    return free[:n] if len(free) >= n else None


def _need(run: QueuedRun) -> str:
    plural = "" if run.gpus == 1 else "s"
    if run.min_free_mem > 0:
        return f"needs {run.gpus} GPU{plural} with {size(run.min_free_mem)} free"
    return f"needs {run.gpus} free GPU{plural}"


class _MostAtLeast:
    """Which of some hosts has the most values >= m, for any m, in O(log values)."""

    def __init__(self, values: dict[int, list[int]]) -> None:
        self.first = min(values, default=-1)  # the answer when no value reaches m
        self.floors: list[int] = []  # -value, ascending, one per distinct value
        self.bests: list[tuple[int, int]] = []  # (count, host) with the most values >= value
        pairs = sorted(((v, pos) for pos, vs in values.items() for v in vs), reverse=True)
        counts: dict[int, int] = {}
        best_count, best_pos = 0, self.first
        for i, (value, pos) in enumerate(pairs):
            count = counts[pos] = counts.get(pos, 0) + 1
            if count > best_count or (count == best_count and pos < best_pos):
                best_count, best_pos = count, pos
            if i + 1 == len(pairs) or pairs[i + 1][0] != value:
                self.floors.append(-value)
                self.bests.append((best_count, best_pos))

    def best(self, m: int) -> tuple[int, int]:
        """(count, host position) of the host with the most values >= m; first host on ties."""
        i = bisect_right(self.floors, -m)
        return self.bests[i - 1] if i else (0, self.first)


@dataclass(frozen=True)
class _Outlook:
    """What the live hosts of one (hosts, tags) pool offer at the end of the pass."""

    lasting: _MostAtLeast  # memory totals of GPUs that could serve once leases end
    open_free: _MostAtLeast  # free bytes of usable GPUs on hosts under max_runs
    full_free: _MostAtLeast  # the same on hosts at max_runs
    full: tuple[int, ...]  # hosts at max_runs


class _PassState:
    """Mutable bookkeeping of one pass; every list is indexed by host position."""

    def __init__(self, hosts: Sequence[HostState], foreign_processes: str) -> None:
        self.hosts = hosts
        self.share = foreign_processes == "share"
        self.by_name: dict[str, int] = {}
        for pos, host in enumerate(hosts):
            if host.name in self.by_name:
                raise ValueError(f"host {host.name} appears twice in the scheduler state")
            self.by_name[host.name] = pos
        self.tags = [frozenset(host.tags) for host in hosts]
        self.live = [host.healthy and not host.drained for host in hosts]
        self.cap = [_NO_LIMIT if host.max_runs is None else host.max_runs for host in hosts]
        self.running = [host.running for host in hosts]
        # Bumped whenever a host's free list shrinks; cached candidates compare against it.
        self.gpu_version = [0] * len(hosts)
        self.free = self._free_entries()
        self.pools: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
        self.live_pools: dict[tuple[tuple[str, ...], tuple[str, ...]], list[int]] = {}
        self.outlooks: dict[tuple[tuple[str, ...], tuple[str, ...]], _Outlook] = {}
        # (hosts, tags) -> (gpus, min_free_mem) that failed: anything as big fails too.
        self.frontiers: dict[tuple[tuple[str, ...], tuple[str, ...]], list[tuple[int, int]]] = {}
        self.reservation: _Reservation | None = None

    def _free_entries(self) -> list[list[_Entry]]:
        """Each host's free GPUs, best first, ranked on one scale across hosts."""
        preference = []
        for pos, host in enumerate(self.hosts):
            allowed = None if host.allowed_gpus is None else frozenset(host.allowed_gpus)
            order = host.gpu_order or ()
            order_rank = {index: position for position, index in enumerate(order)}
            for gpu in host.gpus:
                if gpu.leased_by is not None or (allowed is not None and gpu.index not in allowed):
                    continue
                if (gpu.foreign or gpu.ours) and not self.share:
                    continue
                free = gpu.mem_free
                # Idle first, then most free memory, then gpu_order (unlisted GPUs tie after the
                # listed ones), then freshest telemetry, then the lower index.
                preference.append(
                    (
                        0 if gpu.idle else 1,
                        1 if free is None else -free,
                        order_rank.get(gpu.index, len(order)),
                        -gpu.telemetry_time,
                        pos,
                        gpu.index,
                        -1 if free is None else free,
                    )
                )
        preference.sort()
        entries: list[list[_Entry]] = [[] for _ in self.hosts]
        for rank, (*_, pos, index, free) in enumerate(preference):
            entries[pos].append((rank, index, free))
        return entries

    def pool(self, names: tuple[str, ...], tags: tuple[str, ...]) -> list[int]:
        """Host positions that the run's host list and tags allow, health aside."""
        key = (names, tags)
        found = self.pools.get(key)
        if found is None:
            if names:
                positions = sorted({self.by_name[n] for n in names if n in self.by_name})
            else:
                positions = list(range(len(self.hosts)))
            wanted = frozenset(tags)
            found = self.pools[key] = [pos for pos in positions if wanted <= self.tags[pos]]
        return found

    def live_pool(self, names: tuple[str, ...], tags: tuple[str, ...]) -> list[int]:
        """The pool's healthy, undrained hosts."""
        key = (names, tags)
        found = self.live_pools.get(key)
        if found is None:
            live = self.live
            found = self.live_pools[key] = [pos for pos in self.pool(names, tags) if live[pos]]
        return found

    def run(self, ordered: list[QueuedRun]) -> Plan:
        placements: list[Placement] = []
        waiting: list[tuple[QueuedRun, _Shape]] = []
        failed: set[_Shape] = set()
        heaps: dict[_Shape, list[_Candidate]] = {}
        running, gpu_version, cap, free = self.running, self.gpu_version, self.cap, self.free
        heappop, heapreplace = heapq.heappop, heapq.heapreplace
        names = [host.name for host in self.hosts]
        widest = self._widest()  # most free GPUs on one live host: a cheap bound for new shapes
        for run in ordered:
            n = run.gpus
            # min_free_mem is per GPU: without GPUs it does not matter.
            shape = (n, run.min_free_mem if n else 0, run.hosts, run.tags)
            if shape in failed:
                waiting.append((run, shape))
                continue
            heap = heaps.get(shape)
            if heap is None:
                hopeless = n > widest or self._dominated(shape)
                heap = heaps[shape] = [] if hopeless else self._candidates(run)
            # Lazy heap: a stale entry is never worse than the truth, because a pass only takes
            # GPUs and run slots away; refreshing stale tops until the top is current finds the
            # best host. GPU runs go stale when the host's free list shrinks, others when its
            # run count grows. This is the hot loop, so _candidate is written out inline.
            stamps = gpu_version if n else running
            while heap:
                pos = heap[0][1]
                if running[pos] >= cap[pos]:
                    heappop(heap)
                elif heap[0][2] == stamps[pos]:
                    break
                elif not n:
                    heapreplace(heap, (running[pos], pos, running[pos], []))
                else:
                    top = _top(free[pos], n, run.min_free_mem)
                    if top is None:
                        heappop(heap)
                    else:
                        heapreplace(heap, (top[::-1], pos, gpu_version[pos], top))
            if not heap:
                # What does not fit now cannot fit later in this pass either.
                failed.add(shape)
                self._record_failure(shape)
                waiting.append((run, shape))
                if self.reservation is None and run.priority == "urgent":
                    self.reservation = self._reserve(run)
                    widest = self._widest()
                continue
            pos, gpus = heap[0][1], heap[0][3]
            running[pos] += 1
            if not gpus:
                placements.append(Placement(run.run_id, names[pos], ()))
                continue
            taken = free[pos]
            if len(taken) == widest:
                widest = -1  # recomputed below, once this host's GPUs are gone
            for gpu_entry in gpus:
                taken.remove(gpu_entry)
            if widest < 0:
                widest = self._widest()
            gpu_version[pos] += 1
            placements.append(Placement(run.run_id, names[pos], tuple(sorted(e[1] for e in gpus))))
        reserved: dict[str, tuple[str, tuple[int, ...]]] = {}
        if self.reservation is not None:
            held = tuple(sorted(entry[1] for entry in self.reservation.held))
            reserved[self.reservation.run_id] = (self.hosts[self.reservation.pos].name, held)
        return Plan(tuple(placements), self._reasons(waiting), reserved)

    def _dominated(self, shape: _Shape) -> bool:
        """Whether a failed shape of the same pool needed no more GPUs and no more memory."""
        n, min_free, names, tags = shape
        return any(
            n >= f_n and min_free >= f_min for f_n, f_min in self.frontiers.get((names, tags), ())
        )

    def _record_failure(self, shape: _Shape) -> None:
        if self._dominated(shape):
            return
        n, min_free, names, tags = shape
        # Keep only the smallest failures: at most one per GPU count.
        kept = [
            (f_n, f_min)
            for f_n, f_min in self.frontiers.get((names, tags), ())
            if not (f_n >= n and f_min >= min_free)
        ]
        self.frontiers[(names, tags)] = [*kept, (n, min_free)]

    def _widest(self) -> int:
        live, free = self.live, self.free
        return max((len(free[pos]) for pos in range(len(free)) if live[pos]), default=0)

    def _candidate(self, pos: int, n: int, min_free: int) -> _Candidate | None:
        if self.running[pos] >= self.cap[pos]:
            return None
        if n == 0:
            # Runs without GPUs spread over the least loaded hosts.
            return (self.running[pos], pos, self.running[pos], [])
        top = _top(self.free[pos], n, min_free)
        if top is None:
            return None
        # Worst GPU first: a host is as good as the weakest GPU it would give the run.
        return (top[::-1], pos, self.gpu_version[pos], top)

    def _candidates(self, run: QueuedRun) -> list[_Candidate]:
        heap = []
        n, min_free = run.gpus, run.min_free_mem
        free, running, cap = self.free, self.running, self.cap
        for pos in self.live_pool(run.hosts, run.tags):
            # Most shapes first show up once the GPUs are gone: reject those hosts cheaply.
            if len(free[pos]) >= n and running[pos] < cap[pos]:
                entry = self._candidate(pos, n, min_free)
                if entry is not None:
                    heap.append(entry)
        heapq.heapify(heap)
        return heap

    def _lasting(self, pos: int) -> list[int]:
        """Memory totals (bytes, -1 unknown) of the GPUs that could serve once leases end."""
        host = self.hosts[pos]
        return [
            -1 if gpu.mem_total is None else gpu.mem_total
            for gpu in host.gpus
            if (host.allowed_gpus is None or gpu.index in host.allowed_gpus)
            and (self.share or not gpu.foreign)  # foreign processes may never leave
        ]

    def _reserve(self, run: QueuedRun) -> _Reservation | None:
        """Hold, on the host closest to fitting run, its free GPUs and one run slot."""
        best: tuple[int, int] | None = None
        best_top: list[_Entry] = []
        for pos in self.live_pool(run.hosts, run.tags):
            lasting = self._lasting(pos)
            if self.cap[pos] <= 0 or len(_fitting_totals(lasting, run.min_free_mem)) < run.gpus:
                continue
            usable = _fitting(self.free[pos], run.min_free_mem)
            # Host order breaks ties so that the held host stays put from pass to pass.
            key = (-len(usable), pos)
            if best is None or key < best:
                best, best_top = key, usable[: run.gpus]
        if best is None:
            return None
        pos = best[1]
        for entry in best_top:
            self.free[pos].remove(entry)
        self.running[pos] += 1
        self.gpu_version[pos] += 1
        return _Reservation(run.run_id, pos, tuple(best_top))

    def _reasons(self, waiting: list[tuple[QueuedRun, _Shape]]) -> dict[str, str]:
        """Why each waiting run waits; runs of one shape share one reason."""
        # The reason depends on the shape alone, so any run of a shape can stand for it.
        examples = {shape: run for run, shape in waiting}
        by_shape = {shape: self._explain(run) for shape, run in examples.items()}
        reasons = {run.run_id: by_shape[shape] for run, shape in waiting}
        reservation = self.reservation
        if reservation is not None:
            # The dict keeps its queue order when a key is set again.
            run = next(run for run, _ in waiting if run.run_id == reservation.run_id)
            reasons[run.run_id] = self._explain_reserver(run, reservation)
        return reasons

    def _usable(self, pos: int, min_free: int, lend: _Reservation | None) -> tuple[int, int]:
        """(running runs, usable free GPUs) of a host, counting lend's hold as free."""
        entries: Sequence[_Entry] = self.free[pos]
        running = self.running[pos]
        if lend is not None and lend.pos == pos:
            entries = [*entries, *lend.held]
            running -= 1
        return running, len(_fitting(entries, min_free))

    def _outlook(self, run: QueuedRun, lend: _Reservation | None) -> _Outlook:
        """The pool's outlook, built once per pool; lend's hold counts as free when given."""
        key = (run.hosts, run.tags)
        found = None if lend is not None else self.outlooks.get(key)
        if found is not None:
            return found
        lasting: dict[int, list[int]] = {}
        open_free: dict[int, list[int]] = {}
        full_free: dict[int, list[int]] = {}
        for pos in self.live_pool(run.hosts, run.tags):
            lasting[pos] = self._lasting(pos)
            entries: Sequence[_Entry] = self.free[pos]
            running = self.running[pos]
            if lend is not None and lend.pos == pos:
                entries = [*entries, *lend.held]
                running -= 1
            (open_free if running < self.cap[pos] else full_free)[pos] = [e[2] for e in entries]
        found = _Outlook(
            _MostAtLeast(lasting),
            _MostAtLeast(open_free),
            _MostAtLeast(full_free),
            tuple(full_free),
        )
        if lend is None:
            self.outlooks[key] = found
        return found

    def _explain_reserver(self, run: QueuedRun, reservation: _Reservation) -> str:
        name = self.hosts[reservation.pos].name
        if reservation.held:
            held = ", ".join(str(i) for i in sorted(e[1] for e in reservation.held))
            return f"{self._explain(run, reservation)}; holding {name} GPUs {held} for it"
        return f"{self._explain(run, reservation)}; holding a run slot on {name} for it"

    def _explain(self, run: QueuedRun, lend: _Reservation | None = None) -> str:
        """Why run waits, against the state at the end of the pass."""
        names = self.hosts
        if run.hosts and not any(n in self.by_name for n in run.hosts):
            return f"unknown host{'s' if len(run.hosts) > 1 else ''} {', '.join(run.hosts)}"
        matched = self.pool(run.hosts, run.tags)
        live = self.live_pool(run.hosts, run.tags)
        if not live:
            among = f"among {', '.join(run.hosts)} " if run.hosts else ""
            tags = f"[{', '.join(run.tags)}]"
            if not matched:
                return f"no host {among}matches tags {tags}" if run.tags else "no hosts"
            if len(matched) == 1:
                host = names[matched[0]]
                return f"host {host.name} is {host.condition if not host.healthy else 'drained'}"
            what = "undrained host" if any(names[p].healthy for p in matched) else "host"
            if run.tags:
                return f"no healthy {what} {among}matches tags {tags}"
            return f"no healthy {what} {among}".rstrip()
        n = run.gpus
        outlook = self._outlook(run, lend)
        floor = run.min_free_mem if run.min_free_mem > 0 else -1  # -1: unknown memory counts
        biggest_count, biggest = outlook.lasting.best(floor)
        if biggest_count < n:
            large = " that large" if run.min_free_mem else ""
            such = f"{biggest_count} GPU{'' if biggest_count == 1 else 's'}{large}"
            where = " on one host" if n > 1 else ""
            return f"{_need(run)}{where}; largest matching host {names[biggest].name} has {such}"
        held = self.reservation
        if lend is None and held is not None and self.live[held.pos]:
            running, usable = self._usable(held.pos, run.min_free_mem, held)
            if (
                running < self.cap[held.pos]
                and usable >= n
                and held.pos in self.pool(run.hosts, run.tags)
            ):
                if held.held:
                    return f"GPUs held for urgent run {held.run_id} on {names[held.pos].name}"
                return f"{names[held.pos].name} held for urgent run {held.run_id}"
        full = outlook.full
        if len(full) == len(live):
            if len(full) == 1:
                return f"{names[full[0]].name} at max_runs {self.cap[full[0]]}"
            listed = ", ".join(f"{names[pos].name} {self.cap[pos]}" for pos in full[:3])
            more = ", ..." if len(full) > 3 else ""
            return f"every matching host is at max_runs ({listed}{more})"
        if n == 0:
            return "no matching host can take it now"
        best_count, best = outlook.open_free.best(floor)
        reason = f"{_need(run)}; best host {names[best].name} has {best_count}"
        full_count, full_best = outlook.full_free.best(floor)
        if full and full_count >= n:
            cap = self.cap[full_best]
            reason += f"; {names[full_best].name} has {full_count} but is at max_runs {cap}"
        return reason


@dataclass(frozen=True)
class HostCapacity:
    """What a host could ever give one run: its tags and how many GPUs cvtui may use there."""

    name: str
    tags: tuple[str, ...] = ()
    gpu_count: int | None = None  # None: not known yet (never connected)


def never_fits(
    gpus: int, hosts: tuple[str, ...], tags: tuple[str, ...], capacities: Sequence[HostCapacity]
) -> str | None:
    """Why a run could never be placed on any of these hosts (None when it may be, one day).

    A host whose GPU count is unknown might fit, so only what is known refuses.
    """
    allowed = [c for c in capacities if not hosts or c.name in hosts]
    matching = [c for c in allowed if set(tags) <= set(c.tags)]
    if not matching:
        among = f" among {', '.join(hosts)}" if hosts else ""
        return f"no host{among} has the tags [{', '.join(tags)}]"
    if gpus <= 0 or any(c.gpu_count is None for c in matching):
        return None
    largest = max(matching, key=lambda c: c.gpu_count or 0)
    if (largest.gpu_count or 0) >= gpus:
        return None
    return (
        f"needs {gpus} GPUs on one host; the largest matching host, {largest.name}, "
        f"has {largest.gpu_count}"
    )


def pick_gpus(
    host: HostState, count: int, *, foreign_processes: str = "avoid"
) -> tuple[int, ...] | None:
    """count GPUs of host for a command run now (`cvtui exec --gpus`), by the placement rules:
    free GPUs (no lease, no one else's process), idle ones first, then the most free memory,
    then the inventory's gpu_order. None when fewer are free."""
    probe = QueuedRun(run_id="exec", priority="urgent", submitted=0.0, gpus=count)
    allowed = set(host.allowed_gpus) if host.allowed_gpus is not None else None
    order = {index: rank for rank, index in enumerate(host.gpu_order or ())}
    free = [
        g
        for g in host.gpus
        if (allowed is None or g.index in allowed) and gpu_is_free(g, probe, foreign_processes)
    ]
    free.sort(key=lambda g: (not g.idle, -(g.mem_free or 0), order.get(g.index, 1 << 20), g.index))
    if len(free) < count:
        return None
    return tuple(g.index for g in free[:count])
