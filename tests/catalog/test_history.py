"""Telemetry history tiers: raw samples, min/mean/max buckets, merges, expiry, migration."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_utils import Database

from cvtui.catalog import Catalog
from cvtui.catalog.history import chunk_window
from cvtui.catalog.history_codec import (
    concat_blocks,
    decode_raw,
    decode_tier,
    encode_raw,
    encode_raw_many,
    encode_tier,
    rebucket,
    take_points,
)
from cvtui.catalog.schema import MIGRATIONS, migrate
from cvtui.history_policy import DEFAULT_HISTORY, HistoryTier, check_tiers

from .samples import GIB, InventoryHost, gpu, telemetry

HOUR_S = 3600.0
T0 = 1_699_999_200.0  # a multiple of 3600 and of 10


def one_hz(catalog: Catalog, host: str, start: float, seconds: int, util=None) -> None:  # type: ignore[no-untyped-def]
    """Samples at 1 Hz in rows of 5 samples (record_telemetry; the engine groups 10 s)."""
    util = util or (lambda s: float(s % 100))
    for first in range(0, seconds, 5):
        batch = [
            (host, telemetry(float(s), gpus=(gpu(0, util=util(s)), gpu(1, util=None))))
            for s in range(first, min(first + 5, seconds))
        ]
        catalog.record_telemetry(batch, received=start + batch[-1][1].time)


def test_an_hour_past_the_raw_window_becomes_tiers_and_leaves_raw(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    one_hz(catalog, "a", T0, 7200)
    assert catalog.history_sizes()[0][1] == 7200 // 5

    report = catalog.compact_history(T0 + 7200, DEFAULT_HISTORY)
    assert (report.hours, report.raw_rows) == (1, 720)  # the first hour only: [T0, T0+1h)
    assert report.pieces == 3  # one per coarser tier
    steps = {tier: count for tier, count, _ in catalog.history_sizes()}
    assert steps == {"raw": 720, "10s": 1, "60s": 1, "3600s": 1}
    assert catalog.compact_history(T0 + 7200, DEFAULT_HISTORY).hours == 0  # idempotent

    # The compacted hour reads back as 10 s buckets: util s % 100 over s in [10k, 10k+10).
    block = catalog.history("a", T0, T0 + HOUR_S, step=10)
    row = block.row(0)
    assert row is not None
    assert len(block.times) == 360
    assert block.times[0] == T0 and block.times[-1] == T0 + 3590
    expected_mean = [np.mean([(10 * k + i) % 100 for i in range(10)]) for k in range(360)]
    assert np.allclose(block.mean[0, row], expected_mean)
    assert np.allclose(block.lo[0, row], [(10 * k) % 100 for k in range(360)])
    assert np.allclose(block.hi[0, row], [(10 * k + 9) % 100 for k in range(360)])
    assert (block.n[:, row] == 10).all() and np.allclose(block.secs[row], 10)
    # GPU 1 never reported util: NaN, while its memory is there.
    other = block.row(1)
    assert other is not None and np.isnan(block.mean[0, other]).all()
    assert np.allclose(block.mean[1, other], 10 * GIB)
    # The host's own series: CPU percent in the util field.
    host_row = block.row(-1)
    assert host_row is not None and np.allclose(block.mean[0, host_row], 12.5)

    # The second hour is still raw: a plot of the two hours reads the 10 s tier (the finest
    # reaching back that far) and the raw hour after it, bucketed at 10 s too.
    history = catalog.telemetry_history("a", 0, T0)
    assert [t for t, _, _ in history] == [T0 + 10 * k for k in range(720)]
    assert history[-1][1] == np.mean([s % 100 for s in range(7190, 7200)])
    # The last ten minutes: raw reaches back, every sample.
    recent = catalog.telemetry_history("a", 0, T0 + 7200 - 600)
    assert [t for t, _, _ in recent] == [T0 + s for s in range(6600, 7200)]


def test_tiers_expire_and_each_tier_keeps_its_own_retention(catalog: Catalog) -> None:
    tiers = (HistoryTier(0, 600), HistoryTier(10, 2 * HOUR_S), HistoryTier(60, 4 * HOUR_S))
    catalog.sync_hosts([InventoryHost("a")])
    one_hz(catalog, "a", T0, 3 * 3600)
    # Raw keeps 10 min: all three hours are tiered; the 10 s piece of the first hour is
    # already past its 2 h; T0 is 22:00 UTC, so the 1 min pieces of the first two hours
    # finished their day and were merged.
    catalog.compact_history(T0 + 3 * HOUR_S + 600, tiers)
    assert {t: c for t, c, _ in catalog.history_sizes()} == {"raw": 0, "10s": 2, "60s": 2}
    catalog.compact_history(T0 + 5 * HOUR_S + 1, tiers)
    assert {t: c for t, c, _ in catalog.history_sizes()} == {"raw": 0, "60s": 2}
    catalog.compact_history(T0 + 7 * HOUR_S + 1, tiers)
    assert {t: c for t, c, _ in catalog.history_sizes()} == {"raw": 0}
    # The finest tier reaching back to `since` is the one read.
    assert catalog.choose_step("a", T0, T0 + HOUR_S) == 0.0  # nothing left: any answers


def test_pieces_of_a_closed_day_merge_into_one_chunk_with_the_same_values(
    catalog: Catalog,
) -> None:
    tiers = (HistoryTier(0, 60), HistoryTier(10, 3600), HistoryTier(60, 30 * 86400))
    catalog.sync_hosts([InventoryHost("a")])
    day = math.floor(T0 / 86400) * 86400
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 100, 3 * 3600)
    start = day + 86400 - 2 * HOUR_S  # two hours before midnight, one after
    one_hz(catalog, "a", start, 3 * 3600, util=lambda s: round(float(values[s]), 1))
    catalog.compact_history(start + 2 * HOUR_S + 120, tiers)  # the day's two hours: closed
    rows = catalog.db.execute(
        "SELECT start, points FROM telemetry_chunks WHERE step = 60 ORDER BY start"
    ).fetchall()
    assert rows == [(start, 120)]  # two hourly pieces, merged once the day was over
    merged = catalog.history("a", start, start + 2 * HOUR_S, step=60)
    row = merged.row(0)
    assert row is not None
    expected = values[: 2 * 3600].reshape(120, 60)
    assert np.allclose(merged.mean[0, row], expected.mean(axis=1), atol=0.11)
    assert np.allclose(merged.lo[0, row], expected.min(axis=1), atol=0.11)
    assert np.allclose(merged.hi[0, row], expected.max(axis=1), atol=0.11)


def test_tier_choice_follows_the_range(catalog: Catalog) -> None:
    catalog.sync_hosts([InventoryHost("a")])
    one_hz(catalog, "a", T0, 3 * 3600)
    catalog.compact_history(T0 + 3 * HOUR_S, DEFAULT_HISTORY)
    now = T0 + 3 * HOUR_S
    assert catalog.choose_step("a", now - 600, now) == 0.0  # raw reaches back 10 min
    assert catalog.choose_step("a", T0, now) == 10.0  # raw does not reach T0, 10 s does
    assert catalog.choose_step("a", T0 - 86400, now) == 3600.0  # nothing does: the coarsest
    assert catalog.choose_step("a", T0, now, points=100) == 60.0  # 3 h in >= 100 buckets


def test_old_telemetry_rows_move_into_raw_history(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path, isolation_level=None)
    db = Database(conn)
    migrate(db, MIGRATIONS[:6])
    rows = [
        ("a", idx, T0 + s * 10.0, None if idx < 0 else 50.0 + s, 2**30, None, 100.0, 7.5)
        for s in range(720)  # two hours thinned to 10 s, as version 6 kept it
        for idx in (-1, 0)
    ]
    conn.executemany(
        "INSERT INTO telemetry (host, gpu_idx, time, util, mem_used, temperature, power, "
        "cpu_percent) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )
    conn.execute("INSERT INTO hosts (name, state) VALUES ('a', 'healthy')")
    conn.close()
    with Catalog(path) as catalog:
        assert catalog.schema_version() == len(MIGRATIONS)
        assert catalog.history_sizes()[0][1] == 2  # one raw row per host and hour
        history = catalog.telemetry_history("a", 0, T0, T0 + 2 * HOUR_S)
        assert [(t, u) for t, u, _ in history] == [(T0 + s * 10.0, 50.0 + s) for s in range(720)]
        assert catalog.telemetry_history("a", -1, T0)[0][1] == 7.5  # CPU percent
        # The next compaction tiers them like any raw history.
        catalog.compact_history(T0 + 4 * HOUR_S, DEFAULT_HISTORY)
        block = catalog.history("a", T0, T0 + 2 * HOUR_S, step=3600)
        assert block.row(0) is not None
        assert np.allclose(block.mean[0, block.row(0)], [50 + 179.5, 50 + 539.5])


def test_tier_lists_are_checked() -> None:
    assert check_tiers(DEFAULT_HISTORY) is None
    assert check_tiers([]) == "needs at least one tier"
    assert "every sample" in (check_tiers([(10, 60)]) or "")
    assert "must grow" in (check_tiers([(0, 60), (10, 600), (10, 900)]) or "")
    assert "keep longer" in (check_tiers([(0, 600), (10, 60)]) or "")
    assert "multiple" in (check_tiers([(0, 60), (10, 600), (15, 900)]) or "")
    assert chunk_window(10) == 3600 and chunk_window(60) == 86400
    assert chunk_window(3600) == 30 * 86400


def test_raw_blocks_round_trip_and_the_numpy_encoder_writes_the_same_bytes() -> None:
    times = [T0, T0 + 1.0]
    values = [[[10.0, None], [55.5, 56.0]], [[2**30, 2**31], [None, 5]], [[None, None]] * 2]
    values.append([[100.0, 101.2], [250.0, 251.0]])
    blob = encode_raw([-1, 0], times, values)
    block = decode_raw([blob])
    assert block.series.tolist() == [-1, 0] and block.times.tolist() == times
    assert block.mean[0, 0, 0] == 10.0 and math.isnan(block.mean[0, 0, 1])
    assert block.mean[1, 0, 1] == 2**31 and block.mean[1, 1, 1] == 0  # whole MiB
    assert block.mean[3, 0, 1] == pytest.approx(101.2)
    as_array = np.array([[[np.nan if v is None else v for v in s] for s in f] for f in values])
    many = encode_raw_many([-1, 0], np.array([times]), as_array[:, None])
    assert many == [blob]


sample_st = st.lists(
    st.tuples(
        st.floats(0, 3 * HOUR_S, allow_nan=False),
        st.one_of(st.none(), st.floats(0, 100, allow_nan=False)),
    ),
    min_size=1,
    max_size=200,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=sample_st, split=st.integers(0, 200))
def test_buckets_are_the_same_from_samples_or_from_finer_pieces(
    samples: list[tuple[float, float | None]], split: int
) -> None:
    samples = sorted(samples, key=lambda sample: sample[0])
    times = [T0 + t for t, _ in samples]
    count = len(samples)
    utils = [[u for _, u in samples]]
    blob = encode_raw([0], times, [utils, [[2**20] * count], [[None] * count], [[None] * count]])
    raw = decode_raw([blob])
    direct = rebucket(raw, 60)
    # Cut the samples anywhere, bucket each side at 10 s, store, read, merge to 60 s.
    cut = min(split, len(samples))
    parts = []
    for chunk in (slice(0, cut), slice(cut, None)):
        part = take_points(raw, chunk)
        if len(part.times):
            parts.append(decode_tier(encode_tier(rebucket(part, 10))))
    merged = rebucket(concat_blocks(parts, 10), 60)
    assert merged.times.tolist() == direct.times.tolist()
    assert merged.n.tolist() == direct.n.tolist()
    for ours, theirs in ((merged.lo, direct.lo), (merged.hi, direct.hi)):
        assert np.allclose(ours, theirs, equal_nan=True, atol=0.051)
    assert np.allclose(merged.mean, direct.mean, equal_nan=True, atol=0.1)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(samples=sample_st)
def test_buckets_hold_the_count_min_mean_and_max_of_their_samples(
    samples: list[tuple[float, float | None]],
) -> None:
    """rebucket against plain arithmetic per bucket, whether a bucket has one sample (passed
    through as it is) or several (merged), and wherever the first shared bucket falls."""
    samples = sorted(samples, key=lambda sample: sample[0])
    utils = [[u for _, u in samples]]
    count = len(samples)
    times = [T0 + t for t, _ in samples]
    blob = encode_raw([0], times, [utils, [[2**20] * count], [[None] * count], [[None] * count]])
    block = rebucket(decode_raw([blob]), 60)
    buckets: dict[float, list[float]] = {}
    for t, util in samples:
        known = buckets.setdefault(math.floor((T0 + t) / 60) * 60.0, [])
        if util is not None:
            known.append(util)  # raw blocks keep a tenth of a percent: within 0.05 of it
    assert block.times.tolist() == sorted(buckets)
    for column, start in enumerate(sorted(buckets)):
        values = buckets[start]
        assert block.n[0, 0, column] == len(values)
        if values:
            assert block.lo[0, 0, column] == pytest.approx(min(values), abs=0.051)
            assert block.hi[0, 0, column] == pytest.approx(max(values), abs=0.051)
            assert block.mean[0, 0, column] == pytest.approx(np.mean(values), abs=0.051)
        else:
            assert math.isnan(block.mean[0, 0, column])


def test_one_gpu_read_alone_is_the_same_as_read_with_its_host(catalog: Catalog) -> None:
    """telemetry_history decodes one series; the host read (the host screen's) decodes all."""
    catalog.sync_hosts([InventoryHost("a")])
    one_hz(catalog, "a", T0, 3 * 3600)
    catalog.compact_history(T0 + 3 * HOUR_S, DEFAULT_HISTORY)
    now = T0 + 3 * HOUR_S
    for since, points in ((T0, None), (T0, 100), (now - 600, None), (T0 - 86400, None)):
        every = catalog.host_telemetry_history("a", since, now, points=points)
        assert set(every) == {-1, 0, 1}
        for index in (-1, 0, 1):
            alone = catalog.telemetry_history("a", index, since, now, points=points)
            assert alone == every[index] and alone
    assert catalog.telemetry_history("a", 7, T0, now) == []  # no such GPU


def test_version_1_tier_blocks_are_still_read() -> None:
    """Blocks written before counts were kept per field: one count stands for all four."""
    import struct
    import zlib

    series, counts = np.array([0], "<i2"), np.array([[10, 7]], "<u4")
    payload = b"".join(
        [
            series.tobytes(),
            np.array([0, 1], "<u4").tobytes(),  # bucket offsets
            counts.tobytes(),
            np.array([[100, 70]], "<u4").tobytes(),  # tenths of a second
            np.array([[[10, 20]], [[15, 25]], [[20, 30]]], "<u2").tobytes(),  # util min/mean/max
            np.array([[[1024, 1024]]] * 3, "<u4").tobytes(),  # MiB
            np.full((3, 1, 2), 0xFFFF, "<u2").tobytes(),  # no temperature
            np.array([[[1000, 1000]]] * 3, "<u2").tobytes(),  # 100.0 W
        ]
    )
    head = struct.pack("<2sBBHIqd", b"CT", 1, 1, 1, 2, 170_000_000, 10.0)
    block = decode_tier(head + zlib.compress(payload))
    assert block.times.tolist() == [1_700_000_000.0, 1_700_000_010.0]
    assert block.n.tolist() == [[[10, 7]]] * 4 and block.secs.tolist() == [[10.0, 7.0]]
    assert block.mean[0, 0].tolist() == [1.5, 2.5] and block.mean[1, 0, 0] == GIB
    assert np.isnan(block.mean[2]).all() and block.hi[3, 0, 1] == 100.0
