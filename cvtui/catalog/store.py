"""The catalog: one SQLite file that the engine writes and the CLI and TUI read."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cvtui.catalog import schema
from cvtui.catalog.blobs import BlobsMixin
from cvtui.catalog.clusters import ClustersMixin
from cvtui.catalog.components import ComponentsMixin
from cvtui.catalog.disk_usage import DiskUsageMixin
from cvtui.catalog.history import HistoryMixin
from cvtui.catalog.history_reads import HistoryReadsMixin
from cvtui.catalog.hosts_admin import HostRow, HostsAdminMixin
from cvtui.catalog.metrics import SyncMixin
from cvtui.catalog.models import ModelsMixin
from cvtui.catalog.provenance import ProvenanceMixin
from cvtui.catalog.rebuild import RebuildMixin
from cvtui.catalog.rows import build_hosts_report, telemetry_rows
from cvtui.catalog.run_inputs import RunInputsMixin
from cvtui.catalog.runs import RunsMixin
from cvtui.catalog.schema import CatalogError
from cvtui.catalog.usage import UsageMixin
from remote_agent.protocol import Hello, Telemetry

if TYPE_CHECKING:
    from sqlite_utils import Database

HOST_STATES = ("connecting", "healthy", "stale", "disconnected", "error")

BUSY_TIMEOUT_S = 5.0  # how long a write waits for another process's write to finish
CATALOG_FILE = "catalog.db"
IDLE_REFRESH_SLACK_S = 30.0  # an open idle episode not refreshed for this long is not shown
# quick_check reads every page: 9 ms for a catalog of 1M metric values (24 MiB), 165 ms for
# 334 MiB (warm cache, measured here). Every command opens the catalog, so larger files are
# left to SQLite, which refuses a damaged page when it reads one.
QUICK_CHECK_MAX_BYTES = 64 << 20
REINDEX_HINT = "run `cvtui reindex` to rebuild it from the hosts and the local mirror"


class Catalog(
    RunsMixin,
    HostsAdminMixin,
    SyncMixin,
    ComponentsMixin,
    HistoryMixin,
    HistoryReadsMixin,
    UsageMixin,
    DiskUsageMixin,
    BlobsMixin,
    ProvenanceMixin,
    ModelsMixin,
    ClustersMixin,
    RunInputsMixin,
    RebuildMixin,
):
    """One connection to the catalog; safe to share between threads (calls are serialised).

    Run and command methods live in RunsMixin (runs.py), drain and GPU model lookups in
    HostsAdminMixin (hosts_admin.py), synced files and metrics in SyncMixin (metrics.py),
    telemetry history in HistoryMixin (history.py) and HistoryReadsMixin (history_reads.py),
    idle GPUs and energy in UsageMixin (usage.py), the reproducibility tables in
    ComponentsMixin, BlobsMixin, ProvenanceMixin and ModelsMixin; they share these
    transactions. No module outside this package holds SQL.

    Every Catalog, reader or writer, opens the file read-write in WAL mode so that readers
    never block the engine and always see its last commit. ``db`` is the sqlite-utils
    Database for ad-hoc queries; it bypasses the thread lock.
    """

    def __init__(self, path: str | os.PathLike[str], *, check: bool = True) -> None:
        """Open (creating and migrating) a catalog; ``check``: refuse a damaged file with a
        CatalogError that points at `cvtui reindex` (PRAGMA quick_check on files up to
        QUICK_CHECK_MAX_BYTES)."""
        self.path = Path(path)
        _create_private_file(self.path)
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # the engine writes from worker threads
            )
        except sqlite3.Error as exc:
            raise CatalogError(f"cannot open catalog {self.path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if check:
                _quick_check(conn, self.path)
            conn.execute("PRAGMA journal_mode = WAL")
            # With WAL, NORMAL cannot corrupt; a power cut may only lose the last commits.
            conn.execute("PRAGMA synchronous = NORMAL")
            self._conn = conn
            self._db: Database | None = None
            # sqlite-utils takes ~0.2 s to import: an up-to-date catalog opens without it.
            if _raw_schema_version(conn) != len(schema.MIGRATIONS):
                schema.migrate(self.db)
        except sqlite3.OperationalError as exc:
            conn.close()
            raise CatalogError(f"cannot use catalog {self.path}: {exc}") from exc
        except sqlite3.DatabaseError as exc:  # not a database, malformed: no lock will fix it
            conn.close()
            raise CatalogError(f"catalog {self.path} is damaged ({exc}); {REINDEX_HINT}") from exc
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        self._lock = threading.RLock()
        _restrict_sidecar_files(self.path)

    @property
    def db(self) -> Database:
        """The sqlite-utils Database on this connection, made on first use."""
        if self._db is None:
            from sqlite_utils import Database

            self._db = Database(self._conn, execute_plugins=False)
        return self._db

    @classmethod
    def open_home(cls, home: str | os.PathLike[str]) -> Catalog:
        """Open ``home/catalog.db``, creating home (mode 0700) when it does not exist."""
        home_path = Path(home)
        try:
            home_path.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            if not home_path.is_dir():
                problem = f"cvtui home {home_path} exists and is not a directory"
                raise CatalogError(problem) from None
        except OSError as exc:
            raise CatalogError(f"cannot create cvtui home {home_path}: {exc}") from exc
        else:
            home_path.chmod(0o700)  # mkdir's mode is filtered by the umask
        return cls(home_path / CATALOG_FILE)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Catalog({str(self.path)!r})"

    # -- transactions -----------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taking the write lock up front so it never deadlocks."""
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise CatalogError(
                    f"catalog {self.path} stayed locked by another process for over "
                    f"{BUSY_TIMEOUT_S:g} s: {exc}"
                ) from exc
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read snapshot, so several queries agree with each other."""
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                yield self._conn
            finally:
                if self._conn.in_transaction:
                    self._conn.execute("COMMIT")

    # -- schema and health ------------------------------------------------------------

    def schema_version(self) -> int:
        with self._lock:
            return _raw_schema_version(self._conn)

    def data_version(self) -> int:
        """A number that changes whenever another connection commits; cheap to poll."""
        with self._lock:
            return int(self._conn.execute("PRAGMA data_version").fetchone()[0])

    # -- hosts ------------------------------------------------------------------------

    def sync_hosts(self, hosts: Iterable[HostRow], *, now: float | None = None) -> None:
        """Make the hosts table list exactly these hosts, dropping the rows of removed ones.

        New hosts start as ``connecting``; existing hosts keep their state and telemetry.
        """
        now = time.time() if now is None else now
        rows = {
            h.name: (h.name, h.address, h.port, h.user, json.dumps(list(h.tags)), now)
            for h in hosts
        }
        with self._write() as conn:
            stored = [r[0] for r in conn.execute("SELECT name FROM hosts")]
            removed = [(name,) for name in stored if name not in rows]
            conn.executemany("DELETE FROM hosts WHERE name = ?", removed)
            conn.executemany("DELETE FROM gpus WHERE host = ?", removed)
            conn.executemany("DELETE FROM gpu_processes WHERE host = ?", removed)
            conn.executemany("DELETE FROM telemetry_raw WHERE host = ?", removed)
            conn.executemany("DELETE FROM telemetry_chunks WHERE host = ?", removed)
            conn.executemany("DELETE FROM disk_scans WHERE host = ?", removed)
            conn.executemany("DELETE FROM disk_usage WHERE host = ?", removed)
            conn.executemany(
                "INSERT INTO hosts (name, address, port, user, tags, state, updated) "
                "VALUES (?, ?, ?, ?, ?, 'connecting', ?) "
                "ON CONFLICT (name) DO UPDATE SET address = excluded.address, "
                "port = excluded.port, user = excluded.user, tags = excluded.tags, "
                "updated = excluded.updated",
                rows.values(),
            )

    def set_host_state(
        self, name: str, state: str, reason: str | None = None, *, now: float | None = None
    ) -> None:
        """Store a host's connection state; a host not in the catalog is ignored."""
        if state not in HOST_STATES:
            raise ValueError(f"unknown host state {state!r}; expected one of {HOST_STATES}")
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "UPDATE hosts SET state = ?, reason = ?, updated = ? WHERE name = ?",
                (state, reason, now, name),
            )

    def host_state(self, name: str) -> tuple[str, str | None] | None:
        """(state, reason) as stored for a host; None for a host not in the catalog."""
        with self._lock:
            row = self._conn.execute(
                "SELECT state, reason FROM hosts WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else (str(row[0]), row[1])

    def record_hello(
        self, name: str, hello: Hello, agent_hash: str, *, now: float | None = None
    ) -> None:
        """Store what the agent said about itself when it (re)connected."""
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "UPDATE hosts SET backend = ?, hostname = ?, python = ?, gpu_count = ?, "
                "agent_hash = ?, connected_at = ?, updated = ? WHERE name = ?",
                (
                    hello.backend,
                    hello.hostname,
                    hello.python,
                    hello.gpu_count,
                    agent_hash,
                    now,
                    now,
                    name,
                ),
            )

    # -- telemetry --------------------------------------------------------------------

    def record_telemetry(
        self,
        batch: Sequence[tuple[str, Telemetry]],
        *,
        received: float | None = None,
        history: Sequence[tuple[str, float, float, int, bytes]] | None = None,
    ) -> None:
        """Store a batch of telemetry in one transaction.

        Per host, the newest sample replaces the hosts/gpus/gpu_processes rows and marks the
        host healthy; every sample appends history rows. Times are the controller's clock:
        the newest sample of a host is stamped ``received`` and older ones in the same batch
        keep their spacing on the agent's clock. Hosts not in the catalog (removed from the
        inventory while their sample was in flight) are skipped. ``history``, when given,
        replaces the raw history rows of the batch (the engine groups a host's samples into
        rows of a few seconds: rows.raw_history_row).
        """
        if not batch:
            return
        received = time.time() if received is None else received
        by_host: dict[str, list[Telemetry]] = {}
        for name, sample in batch:
            by_host.setdefault(name, []).append(sample)
        # Rows are built before taking the write lock, which other writers wait on.
        rows = {name: telemetry_rows(name, samples, received) for name, samples in by_host.items()}
        raw = [row for r in rows.values() for row in r.history] if history is None else history

        with self._write() as conn:
            known = {r[0] for r in conn.execute("SELECT name FROM hosts")}
            kept = [rows[name] for name in rows if name in known]
            conn.executemany(
                "UPDATE hosts SET last_seen = ?, cpu_percent = ?, load1 = ?, mem_used = ?, "
                "mem_total = ?, disk_free = ?, disk_total = ?, backend = ?, "
                # A host warning (HOST_WARNING_PREFIX) outlives samples; other reasons do not.
                "state = 'healthy', reason = CASE WHEN reason LIKE 'warning: %' THEN reason END, "
                "updated = ? WHERE name = ?",
                [r.host for r in kept],
            )
            names = [(r.host[-1],) for r in kept]
            conn.executemany("DELETE FROM gpus WHERE host = ?", names)
            conn.executemany("DELETE FROM gpu_processes WHERE host = ?", names)
            # OR REPLACE: a sample naming one GPU index twice must not lose the whole batch.
            conn.executemany(
                "INSERT OR REPLACE INTO gpus (host, idx, uuid, name, util, mem_used, mem_total, "
                "temperature, power, power_limit, fan, backend, updated, pci_bus_id, leased_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row for r in kept for row in r.gpus],
            )
            conn.executemany(
                "INSERT INTO gpu_processes (host, gpu_idx, pid, user, command, container, "
                "mem, run_id, seen) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [row for r in kept for row in r.processes],
            )
            conn.executemany(
                "INSERT OR IGNORE INTO telemetry_raw (host, start, until, samples, data) "
                "VALUES (?, ?, ?, ?, ?)",
                [row for row in raw if row[0] in known],
            )

    # -- reports ----------------------------------------------------------------------

    def gpu_counts(self) -> dict[str, int]:
        """How many GPUs each host reported in its last telemetry."""
        with self._read() as conn:
            rows = conn.execute("SELECT host, count(*) FROM gpus GROUP BY host").fetchall()
        return {str(host): int(count) for host, count in rows}

    def hosts_report(
        self,
        *,
        now: float | None = None,
        stale_after_s: float = 5.0,
        disconnected_after_s: float = 30.0,
        names: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Hosts with their GPUs and processes, ordered by name: the `cvtui hosts --json` shape.

        A stored ``healthy`` reads ``stale`` or ``disconnected`` once its last telemetry is
        older than the thresholds (seconds), so readers see a dead engine's hosts go stale.
        """
        now = time.time() if now is None else now
        # One JSON parameter instead of one placeholder per name; NULL means every host.
        wanted = None if names is None else json.dumps(list(names))
        with self._read() as conn:
            host_rows = conn.execute(
                "SELECT name, state, reason, backend, last_seen, cpu_percent, mem_used, "
                "mem_total, disk_free, drained FROM hosts "
                "WHERE ?1 IS NULL OR name IN (SELECT value FROM json_each(?1)) ORDER BY name",
                (wanted,),
            ).fetchall()
            gpu_rows = conn.execute(
                "SELECT host, idx, uuid, name, util, mem_used, mem_total, temperature, power, "
                "pci_bus_id, leased_by FROM gpus "
                "WHERE ?1 IS NULL OR host IN (SELECT value FROM json_each(?1)) ORDER BY host, idx",
                (wanted,),
            ).fetchall()
            process_rows = conn.execute(
                "SELECT host, gpu_idx, pid, user, command, container, mem, run_id "
                "FROM gpu_processes "
                "WHERE ?1 IS NULL OR host IN (SELECT value FROM json_each(?1)) "
                "ORDER BY host, gpu_idx, rowid",
                (wanted,),
            ).fetchall()
        # An engine refreshes open episodes every few seconds; a dead one's age out.
        idle = self.idle_gpus(now=now, max_age_s=disconnected_after_s + IDLE_REFRESH_SLACK_S)

        return build_hosts_report(
            host_rows,
            gpu_rows,
            process_rows,
            now=now,
            stale_after_s=stale_after_s,
            disconnected_after_s=disconnected_after_s,
            idle=idle,
        )


def _create_private_file(path: Path) -> None:
    """Create the catalog with mode 0600 before SQLite does, so it is never world-readable."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise CatalogError(f"cannot create catalog {path}: {exc}") from exc
    os.close(fd)


def _restrict_sidecar_files(path: Path) -> None:
    """Tighten the catalog and its -wal/-shm files to 0600 where we own them."""
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
            if mode & 0o077:
                candidate.chmod(mode & 0o700)
        except (FileNotFoundError, PermissionError):
            continue  # not there, or another user's file we may still read


def damaged_catalog(error: BaseException) -> CatalogError | None:
    """The CatalogError pointing at `cvtui reindex` for an error SQLite raised on a damaged
    page read after the catalog was opened; None for any other error (locked, a bug ...)."""
    if type(error) is not sqlite3.DatabaseError:  # its subclasses are not damage
        return None
    return CatalogError(f"the catalog is damaged ({error}); {REINDEX_HINT}")


def _quick_check(conn: sqlite3.Connection, path: Path) -> None:
    """CatalogError naming what SQLite found when a small enough catalog fails quick_check."""
    try:
        size = path.stat().st_size
    except OSError:
        return
    if not 0 < size <= QUICK_CHECK_MAX_BYTES:
        return
    found = [" ".join(str(r[0]).split()) for r in conn.execute("PRAGMA quick_check(3)")]
    if found != ["ok"]:
        raise CatalogError(f"catalog {path} is damaged ({'; '.join(found)}); {REINDEX_HINT}")


def _raw_schema_version(conn: sqlite3.Connection) -> int:
    """schema.schema_version on the bare connection, without importing sqlite-utils."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'migrations'"
    ).fetchone()
    if exists is None:
        return 0
    return int(conn.execute("SELECT max(version) FROM migrations").fetchone()[0] or 0)
