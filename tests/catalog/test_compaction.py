"""Telemetry compaction: the last hour in full, older history thinned to one row per bucket."""

from __future__ import annotations

import math
import time
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cvtui.catalog import Catalog

from .samples import InventoryHost, gpu, telemetry

HOUR_S = 3600.0
T0 = 1_700_000_000.0  # a multiple of 10, so 1 Hz rows fill buckets evenly


def rows(catalog: Catalog) -> list[tuple[int, str, int, float]]:
    return catalog.db.execute("SELECT rowid, host, gpu_idx, time FROM telemetry").fetchall()


def test_two_hours_at_1hz_keep_the_last_hour_and_one_row_per_10s_before(
    catalog: Catalog,
) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    # One batch of 7200 samples, 1 s apart on the agent clock; the newest is received at
    # T0 + 7199, so history rows land on T0 .. T0 + 7199 exactly.
    samples = [("a", telemetry(float(s), gpus=(gpu(0), gpu(1)))) for s in range(7200)]
    catalog.record_telemetry(samples, received=T0 + 7199)
    series = [-1, 0, 1]
    assert catalog.db.table("telemetry").count == 7200 * len(series)

    now = T0 + 7200
    deleted = catalog.compact_telemetry(now)
    assert deleted == (3600 - 360) * len(series)
    for idx in series:
        history = catalog.telemetry_history("a", idx, since=0.0)
        times = [t for t, _, _ in history]
        old = [t for t in times if t < now - HOUR_S]
        assert old == [T0 + 10 * k for k in range(360)]  # the first of each bucket
        assert [t for t in times if t >= now - HOUR_S] == [T0 + s for s in range(3600, 7200)]
    assert catalog.compact_telemetry(now) == 0  # idempotent

    # An hour later the second hour is thinned the same way, the first is left as it was.
    assert catalog.compact_telemetry(now + HOUR_S) == (3600 - 360) * len(series)
    assert catalog.db.table("telemetry").count == 720 * len(series)


def test_custom_window_and_bucket(catalog: Catalog) -> None:
    start = 1_700_000_040.0  # a multiple of 60
    catalog.sync_hosts([InventoryHost("a")])
    samples = [("a", telemetry(float(s), gpus=())) for s in range(120)]
    catalog.record_telemetry(samples, received=start + 119)
    # Keep 60 s in full; thin the rest to one row a minute: that minute keeps its first row.
    assert catalog.compact_telemetry(start + 120, keep_full_s=60, bucket_s=60) == 59
    times = [t for t, _, _ in catalog.telemetry_history("a", -1, since=0.0)]
    assert times == [start] + [start + s for s in range(60, 120)]


series_st = st.sampled_from([("a", -1), ("a", 0), ("a", 3), ("b", 0)])
offset_st = st.floats(min_value=0.0, max_value=3 * HOUR_S, allow_nan=False)


@settings(
    max_examples=60,
    deadline=None,
    # One catalog serves every example: each starts by emptying history and watermarks.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    points=st.lists(st.tuples(series_st, offset_st), max_size=120),
    keep_full_s=st.sampled_from([600.0, HOUR_S]),
    bucket_s=st.sampled_from([1.0, 7.5, 10.0]),
)
def test_compaction_property(
    catalog: Catalog,
    points: list[tuple[tuple[str, int], float]],
    keep_full_s: float,
    bucket_s: float,
) -> None:
    catalog.db.execute("DELETE FROM telemetry")
    catalog.db.execute("DELETE FROM telemetry_compaction")
    now = T0 + 3 * HOUR_S
    catalog.db.execute("BEGIN")
    catalog.db.conn.executemany(
        "INSERT INTO telemetry (host, gpu_idx, time) VALUES (?, ?, ?)",
        [(host, idx, T0 + offset) for (host, idx), offset in points],
    )
    catalog.db.execute("COMMIT")
    before = rows(catalog)
    cutoff = now - keep_full_s

    def bucket(row: tuple[int, str, int, float]) -> tuple[str, int, int]:
        return row[1], row[2], math.floor(row[3] / bucket_s)

    deleted = catalog.compact_telemetry(now, keep_full_s=keep_full_s, bucket_s=bucket_s)
    after = rows(catalog)
    assert deleted == len(before) - len(after)
    assert {r for r in before if r[3] >= cutoff} <= set(after)  # the recent past is whole
    old_after = [r for r in after if r[3] < cutoff]
    assert max(Counter(map(bucket, old_after)).values(), default=0) <= 1
    # Each old bucket keeps exactly its first row (earliest time, then first inserted).
    firsts: dict[tuple[str, int, int], tuple[int, str, int, float]] = {}
    for r in sorted((r for r in before if r[3] < cutoff), key=lambda r: (r[3], r[0])):
        firsts.setdefault(bucket(r), r)
    assert sorted(old_after) == sorted(firsts.values())
    assert catalog.compact_telemetry(now, keep_full_s=keep_full_s, bucket_s=bucket_s) == 0


def test_later_compactions_read_only_what_aged_since_the_last(catalog: Catalog) -> None:
    # Six hours of already-thinned history for 40 series, then one new minute ages out:
    # the second call must not re-read the six hours.
    old = [(f"h{s}", 0, T0 + 10 * k) for s in range(40) for k in range(6 * 360)]
    fresh = [(f"h{s}", 0, T0 + 6 * HOUR_S + k) for s in range(40) for k in range(60)]
    catalog.db.execute("BEGIN")
    catalog.db.conn.executemany("INSERT INTO telemetry (host, gpu_idx, time) VALUES (?, ?, ?)", old)
    catalog.db.execute("COMMIT")

    start = time.perf_counter()
    assert catalog.compact_telemetry(T0 + 7 * HOUR_S) == 0
    full_scan_s = time.perf_counter() - start
    catalog.db.execute("BEGIN")
    catalog.db.conn.executemany(
        "INSERT INTO telemetry (host, gpu_idx, time) VALUES (?, ?, ?)", fresh
    )
    catalog.db.execute("COMMIT")
    start = time.perf_counter()
    assert catalog.compact_telemetry(T0 + 8 * HOUR_S + 60) == 40 * 54
    incremental_s = time.perf_counter() - start
    assert incremental_s < full_scan_s / 5, (incremental_s, full_scan_s)
    assert catalog.telemetry_history("h0", 0, since=T0 + 6 * HOUR_S - 20) == [
        (T0 + 6 * HOUR_S - 20, None, None),
        (T0 + 6 * HOUR_S - 10, None, None),
        *((T0 + 6 * HOUR_S + k, None, None) for k in range(0, 60, 10)),
    ]


def test_watermark_follows_the_last_cutoff_per_bucket_size(catalog: Catalog) -> None:
    assert catalog.compact_telemetry(T0, keep_full_s=100) == 0
    catalog.compact_telemetry(T0 - 500, keep_full_s=100)  # an earlier `now` moves nothing
    catalog.compact_telemetry(T0, keep_full_s=100, bucket_s=60)
    assert sorted(catalog.db.execute("SELECT * FROM telemetry_compaction").fetchall()) == [
        (10.0, T0 - 100),
        (60.0, T0 - 100),
    ]


def test_max_age_drops_the_oldest_history(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    samples = [("a", telemetry(float(s), gpus=())) for s in range(0, 7200, 10)]
    catalog.record_telemetry(samples, received=T0 + 7190)
    deleted = catalog.compact_telemetry(T0 + 7200, max_age_s=2 * HOUR_S - 100)
    assert deleted == 10  # rows at T0 .. T0 + 90 are older than 7100 s
    times = [t for t, _, _ in catalog.telemetry_history("a", -1, since=0.0)]
    assert times[0] == T0 + 100
