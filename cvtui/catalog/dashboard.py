"""The dashboard's reads: its own read-only connection and the queries it makes; never writes.

Tables and columns that later migrations add (metrics, files, hosts.drained) are looked up
first and used only when present, so the dashboard works on every catalog version.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvtui.catalog.disk_usage import read_disk_usage
from cvtui.catalog.metric_store import by_step, series_points
from cvtui.catalog.provenance import provenance_summary

# The run columns the tables show; the big JSON ones (spec, config) are read per run only.
RUN_FIELDS = (
    "id",
    "name",
    "project",
    "user",
    "state",
    "priority",
    "host",
    "gpus",
    "progress",
    "progress_msg",
    "exit_code",
    "reason",
    "submitted",
    "dispatched",
    "started",
    "ended",
    "resources",
    "attempt",
    "log_size",
    "updated",
)
_JSON_FIELDS = ("gpus", "resources")


@dataclass(frozen=True)
class Features:
    """Which optional parts of the schema this catalog has."""

    metrics: bool = False
    files: bool = False
    drained: bool = False
    clusters: bool = False  # hosts.cluster: Slurm hosts' partitions and nodes


def table_columns(conn: sqlite3.Connection, table: str) -> frozenset[str]:
    return frozenset(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))


def features(conn: sqlite3.Connection) -> Features:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return Features(
        metrics="metric_series" in tables,
        files="files" in tables,
        drained="drained" in table_columns(conn, "hosts"),
        clusters="cluster" in table_columns(conn, "hosts"),
    )


class RunCache:
    """Decoded run rows by id, reused while the row's ``updated`` stamp is unchanged.

    Most runs do not change between two reads a second apart; reusing them halves a read and
    hands the tables the very same dicts, which compare equal at once.
    """

    def __init__(self) -> None:
        self._runs: dict[str, tuple[Any, dict[str, Any]]] = {}

    def decode(self, rows: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
        decoded = []
        for row in rows:
            run_id, updated = row[0], row[-1]
            known = self._runs.get(run_id)
            if known is None or known[0] != updated:
                known = (updated, _run(row))
                self._runs[run_id] = known
            decoded.append(known[1])
        return decoded

    def keep_only(self, runs: Sequence[dict[str, Any]]) -> None:
        """Forget runs no longer read, so the cache stays the size of what is shown."""
        wanted = {r["id"] for r in runs}
        for run_id in self._runs.keys() - wanted:
            del self._runs[run_id]


def _run(row: Sequence[Any]) -> dict[str, Any]:
    run = dict(zip(RUN_FIELDS, row, strict=True))
    for name in _JSON_FIELDS:
        run[name] = json.loads(run[name]) if run[name] is not None else None
    return run


_SELECT = f"SELECT {', '.join(RUN_FIELDS)} FROM runs"  # noqa: S608 (fixed names)


def recent_runs(conn: sqlite3.Connection, limit: int, cache: RunCache) -> list[dict[str, Any]]:
    """Every active run, then the newest others up to ``limit`` rows in all, newest first."""
    rows = conn.execute(
        f"{_SELECT} WHERE state IN ('queued', 'dispatching', 'running') "  # noqa: S608 (fixed)
        "UNION ALL SELECT * FROM ("
        f"{_SELECT} WHERE state NOT IN ('queued', 'dispatching', 'running') "
        "ORDER BY submitted DESC, id DESC LIMIT ?) ORDER BY submitted DESC, id DESC",
        (limit,),
    ).fetchall()
    return cache.decode(rows)


def queue_rows(conn: sqlite3.Connection, cache: RunCache) -> list[dict[str, Any]]:
    """Runs being dispatched, then queued runs in the order the scheduler tries them."""
    rows = conn.execute(
        f"{_SELECT} WHERE state IN ('queued', 'dispatching') "
        "ORDER BY state = 'queued', priority_rank, submitted, id"
    ).fetchall()
    return cache.decode(rows)


def get_run(conn: sqlite3.Connection, run_id: str) -> dict[str, Any] | None:
    """One run with every column, JSON decoded (command, params, config, spec too)."""
    cursor = conn.execute("SELECT * FROM runs WHERE id = ?", (run_id,))
    row = cursor.fetchone()
    if row is None:
        return None
    run = dict(zip([d[0] for d in cursor.description], row, strict=True))
    for name in ("gpus", "command", "params", "config", "spec", "resources", "outputs_unmatched"):
        if isinstance(run.get(name), str):
            run[name] = json.loads(run[name])
    run["provenance"] = provenance_summary(conn, run_id)
    run["energy"] = run_energy(conn, run_id)
    return run


def run_energy(conn: sqlite3.Connection, run_id: str) -> tuple[float, bool] | None:
    """(kWh its GPUs drew while it held them, simulated), or None before any was measured."""
    try:
        row = conn.execute(
            "SELECT joules, simulated FROM run_energy WHERE run_id = ?", (run_id,)
        ).fetchone()
    except sqlite3.OperationalError:  # a catalog from before energy was measured
        return None
    return None if row is None else (row[0] / 3.6e6, bool(row[1]))


def host_extras(conn: sqlite3.Connection, features: Features) -> dict[str, dict[str, Any]]:
    """Per host: its tags, whether it is drained, and how many runs it has placed or running."""
    drained = "drained" if features.drained else "0"
    extras: dict[str, dict[str, Any]] = {}
    cluster = "cluster" if features.clusters else "NULL"
    for name, tags, is_drained, sample in conn.execute(
        f"SELECT name, tags, {drained}, {cluster} FROM hosts"  # noqa: S608 (fixed names)
    ):
        extras[name] = {"tags": json.loads(tags or "[]"), "drained": bool(is_drained), "runs": 0}
        if sample is not None:  # a Slurm cluster: its partitions, nodes and the user's jobs
            extras[name]["cluster"] = json.loads(sample)
    for host, count in conn.execute(
        "SELECT host, count(*) FROM runs WHERE state IN ('dispatching', 'running') "
        "AND host IS NOT NULL GROUP BY host"
    ):
        if host in extras:
            extras[host]["runs"] = count
    return extras


def last_event_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM run_events").fetchone()[0])


def final_events_after(conn: sqlite3.Connection, event_id: int) -> list[dict[str, Any]]:
    """Runs that ended since event ``event_id``: id, run_id, name, state, time, detail."""
    rows = conn.execute(
        "SELECT e.id, e.run_id, coalesce(r.name, e.run_id), e.state, e.time, e.detail, "
        "r.exit_code FROM run_events e LEFT JOIN runs r ON r.id = e.run_id "
        "WHERE e.id > ? AND e.state IN ('succeeded', 'failed', 'cancelled', 'lost') ORDER BY e.id",
        (event_id,),
    ).fetchall()
    keys = ("id", "run_id", "name", "state", "time", "detail", "exit_code")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def run_events(conn: sqlite3.Connection, run_id: str) -> list[tuple[float, str, str | None]]:
    return [
        (r[0], r[1], r[2])
        for r in conn.execute(
            "SELECT time, state, detail FROM run_events WHERE run_id = ? ORDER BY id", (run_id,)
        )
    ]


def metric_keys(conn: sqlite3.Connection, run_ids: Sequence[str]) -> list[str]:
    """Numeric metric keys that any of these runs has, sorted (needs the metrics table)."""
    rows = conn.execute(
        "SELECT DISTINCT s.key FROM metric_series s"
        " WHERE s.run_id IN (SELECT value FROM json_each(?))"
        " AND EXISTS (SELECT 1 FROM metric_chunks c WHERE c.series = s.id"
        "  AND EXISTS (SELECT 1 FROM json_each(c.vals) WHERE type IN ('integer', 'real')))"
        " ORDER BY s.key",
        (json.dumps(list(run_ids)),),
    ).fetchall()
    return [r[0] for r in rows]


def metric_series(
    conn: sqlite3.Connection, run_id: str, key: str, max_points: int = 4000
) -> list[tuple[float, float]]:
    """(step, value) of one key, by step, thinned evenly to at most max_points (last kept)."""
    found = series_points(conn, run_id, [key]).get(key, [])
    merged = [p for _file, points in found for p in points]
    ordered = by_step(merged)
    points = [(float(s), float(v)) for s, v, _t in ordered if s is not None and v is not None]
    if len(points) > max_points:
        stride = len(points) / max_points
        thinned = [points[int(i * stride)] for i in range(max_points - 1)]
        points = [*thinned, points[-1]]
    return points


# The files columns worth a glance, when the table has them; bookkeeping ones are left out.
FILE_COLUMNS = ("path", "size", "synced_size", "sync_status", "strategy", "synced_at", "reason")


def run_files(conn: sqlite3.Connection, run_id: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Columns and rows of the files table for one run (needs the files table)."""
    present = [c for c in _ordered_columns(conn, "files") if c != "run_id"]
    columns = [c for c in FILE_COLUMNS if c in present] or present
    if not columns:
        return [], []
    order = "path" if "path" in columns else columns[0]
    rows = conn.execute(
        f"SELECT {', '.join(columns)} FROM files WHERE run_id = ? ORDER BY {order}",  # noqa: S608
        (run_id,),
    ).fetchall()
    return columns, [tuple(r) for r in rows]


def _ordered_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


@dataclass(frozen=True)
class Overview:
    """One consistent read of what every dashboard screen shows beyond hosts_report."""

    features: Features
    host_extras: dict[str, dict[str, Any]]  # per host: tags, drained, runs placed or running
    queue: list[dict[str, Any]]  # dispatching, then queued in start order
    runs: list[dict[str, Any]]  # active and recent runs, newest first
    ended: list[dict[str, Any]]  # final events after the given event id (none without one)
    last_event: int  # the newest run_events id


class DashboardQueries:
    """The dashboard's own connection to the catalog, refused any write by SQLite itself
    (PRAGMA query_only), and the reads the dashboard makes through it. One thread at a time.
    """

    def __init__(self, path: Path) -> None:
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA query_only = ON")

    def close(self) -> None:
        self._conn.close()

    def features(self) -> Features:
        return features(self._conn)

    def overview(self, limit: int, cache: RunCache, after_event: int | None) -> Overview:
        """Host extras, queue, the runs shown (at most ``limit``), and the runs that ended
        since event ``after_event`` (None: none asked), in one read transaction."""
        conn = self._conn
        found = features(conn)
        conn.execute("BEGIN")
        try:
            extras = host_extras(conn, found)
            queue = queue_rows(conn, cache)
            runs = recent_runs(conn, limit, cache)
            cache.keep_only(runs)  # every queued run is among the active runs
            ended = [] if after_event is None else final_events_after(conn, after_event)
            last_event = last_event_id(conn)
        finally:
            conn.execute("COMMIT")
        return Overview(found, extras, queue, runs, ended, last_event)

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return get_run(self._conn, run_id)

    def disk_usage(self, host: str) -> list[dict[str, Any]]:
        """The host's latest `disk_usage:` scans (Catalog.disk_usage_by_host's shape)."""
        return read_disk_usage(self._conn, [host]).get(host, [])

    def run_events(self, run_id: str) -> list[tuple[float, str, str | None]]:
        return run_events(self._conn, run_id)

    def run_files(self, run_id: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        return run_files(self._conn, run_id)

    def metric_keys(self, run_ids: Sequence[str]) -> list[str]:
        return metric_keys(self._conn, run_ids)

    def metric_series(
        self, run_id: str, key: str, max_points: int = 4000
    ) -> list[tuple[float, float]]:
        return metric_series(self._conn, run_id, key, max_points)
