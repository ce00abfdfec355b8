"""`cvtui stats`: runs by state, durations, GPU-hours by user, host and GPU model, use per GPU.

compute_stats is a pure function over what the catalog sums (Catalog.run_usage, Catalog.gpu_models);
the CLI and the TUI only fetch and print.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cvtui.catalog.runs import RUN_STATES, RunUsage
from cvtui.units import duration, size

_SINCE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*", re.IGNORECASE)
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
UNKNOWN = "?"  # a run without a recorded user, or a GPU whose model the catalog lacks


def parse_since(text: str) -> float:
    """Seconds from "90s", "30m", "12h", "7d" or "2w"; ValueError says what is accepted."""
    match = _SINCE_RE.fullmatch(text)
    if not match or float(match[1]) <= 0:
        raise ValueError(
            f"expected a span such as 12h, 7d or 2w (units s, m, h, d, w), got {text!r}"
        )
    return float(match[1]) * _UNIT_S[match[2].lower()]


@dataclass(frozen=True)
class Durations:
    """How long runs ran (start to end), over the runs that have both."""

    count: int
    avg_s: float | None
    median_s: float | None

    @classmethod
    def of(cls, spans: list[float]) -> Durations:
        if not spans:
            return cls(0, None, None)
        return cls(len(spans), statistics.fmean(spans), statistics.median(spans))


@dataclass(frozen=True)
class RunStats:
    """The figures of `cvtui stats` for runs active in [since, until]."""

    since: float | None  # unix seconds; None: every run in the catalog
    until: float  # unix seconds: now
    runs: int
    by_state: dict[str, int]  # every state, zeros included, in lifecycle order
    durations: Durations  # every run that started and ended
    durations_by_state: dict[str, Durations]  # final states with at least one such run
    gpu_hours: float  # GPU count x hours run, clipped to the window
    gpu_hours_by_user: dict[str, float]  # largest first
    gpu_hours_by_host: dict[str, float]
    gpu_hours_by_model: dict[str, float]
    gpu_uses: dict[str, int]  # "host:index" -> runs that ran on that GPU, by host then index


def _largest_first(totals: Mapping[str, float]) -> dict[str, float]:
    return dict(sorted(totals.items(), key=lambda item: (-item[1], item[0])))


def compute_stats(
    usage: RunUsage,
    gpu_models: Mapping[tuple[str, int], str],
    *,
    since: float | None,
    now: float | None = None,
) -> RunStats:
    """Figures over Catalog.run_usage (runs counted by state, their spans, GPU time summed).

    GPU-hours count each GPU of a run for the part of its run time inside the window, and a
    run still running up to now. A GPU's model is its name in the catalog's gpus table.
    """
    now = time.time() if now is None else now
    by_state = dict.fromkeys(RUN_STATES, 0)
    for state, count in usage.counts.items():
        by_state[state] = by_state.get(state, 0) + count
    by_user: dict[str, float] = {}
    by_host: dict[str, float] = {}
    by_model: dict[str, float] = {}
    uses: dict[tuple[str, int], int] = {}
    for group in usage.gpus:
        host, gpus = group.host, group.gpus
        for index in gpus:
            uses[(host, index)] = uses.get((host, index), 0) + group.runs
        hours = group.seconds / 3600.0
        if hours <= 0:
            continue
        user = group.user or UNKNOWN
        by_user[user] = by_user.get(user, 0.0) + hours * len(gpus)
        by_host[host] = by_host.get(host, 0.0) + hours * len(gpus)
        for index in gpus:
            model = gpu_models.get((host, index), UNKNOWN)
            by_model[model] = by_model.get(model, 0.0) + hours
    spans = usage.spans
    all_spans = [span for state_spans in spans.values() for span in state_spans]
    return RunStats(
        since=since,
        until=now,
        runs=sum(usage.counts.values()),
        by_state=by_state,
        durations=Durations.of(all_spans),
        durations_by_state={s: Durations.of(spans[s]) for s in RUN_STATES if s in spans},
        gpu_hours=sum(by_host.values()),
        gpu_hours_by_user=_largest_first(by_user),
        gpu_hours_by_host=_largest_first(by_host),
        gpu_hours_by_model=_largest_first(by_model),
        gpu_uses={f"{host}:{index}": uses[(host, index)] for host, index in sorted(uses)},
    )


def stats_json(stats: RunStats) -> dict[str, Any]:
    """The `cvtui stats --json` object; durations in seconds, GPU-hours in hours."""

    def durations(d: Durations) -> dict[str, Any]:
        return {"count": d.count, "avg_s": d.avg_s, "median_s": d.median_s}

    return {
        "since": stats.since,
        "until": stats.until,
        "runs": stats.runs,
        "by_state": stats.by_state,
        "durations": {
            "all": durations(stats.durations),
            **{state: durations(d) for state, d in stats.durations_by_state.items()},
        },
        "gpu_hours": {
            "total": stats.gpu_hours,
            "by_user": stats.gpu_hours_by_user,
            "by_host": stats.gpu_hours_by_host,
            "by_model": stats.gpu_hours_by_model,
        },
        "gpu_uses": stats.gpu_uses,
    }


def _hours_lines(title: str, totals: Mapping[str, float]) -> list[str]:
    if not totals:
        return []
    width = max(len(name) for name in totals)
    return [f"  {title}", *(f"    {name:{width}}  {hours:8.2f}" for name, hours in totals.items())]


def format_stats(stats: RunStats) -> str:
    """The plain-text `cvtui stats` report."""
    if stats.since is None:
        head = f"{stats.runs} runs in the catalog"
    else:
        start = time.strftime("%Y-%m-%d %H:%M", time.localtime(stats.since))
        head = f"{stats.runs} runs active since {start}"
    lines = [head, f"  {'STATE':11} {'RUNS':>5}  {'AVG':>8}  {'MEDIAN':>8}"]
    for state, count in stats.by_state.items():
        if not count:
            continue
        d = stats.durations_by_state.get(state)
        avg, median = (d.avg_s, d.median_s) if d else (None, None)
        lines.append(f"  {state:11} {count:5}  {duration(avg):>8}  {duration(median):>8}")
    d = stats.durations
    lines.append(f"  {'all':11} {stats.runs:5}  {duration(d.avg_s):>8}  {duration(d.median_s):>8}")
    lines.append(f"GPU-hours: {stats.gpu_hours:.2f}")
    lines += _hours_lines("by user", stats.gpu_hours_by_user)
    lines += _hours_lines("by host", stats.gpu_hours_by_host)
    lines += _hours_lines("by GPU model", stats.gpu_hours_by_model)
    if stats.gpu_uses:
        lines.append("Runs per GPU:")
        width = max(len(gpu) for gpu in stats.gpu_uses)
        lines += [f"  {gpu:{width}}  {count:5}" for gpu, count in stats.gpu_uses.items()]
    return "\n".join(lines)


@dataclass(frozen=True)
class UsageStats:
    """Energy, idle-held GPU time and GPU telemetry over the same window as RunStats.

    Energy is NVML power integrated per holder (the engine's UsageTracker); simulated GPUs'
    figures are kept apart so they never add to a real lab's kWh.
    """

    energy_kwh_by_user: dict[str, float]  # real GPUs, largest first
    simulated_kwh_by_user: dict[str, float]  # simulated GPUs
    idle_gpu_hours_by_user: dict[str, float]
    hosts: dict[str, dict[str, Any]]  # host -> util_mean %, energy_kwh, gpu_hours, simulated
    telemetry_step_s: float | None  # the history tier the host figures were read from

    @property
    def energy_kwh(self) -> float:
        return sum(self.energy_kwh_by_user.values())

    @property
    def simulated_kwh(self) -> float:
        return sum(self.simulated_kwh_by_user.values())


def read_usage_stats(catalog: Any, since: float | None, now: float) -> UsageStats:
    """UsageStats from a Catalog: energy and idle tables, and the coarsest history tier."""
    real: dict[str, float] = {}
    simulated: dict[str, float] = {}
    for (user, is_simulated), kwh in catalog.energy_by_user(since, now).items():
        target = simulated if is_simulated else real
        target[user] = target.get(user, 0.0) + kwh
    backends = {h["name"]: h["backend"] for h in catalog.hosts_report(now=now)}
    hosts = {
        usage.host: {
            "util_mean": usage.util_mean,
            "energy_kwh": usage.energy_kwh,
            "gpu_hours": usage.gpu_hours_seen,
            "simulated": backends.get(usage.host) == "simulated",
        }
        for usage in catalog.telemetry_usage(since, now)
    }
    steps = [s for s in catalog.history_steps() if s > 0]
    return UsageStats(
        energy_kwh_by_user=_largest_first(real),
        simulated_kwh_by_user=_largest_first(simulated),
        idle_gpu_hours_by_user=_largest_first(catalog.idle_hours_by_user(since, now)),
        hosts=hosts,
        telemetry_step_s=max(steps) if steps else None,
    )


def usage_json(usage: UsageStats) -> dict[str, Any]:
    """The energy, idle and telemetry part of `cvtui stats --json`."""
    return {
        "energy_kwh": {
            "total": usage.energy_kwh,
            "by_user": usage.energy_kwh_by_user,
            "simulated": {"total": usage.simulated_kwh, "by_user": usage.simulated_kwh_by_user},
        },
        "idle_gpu_hours": {
            "total": sum(usage.idle_gpu_hours_by_user.values()),
            "by_user": usage.idle_gpu_hours_by_user,
        },
        "gpu_telemetry": {"step_s": usage.telemetry_step_s, "by_host": usage.hosts},
    }


def format_usage(usage: UsageStats) -> str:
    """The energy, idle and telemetry lines of the plain-text `cvtui stats` report."""
    lines = [f"Energy (GPU power per user): {usage.energy_kwh:.2f} kWh"]
    lines += _hours_lines("by user", usage.energy_kwh_by_user)
    if usage.simulated_kwh_by_user:
        lines.append(f"Energy on simulated GPUs (not real): {usage.simulated_kwh:.2f} kWh")
        lines += _hours_lines("by user", usage.simulated_kwh_by_user)
    idle = sum(usage.idle_gpu_hours_by_user.values())
    lines.append(f"Idle-held GPU-hours: {idle:.2f}")
    lines += _hours_lines("by user", usage.idle_gpu_hours_by_user)
    if usage.hosts:
        step = usage.telemetry_step_s or 0
        lines.append(f"GPU telemetry by host ({step:g}s tier): mean util, kWh, GPU-hours seen")
        width = max(len(host) for host in usage.hosts)
        for host, figures in usage.hosts.items():
            util = figures["util_mean"]
            util_text = "    -" if util is None else f"{util:4.1f}%"
            mark = "  (simulated)" if figures["simulated"] else ""
            lines.append(
                f"  {host:{width}}  {util_text}  {figures['energy_kwh']:9.2f}  "
                f"{figures['gpu_hours']:9.2f}{mark}"
            )
    return "\n".join(lines)


def disk_json(by_user: list[dict[str, Any]]) -> dict[str, Any]:
    """The disk usage part of `cvtui stats --json`: the latest scans, whatever --since says."""
    return {"disk_usage": {"bytes": sum(u["bytes"] for u in by_user), "by_user": by_user}}


def format_disk(by_user: list[dict[str, Any]]) -> str:
    """Bytes per user of the hosts' `disk_usage:` paths (top-level dirs by owner)."""
    if not by_user:
        return "Disk usage: none scanned (set disk_usage: in the inventory)"
    total = sum(u["bytes"] for u in by_user)
    lines = [f"Disk usage (latest scans of disk_usage: paths): {size(total)}"]
    width = max(len(u["user"]) for u in by_user)
    for user in by_user:
        mark = "  (partial)" if user["partial"] else ""
        lines.append(
            f"  {user['user']:{width}}  {size(user['bytes']):>9}  {user['files']:9} files  "
            f"on {user['hosts']} host{'s' if user['hosts'] != 1 else ''}{mark}"
        )
    return "\n".join(lines)
