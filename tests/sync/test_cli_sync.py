"""`cvtui files`, `metrics`, `compare`, `sync` on a catalog filled by a real sync."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from support import add_finished_run

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.cli.settings import printable
from cvtui.cli.sync import lower_is_better, metric_table
from cvtui.engine.sync import RunSync

from .sources import InProcessSource

OTHER_RUN = "02hzzsync0test0run0000000b"


def add_run(catalog: Catalog, run_id: str, name: str) -> None:
    add_finished_run(catalog, run_id, name, {"outputs": ["*.csv", "*.log"]})


def fill(home: Path, source: InProcessSource, run_id: str, csv_text: str, name: str) -> None:
    run_dir = source.run_dir(run_id)
    (run_dir / "metrics.csv").write_text(csv_text)
    (run_dir / "output.log").write_text("hello\n")
    (run_dir / "line\nbreak.log").write_text("odd\n")
    with Catalog.open_home(home) as catalog:
        add_run(catalog, run_id, name)
        asyncio.run(RunSync(catalog, home, source, run_id, ["*.csv", "*.log"]).run(final=True))


@pytest.fixture
def filled(home: Path, tmp_path: Path) -> tuple[Path, str, str]:
    source = InProcessSource(tmp_path / "host")
    first, second = "01hzzsync0test0run0000000a", OTHER_RUN
    fill(
        home,
        source,
        first,
        "step,loss,acc,phase\n0,1.0,0.1,warm\n10,0.5,0.4,\n20,0.7,0.3,main\n",
        "a",
    )
    fill(home, source, second, "step,loss,acc\n0,0.9,0.2\n10,0.2,0.6\n", "b")
    return home, first, second


def cvtui(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--home", str(home), *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_files_table_and_json(filled: tuple[Path, str, str]) -> None:
    home, first, _ = filled
    code, out = cvtui(home, "files", first[:12], "--json")
    assert code == 0
    files = {f["path"]: f for f in json.loads(out)}
    assert set(files) == {"metrics.csv", "output.log", "line\nbreak.log"}
    assert all(f["state"] == "synced" and f["hash"] for f in files.values())
    assert files["output.log"]["size"] == files["output.log"]["synced_size"] == 6
    code, out = cvtui(home, "files", first)
    lines = out.splitlines()
    assert lines[0].split() == ["STATE", "SIZE", "SYNCED", "STRATEGY", "HASH", "PATH"]
    assert any(line.endswith("line\\nbreak.log") for line in lines)  # one file, one line
    assert len(lines) == 4


def test_metrics_as_table_csv_and_json(filled: tuple[Path, str, str]) -> None:
    home, first, _ = filled
    code, out = cvtui(home, "metrics", first, "--csv")
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [
        ["step", "acc", "loss", "phase"],
        ["0", "0.1", "1.0", "warm"],
        ["10", "0.4", "0.5", ""],
        ["20", "0.3", "0.7", "main"],
    ]
    code, out = cvtui(home, "metrics", first, "--key", "loss", "--json")
    assert json.loads(out) == [
        {"step": 0, "loss": 1.0},
        {"step": 10, "loss": 0.5},
        {"step": 20, "loss": 0.7},
    ]
    code, out = cvtui(home, "metrics", first, "--key", "loss")
    assert out.split() == ["step", "loss", "0", "1", "10", "0.5", "20", "0.7"]


def test_an_unknown_key_is_a_one_line_error(filled: tuple[Path, str, str]) -> None:
    home, first, _ = filled
    result = CliRunner().invoke(main, ["--home", str(home), "metrics", first, "--key", "bleu"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("cvtui: no metric 'bleu' in run")


def test_compare_last_and_best_side_by_side(filled: tuple[Path, str, str]) -> None:
    home, first, second = filled
    code, out = cvtui(home, "compare", first, second, "--json")
    assert code == 0
    figures = json.loads(out)
    assert figures[first]["loss"]["last"] == 0.7 and figures[first]["loss"]["best"] == 0.5
    assert figures[second]["acc"]["best"] == 0.6 and figures[second]["acc"]["last_step"] == 10
    code, out = cvtui(home, "compare", first, second, "--key", "loss")
    rows = out.splitlines()
    assert rows[1].split() == ["loss", "0.7", "(best", "0.5)", "0.2", "(best", "0.2)*"]
    result = CliRunner().invoke(main, ["--home", str(home), "compare", first])
    assert result.exit_code == 2 and "at least two runs" in result.output


def test_sync_needs_a_run_or_all(home: Path) -> None:
    result = CliRunner().invoke(main, ["--home", str(home), "sync"])
    assert result.exit_code == 2 and "name at least one RUN, or --all" in result.output


def test_pivot_names_a_key_in_two_files_by_file() -> None:
    columns, table = metric_table(
        [
            (1, "loss", "a.csv", 1.0, None),
            (1, "loss", "b.jsonl", 2.0, None),
            (2, "acc", "a.csv", None, "x"),
        ]
    )
    assert columns == ["a.csv:loss", "b.jsonl:loss", "acc"]
    assert table == [{"step": 1, "a.csv:loss": 1.0, "b.jsonl:loss": 2.0}, {"step": 2, "acc": "x"}]
    assert lower_is_better("val_loss") and lower_is_better("WER") and not lower_is_better("acc")
    assert printable("a\nb") == "a\\nb" and printable("plain.log") == "plain.log"
