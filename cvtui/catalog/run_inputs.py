"""Run inputs in the catalog: the exact bytes (content-store hashes) each run was given, and
the attempts of one submission, for retries that resume from a checkpoint."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cvtui.catalog.runs import SELECT_RUNS, decode_run

if TYPE_CHECKING:
    from sqlite_utils import Database

INPUT_BLOB_KIND = "input"  # blobs.kind of content first stored as a run's input


def migration_11_run_inputs(db: Database) -> None:
    """Inputs of runs (registered models, files of other runs, a retry's checkpoint), pinned
    to content-store blobs so that a reproduction gets the same bytes.

    (Numbered 10: migration 9 is the Slurm host kind's, merged separately.)
    """
    db.execute(
        "CREATE TABLE run_inputs ("
        " run_id TEXT NOT NULL REFERENCES runs(id),"
        " name TEXT NOT NULL,"  # the config's input name; 'resume' for a retry's checkpoint
        " kind TEXT NOT NULL,"  # model, run or resume (run_inputs.INPUT_KINDS)
        " source TEXT NOT NULL,"  # what it came from: model:NAME, run:RUN_ID:PATH
        " path TEXT NOT NULL,"  # where the run finds it, relative to its work dir
        " hash TEXT NOT NULL REFERENCES blobs(hash),"  # xxh3_128 of the content
        " size INTEGER NOT NULL,"  # bytes
        " PRIMARY KEY (run_id, name)) WITHOUT ROWID"
    )
    db.execute("CREATE INDEX run_inputs_hash ON run_inputs (hash)")


@dataclass(frozen=True)
class RunInput:
    """One input of one run, as staged in its work dir."""

    run_id: str
    name: str
    kind: str  # model, run or resume
    source: str  # model:NAME or run:RUN_ID:PATH
    path: str  # relative to the work dir, '/'-separated
    hash: str  # xxh3_128 hex: the blob
    size: int  # bytes

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "path": self.path,
            "hash": self.hash,
            "size": self.size,
        }


_COLUMNS = ("run_id", "name", "kind", "source", "path", "hash", "size")


class RunInputsMixin:
    """Catalog methods for run inputs and attempts (mixed into Catalog)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def record_run_inputs(self, inputs: Iterable[RunInput], *, now: float | None = None) -> None:
        """Pin inputs to runs, with their blobs indexed, in one transaction (a row replaces
        the run's input of the same name)."""
        rows = list(inputs)
        if not rows:
            return
        stamp = time.time() if now is None else now
        with self._write() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO blobs (hash, size, kind, created) VALUES (?, ?, ?, ?)",
                [(r.hash, r.size, INPUT_BLOB_KIND, stamp) for r in rows],
            )
            conn.executemany(
                f"INSERT OR REPLACE INTO run_inputs ({', '.join(_COLUMNS)})"  # noqa: S608 (fixed)
                f" VALUES ({', '.join('?' * len(_COLUMNS))})",
                [tuple(getattr(r, c) for c in _COLUMNS) for r in rows],
            )

    def run_inputs(self, run_id: str) -> list[RunInput]:
        """A run's inputs, by name."""
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM run_inputs"  # noqa: S608 (fixed names)
                " WHERE run_id = ? ORDER BY name",
                (run_id,),
            ).fetchall()
        return [RunInput(*row) for row in rows]

    def copy_run_inputs(
        self, source_id: str, target_id: str, kinds: Sequence[str] | None = None
    ) -> list[RunInput]:
        """Give target the inputs of source (of these kinds; None: all); the rows made."""
        copied = [
            RunInput(target_id, i.name, i.kind, i.source, i.path, i.hash, i.size)
            for i in self.run_inputs(source_id)
            if kinds is None or i.kind in kinds
        ]
        self.record_run_inputs(copied)
        return copied

    def run_attempts(self, run: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Every attempt of the submission run belongs to (same name and submit time), first
        attempt first."""
        with self._read() as conn:
            rows = conn.execute(
                f"{SELECT_RUNS} WHERE name = ? AND submitted = ? ORDER BY attempt, id",
                (run["name"], run["submitted"]),
            ).fetchall()
        return [decode_run(r) for r in rows]

    def note_run_event(self, run_id: str, detail: str, *, now: float | None = None) -> None:
        """A run_events row in the run's current state: something that happened to it without
        a state change (the checkpoint a retry resumes from, a preemption asked)."""
        stamp = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "INSERT INTO run_events (run_id, time, state, detail)"
                " SELECT id, ?, state, ? FROM runs WHERE id = ?",
                (stamp, detail, run_id),
            )
