"""Catalog side of the model registry: named checkpoints, each naming a blob of the store."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

MODEL_KIND = "model"  # blobs.kind of content first stored by `models register`

_SELECT = (
    "SELECT m.name, m.tags, m.run_id, r.name, m.path, m.hash, m.size, m.created"
    " FROM models m LEFT JOIN runs r ON r.id = m.run_id"
)
_FIELDS = ("name", "tags", "run_id", "run_name", "path", "hash", "size", "created")


@dataclass(frozen=True)
class ModelSave:
    """What save_model did: written, or not because the content was lost or the name taken."""

    written: bool
    content_lost: bool = False  # the blob's file was gone (a gc collected it): store it again
    previous: dict[str, Any] | None = None  # the row of that name before, if any


class ModelsMixin:
    """Catalog methods for the models table (mixed into Catalog)."""

    if TYPE_CHECKING:
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def model_rows(self) -> list[dict[str, Any]]:
        """Every registered model with its run's name (None once the run is gone), oldest first."""
        with self._read() as conn:
            return [_row(r) for r in conn.execute(f"{_SELECT} ORDER BY m.created, m.name")]

    def model_row(self, name: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _select(conn, name)

    def save_model(
        self,
        row: dict[str, Any],
        *,
        replace: bool,
        content_present: Callable[[], bool],
    ) -> ModelSave:
        """Name a stored blob: its blobs row (kind MODEL_KIND) and the model row, together.

        row has name, tags (a list), run_id, path, hash, size (bytes) and created. Nothing is
        written when content_present() says the blob's file is gone (gc unlinks inside its own
        write transaction, so this check under the write lock is final), nor when the name is
        taken and not replace.
        """
        with self._write() as conn:
            if not content_present():
                return ModelSave(written=False, content_lost=True)
            previous = _select(conn, row["name"])
            if previous is not None and not replace:
                return ModelSave(written=False, previous=previous)
            conn.execute(
                "INSERT OR IGNORE INTO blobs (hash, size, kind, created) VALUES (?, ?, ?, ?)",
                (row["hash"], row["size"], MODEL_KIND, row["created"]),
            )
            conn.execute(
                "INSERT OR REPLACE INTO models (name, tags, run_id, path, hash, size, created)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    row["name"],
                    json.dumps(list(row["tags"])),
                    row["run_id"],
                    row["path"],
                    row["hash"],
                    row["size"],
                    row["created"],
                ),
            )
            return ModelSave(written=True, previous=previous)

    def delete_model_row(self, name: str) -> None:
        """Drop a model's name; its blob stays (only gc deletes blobs)."""
        with self._write() as conn:
            conn.execute("DELETE FROM models WHERE name = ?", (name,))


def _row(found: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(_FIELDS, found, strict=True))
    row["tags"] = json.loads(row["tags"])
    return row


def _select(conn: sqlite3.Connection, name: str) -> dict[str, Any] | None:
    found = conn.execute(f"{_SELECT} WHERE m.name = ?", (name,)).fetchone()
    return None if found is None else _row(found)
