"""Reading telemetry history: which tier fits a range, stitched series, usage figures.

Readers pick the tier that fits the range shown and stitch finer tiers (and raw samples)
after its last bucket, so a plot or a figure always reaches the newest sample. Mixed into
Catalog next to HistoryMixin (history.py), which writes and compacts.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cvtui.catalog.history import RAW_SPAN_S, chunk_window, usage_sums
from cvtui.catalog.history_codec import (
    Block,
    concat_blocks,
    decode_raw,
    decode_tier,
    empty_block,
    only_series,
    rebucket,
    sort_block,
)


@dataclass(frozen=True)
class HostUsage:
    """One host's GPUs over a window, from the tiers: for `cvtui stats`."""

    host: str
    gpu_hours_seen: float  # hours of GPU buckets with samples, summed over GPUs
    util_mean: float | None  # percent, weighted by samples
    energy_kwh: float  # mean power x bucket time, summed over GPUs


class HistoryReadsMixin:
    """Catalog methods that read telemetry history; mixed into Catalog (store.py)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def history_steps(self) -> list[float]:
        """The tier steps stored now, finest first (0, raw, when raw rows exist)."""
        with self._read() as conn:
            steps = [
                float(r[0]) for r in conn.execute("SELECT DISTINCT step FROM telemetry_chunks")
            ]
            raw = conn.execute("SELECT 1 FROM telemetry_raw LIMIT 1").fetchone()
        return sorted(steps + ([0.0] if raw else []))

    def choose_step(
        self, host: str | None, since: float, until: float, points: int | None = None
    ) -> float:
        """The tier for a range: with ``points``, the coarsest giving that many buckets;
        else the finest whose history reaches back to ``since``; else the coarsest."""
        steps = self.history_steps()
        if not steps:
            return 0.0
        if points:
            fine_enough = [s for s in steps if s <= (until - since) / points]
            return max(fine_enough) if fine_enough else steps[0]
        with self._read() as conn:
            for step in steps:
                if step == 0:
                    row = conn.execute(
                        "SELECT min(start) FROM telemetry_raw WHERE ?1 IS NULL OR host = ?1",
                        (host,),
                    ).fetchone()
                else:
                    row = conn.execute(
                        "SELECT min(start) FROM telemetry_chunks "
                        "WHERE step = ?1 AND (?2 IS NULL OR host = ?2)",
                        (step, host),
                    ).fetchone()
                if row[0] is not None and row[0] <= since:
                    return step
        return steps[-1]

    def history(
        self,
        host: str,
        since: float,
        until: float | None = None,
        *,
        step: float | None = None,
        points: int | None = None,
        raw: bool = True,
        bucketed: bool = True,
        series: int | None = None,
    ) -> Block:
        """A host's history over [since, until) at one tier's step (0: samples), stitched:
        the tier's chunks, then finer tiers (and raw samples unless ``raw`` is False) after
        its last bucket, rebucketed to its step (``bucketed`` False leaves every tier's points
        as stored, for sums). Series are the host's GPUs and -1, or only ``series``."""
        until = time.time() if until is None else until
        if step is None:
            step = self.choose_step(host, since, until, points)
        finer = sorted((s for s in self.history_steps() if 0 < s < step), reverse=True)
        order = [step, *finer] if step > 0 else []
        if raw:
            order.append(0.0)
        blocks: list[Block] = []
        covered = since
        for source in order:
            block = self._read_step(host, source, covered, until, series)
            if len(block.times):
                blocks.append(block)
                covered = max(covered, block.end if source else float(block.times[-1]) + 1e-6)
        combined = concat_blocks(blocks, step)
        if step > 0 and bucketed:
            return rebucket(combined, step)
        return combined

    def _read_step(
        self, host: str, step: float, since: float, until: float, series: int | None = None
    ) -> Block:
        with self._read() as conn:
            if step == 0:
                blobs = [
                    r[0]
                    for r in conn.execute(
                        "SELECT data FROM telemetry_raw WHERE host = ? AND start >= ? "
                        "AND start < ? AND until >= ? ORDER BY start",
                        (host, since - RAW_SPAN_S, until, since),
                    )
                ]
            else:
                blobs = [
                    r[0]
                    for r in conn.execute(
                        "SELECT data FROM telemetry_chunks WHERE step = ? AND host = ? "
                        "AND start >= ? AND start < ? AND until > ? ORDER BY start",
                        (step, host, since - chunk_window(step), until, since),
                    )
                ]
        if not blobs:
            return empty_block(step)
        if step == 0:
            block = only_series(decode_raw(blobs), series)
        else:
            decoded = [decode_tier(b, series) for b in blobs]
            block = sort_block(concat_blocks(decoded, step))
        return _clip(block, since, until)

    def telemetry_history(
        self,
        host: str,
        gpu_idx: int,
        since: float,
        until: float | None = None,
        *,
        points: int | None = None,
    ) -> list[tuple[float, float | None, int | None]]:
        """(time, util percent, mem_used bytes) from ``since`` on, oldest first: samples
        where raw history reaches back that far, else the mean of each bucket of the finest
        tier that does (with ``points``: the coarsest tier giving at least that many). For
        ``gpu_idx`` -1 (the host itself) util is the host's CPU percent.
        """
        block = self.history(host, since, until, points=points, series=gpu_idx)
        row = block.row(gpu_idx)
        return [] if row is None else _points(block, row)

    def host_telemetry_history(
        self, host: str, since: float, until: float | None = None, *, points: int | None = None
    ) -> dict[int, list[tuple[float, float | None, int | None]]]:
        """telemetry_history for every series of a host (its GPUs and -1), read once."""
        block = self.history(host, since, until, points=points)
        return {index: _points(block, row) for row, index in enumerate(block.series.tolist())}

    def telemetry_usage(self, since: float | None, until: float | None = None) -> list[HostUsage]:
        """Per host, its GPUs' sampled hours, mean utilisation and energy over the window,
        from the coarsest tier and the finer ones after it (raw samples not yet compacted,
        at most the first tier's retention plus an hour, are left out)."""

        until = time.time() if until is None else until
        with self._read() as conn:
            hosts = [r[0] for r in conn.execute("SELECT DISTINCT host FROM telemetry_chunks")]
        steps = [s for s in self.history_steps() if s > 0]
        if not steps:
            return []
        lower = 0.0 if since is None else since
        out = []
        for host in sorted(hosts):
            # Chunks inside the window add their stored sums; only the ones cut by its edges
            # are decoded. The coarsest tier first, then finer ones after its last point.
            sums = [0.0, 0.0, 0.0, 0.0]  # seconds, util x seconds, seconds with util, joules
            covered = lower
            for step in sorted(steps, reverse=True):
                with self._read() as conn:
                    rows = conn.execute(
                        "SELECT until, gpu_seconds, util_seconds, util_weight, joules, "
                        "CASE WHEN start < ?3 OR until > ?4 THEN data END "
                        "FROM telemetry_chunks WHERE step = ?1 AND host = ?2 "
                        "AND start >= ?3 - ?5 AND start < ?4 AND until > ?3",
                        (step, host, covered, until, chunk_window(step)),
                    ).fetchall()
                reached = covered
                for chunk_until, *stored, data in rows:
                    if data is not None:
                        part, end = usage_sums(decode_tier(data), covered, until)
                    else:
                        part, end = tuple(stored), chunk_until
                    sums = [a + b for a, b in zip(sums, part, strict=True)]
                    reached = max(reached, end)
                covered = reached
            if sums[0] > 0:
                util_mean = sums[1] / sums[2] if sums[2] else None
                out.append(HostUsage(host, sums[0] / 3600.0, util_mean, sums[3] / 3.6e6))
        return out

    def history_sizes(self) -> list[tuple[str, int, int]]:
        """(tier, rows, bytes of blocks) for raw history and each stored step."""
        with self._read() as conn:
            raw = conn.execute("SELECT count(*), coalesce(sum(length(data)), 0) FROM telemetry_raw")
            rows = [("raw", *raw.fetchone())]
            for step, count, size in conn.execute(
                "SELECT step, count(*), sum(length(data)) FROM telemetry_chunks "
                "GROUP BY step ORDER BY step"
            ):
                rows.append((f"{step:g}s", count, size))
        return rows


def _points(block: Block, row: int) -> list[tuple[float, float | None, int | None]]:
    """(time, util, mem) of one series' points that have samples; None where not reported."""
    seen = block.n[:, row].max(axis=0).tolist()
    utils, mems = block.mean[0, row].tolist(), block.mean[1, row].tolist()
    return [
        (t, None if util != util else util, None if mem != mem else int(mem))
        for t, n, util, mem in zip(block.times.tolist(), seen, utils, mems, strict=True)
        if n
    ]


def _clip(block: Block, since: float, until: float) -> Block:
    times = block.times
    keep = (times >= since) & (times < until)
    if keep.all():
        return block
    return Block(
        block.step,
        block.series,
        times[keep],
        block.n[:, :, keep],
        block.secs[:, keep],
        block.lo[:, :, keep],
        block.mean[:, :, keep],
        block.hi[:, :, keep],
    )
