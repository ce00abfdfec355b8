"""Following runs from the catalog and the file mirror: their state changes and output, their
retries joining as the engine queues them, until each last attempt ended and its log is here.

Shared by `Lab.follow` / `Lab.wait` and the CLI's `run --follow`; reads only, so several
followers (a notebook, a terminal) can watch one run.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.results import RunEvent
from cvtui.states import ACTIVE_STATES, retry_due

if TYPE_CHECKING:
    from cvtui.catalog import Catalog


def last_states(data: bytes) -> list[bytes]:
    """The log's lines as a terminal ends up showing them: a line redrawn with \\r (a tqdm
    bar) is its last state, not every redraw joined; the unfinished last line is kept."""
    lines = []
    for line in data.split(b"\n"):
        body = line[:-1] if line.endswith(b"\r") else line  # a \r\n line ending
        lines.append(body.rsplit(b"\r", 1)[-1] + b"\n")
    if lines and lines[-1] == b"\n":
        lines.pop()  # the log ended with a newline: no unfinished line after it
    elif lines:
        lines[-1] = lines[-1][:-1]
    return lines


def next_attempt(catalog: Catalog, run: Mapping[str, Any]) -> dict[str, Any] | None:
    """The retry of an ended run, once the engine has queued it."""
    for other in catalog.run_attempts(run):
        if other["attempt"] == run["attempt"] + 1:
            return other
    return None


def last_attempt(catalog: Catalog, run: Mapping[str, Any]) -> dict[str, Any]:
    """The latest attempt of the submission run belongs to (run itself when it is)."""
    attempts = catalog.run_attempts(run)
    return attempts[-1] if attempts else dict(run)


class RunFollower:
    """Polls the catalog and the mirror for some runs; `run_ids` grows with their retries."""

    def __init__(self, catalog: Catalog, home: Path, run_ids: Iterable[str]) -> None:
        self.catalog = catalog
        self.home = home
        self.run_ids = list(dict.fromkeys(run_ids))
        self._events: dict[str, int] = {}  # run id -> the last run_events id reported
        self._offsets: dict[str, int] = {}  # run id -> bytes of its mirrored log reported
        self._partial: dict[str, bytes] = {}  # run id -> an unfinished last line (lines mode)

    def state_events(self) -> list[RunEvent]:
        """run_events rows not reported yet, oldest first."""
        found = []
        for run_id in list(self.run_ids):
            seen = self._events.get(run_id, 0)
            for row in self.catalog.run_events(run_id):
                if row["id"] > seen:
                    found.append(
                        RunEvent(run_id, "state", row["time"], row["state"], row["detail"])
                    )
                    self._events[run_id] = row["id"]
        return sorted(found, key=lambda e: e.time)

    def log_events(self, *, lines: bool) -> list[RunEvent]:
        """What the runs' mirrored logs gained: whole lines (lines) or the bytes as they are."""
        from cvtui.mirror import run_log_path

        found = []
        now = time.time()
        for run_id in list(self.run_ids):
            offset = self._offsets.get(run_id, 0)
            try:
                with open(run_log_path(self.home, run_id), "rb") as fh:
                    fh.seek(offset)
                    data = fh.read()
            except FileNotFoundError:
                continue
            if not data:
                continue
            self._offsets[run_id] = offset + len(data)
            if not lines:
                found.append(RunEvent(run_id, "log", now, data=data))
                continue
            data = self._partial.pop(run_id, b"") + data
            end = data.rfind(b"\n") + 1
            if end < len(data):
                self._partial[run_id] = data[end:]
            found += [self._line(run_id, now, line) for line in last_states(data[:end])]
        return found

    def unfinished(self) -> list[RunEvent]:
        """The last lines that never got their newline (at the end of following)."""
        now = time.time()
        rest = [(i, last_states(self._partial.pop(i))) for i in list(self._partial)]
        return [self._line(run_id, now, lines[-1]) for run_id, lines in rest if lines]

    @staticmethod
    def _line(run_id: str, now: float, line: bytes) -> RunEvent:
        text = line.rstrip(b"\n").decode("utf-8", "replace")
        return RunEvent(run_id, "log", now, line=text)

    def ended(self) -> bool:
        """Whether every followed run ended, its retries included, with its log mirrored.

        Retries found on the way join run_ids.
        """
        from cvtui.mirror import run_log_path

        for run_id in list(self.run_ids):
            run = self.catalog.get_run(run_id)
            if run is None:
                continue
            if run["state"] in ACTIVE_STATES:
                return False
            log = run_log_path(self.home, run_id)
            if (log.stat().st_size if log.exists() else 0) < (run["log_size"] or 0):
                return False
            if retry_due(run):
                successor = next_attempt(self.catalog, run)
                if successor is None:
                    return False
                if successor["id"] not in self.run_ids:
                    self.run_ids.append(successor["id"])
                    return False
        return True

    def synced_without_engine(self) -> bool:
        """Whether the catalog alone says every followed run is synced (no engine to ask)."""
        for run_id in self.run_ids:
            run = self.catalog.get_run(run_id)
            if run is not None and run["sync_status"] not in (None, "synced"):
                return False
        return True
