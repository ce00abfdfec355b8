"""Metrics stored as chunked series: what goes in comes out, through the API and the SQL view."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import metric_count

from cvtui.catalog import Catalog
from cvtui.catalog.metric_store import CHUNK_POINTS, group_by_key
from cvtui.catalog.schema import MIGRATIONS, migrate
from cvtui.metrics_parse import MetricRow

RUN = "01JQ0000000000000000000000"


def fresh(tmp_path: Path, name: str = "c.db") -> Catalog:
    catalog = Catalog(tmp_path / name)
    catalog.set_file(RUN, "m.csv", sync_status="synced")
    catalog.set_file(RUN, "m.jsonl", sync_status="synced")
    return catalog


def store(catalog: Catalog, path: str, rows: list[MetricRow], *, replace: bool = False) -> None:
    offset, _ = catalog.parse_position(RUN, path)
    assert catalog.store_metrics(
        RUN, path, rows, expect_offset=offset, offset=offset + 1, state_json="{}", replace=replace
    )


def view_rows(catalog: Catalog) -> list[tuple]:
    return catalog.db.execute(
        "SELECT file, step, key, value, text FROM metrics WHERE run_id = ?", [RUN]
    ).fetchall()


def same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))


def test_a_csv_batch_round_trips_through_api_view_and_summary(tmp_path: Path) -> None:
    rows = [
        MetricRow(i, key, None if (i == 7 and key == "acc") else i * 0.5 + j, None)
        for i in range(3000)
        for j, key in enumerate(("loss", "acc", "lr"))
    ]
    rows[3 * 7 + 1] = MetricRow(7, "acc", None, "n/a")
    rows[3 * 9] = MetricRow(9, "loss", math.inf, None)
    with fresh(tmp_path) as catalog:
        store(catalog, "m.csv", rows)
        assert catalog.metric_keys(RUN) == ["acc", "loss", "lr"]
        assert metric_count(catalog, RUN) == 9000
        got = catalog.metric_rows(RUN, ["loss"])
        assert [(r[0], r[3]) for r in got] == [(r.step, r.value) for r in rows if r.key == "loss"]
        acc7 = next(r for r in catalog.metric_rows(RUN, ["acc"]) if r[0] == 7)
        assert acc7 == (7, "acc", "m.csv", None, "n/a")
        # 3000 values per key: the chunks hold them in order, 1024 at a time
        chunks = catalog.db.execute("SELECT count(*), max(count) FROM metric_chunks").fetchone()
        assert chunks == (3 * math.ceil(3000 / CHUNK_POINTS), CHUNK_POINTS)
        # the view expands to exactly the stored rows, infinity included
        expanded = sorted(view_rows(catalog), key=lambda r: (r[2], r[1]))
        wanted = sorted(
            (("m.csv", r.step, r.key, r.value, r.text) for r in rows), key=lambda r: (r[2], r[1])
        )
        assert len(expanded) == len(wanted)
        assert all(
            a[:3] == b[:3] and same(a[3], b[3]) and a[4] == b[4]
            for a, b in zip(expanded, wanted, strict=True)
        )
        summary = catalog.metric_summary(RUN)
        assert summary["lr"] == {
            "count": 3000,
            "min": 2.0,
            "max": 2999 * 0.5 + 2,
            "last": 2999 * 0.5 + 2,
            "last_step": 2999,
        }
        assert summary["acc"]["count"] == 2999
        assert summary["loss"]["max"] == math.inf
        assert catalog.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_line_by_line_appends_fill_chunks_instead_of_making_one_per_line(tmp_path: Path) -> None:
    with fresh(tmp_path) as catalog:
        for i in range(CHUNK_POINTS + 5):
            store(catalog, "m.csv", [MetricRow(i, "loss", float(i), None)])
        assert catalog.db.execute("SELECT count FROM metric_chunks ORDER BY seq").fetchall() == [
            (CHUNK_POINTS,),
            (5,),
        ]
        assert [r[3] for r in catalog.metric_rows(RUN)] == [float(i) for i in range(1029)]


def test_rewrite_replaces_a_files_rows_and_keys_that_vanished_go(tmp_path: Path) -> None:
    with fresh(tmp_path) as catalog:
        store(catalog, "m.csv", [MetricRow(i, k, 1.0, None) for i in range(5) for k in "ab"])
        store(catalog, "m.jsonl", [MetricRow(0, "a", 9.0, None)])
        store(catalog, "m.csv", [MetricRow(0, "c", 2.0, None)], replace=True)
        assert catalog.metric_keys(RUN) == ["a", "c"]
        assert metric_count(catalog, RUN, "m.csv") == 1
        assert catalog.metric_rows(RUN) == [
            (0, "a", "m.jsonl", 9.0, None),
            (0, "c", "m.csv", 2.0, None),
        ]


def test_jsonl_rows_with_varying_keys_group_in_order() -> None:
    rows = [
        MetricRow(0, "loss", 1.0, None),
        MetricRow(1, "loss", 0.9, None),
        MetricRow(1, "val", 0.5, None),
        MetricRow(2, "loss", 0.8, None),
    ]
    assert group_by_key(rows) == {
        "loss": ([0, 1, 2], [1.0, 0.9, 0.8], [None, None, None]),
        "val": ([1], [0.5], [None]),
    }
    csv_like = [MetricRow(i, k, float(i), None) for i in range(3) for k in ("a", "b")]
    assert group_by_key(csv_like) == {
        "a": ([0, 1, 2], [0.0, 1.0, 2.0], [None] * 3),
        "b": ([0, 1, 2], [0.0, 1.0, 2.0], [None] * 3),
    }


def test_rows_out_of_step_order_come_back_sorted_by_step(tmp_path: Path) -> None:
    with fresh(tmp_path) as catalog:
        store(catalog, "m.jsonl", [MetricRow(s, "x", float(s), None) for s in (3, 1, 2)])
        assert [r[0] for r in catalog.metric_rows(RUN)] == [1, 2, 3]
        assert catalog.metric_summary(RUN)["x"]["last"] == 3.0


def test_migration_6_moves_rows_of_an_older_catalog(tmp_path: Path) -> None:
    from sqlite_utils import Database

    path = tmp_path / "old.db"
    db = Database(sqlite3.connect(path, isolation_level=None))
    migrate(db, MIGRATIONS[:5])
    db.execute("INSERT INTO files (run_id, path, sync_status) VALUES (?, 'm.csv', 'synced')", [RUN])
    db.conn.executemany(
        "INSERT INTO metrics (run_id, file, step, key, value, text) VALUES (?, ?, ?, ?, ?, ?)",
        [(RUN, "m.csv", i, "loss", i / 10, None) for i in range(2000)]
        + [(RUN, "m.csv", 3, "note", None, "warmup")],
    )
    db.conn.close()
    with Catalog(path) as catalog:
        assert metric_count(catalog, RUN) == 2001
        assert catalog.metric_rows(RUN, ["note"]) == [(3, "note", "m.csv", None, "warmup")]
        assert [r[3] for r in catalog.metric_rows(RUN, ["loss"])] == [i / 10 for i in range(2000)]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["a", "b", "c"]),
                st.one_of(st.none(), st.floats(allow_nan=False, width=32)),
            ),
            max_size=40,
        ),
        min_size=1,
        max_size=8,
    )
)
def test_any_sequence_of_batches_reads_back_in_written_order(tmp_path: Path, batches) -> None:
    path = tmp_path / f"h{abs(hash(str(batches)))}.db"
    path.unlink(missing_ok=True)
    with Catalog(path) as catalog:
        catalog.set_file(RUN, "m.jsonl", sync_status="synced")
        written: list[MetricRow] = []
        step = 0
        for batch in batches:
            rows = []
            for key, value in batch:
                rows.append(MetricRow(step, key, value, None if value is not None else "x"))
                step += 1
            store(catalog, "m.jsonl", rows)
            written.extend(rows)
        got = catalog.metric_rows(RUN)
        assert [(r[0], r[1], r[3], r[4]) for r in got] == [
            (r.step, r.key, r.value, r.text) for r in sorted(written, key=lambda r: r.key)
        ]
        assert len(view_rows(catalog)) == len(written)
    path.unlink()


def duplicate_points(catalog: Catalog) -> list[tuple]:
    return catalog.db.execute(
        "SELECT run_id, file, key, step, count(*) FROM metrics"
        " GROUP BY run_id, file, key, step HAVING count(*) > 1"
    ).fetchall()


def test_a_step_written_again_replaces_its_value_never_a_second_row(tmp_path: Path) -> None:
    # A run resumed from a checkpoint logs steps 3 and 4 again, in a later batch and in one.
    with fresh(tmp_path) as catalog:
        store(catalog, "m.csv", [MetricRow(s, "loss", float(s), None) for s in range(5)])
        store(catalog, "m.csv", [MetricRow(s, "loss", s + 0.5, None) for s in (3, 4, 5)])
        store(catalog, "m.csv", [MetricRow(6, "loss", 6.0, None), MetricRow(6, "loss", 6.5, None)])
        assert duplicate_points(catalog) == []
        assert [(r[0], r[3]) for r in catalog.metric_rows(RUN)] == [
            (0, 0.0), (1, 1.0), (2, 2.0), (3, 3.5), (4, 4.5), (5, 5.5), (6, 6.5)
        ]  # fmt: skip
        assert catalog.metric_summary(RUN)["loss"]["last"] == 6.5
        _, state = catalog.parse_position(RUN, "m.csv")
        assert state is not None and json.loads(state)["replaced"] == 3


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    batches=st.lists(
        st.lists(st.tuples(st.sampled_from("ab"), st.integers(0, 30)), max_size=30),
        min_size=1,
        max_size=6,
    )
)
def test_any_batches_keep_the_last_value_of_each_key_and_step(tmp_path: Path, batches) -> None:
    path = tmp_path / f"d{abs(hash(str(batches)))}.db"
    path.unlink(missing_ok=True)
    with Catalog(path) as catalog:
        catalog.set_file(RUN, "m.jsonl", sync_status="synced")
        latest: dict[tuple[str, int], float] = {}
        n = 0
        for batch in batches:
            rows = []
            for key, step in batch:
                n += 1
                rows.append(MetricRow(step, key, float(n), None))
                latest[(key, step)] = float(n)
            store(catalog, "m.jsonl", rows)
        assert duplicate_points(catalog) == []
        got = {(r[1], r[0]): r[3] for r in catalog.metric_rows(RUN)}
        assert got == latest
        assert metric_count(catalog, RUN) == len(latest)
    path.unlink()
