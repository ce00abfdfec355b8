"""Bounded telemetry history in tiers: every sample for a while, then min/mean/max buckets.

The engine appends one raw block per host and flush to `telemetry_raw` (every sample, with its
time). `compact_history` takes raw history an hour at a time once it is older than the first
tier's retention, turns it into one piece per host for every coarser tier (computed from the
samples, so each tier is exact), deletes it, merges the pieces of a tier's chunk window into
one chunk (at most once a day for an open window), and drops chunks past their tier's
retention. Readers pick the tier that fits the range shown and stitch finer tiers after its
last point, so a plot or a figure always reaches the newest sample.

Policy (`policy.history` in the inventory) is a list of (step, keep) tiers; step 0 means
every sample. Chunks carry their step, so a policy edit never misreads older data.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvtui.catalog.history_codec import (
    ZLIB_LEVEL_KEPT,
    ZLIB_LEVEL_PIECE,
    Block,
    concat_blocks,
    decode_raw,
    decode_tier,
    encode_raw,
    encode_tier,
    rebucket,
)
from cvtui.history_policy import DAY_S, DEFAULT_HISTORY, check_tiers

if TYPE_CHECKING:
    from sqlite_utils import Database

BATCH_S = 3600.0  # raw history is compacted one aligned hour at a time
CHUNK_WINDOWS_S = (3600.0, DAY_S, 30 * DAY_S)  # a tier's chunk: the largest that fits
MAX_CHUNK_POINTS = 1440
MERGE_PIECES = 25  # an open window's pieces are merged once a day's worth has piled up
RAW_SPAN_S = BATCH_S  # no raw row spans more than this: reads look back this far
# The engine writes a host's raw samples in rows of this many seconds: ~530 bytes for 8 GPUs,
# under the ~1000 bytes that a WITHOUT ROWID row keeps in its page (10 s spilled every row
# to an overflow page: 4x the file size and 2x the compaction time).
RAW_GROUP_S = 5.0


def chunk_window(step_s: float) -> float:
    """Seconds of history one stored chunk of a tier covers (at most 1440 points)."""
    fitting = [w for w in CHUNK_WINDOWS_S if w / step_s <= MAX_CHUNK_POINTS]
    return max(fitting) if fitting else CHUNK_WINDOWS_S[0]


def migration_7_history(db: Database) -> None:
    """Telemetry history in raw blocks and tier chunks; old telemetry rows become raw blocks."""
    # Clustered by host and time, with no other index: compaction reads and deletes an hour
    # of a host as one contiguous range (a rowid table with indexes took 3x longer).
    db.execute(
        "CREATE TABLE telemetry_raw ("
        " host TEXT NOT NULL,"
        " start REAL NOT NULL,"  # unix seconds, controller clock, of the first sample
        " until REAL NOT NULL,"  # ... and of the last
        " samples INTEGER NOT NULL,"
        " data BLOB NOT NULL,"  # history_codec raw block
        " PRIMARY KEY (host, start)) WITHOUT ROWID"
    )
    db.execute(
        "CREATE TABLE telemetry_chunks ("
        " host TEXT NOT NULL,"
        " step REAL NOT NULL,"  # seconds per bucket
        " start REAL NOT NULL,"  # unix seconds: the first bucket's start
        " until REAL NOT NULL,"  # the last bucket's end
        " points INTEGER NOT NULL,"
        " data BLOB NOT NULL,"  # history_codec tier block
        # Sums over the chunk's GPU series, so `cvtui stats` adds rows instead of decoding:
        " gpu_seconds REAL,"  # seconds covered by samples, summed over GPUs
        " util_seconds REAL,"  # util % x seconds, over the samples that reported util
        " util_weight REAL,"  # ... and those seconds
        " joules REAL)"  # mean power x seconds
    )
    db.execute("CREATE INDEX telemetry_chunks_series ON telemetry_chunks (step, host, start)")
    db.execute("CREATE INDEX telemetry_chunks_until ON telemetry_chunks (step, until)")
    _move_old_telemetry(db.conn)
    db.execute("DROP TABLE telemetry")
    db.execute("DROP TABLE telemetry_compaction")


def _move_old_telemetry(conn: sqlite3.Connection) -> None:
    """Old per-GPU rows as raw blocks, one per host and hour; compaction tiers them later."""
    group: tuple[str, float] | None = None
    rows: list[tuple[Any, ...]] = []
    out: list[tuple[Any, ...]] = []
    old = conn.execute(
        "SELECT host, gpu_idx, time, util, mem_used, temperature, power, cpu_percent "
        "FROM telemetry ORDER BY host, time"
    )
    for row in old:
        key = (row[0], math.floor(row[2] / BATCH_S))
        if key != group:
            if rows:
                out.append(_raw_row_from_old(rows))
            group, rows = key, []
        rows.append(row)
        if len(out) >= 256:
            conn.executemany("INSERT INTO telemetry_raw VALUES (?, ?, ?, ?, ?)", out)
            out = []
    if rows:
        out.append(_raw_row_from_old(rows))
    conn.executemany("INSERT INTO telemetry_raw VALUES (?, ?, ?, ?, ?)", out)


def _raw_row_from_old(rows: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    times = sorted({r[2] for r in rows})
    series = sorted({r[1] for r in rows})
    at = {t: i for i, t in enumerate(times)}
    where = {s: i for i, s in enumerate(series)}
    values: list[list[list[Any]]] = [[[None] * len(times) for _ in series] for _ in range(4)]
    for _, idx, t, util, mem, temp, power, cpu in rows:
        s, i = where[idx], at[t]
        values[0][s][i] = cpu if idx < 0 else util
        values[1][s][i], values[2][s][i], values[3][s][i] = mem, temp, power
    return (rows[0][0], times[0], times[-1], len(times), encode_raw(series, times, values))


@dataclass(frozen=True)
class CompactionReport:
    """What one compact_history call did."""

    hours: int  # hours of raw history turned into tiers
    pieces: int  # tier rows written
    merged: int  # chunk windows merged
    expired: int  # chunk rows dropped past their tier's retention
    raw_rows: int  # raw rows consumed
    merge_cpu_s: float = 0.0  # CPU seconds of this thread spent merging (daily work)


class HistoryMixin:
    """Catalog methods for telemetry history; mixed into Catalog (store.py)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # -- writes -----------------------------------------------------------------------

    def append_raw_history(self, rows: Iterable[tuple[str, float, float, int, bytes]]) -> None:
        """Store raw blocks (host, first time, last time, samples, block) as they come.

        record_telemetry writes through the same INSERT; the history benchmark calls this to
        write a simulated year without building a Telemetry object per sample.
        """
        with self._write() as conn:
            _insert_raw(conn, rows)

    def compact_history(
        self,
        now: float | None = None,
        tiers: Sequence[tuple[float, float]] | None = None,
        *,
        max_hours: int | None = None,
    ) -> CompactionReport:
        """Tier the raw hours older than the first tier's retention, merge, expire.

        Each hour is read in one snapshot, computed without the write lock, and written in
        one short transaction, so the engine's telemetry writes wait at most for that.
        Idempotent: a call with nothing due reads two index entries and writes nothing.
        """
        now = time.time() if now is None else now
        tiers = list(DEFAULT_HISTORY if tiers is None else tiers)
        problem = check_tiers(tiers)
        if problem:
            raise ValueError(f"history tiers: {problem}")
        due_before = math.floor((now - tiers[0][1]) / BATCH_S) * BATCH_S
        steps = [float(step) for step, _ in tiers[1:]]
        hours = pieces = raw_rows = 0
        while max_hours is None or hours < max_hours:
            with self._lock:
                first = self._conn_first_raw()
            if first is None or first >= due_before:
                break
            hour = math.floor(first / BATCH_S) * BATCH_S
            written, consumed = self._compact_hour(hour, steps)
            hours, pieces, raw_rows = hours + 1, pieces + written, raw_rows + consumed
            if not consumed:  # nothing there after all (a host removed meanwhile): stop
                break
        merging = time.thread_time()
        merged = sum(self._merge_pieces(step, due_before) for step in steps)
        merge_cpu_s = time.thread_time() - merging
        expired = self._expire(tiers, now)
        return CompactionReport(hours, pieces, merged, expired, raw_rows, merge_cpu_s)

    def _conn_first_raw(self) -> float | None:
        # Per host: the table is clustered by (host, start), so each lookup is one probe.
        with self._read() as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM hosts").fetchall()]
            firsts = [
                conn.execute(
                    "SELECT min(start) FROM telemetry_raw WHERE host = ?", (name,)
                ).fetchone()[0]
                for name in names
            ]
        known = [float(t) for t in firsts if t is not None]
        return min(known) if known else None

    def _compact_hour(self, hour: float, steps: Sequence[float]) -> tuple[int, int]:
        end = hour + BATCH_S
        with self._read() as conn:
            names = [r[0] for r in conn.execute("SELECT name FROM hosts").fetchall()]
            by_host = {
                name: [
                    r[0]
                    for r in conn.execute(
                        "SELECT data FROM telemetry_raw WHERE host = ? AND start >= ? "
                        "AND start < ? ORDER BY start",
                        (name, hour, end),
                    )
                ]
                for name in names
            }
        out = _tier_pieces(by_host, steps)
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO telemetry_chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", out
            )
            # Only the engine writes raw rows, and only near now: none lands in this hour now.
            conn.executemany(
                "DELETE FROM telemetry_raw WHERE host = ? AND start >= ? AND start < ?",
                [(name, hour, end) for name in by_host],
            )
        return len(out), sum(len(blobs) for blobs in by_host.values())

    def tier_raw_blocks(
        self, by_host: dict[str, list[bytes]], tiers: Sequence[tuple[float, float]]
    ) -> int:
        """Write the tier pieces of raw blocks that were never stored as raw rows; the
        pieces compact_history would write for them. The history benchmark's time warp
        uses it for the bulk of its simulated year; returns the pieces written."""
        out = _tier_pieces(by_host, [float(step) for step, _ in tiers[1:]])
        with self._write() as conn:
            conn.executemany(
                "INSERT INTO telemetry_chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", out
            )
        return len(out)

    def _merge_pieces(self, step: float, due_before: float) -> int:
        window = chunk_window(step)
        with self._read() as conn:
            groups = conn.execute(
                "SELECT host, CAST(start / ? AS INTEGER) AS win, count(*) FROM telemetry_chunks "
                "WHERE step = ? GROUP BY host, win HAVING count(*) > 1",
                (window, step),
            ).fetchall()
        merged = 0
        for host, win, count in groups:
            closed = (win + 1) * window <= due_before
            if not closed and count < MERGE_PIECES:
                continue
            lower, upper = win * window, (win + 1) * window
            with self._read() as conn:
                parts = conn.execute(
                    "SELECT rowid, data FROM telemetry_chunks "
                    "WHERE step = ? AND host = ? AND start >= ? AND start < ?",
                    (step, host, lower, upper),
                ).fetchall()
            block = rebucket(concat_blocks([decode_tier(p[1]) for p in parts], step), step)
            with self._write() as conn:
                conn.executemany(
                    "DELETE FROM telemetry_chunks WHERE rowid = ?", [(p[0],) for p in parts]
                )
                conn.execute(
                    "INSERT INTO telemetry_chunks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    _chunk_row(host, block),
                )
            merged += 1
        return merged

    def _expire(self, tiers: Sequence[tuple[float, float]], now: float) -> int:
        longest = max(keep for _, keep in tiers)
        steps = [float(step) for step, _ in tiers[1:]]
        with self._write() as conn:
            expired = 0
            for step, keep in tiers[1:]:
                cursor = conn.execute(
                    "DELETE FROM telemetry_chunks WHERE step = ? AND until < ?", (step, now - keep)
                )
                expired += cursor.rowcount
            # Steps a policy edit removed: kept as long as the longest tier, then dropped.
            cursor = conn.execute(
                "DELETE FROM telemetry_chunks WHERE until < ? AND step NOT IN "
                "(SELECT value FROM json_each(?))",
                (now - longest, _json_list(steps)),
            )
            return expired + cursor.rowcount


def _insert_raw(
    conn: sqlite3.Connection, rows: Iterable[tuple[str, float, float, int, bytes]]
) -> None:
    # A block starting at the same time as a stored one of its host is a repeat delivery.
    conn.executemany("INSERT OR IGNORE INTO telemetry_raw VALUES (?, ?, ?, ?, ?)", rows)


def _tier_pieces(by_host: dict[str, list[bytes]], steps: Sequence[float]) -> list[tuple[Any, ...]]:
    """One chunk row per host and tier for raw blocks of one hour."""
    out = []
    for host, blobs in by_host.items():
        if not blobs:
            continue
        block = decode_raw(blobs)
        for step in steps:  # each tier from the one before: buckets nest
            block = rebucket(block, step)
            if len(block.times):
                out.append(_chunk_row(host, block, ZLIB_LEVEL_PIECE))
    return out


def _chunk_row(host: str, block: Block, level: int = ZLIB_LEVEL_KEPT) -> tuple[Any, ...]:
    start = float(block.times[0])
    data = encode_tier(block, level=level)
    sums = usage_sums(block, -math.inf, math.inf)[0]
    return (host, block.step, start, block.end, len(block.times), data, *sums)


def usage_sums(block: Block, since: float, until: float) -> tuple[tuple[float, ...], float]:
    """(gpu seconds, util x seconds, seconds with util, joules) of a block's GPU points in
    [since, until), and where the last of them ends (``since`` when none is inside)."""
    import numpy as np

    keep = (block.times >= since) & (block.times < until)
    gpus = block.series >= 0
    if not keep.any() or not gpus.any():
        return (0.0, 0.0, 0.0, 0.0), since
    secs = block.secs[gpus][:, keep]
    util, power = block.mean[0][gpus][:, keep], block.mean[3][gpus][:, keep]
    weights = np.where(np.isnan(util), 0.0, secs)
    # Power over the part of each point's time whose samples reported power.
    counts = block.n[:, gpus][:, :, keep]
    n_any = counts.max(axis=0)
    share = np.where(n_any > 0, counts[3] / np.maximum(n_any, 1), 0.0)
    sums = (
        float(secs.sum()),
        float((np.nan_to_num(util) * weights).sum()),
        float(weights.sum()),
        float((np.nan_to_num(power) * secs * share).sum()),
    )
    return sums, float(block.times[keep][-1]) + block.step


def _json_list(values: Sequence[float]) -> str:
    import json

    return json.dumps(list(values))
