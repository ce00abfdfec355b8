"""Metrics from the mirror into the catalog: parse what a CSV or JSONL file gained, exactly once.

The parse position is stored with the rows in one transaction (compare-and-set), together
with a fingerprint of the parsed prefix (digests of its first and last 4 KiB). When the
fingerprint no longer matches, the file was rewritten (pandas writes whole CSVs) and its
rows are replaced in one transaction: rows are never duplicated, whatever happened between.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import xxhash

from cvtui.metrics_parse import MAX_LINE_BYTES, ParseState, metrics_kind, parse_new

if TYPE_CHECKING:
    from cvtui.catalog import Catalog

FINGERPRINT_BYTES = 4096
READ_BYTES = MAX_LINE_BYTES  # parsed and stored per transaction; a longer line is skipped


def fingerprint(fh: BinaryIO, offset: int) -> tuple[str, str]:
    """Digests of the first and the last FINGERPRINT_BYTES of the file's first offset bytes."""
    length = min(offset, FINGERPRINT_BYTES)
    fh.seek(0)
    head = fh.read(length)
    fh.seek(offset - length)
    tail = fh.read(length)
    return xxhash.xxh3_64_hexdigest(head), xxhash.xxh3_64_hexdigest(tail)


def _saved(text: str | None) -> tuple[ParseState, tuple[str, str]] | None:
    if not text:
        return None
    try:
        data = json.loads(text)
        return ParseState.from_json(json.dumps(data["parse"])), (data["head"], data["tail"])
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: parse again from the start


def ingest_file(
    catalog: Catalog, run_id: str, path: str, local: Path, *, final: bool = False
) -> int:
    """Store the metric rows a local CSV/JSONL copy gained since the last call; how many.

    ``final``: the file will not grow again, so a last line without a newline counts too.
    """
    kind = metrics_kind(path)
    if kind is None:
        return 0
    offset, text = catalog.parse_position(run_id, path)
    saved = _saved(text)
    stored = 0
    with open(local, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if saved is not None and saved[0].offset == offset <= size:
            state = saved[0]
            replace = fingerprint(fh, offset) != saved[1]
        else:
            state, replace = ParseState(kind), offset > 0 or saved is not None
        if replace:
            state = ParseState(kind)
        expect = offset
        while True:
            fh.seek(state.offset)
            data = fh.read(READ_BYTES)
            at_end = state.offset + len(data) >= size
            rows, new = parse_new(state, data, final=final and at_end, max_line=READ_BYTES)
            if new.offset == state.offset and not replace:
                break  # no complete line yet
            progressed = new.offset > state.offset
            head, tail = fingerprint(fh, new.offset)
            record = json.dumps({"parse": json.loads(new.to_json()), "head": head, "tail": tail})
            if not catalog.store_metrics(
                run_id,
                path,
                rows,
                expect_offset=expect,
                offset=new.offset,
                state_json=record,
                replace=replace,
            ):
                break  # another writer stored these rows first
            stored += len(rows)
            state, expect, replace = new, new.offset, False
            if at_end or not progressed:
                break
    return stored
