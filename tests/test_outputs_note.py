"""An ended run that produced no output, or no metric file, says so and which globs missed."""

from __future__ import annotations

from typing import Any

from cvtui.cli.follow import last_states
from cvtui.outputs_note import outputs_note


def run(state: str = "succeeded", unmatched: list[str] | None = None) -> dict[str, Any]:
    return {"id": "01abcdefghijkl", "state": state, "outputs_unmatched": unmatched}


def files(*paths: str) -> list[dict[str, Any]]:
    return [{"path": path} for path in paths]


def test_no_output_at_all_names_the_globs_that_matched_nothing() -> None:
    note = outputs_note(run(unmatched=["*.csv", "*.pt"]), files(".cvtui/output.log"))
    assert note is not None
    assert note.startswith("run 01abcdefghij produced no output file: none of *.csv, *.pt")
    assert "absolute log_dir" in note


def test_outputs_without_a_metric_file_say_so() -> None:
    note = outputs_note(run(unmatched=["*.csv"]), files(".cvtui/output.log", "ckpt/last.pt"))
    assert note == (
        "run 01abcdefghij wrote no metric file (CSV or JSONL) among its outputs; "
        "nothing matched *.csv"
    )


def test_nothing_to_say_while_running_or_when_all_is_there() -> None:
    assert outputs_note(run("running", ["*.csv"]), files()) is None
    assert outputs_note(run(unmatched=None), files()) is None  # never listed
    assert outputs_note(run(unmatched=[]), files("logs/m.csv")) is None
    assert outputs_note(run(unmatched=["*.pt"]), files("m.csv")) == (
        "output globs of run 01abcdefghij that matched nothing: *.pt"
    )


def test_a_tail_shows_each_redrawn_line_in_its_last_state() -> None:
    log = b"start\n 10%|#\r 50%|#####\r100%|##########\ndone\r\nunfinished\rbar"
    assert last_states(log) == [b"start\n", b"100%|##########\n", b"done\n", b"bar"]
    assert last_states(b"a\nb\n") == [b"a\n", b"b\n"]
    assert last_states(b"") == []
