"""What the dashboard shows: one consistent read of the catalog, and what changed since the last.

No textual here: the reader runs in a worker thread and is tested on its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvtui.catalog import Catalog
from cvtui.catalog.dashboard import DashboardQueries, Features, RunCache

RUNS_SHOWN = 1000  # finished runs kept in the Runs table (active ones are always there)
DOWN_STATES = ("disconnected", "error")
UP_STATES = ("healthy", "stale")

Clock = Callable[[], float]


@dataclass(frozen=True)
class Notice:
    """Something worth a toast: a run ended, a host went down or came back."""

    title: str
    message: str
    severity: str  # textual's notify severities: information, warning, error
    bell: bool = False


@dataclass(frozen=True)
class CatalogView:
    """One read of the catalog; ``version`` grows with every read so screens can skip repeats."""

    version: int
    now: float  # the clock when read (unix seconds)
    hosts: tuple[dict[str, Any], ...] = ()  # hosts_report rows plus tags, drained, runs
    queue: tuple[dict[str, Any], ...] = ()  # dispatching, then queued in start order
    runs: tuple[dict[str, Any], ...] = ()  # active and recent runs, newest first
    features: Features = field(default_factory=Features)

    def host(self, name: str) -> dict[str, Any] | None:
        return next((h for h in self.hosts if h["name"] == name), None)

    def run(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.runs if r["id"] == run_id), None)


class CatalogReader:
    """The dashboard's own connection to the catalog, used by one thread at a time.

    Its own connection matters: PRAGMA data_version changes only when *another* connection
    commits, so the engine (even in this process) must not share it.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Clock = time.time,
        stale_after_s: float = 5.0,
        disconnected_after_s: float = 30.0,
    ) -> None:
        self.catalog = Catalog(path)
        # A second connection, read-only, for the dashboard's own queries.
        self.queries = DashboardQueries(path)
        self.clock = clock
        self.stale_after_s = stale_after_s
        self.disconnected_after_s = disconnected_after_s
        self._lock = threading.Lock()
        self._data_version: int | None = None
        self._reads = 0
        self._last_event: int | None = None
        self._host_states: dict[str, str] = {}
        self._runs = RunCache()

    @contextmanager
    def use(self) -> Iterator[Catalog]:
        """The catalog, for one thread at a time (reads here, actions' writes too)."""
        with self._lock:
            yield self.catalog

    @contextmanager
    def query(self) -> Iterator[DashboardQueries]:
        """The dashboard's read-only queries, for one thread at a time."""
        with self._lock:
            yield self.queries

    def close(self) -> None:
        with self._lock:
            self.catalog.close()
            self.queries.close()

    def changed(self) -> bool:
        """Whether another connection committed since the last read (cheap: one pragma)."""
        with self._lock:
            return self.catalog.data_version() != self._data_version

    def read(self) -> tuple[CatalogView, list[Notice]]:
        """A fresh view, and the notices for what changed since the previous read."""
        with self._lock:
            catalog = self.catalog
            now = self.clock()
            self._data_version = catalog.data_version()
            report = catalog.hosts_report(
                now=now,
                stale_after_s=self.stale_after_s,
                disconnected_after_s=self.disconnected_after_s,
            )
            overview = self.queries.overview(RUNS_SHOWN, self._runs, self._last_event)
        for host in report:
            default = {"tags": [], "drained": False, "runs": 0}
            host.update(overview.host_extras.get(host["name"], default))
        self._reads += 1
        view = CatalogView(
            version=self._reads,
            now=now,
            hosts=tuple(report),
            queue=tuple(overview.queue),
            runs=tuple(overview.runs),
            features=overview.features,
        )
        notices = self._notices(view, overview.ended, first=self._last_event is None)
        self._last_event = overview.last_event
        return view, notices

    def _notices(
        self, view: CatalogView, ended: list[dict[str, Any]], *, first: bool
    ) -> list[Notice]:
        notices = [run_notice(event) for event in ended]
        states = {h["name"]: h["state"] for h in view.hosts}
        if not first:
            for name, state in states.items():
                before = self._host_states.get(name)
                if before in UP_STATES and state in DOWN_STATES:
                    reason = view.host(name) or {}
                    notices.append(
                        Notice(
                            f"{name} is {state}",
                            reason.get("reason") or "no telemetry",
                            "error",
                            bell=True,
                        )
                    )
                elif before in DOWN_STATES and state == "healthy":
                    notices.append(Notice(f"{name} is back", "healthy again", "information"))
        self._host_states = states
        return notices


def run_notice(event: dict[str, Any]) -> Notice:
    """The toast for a run that reached a final state."""
    name, state = event["name"], event["state"]
    detail = event.get("detail") or ""
    if state == "succeeded":
        return Notice(f"{name} finished", "succeeded", "information", bell=True)
    if state == "failed":
        code = event.get("exit_code")
        text = f"exit code {code}" if code is not None else (detail or "failed")
        return Notice(f"{name} failed", text, "error", bell=True)
    if state == "lost":
        return Notice(f"{name} lost", detail or "its host lost track of it", "error", bell=True)
    return Notice(f"{name} cancelled", detail or "cancelled", "warning")
