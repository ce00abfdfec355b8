"""Output files to metric rows, incrementally: a CSV with a header, or JSON lines, as they grow.

Pure functions over bytes and a ParseState: the caller feeds the bytes that follow
``state.offset`` and gets the rows of every complete line plus the state to feed next time.
Only whole lines are consumed, so a line written in two pieces is parsed once, whole; a line
longer than the caller's read window is skipped (and counted) instead of waited for forever.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

from cvtui.units import size

CSV = "csv"
JSONL = "jsonl"
STEP_KEY = "step"
MAX_FLATTEN_DEPTH = 3  # {"val": {"acc": 1}} -> key "val.acc"
MAX_TEXT_CHARS = 1000  # a text cell longer than this is cut
SQLITE_INT_LIMIT = 1 << 63
MAX_LINE_BYTES = 16 << 20  # a line this long without its newline is skipped, never parsed


class MetricRow(NamedTuple):
    """One value of one key at one step (a NamedTuple: millions are built per second)."""

    step: float | int  # the step column's value, else the row number (0 for the first row)
    key: str
    value: float | None  # None when the cell is not a number (or is NaN)
    text: str | None  # the cell as written when it is not a plain number


@dataclass(frozen=True)
class ParseState:
    """Where parsing of one file stands; stored with the file so it resumes after restarts."""

    kind: str  # CSV or JSONL
    offset: int = 0  # bytes consumed, always just after a newline (or the end when final)
    rows: int = 0  # data rows seen: the row number of the next one
    columns: tuple[str, ...] = ()  # the CSV header in force; () until it is read
    bad_lines: int = 0  # lines that are not a CSV row or not a JSON object
    not_utf8: int = 0  # lines with bytes that are not UTF-8 (kept, decoded with U+FFFD)
    header_changes: int = 0  # CSV header lines after the first that named other columns
    long_lines: int = 0  # lines skipped for being longer than the read window
    in_long_line: bool = False  # offset is inside a skipped line: drop bytes up to its newline

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ParseState:
        data = json.loads(text)
        data["columns"] = tuple(data.get("columns", ()))
        return cls(**data)

    @property
    def step_column(self) -> int | None:
        lowered = [c.lower() for c in self.columns]
        return lowered.index(STEP_KEY) if STEP_KEY in lowered else None


def _times(count: int, what: str) -> str:
    return f"{count} {what}" if count == 1 else f"{count} {what}s"


def parse_warnings(state: ParseState, replaced: int = 0) -> list[str]:
    """What a user should know about how a file was parsed, one phrase each (`cvtui files`)."""
    found = []
    if state.header_changes:
        count = _times(state.header_changes, "time")
        found.append(f"the CSV header changed {count} (now: {','.join(state.columns)})")
    if state.long_lines:
        found.append(f"{_times(state.long_lines, 'line')} over {size(MAX_LINE_BYTES)} skipped")
    if state.bad_lines:
        what = "CSV row" if state.kind == CSV else "JSON object"
        found.append(f"{_times(state.bad_lines, 'line')} not a {what} skipped")
    if state.not_utf8:
        found.append(f"{_times(state.not_utf8, 'line')} not UTF-8 (read with U+FFFD)")
    if replaced:
        found.append(f"{_times(replaced, 'value')} written again at a step replaced the earlier")
    return found


def metrics_kind(path: str) -> str | None:
    """CSV, JSONL, or None for files that hold no metrics."""
    name = path.rsplit("/", 1)[-1].lower()
    if name.endswith(".csv"):
        return CSV
    if name.endswith((".jsonl", ".ndjson")):
        return JSONL
    return None


def parse_new(
    state: ParseState, data: bytes, *, final: bool = False, max_line: int = MAX_LINE_BYTES
) -> tuple[list[MetricRow], ParseState]:
    """Rows of the complete lines in data (the bytes after state.offset) and the next state.

    With ``final`` (the file will not grow again) a last line without a newline is parsed too.
    ``max_line`` is the caller's read window: data of at least that many bytes without a
    newline is a line too long to parse; it is skipped up to its newline (in this call or later
    ones) and counted in ``long_lines``, so one huge line never stops the rows after it.
    """
    skipped = 0
    if state.in_long_line:
        newline = data.find(b"\n")
        if newline < 0:
            # Still inside the skipped line (or its unterminated end when final).
            return [], _replace(state, offset=state.offset + len(data), in_long_line=not final)
        skipped = newline + 1
        state = _replace(state, offset=state.offset + skipped, in_long_line=False)
        data = data[skipped:]
    end = data.rfind(b"\n") + 1
    if final:
        end = len(data)
    if end == 0:
        if len(data) >= max_line:
            changes = {"long_lines": state.long_lines + 1, "in_long_line": True}
            return [], _replace(state, offset=state.offset + len(data), **changes)
        return [], state
    chunk = data[:end]
    try:
        text = chunk.decode("utf-8")
        not_utf8 = 0
    except UnicodeDecodeError:
        not_utf8 = sum(1 for raw in chunk.split(b"\n") if not _is_utf8(raw))
        text = chunk.decode("utf-8", "replace")
    if state.offset == 0 and text.startswith("\ufeff"):
        text = text[1:]  # a byte order mark before the header
    # Only "\n" ends a line: splitlines() would also split at \u2028 inside a JSON string.
    lines = [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]
    if lines and not lines[-1]:
        lines.pop()
    if state.kind == CSV:
        rows, state = _parse_csv(state, lines)
    else:
        rows, state = _parse_jsonl(state, lines)
    return rows, _replace(state, offset=state.offset + end, not_utf8=state.not_utf8 + not_utf8)


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _replace(state: ParseState, **changes: Any) -> ParseState:
    fields = asdict(state)
    fields.update(changes)
    fields["columns"] = tuple(fields["columns"])
    return ParseState(**fields)


def _number(cell: str) -> float | int | None:
    """The number a cell holds, or None: ints stay ints so steps print as written."""
    try:
        number = int(cell)
    except ValueError:
        try:
            return float(cell)
        except ValueError:
            return None
    if -SQLITE_INT_LIMIT <= number < SQLITE_INT_LIMIT:
        return number
    return float(cell)  # SQLite integers are 64-bit; this may be inf, still a number


def _header(cells: list[str]) -> tuple[str, ...]:
    """Column names: blanks become colN and repeats get .1, .2 (as pandas does)."""
    names: list[str] = []
    for index, cell in enumerate(cells):
        name = cell.strip() or f"col{index}"
        base, n = name, 0
        while name in names:
            n += 1
            name = f"{base}.{n}"
        names.append(name)
    return tuple(names)


def _is_new_header(cells: list[str], columns: tuple[str, ...]) -> bool:
    """A row of names only that repeats or changes the header (a logger restarted, or one that
    gained or lost columns): it shares a column name with the header in force, or has another
    width. A row of words as wide as the header and sharing no name is data (a CSV of text).
    """
    stripped = [c.strip() for c in cells]
    if not all(stripped) or any(_number(c) is not None for c in stripped):
        return False
    return len(stripped) != len(columns) or not set(columns).isdisjoint(stripped)


def _header_for(columns: tuple[str, ...], width: int) -> tuple[str, ...]:
    """Column names for a row wider than the header: the extra cells are colN."""
    return columns + tuple(f"col{i}" for i in range(len(columns), width))


def _parse_csv(state: ParseState, lines: list[str]) -> tuple[list[MetricRow], ParseState]:
    rows: list[MetricRow] = []
    append = rows.append
    columns = state.columns
    step_index = state.step_column
    count = state.rows
    bad = state.bad_lines
    changes = state.header_changes
    try:
        records = list(csv.reader(lines))
    except csv.Error:
        records = []
        for line in lines:
            try:
                records.extend(csv.reader([line]))
            except csv.Error:
                bad += 1
    for cells in records:
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue  # blank line
        if not columns or _is_new_header(cells, columns):
            header = _header(cells)
            if columns and header != columns:
                changes += 1
            columns = header
            lowered = [c.lower() for c in columns]
            step_index = lowered.index(STEP_KEY) if STEP_KEY in lowered else None
            continue
        step: float | int = count
        if step_index is not None and step_index < len(cells):
            given = _number(cells[step_index].strip())
            if given is not None and not (isinstance(given, float) and math.isnan(given)):
                step = given
        keys = columns if len(cells) <= len(columns) else _header_for(columns, len(cells))
        for index, cell in enumerate(cells):
            if index == step_index:
                continue
            # The hot loop of parsing: float() first (no exception for a number), then
            # whitespace and text only for what is not one.
            try:
                value = float(cell)
            except ValueError:
                cell = cell.strip()
                if cell:  # else a sparse column (e.g. val_acc once per epoch)
                    rows.append(MetricRow(step, keys[index], None, cell[:MAX_TEXT_CHARS]))
                continue
            if value != value:  # NaN: SQLite would store it as NULL; keep the text
                rows.append(MetricRow(step, keys[index], None, cell.strip()))
            else:
                append(MetricRow(step, keys[index], value, None))
        count += 1
    return rows, _replace(state, rows=count, columns=columns, bad_lines=bad, header_changes=changes)


def _flatten(prefix: str, value: Any, out: dict[str, Any], depth: int) -> None:
    if isinstance(value, dict) and depth < MAX_FLATTEN_DEPTH:
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, out, depth + 1)
    else:
        out[prefix] = value


def _json_row(step: float | int, key: str, value: Any) -> MetricRow | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return MetricRow(step, key, 1.0 if value else 0.0, "true" if value else "false")
    if isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:
            return MetricRow(step, key, None, str(value)[:MAX_TEXT_CHARS])
        if math.isnan(number):
            return MetricRow(step, key, None, "nan")
        return MetricRow(step, key, number, None)
    if isinstance(value, str):
        return MetricRow(step, key, None, value[:MAX_TEXT_CHARS])
    return MetricRow(step, key, None, json.dumps(value)[:MAX_TEXT_CHARS])


def _parse_jsonl(state: ParseState, lines: list[str]) -> tuple[list[MetricRow], ParseState]:
    rows: list[MetricRow] = []
    count = state.rows
    bad = state.bad_lines
    for line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if not isinstance(obj, dict):
            bad += 1
            continue
        step: float | int = count
        given = obj.get(STEP_KEY)
        if isinstance(given, int | float) and not isinstance(given, bool):
            number = _number(str(given))
            if number is not None and not (isinstance(number, float) and math.isnan(number)):
                step = number
        flat: dict[str, Any] = {}
        _flatten("", obj, flat, 0)
        for key, value in flat.items():
            if key == STEP_KEY:
                continue
            row = _json_row(step, key, value)
            if row is not None:
                rows.append(row)
        count += 1
    return rows, _replace(state, rows=count, bad_lines=bad)
