"""Catalog methods for what an admin sets on hosts (drain), host warnings, and what stats read."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Protocol

# A reason with this prefix belongs to a host that works; telemetry does not clear it.
HOST_WARNING_PREFIX = "warning: "


class HostRow(Protocol):
    """What sync_hosts and set_host_drained need of a host; the inventory's Host has it."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str | None: ...
    @property
    def port(self) -> int | None: ...
    @property
    def user(self) -> str | None: ...
    @property
    def tags(self) -> Iterable[str]: ...


class HostsAdminMixin:
    """Drained hosts and GPU model names; mixed into Catalog next to RunsMixin."""

    if TYPE_CHECKING:
        # Provided by Catalog (store.py), which mixes this class in.
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    def set_host_warning(self, name: str, warning: str, *, now: float | None = None) -> None:
        """A problem of a host that works (its root is open to other users, ...), shown as its
        reason: telemetry keeps it, the next state change (reconnect, failure) replaces it."""
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "UPDATE hosts SET reason = ?, updated = ? WHERE name = ?",
                (f"{HOST_WARNING_PREFIX}{warning}", now, name),
            )

    def set_host_drained(self, host: HostRow, drained: bool, *, now: float | None = None) -> bool:
        """Drain (no new runs are placed there) or undrain a host; False when already so.

        A host the engine has not written yet gets its row now, as sync_hosts would write it,
        so a drain set before the first engine run is not lost.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "INSERT INTO hosts (name, address, port, user, tags, state, updated) "
                "VALUES (?, ?, ?, ?, ?, 'connecting', ?) ON CONFLICT (name) DO NOTHING",
                (host.name, host.address, host.port, host.user, json.dumps(list(host.tags)), now),
            )
            changed = conn.execute(
                "UPDATE hosts SET drained = ?, drained_at = ?, updated = ? "
                "WHERE name = ? AND drained != ?",
                (int(drained), now if drained else None, now, host.name, int(drained)),
            ).rowcount
        return changed == 1

    def drained_hosts(self) -> set[str]:
        """Names of the drained hosts; the engine reads this on every dispatch pass."""
        with self._read() as conn:
            return {row[0] for row in conn.execute("SELECT name FROM hosts WHERE drained = 1")}

    def gpu_models(self) -> dict[tuple[str, int], str]:
        """(host, GPU index) -> the GPU's name from the last telemetry (e.g. A100-SXM4-80GB)."""
        with self._read() as conn:
            rows = conn.execute("SELECT host, idx, name FROM gpus WHERE name IS NOT NULL")
            return {(host, idx): name for host, idx, name in rows}
