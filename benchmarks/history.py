"""A simulated year of a 100-host x 8-GPU lab at 1 Hz through the real compaction code.

Time is warped, not waited for: each simulated hour is generated with numpy and encoded as
the raw blocks the engine writes. The last hours are stored as the engine stores them (one
telemetry_raw row per host and 5 s of samples) and Catalog.compact_history reads them back,
tiers, deletes them, merges and expires: that is the cost held to the target. The hours
before go to Catalog.tier_raw_blocks, the same tiering code fed from memory instead of a
round trip through telemetry_raw (on this 2-core machine that round trip would make a year
take over two hours), then compact_history merges and expires as the engine would at the
end of that hour. Runs (a job per 4 GPUs, about a day each), their users' energy and
idle-held episodes are written through the catalog's own methods, so `cvtui stats --since
365d` has a year of everything to read.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import Options
from benchmarks.cli_startup import bytecode_env
from benchmarks.table import Row, Target
from cvtui.catalog import Catalog
from cvtui.catalog.history import RAW_GROUP_S
from cvtui.catalog.history_codec import encode_raw_many
from cvtui.history_policy import DEFAULT_HISTORY
from remote_agent.protocol import GpuSample, HostSample, Telemetry

HOSTS, GPUS, SLOT_GPUS = 100, 8, 4
HOUR_S, DAY_S = 3600.0, 86400.0
YEAR_HOURS = 8760
QUICK_HOURS = 30
ENGINE_SHAPED_HOURS = 3  # the last hours, written in rows of RAW_GROUP_S as the engine does
USERS = [f"user{i:02d}" for i in range(24)]
GIB = 2**30
LIMIT_CATALOG_MB = 1000.0
LIMIT_STATS_S = 1.0
LIMIT_PLOT_MS = 100.0
LIMIT_COMPACT_S = 1.0


@dataclass
class Job:
    start: float
    end: float
    util: float  # percent the job keeps its GPUs at; 0 for one that holds them idle
    mem: float  # bytes on each GPU
    user: str


@dataclass
class Lab:
    """Every slot's jobs over the span, and what the benchmark learns while writing."""

    start: float
    hours: int
    rng: np.random.Generator
    slots: list[list[Job]] = field(default_factory=list)
    starts: list[Any] = field(default_factory=list)  # per slot, its jobs' start times
    noise: Any = None
    energy_by_run: dict[int, float] = field(default_factory=dict)

    def plan(self) -> None:
        end = self.start + self.hours * HOUR_S
        for _ in range(HOSTS * GPUS // SLOT_GPUS):
            jobs, t = [], self.start - self.rng.exponential(20 * HOUR_S)
            while t < end:
                t += self.rng.exponential(4 * HOUR_S)  # idle between jobs
                length = self.rng.exponential(20 * HOUR_S) + 600
                idle_held = self.rng.random() < 0.05
                util = 0.0 if idle_held else float(self.rng.uniform(55, 99))
                mem = float(self.rng.uniform(8, 75)) * GIB
                jobs.append(Job(t, t + length, util, mem, str(self.rng.choice(USERS))))
                t += length
            self.slots.append(jobs)
            self.starts.append(np.array([j.start for j in jobs]))
        self.noise = self.rng.normal(size=1 << 24).astype(np.float32)

    def overlapping(self, slot: int, lo: float, hi: float) -> list[Job]:
        jobs = self.slots[slot]
        first = max(0, int(np.searchsorted(self.starts[slot], lo, side="right")) - 1)
        last = int(np.searchsorted(self.starts[slot], hi, side="left"))
        return [j for j in jobs[first:last] if j.end > lo]

    def noise_block(self, shape: tuple[int, ...]) -> Any:
        size = int(np.prod(shape))
        at = int(self.rng.integers(0, len(self.noise) - size))
        return self.noise[at : at + size].reshape(shape)

    def hour(self, t0: float, hosts: Sequence[int]) -> tuple[Any, Any]:
        """Sample times [3600] and values [field, host, series, 3600] (series 0: the host)
        for these hosts, in their order."""
        times = t0 + np.arange(3600, dtype=np.float64)
        count = len(hosts)
        util_base = np.zeros((count, GPUS, 3600), np.float32)
        mem = np.full((count, GPUS, 3600), 0.5 * 2**20, np.float32)
        held = np.zeros((count, GPUS, 3600), bool)
        for slot, host, first in slots_of(hosts):
            jobs = self.slots[slot]
            index = np.searchsorted(self.starts[slot], times, side="right") - 1
            for k in np.unique(index[index >= 0]):
                job = jobs[k]
                mask = (index == k) & (times < job.end)
                if not mask.any():
                    continue
                gpus = slice(first, first + SLOT_GPUS)
                util_base[host, gpus, mask] = job.util
                mem[host, gpus, mask] = job.mem
                held[host, gpus, mask] = True
        noise = self.noise_block((3, count, GPUS, 3600))
        busy = util_base > 0
        util = np.where(busy, np.clip(np.round(util_base + 4 * noise[0]), 0, 100), 0.0)
        temp = 31 + 0.42 * util_base + 0.3 * noise[1]
        power = 58 + 3.1 * util + np.where(held, 6 + 5 * noise[2], 1.5 * noise[2])
        values = np.empty((4, count, GPUS + 1, 3600), np.float32)
        values[0, :, 1:], values[1, :, 1:] = util, mem
        values[2, :, 1:], values[3, :, 1:] = temp, power
        values[2:, :, 0] = np.nan  # the host's own series has no temperature or power
        cpu = 4 + 30 * busy.mean(axis=1) + 2 * np.abs(noise[0, :, 0])
        values[0, :, 0] = cpu
        values[1, :, 0] = 180 * GIB + 40 * GIB * busy.mean(axis=1)
        return times, values


def slots_of(hosts: Sequence[int]) -> list[tuple[int, int, int]]:
    """(slot, position of its host in ``hosts``, its first GPU) for the hosts' slots."""
    per_host = GPUS // SLOT_GPUS
    return [
        (host * per_host + k, position, k * SLOT_GPUS)
        for position, host in enumerate(hosts)
        for k in range(per_host)
    ]


def raw_rows(times: Any, values: Any, per_row: int, names: list[str]) -> list[tuple[Any, ...]]:
    """Raw blocks of ``per_row`` samples for every host: what the engine writes at 1."""
    rows = []
    series = [-1, *range(GPUS)]
    count = 3600 // per_row
    row_times = times.reshape(count, per_row)
    for host, name in enumerate(names):
        grid = values[:, host].reshape(4, GPUS + 1, count, per_row).transpose(0, 2, 1, 3)
        blobs = encode_raw_many(series, row_times, grid.astype(np.float64))
        rows.extend(
            (name, float(t[0]), float(t[-1]), per_row, blob)
            for t, blob in zip(row_times, blobs, strict=True)
        )
    return rows


def write_runs(catalog: Catalog, lab: Lab, names: list[str], now: float) -> None:
    """One succeeded run per job, its energy, and an idle episode for each idle-held job."""
    runs, energy, idle = [], {}, []
    for slot, jobs in enumerate(lab.slots):
        host, first = divmod(slot * SLOT_GPUS, GPUS)
        for k, job in enumerate(jobs):
            if job.end <= lab.start or job.start >= now:
                continue
            run_id = f"bench-{slot:03d}-{k:05d}"
            started, ended = max(job.start, lab.start), min(job.end, now)
            runs.append(
                (
                    run_id,
                    f"job{k}",
                    "bench",
                    job.user,
                    "succeeded",
                    "normal",
                    2,
                    started,
                    names[host],
                    json.dumps(list(range(first, first + SLOT_GPUS))),
                    started,
                    ended,
                    started,
                )
            )
            watts = 58 + 3.1 * job.util + 6
            energy[run_id] = (watts * SLOT_GPUS * (ended - started), True)
            if job.util == 0 and ended - started > 1800:
                idle.append((names[host], first, job.user, run_id, started, ended))
    with catalog.db.conn:
        catalog.db.conn.executemany(
            "INSERT INTO runs (id, name, project, user, state, priority, priority_rank, "
            "submitted, host, gpus, started, ended, dispatched) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
    catalog.record_usage(energy_by_run=energy, now=now)
    for host, gpu, user, run_id, since, until in idle:
        episode = catalog.open_idle_episode(
            host, gpu, user=user, run_id=run_id, simulated=True, since=since, until=since
        )
        catalog.record_usage(idle=[(episode, until, False)], now=now)


def energy_for_hour(
    lab: Lab, values: Any, t0: float, hosts: Sequence[int]
) -> dict[tuple[float, str, bool], float]:
    """Joules per user in this hour: each slot's GPUs' power while a job runs there."""
    out: dict[tuple[float, str, bool], float] = {}
    for slot, host, first in slots_of(hosts):
        for job in lab.overlapping(slot, t0, t0 + HOUR_S):
            lo, hi = max(job.start, t0), min(job.end, t0 + HOUR_S)
            if hi <= lo:
                continue
            a, b = int(lo - t0), int(hi - t0)
            joules = float(values[3, host, 1 + first : 1 + first + SLOT_GPUS, a:b].sum())
            key = (t0, job.user, True)
            out[key] = out.get(key, 0.0) + joules
    return out


class _Host:
    """What Catalog.sync_hosts reads of an inventory host."""

    def __init__(self, name: str) -> None:
        self.name, self.address, self.port, self.user, self.tags = name, name, 22, None, ()


def host_name(index: int) -> str:
    return f"gpu-{index:03d}"


def simulate(
    path: Path, hours: int, start: float, hosts: Sequence[int], part: int
) -> dict[str, Any]:
    """One worker's share of the lab: its hosts' year, in a catalog of its own at path."""
    names = [host_name(i) for i in hosts]
    lab = Lab(start, hours, np.random.default_rng(7))
    lab.plan()  # the same jobs in every worker
    lab.rng = np.random.default_rng(100 + part)  # its own noise
    bulk_s: list[float] = []  # hours tiered from memory, then merges and expiry
    engine_s: list[float] = []  # hours through telemetry_raw, as the engine stores them
    merges_s: list[float] = []
    append_s: list[float] = []  # writing an hour of raw rows, as the engine does as they come
    began = time.monotonic()
    with Catalog(path) as catalog:
        catalog.sync_hosts([_Host(n) for n in names])
        for h in range(hours):
            t0 = start + h * HOUR_S
            times, values = lab.hour(t0, hosts)
            engine_shaped = h >= hours - ENGINE_SHAPED_HOURS
            rows = raw_rows(times, values, int(RAW_GROUP_S) if engine_shaped else 60, names)
            if engine_shaped:  # the engine's own write of its samples, timed apart
                tick = time.process_time()
                catalog.append_raw_history(rows)
                append_s.append(time.process_time() - tick)
            tick = time.process_time()  # CPU seconds: other users of the machine do not count
            if not engine_shaped:
                by_host: dict[str, list[bytes]] = {}
                for row in rows:
                    by_host.setdefault(row[0], []).append(row[4])
                catalog.tier_raw_blocks(by_host, DEFAULT_HISTORY)
            report = catalog.compact_history(t0 + HOUR_S, DEFAULT_HISTORY)
            spent = time.process_time() - tick
            energy = energy_for_hour(lab, values, t0, hosts)
            catalog.record_usage(energy_by_user=energy, now=t0 + HOUR_S)
            # The compaction after an engine-shaped hour reads that hour's rows back. The
            # merges run once a day (when the day's pieces close): kept apart and spread
            # over the day's hours below.
            tiering = spent - report.merge_cpu_s
            if h >= hours - ENGINE_SHAPED_HOURS + 1:
                engine_s.append(tiering)
            else:
                bulk_s.append(tiering)
            merges_s.append(report.merge_cpu_s)
            if h % 250 == 0 or h == hours - 1:
                sizes = ", ".join(f"{t} {b / 1e6:.0f} MB" for t, _, b in catalog.history_sizes())
                print(
                    f"  history[{part}]: hour {h + 1}/{hours}: {time.monotonic() - began:.0f} s, "
                    f"compaction {spent:.2f} s CPU, file {path.stat().st_size / 1e6:.0f} MB "
                    f"({sizes})",
                    file=sys.stderr,
                    flush=True,
                )
        catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"bulk": bulk_s, "engine": engine_s, "merges": merges_s, "append": append_s}


def merge_parts(catalog: Catalog, parts: Sequence[Path]) -> None:
    """Copy the workers' history and energy into one catalog (hosts never overlap)."""
    conn = catalog.db.conn
    for index, part in enumerate(parts):
        conn.execute(f"ATTACH DATABASE ? AS part{index}", (str(part),))
        with conn:
            conn.execute(f"INSERT INTO telemetry_raw SELECT * FROM part{index}.telemetry_raw")
            conn.execute(f"INSERT INTO telemetry_chunks SELECT * FROM part{index}.telemetry_chunks")
            conn.execute(
                "INSERT INTO energy_usage (hour, user, simulated, joules) "
                f"SELECT hour, user, simulated, joules FROM part{index}.energy_usage WHERE true "
                "ON CONFLICT (hour, user, simulated) DO UPDATE SET "
                "joules = joules + excluded.joules"
            )
        conn.execute(f"DETACH DATABASE part{index}")


def _sample(at: float) -> Telemetry:
    gpus = tuple(
        GpuSample(i, f"GPU-{i}", "A100-SXM4-80GB", 0.0, 0, 80 * GIB, 30.0, 58.0, 400.0, None, ())
        for i in range(GPUS)
    )
    host = HostSample(5.0, 1.0, 1.0, 1.0, 180 * GIB, 512 * GIB, 1000 * GIB, 2000 * GIB)
    return Telemetry(at, "simulated", host, gpus)


def stats_seconds(home: Path) -> float:
    script = Path(sys.executable).with_name("cvtui")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "cvtui.cli"]
    command += ["--home", str(home), "stats", "--since", "365d"]
    # An installed cvtui runs from cached bytecode; without the cache (PYTHONDONTWRITEBYTECODE
    # in this environment) every start would compile cvtui again and time that instead.
    env = bytecode_env(home / "pycache")
    subprocess.run(command, check=True, capture_output=True, env=env)  # warm both caches
    times = []
    for _ in range(3):
        tick = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, env=env)
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def plot_ms(path: Path, now: float) -> tuple[float, int, float]:
    """A 30-day history of one host's GPUs as the host screen reads it (120 points, the tier
    that gives them: hours), median over 5 hosts; and one GPU at full 1-min resolution."""
    from cvtui.tui.screens.host_detail import POINTS

    screen, full, points = [], [], 0
    with Catalog(path) as catalog:
        for host in range(0, HOSTS, 20):
            name = host_name(host)
            tick = time.perf_counter()
            found = catalog.host_telemetry_history(name, now - 30 * DAY_S, now, points=POINTS)
            screen.append(time.perf_counter() - tick)
            points = len(found.get(3, []))
            tick = time.perf_counter()
            catalog.telemetry_history(name, 3, now - 30 * DAY_S, now)
            full.append(time.perf_counter() - tick)
    return statistics.median(screen) * 1000, points, statistics.median(full) * 1000


WORKERS = 2  # hosts are compacted independently: half the lab each, one process per core


def run(options: Options) -> list[Row]:
    hours = options.history_hours or (QUICK_HOURS if options.quick else YEAR_HOURS)
    hours = max(hours, ENGINE_SHAPED_HOURS + 2)
    # The simulated span ends at the current hour, so `stats --since 365d` reads all of it.
    end = (time.time() // HOUR_S) * HOUR_S
    start = end - hours * HOUR_S
    keep = os.environ.get("CVTUI_BENCH_HISTORY_DIR")  # build the catalog there and keep it
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(keep or tmp)
        home.mkdir(parents=True, exist_ok=True)
        path = home / "catalog.db"
        shares = [range(HOSTS)[i::WORKERS] for i in range(WORKERS)]
        parts = [home / f"part{i}.db" for i in range(WORKERS)]
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
            futures = [
                pool.submit(simulate, part, hours, start, list(share), i)
                for i, (part, share) in enumerate(zip(parts, shares, strict=True))
            ]
            results = [f.result() for f in futures]
        parts_mb = sum(p.stat().st_size for p in parts) / 1e6
        with Catalog(path) as catalog:
            catalog.sync_hosts([_Host(host_name(i)) for i in range(HOSTS)])
            merge_parts(catalog, parts)
            lab = Lab(start, hours, np.random.default_rng(7))
            lab.plan()
            write_runs(catalog, lab, [host_name(i) for i in range(HOSTS)], end)
            names = [host_name(i) for i in range(HOSTS)]
            catalog.record_telemetry([(n, _sample(end)) for n in names], received=end)
            sizes = catalog.history_sizes()
            catalog.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        merged_mb = path.stat().st_size / 1e6
        wall = time.monotonic() - began
        stats_s = stats_seconds(home)
        # Read half an hour after the simulated end, as a screen opened at any minute reads:
        # past the hour tier's last bucket the finer tiers are read too, their day-long chunks
        # decoded whole (on a kept year: 10 ms exactly on the hour, 31-34 ms at other minutes).
        plot, points, full_ms = plot_ms(path, end + HOUR_S / 2)
    # Per hour of the whole lab: the workers' CPU for the same hour, added.
    engine = [sum(x) for x in zip(*(r["engine"] for r in results), strict=False)] or [0.0]
    bulk = [sum(x) for x in zip(*(r["bulk"] for r in results), strict=False)] or [0.0]
    merges = [sum(x) for x in zip(*(r["merges"] for r in results), strict=False)] or [0.0]
    append = [sum(x) for x in zip(*(r["append"] for r in results), strict=False)] or [0.0]
    merge_per_hour = sum(merges) / max(1, len(merges))  # daily merges spread over the hours
    per_hour = max(engine) + merge_per_hour
    span = f"{hours} h of {HOSTS} hosts x {GPUS} GPUs at 1 Hz"
    tiers = ", ".join(f"{tier} {size / 1e6:.0f} MB ({count} rows)" for tier, count, size in sizes)
    return [
        Row(
            "history: catalog size",
            max(parts_mb, merged_mb),
            "MB",
            target=Target(LIMIT_CATALOG_MB),
            note=(
                f"{span}; the {WORKERS} worker files as a year of compaction left them "
                f"(merged copy {merged_mb:.0f} MB); per tier: {tiers}"
            ),
        ),
        Row("history: stats --since 365d", stats_s, "s", target=Target(LIMIT_STATS_S)),
        Row(
            "history: 30-day GPU plot query",
            plot,
            "ms",
            target=Target(LIMIT_PLOT_MS),
            note=(
                f"a host's 8 GPUs as its screen reads them: {points} points each (the tier "
                f"giving >= 120); one GPU at 1-min resolution (43,200 points): {full_ms:.0f} ms"
            ),
        ),
        Row(
            "history: compaction per hour",
            per_hour,
            "s CPU",
            target=Target(LIMIT_COMPACT_S),
            note=(
                f"tiering an hour read back from telemetry_raw as the engine stores it "
                f"(worst of {len(engine)}: {max(engine):.2f} s) + the daily merges spread over "
                f"24 h ({merge_per_hour:.2f} s/h; a merging pass takes {max(merges):.2f} s once "
                f"a day); tiered from memory: mean {statistics.fmean(bulk):.2f} s/h; not "
                f"counted: the engine's own writes of the hour's raw rows, {max(append):.2f} s; "
                f"whole simulation {wall:.0f} s"
            ),
        ),
    ]
