"""CSV and JSONL to metric rows, incrementally: any split of the bytes gives the same rows."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from cvtui.metrics_parse import CSV, JSONL, MetricRow, ParseState, metrics_kind, parse_new


def parse_in_pieces(
    kind: str, data: bytes, cuts: list[int], *, final: bool = True
) -> tuple[list[MetricRow], ParseState]:
    """Feed data as a growing file would show it: at each cut, what follows the parsed offset."""
    state = ParseState(kind)
    rows: list[MetricRow] = []
    for cut in [*sorted(cuts), len(data)]:
        new_rows, state = parse_new(state, data[state.offset : cut])
        rows += new_rows
    new_rows, state = parse_new(state, data[state.offset :], final=final)
    return rows + new_rows, state


cells = st.one_of(
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f:.6g}"),
    st.sampled_from(["", "nan", "train", "val", "ok", "1e-3", " 7 "]),
)


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    columns = draw(
        st.lists(
            st.sampled_from(["loss", "acc", "lr", "phase", "gn"]),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    if draw(st.booleans()):
        columns = ["step", *columns]
    rows = draw(
        st.lists(st.lists(cells, min_size=len(columns), max_size=len(columns)), max_size=30)
    )
    lines = [",".join(columns)] + [",".join(r) for r in rows]
    return ("\n".join(lines) + "\n").encode()


@settings(max_examples=200, deadline=None)
@given(csv_files(), st.lists(st.integers(0, 2000), max_size=8))
def test_csv_rows_do_not_depend_on_how_the_file_grew(data: bytes, cuts: list[int]) -> None:
    whole, state = parse_in_pieces(CSV, data, [])
    pieces, state2 = parse_in_pieces(CSV, data, [c for c in cuts if c < len(data)])
    assert pieces == whole
    assert state2 == state and state.offset == len(data)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["step", "loss", "acc", "note", "ok"]),
            st.one_of(
                st.integers(-100, 100),
                st.floats(allow_nan=False, allow_infinity=False),
                st.text(max_size=5),
                st.booleans(),
                st.none(),
            ),
        ),
        max_size=20,
    ),
    st.lists(st.integers(0, 2000), max_size=8),
)
def test_jsonl_rows_do_not_depend_on_how_the_file_grew(
    objects: list[dict], cuts: list[int]
) -> None:
    data = "".join(json.dumps(o) + "\n" for o in objects).encode()
    whole, _ = parse_in_pieces(JSONL, data, [])
    pieces, state = parse_in_pieces(JSONL, data, [c for c in cuts if c < len(data)])
    assert pieces == whole
    assert state.rows == len(objects)


def test_csv_step_column_text_cells_and_sparse_columns() -> None:
    data = b"step,loss,phase,val_acc\n10,0.5,train,\n20,0.25,val,0.9\n30,nan,train,\n"
    rows, state = parse_new(ParseState(CSV), data)
    assert rows == [
        MetricRow(10, "loss", 0.5, None),
        MetricRow(10, "phase", None, "train"),
        MetricRow(20, "loss", 0.25, None),
        MetricRow(20, "phase", None, "val"),
        MetricRow(20, "val_acc", 0.9, None),
        MetricRow(30, "loss", None, "nan"),
        MetricRow(30, "phase", None, "train"),
    ]
    assert state.columns == ("step", "loss", "phase", "val_acc") and state.rows == 3


def test_csv_without_step_uses_the_row_number() -> None:
    rows, _ = parse_new(ParseState(CSV), b"loss,acc\n1,2\n3,4\n")
    assert [(r.step, r.key, r.value) for r in rows] == [
        (0, "loss", 1.0),
        (0, "acc", 2.0),
        (1, "loss", 3.0),
        (1, "acc", 4.0),
    ]


def test_only_complete_lines_are_consumed_until_final() -> None:
    rows, state = parse_new(ParseState(CSV), b"step,loss\n1,0.5\n2,0.2")
    assert [r.step for r in rows] == [1] and state.offset == len(b"step,loss\n1,0.5\n")
    rows, state = parse_new(state, b"2,0.2", final=True)
    assert rows == [MetricRow(2, "loss", 0.2, None)] and state.offset == len(
        b"step,loss\n1,0.5\n2,0.2"
    )


def test_a_header_that_gains_a_column_mid_file() -> None:
    data = b"step,loss\n1,0.5\nstep,loss,acc\n2,0.4,0.7\n"
    rows, state = parse_new(ParseState(CSV), data)
    assert rows == [
        MetricRow(1, "loss", 0.5, None),
        MetricRow(2, "loss", 0.4, None),
        MetricRow(2, "acc", 0.7, None),
    ]
    assert state.columns == ("step", "loss", "acc")


def test_not_utf8_lines_are_kept_and_counted() -> None:
    data = b"step,phase\n1,caf\xe9\n2,ok\n"
    rows, state = parse_new(ParseState(CSV), data)
    assert rows == [MetricRow(1, "phase", None, "caf\ufffd"), MetricRow(2, "phase", None, "ok")]
    assert state.not_utf8 == 1


def test_bom_crlf_blank_lines_extra_cells_duplicate_names() -> None:
    data = "\ufeffstep,loss,loss,\r\n\r\n1,2,3,4,5\r\n".encode()
    rows, state = parse_new(ParseState(CSV), data)
    assert state.columns == ("step", "loss", "loss.1", "col3")
    assert [(r.key, r.value) for r in rows] == [
        ("loss", 2.0),
        ("loss.1", 3.0),
        ("col3", 4.0),
        ("col4", 5.0),
    ]


def test_jsonl_nested_values_bools_and_bad_lines() -> None:
    data = (
        b'{"step": 5, "val": {"acc": 0.5}, "done": true, "tags": [1]}\n'
        b'not json\n[1, 2]\n{"loss": 1}\n'
    )
    rows, state = parse_new(ParseState(JSONL), data)
    assert rows == [
        MetricRow(5, "val.acc", 0.5, None),
        MetricRow(5, "done", 1.0, "true"),
        MetricRow(5, "tags", None, "[1]"),
        MetricRow(1, "loss", 1.0, None),
    ]
    assert state.bad_lines == 2 and state.rows == 2


def test_numbers_beyond_sqlite_integers_become_floats() -> None:
    rows, _ = parse_new(ParseState(CSV), b"step,x\n" + b"9" * 30 + b"," + b"9" * 400 + b"\n")
    [row] = rows
    assert isinstance(row.step, float) and row.value == float("inf")


def test_state_round_trips_through_json() -> None:
    _, state = parse_new(ParseState(CSV), b"step,loss\n1,2\n")
    assert ParseState.from_json(state.to_json()) == state


def test_metrics_kind_by_suffix() -> None:
    assert metrics_kind("a/b/metrics.CSV") == CSV
    assert metrics_kind("log.jsonl") == JSONL and metrics_kind("x.ndjson") == JSONL
    assert metrics_kind("output.log") is None and metrics_kind("model.pt") is None


def test_a_changed_header_starts_a_new_column_mapping() -> None:
    # A logger restarted with other columns: its header is a header, not a row of `loss` text.
    data = b"step,loss\n1,0.5\n2,0.4\nstep,acc,extra\n3,0.7,1\n4,0.8,2\n"
    rows, state = parse_new(ParseState(CSV), data)
    assert rows == [
        MetricRow(1, "loss", 0.5, None),
        MetricRow(2, "loss", 0.4, None),
        MetricRow(3, "acc", 0.7, None),
        MetricRow(3, "extra", 1.0, None),
        MetricRow(4, "acc", 0.8, None),
        MetricRow(4, "extra", 2.0, None),
    ]
    assert state.columns == ("step", "acc", "extra") and state.header_changes == 1
    assert state.rows == 4


def test_a_repeated_header_is_not_a_row_and_not_a_change() -> None:
    data = b"step,loss\n1,0.5\nstep,loss\n2,0.4\n"
    rows, state = parse_new(ParseState(CSV), data)
    assert [(r.step, r.key, r.value) for r in rows] == [(1, "loss", 0.5), (2, "loss", 0.4)]
    assert state.header_changes == 0


def test_a_narrower_header_sharing_no_name_is_still_a_header() -> None:
    data = b"epoch,loss,acc\n1,0.5,0.1\nstep,bleu\n7,30.5\n"
    rows, state = parse_new(ParseState(CSV), data)
    assert rows[-1] == MetricRow(7, "bleu", 30.5, None)
    assert state.columns == ("step", "bleu") and state.header_changes == 1


def test_text_rows_of_a_text_column_stay_data() -> None:
    # Same width, no shared name: a row of words is data in a CSV of words.
    data = b"phase,status\ntrain,ok\nval,done\n"
    rows, state = parse_new(ParseState(CSV), data)
    assert [(r.step, r.key, r.text) for r in rows] == [
        (0, "phase", "train"),
        (0, "status", "ok"),
        (1, "phase", "val"),
        (1, "status", "done"),
    ]
    assert state.header_changes == 0


def test_a_line_over_the_window_is_skipped_and_parsing_goes_on() -> None:
    window = 64
    head = b"step,loss\n1,0.5\n"
    long_line = b"2," + b"9" * 200  # no newline within the window
    rows, state = parse_new(ParseState(CSV), head, max_line=window)
    assert [r.step for r in rows] == [1]
    # The window holds only part of the long line: it is skipped, not waited for.
    rows, state = parse_new(state, long_line[:window], max_line=window)
    assert rows == [] and state.long_lines == 1 and state.offset == len(head) + window
    rest = long_line[window:] + b"\n3,0.25\n"
    rows, state = parse_new(state, rest, max_line=window)
    assert rows == [MetricRow(3, "loss", 0.25, None)]
    assert state.offset == len(head) + len(long_line) + len(b"\n3,0.25\n")
    assert state.long_lines == 1 and state.rows == 2


def test_a_long_jsonl_line_still_being_written_is_skipped_to_its_end() -> None:
    window = 32
    state = ParseState(JSONL)
    rows, state = parse_new(state, b'{"loss": "' + b"x" * 40, max_line=window)
    assert rows == [] and state.long_lines == 1
    rows, state = parse_new(state, b"x" * 10, max_line=window)  # still no end of line
    assert rows == [] and state.long_lines == 1
    rows, state = parse_new(state, b'xx"}\n{"loss": 1}\n', max_line=window)
    assert rows == [MetricRow(0, "loss", 1.0, None)] and state.long_lines == 1
