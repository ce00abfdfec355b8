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
