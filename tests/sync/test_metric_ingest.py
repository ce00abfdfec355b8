"""Metric ingestion of hostile files: changed headers, rewrites, a line over the read window."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from support import add_finished_run, metric_count

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.engine.ingest import READ_BYTES, ingest_file

from .sources import RUN_ID


def duplicate_points(catalog: Catalog) -> list[tuple]:
    return catalog.db.execute(
        "SELECT run_id, file, key, step, count(*) FROM metrics"
        " GROUP BY run_id, file, key, step HAVING count(*) > 1"
    ).fetchall()


def stored(catalog: Catalog) -> list[tuple]:
    return [(r[0], r[1], r[3], r[4]) for r in catalog.metric_rows(RUN_ID)]


def files_json(home: Path) -> dict[str, dict]:
    result = CliRunner().invoke(
        main, ["--home", str(home), "files", RUN_ID, "--json"], catch_exceptions=False
    )
    return {f["path"]: f for f in json.loads(result.output)}


def test_an_appended_header_with_other_columns_maps_the_rows_after_it(
    catalog: Catalog, home: Path
) -> None:
    add_finished_run(catalog, RUN_ID, "r")
    local = home / "metrics.csv"
    local.write_text("step,loss\n1,0.5\n2,0.4\n")
    catalog.set_file(RUN_ID, "metrics.csv", sync_status="synced")
    ingest_file(catalog, RUN_ID, "metrics.csv", local)
    with open(local, "a") as fh:
        fh.write("step,acc,extra\n2,0.7,1\n3,0.8,2\n")
    ingest_file(catalog, RUN_ID, "metrics.csv", local)
    assert sorted(stored(catalog)) == [
        (1, "loss", 0.5, None),
        (2, "acc", 0.7, None),
        (2, "extra", 1.0, None),
        (2, "loss", 0.4, None),
        (3, "acc", 0.8, None),
        (3, "extra", 2.0, None),
    ]
    assert duplicate_points(catalog) == []
    [warning] = files_json(home)["metrics.csv"]["warnings"]
    assert warning == "the CSV header changed 1 time (now: step,acc,extra)"
    result = CliRunner().invoke(main, ["--home", str(home), "files", RUN_ID])
    line = next(li for li in result.output.splitlines() if "metrics.csv" in li)
    assert "warning: the CSV header changed 1 time" in line


def test_a_rewritten_file_with_another_header_is_parsed_again(catalog: Catalog, home: Path) -> None:
    local = home / "metrics.csv"
    local.write_text("step,loss\n" + "".join(f"{s},{s / 10}\n" for s in range(50)))
    catalog.set_file(RUN_ID, "metrics.csv", sync_status="synced")
    ingest_file(catalog, RUN_ID, "metrics.csv", local)
    tmp = home / "metrics.tmp"  # pandas writes the whole frame again, with other columns
    tmp.write_text("step,acc\n" + "".join(f"{s},{s / 100}\n" for s in range(60)))
    tmp.replace(local)
    ingest_file(catalog, RUN_ID, "metrics.csv", local)
    assert catalog.metric_keys(RUN_ID) == ["acc"]
    assert metric_count(catalog, RUN_ID) == 60 and duplicate_points(catalog) == []


def test_a_line_longer_than_the_read_window_is_skipped_with_a_warning(
    catalog: Catalog, home: Path
) -> None:
    add_finished_run(catalog, RUN_ID, "r")
    local = home / "log.jsonl"
    with open(local, "wb") as fh:
        fh.write(b'{"step": 1, "loss": 0.5}\n')
        fh.write(b'{"step": 2, "blob": "' + b"x" * (READ_BYTES + 1000) + b'"}\n')
        fh.write(b'{"step": 3, "loss": 0.25}\n')
    catalog.set_file(RUN_ID, "log.jsonl", sync_status="synced")
    ingest_file(catalog, RUN_ID, "log.jsonl", local)
    with open(local, "ab") as fh:
        fh.write(b'{"step": 4, "loss": 0.125}\n')
    ingest_file(catalog, RUN_ID, "log.jsonl", local)
    assert stored(catalog) == [
        (1, "loss", 0.5, None),
        (3, "loss", 0.25, None),
        (4, "loss", 0.125, None),
    ]
    offset, _ = catalog.parse_position(RUN_ID, "log.jsonl")
    assert offset == local.stat().st_size
    warnings = files_json(home)["log.jsonl"]["warnings"]
    assert READ_BYTES == 16 << 20
    assert warnings == ["1 line over 16.0MiB skipped"]
