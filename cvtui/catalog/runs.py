"""Runs and commands in the catalog: the run lifecycle as compare-and-set state changes."""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlite_utils import Database

from cvtui.errors import CvtuiError
from cvtui.states import ACTIVE_STATES, FINAL_STATES, PRIORITIES, RUN_STATES

__all__ = ["ACTIVE_STATES", "FINAL_STATES", "PRIORITIES", "RUN_STATES"]  # catalog's vocabulary
COMMAND_STATES = ("pending", "done", "failed")


@dataclass(frozen=True)
class GpuUsage:
    """Runs of one user on one host's same GPUs, and their GPU time inside the window."""

    user: str | None
    host: str
    gpus: tuple[int, ...]
    runs: int
    seconds: float  # per GPU: the runs' time inside the window, added


@dataclass(frozen=True)
class RunUsage:
    """Catalog.run_usage: the runs active in a window, counted and summed for `cvtui stats`."""

    counts: dict[str, int]  # state -> runs
    spans: dict[str, list[float]]  # state -> whole start-to-end seconds of the runs that ended
    gpus: list[GpuUsage]


RUN_COLUMNS = (
    "id",
    "name",
    "project",
    "user",
    "state",
    "priority",
    "priority_rank",
    "submitted",
    "host",
    "gpus",
    "command",
    "params",
    "config",
    "spec",
    "code_hash",
    "resources",
    "attempt",
    "retries",
    "dispatched",
    "started",
    "ended",
    "exit_code",
    "progress",
    "progress_msg",
    "reason",
    "supervisor_pid",
    "pgid",
    "run_dir",
    "log_size",
    "sync_status",
    "updated",
    "work_dir",
    "final_by",
    "outputs_unmatched",
    "slurm_job",  # migration 9 (clusters.py)
)
JSON_COLUMNS = frozenset(
    {"gpus", "command", "params", "config", "spec", "resources", "outputs_unmatched"}
)
REQUIRED_ON_INSERT = (
    "id",
    "name",
    "project",
    "user",
    "priority",
    "command",
    "params",
    "config",
    "spec",
    "resources",
    "retries",
)
# The catalog keeps these consistent itself: state moves only through transition_run,
# priority only through set_run_priority (which keeps priority_rank in step).
_NOT_SETTABLE = frozenset({"id", "state", "priority", "priority_rank", "updated"})
SELECT_RUNS = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"  # noqa: S608 (fixed names)

CROCKFORD_BASE32 = "0123456789abcdefghjkmnpqrstvwxyz"
RUN_ID_LENGTH = 26  # 130 bits of base32 hold 48 bits of milliseconds + 80 random bits
_RANDOM_BITS = 80


def new_run_id(now: float | None = None) -> str:
    """A ULID-layout run id: ids sort by creation time (to the millisecond), then at random."""
    ms = int((time.time() if now is None else now) * 1000)
    if not 0 <= ms < 1 << 48:
        raise ValueError(f"time {now} is outside what a run id can hold")
    value = ms << _RANDOM_BITS | secrets.randbits(_RANDOM_BITS)
    chars = []
    for _ in range(RUN_ID_LENGTH):
        chars.append(CROCKFORD_BASE32[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def priority_rank(priority: str) -> int:
    """0 for urgent .. 3 for low; the queue runs lower ranks first."""
    try:
        return PRIORITIES.index(priority)
    except ValueError:
        raise ValueError(f"unknown priority {priority!r}; expected one of {PRIORITIES}") from None


def migration_7_work_dirs(db: Database) -> None:
    """Run dirs split into cvtui's files and the command's work dir; who recorded the end;
    which output globs matched nothing; the python a run's environment really used."""
    db.execute("ALTER TABLE runs ADD COLUMN work_dir TEXT")  # the command's cwd on the host
    # protocol.RECORDED_BY_*: a final state the supervisor recorded is the authoritative one
    db.execute("ALTER TABLE runs ADD COLUMN final_by TEXT")
    db.execute("ALTER TABLE runs ADD COLUMN outputs_unmatched TEXT")  # JSON list of globs
    for column in (
        "python_executable TEXT",  # the interpreter resolved after the run environment's setup
        "env_key TEXT",  # names that environment: runs sharing it share its package listing
        "links TEXT",  # JSON: [{name, target, size, mtime}] linked into the work dir
        "gpu_uuids TEXT",  # JSON: the UUIDs the run saw in CUDA_VISIBLE_DEVICES
    ):
        db.execute(f"ALTER TABLE run_provenance ADD COLUMN {column}")
    # e.g. 00000000:3B:00.0 (nvidia-smi pci.bus_id): tells GPUs apart as CUDA orders them
    db.execute("ALTER TABLE gpus ADD COLUMN pci_bus_id TEXT")


class RunsMixin:
    """Catalog methods for runs, their events, and the command queue.

    Every state change is one compare-and-set UPDATE plus its run_events row, inside the
    Catalog's BEGIN IMMEDIATE transaction: of two processes moving one run out of the same
    state, exactly one sees its UPDATE match, so a run is never dispatched twice.
    """

    if TYPE_CHECKING:
        # Provided by Catalog (store.py), which mixes this class in.
        _lock: threading.RLock

        def _write(self) -> AbstractContextManager[sqlite3.Connection]: ...
        def _read(self) -> AbstractContextManager[sqlite3.Connection]: ...

    # -- runs: writes -----------------------------------------------------------------

    def insert_runs(
        self, runs: Sequence[Mapping[str, Any]], *, now: float | None = None
    ) -> list[str]:
        """Queue runs in one transaction, each with a 'queued' event; return their ids.

        Each mapping has at least REQUIRED_ON_INSERT and may set other run columns (e.g.
        code_hash, submitted, which defaults to ``now``); the state is always 'queued'.
        """
        now = time.time() if now is None else now
        rows = [_insert_row(run, now) for run in runs]
        if not rows:
            return []
        with self._write() as conn:
            for row in rows:
                names = list(row)
                try:
                    conn.execute(
                        f"INSERT INTO runs ({', '.join(names)}) "  # noqa: S608 (checked names)
                        f"VALUES ({', '.join('?' * len(names))})",
                        list(row.values()),
                    )
                except sqlite3.IntegrityError as exc:
                    raise ValueError(f"run id {row['id']!r} is already in the catalog") from exc
            conn.executemany(
                "INSERT INTO run_events (run_id, time, state, detail) "
                "VALUES (?, ?, 'queued', NULL)",
                [(row["id"], now) for row in rows],
            )
        return [str(row["id"]) for row in rows]

    def transition_run(
        self,
        run_id: str,
        to_state: str,
        *,
        expect: Sequence[str] | None = None,
        detail: str | None = None,
        now: float | None = None,
        **fields: Any,
    ) -> bool:
        """Move a run to ``to_state`` if its state is in ``expect``; False when it is not.

        ``expect`` None means any active state: a final state is left only when ``expect``
        names it. ``fields`` set other columns in the same UPDATE (host=, gpus=, started=,
        exit_code=, ...); the run_events row is written in the same transaction.
        """
        _check_state(to_state)
        allowed = ACTIVE_STATES if expect is None else tuple(expect)
        for state in allowed:
            _check_state(state)
        now = time.time() if now is None else now
        sets = _assignments(fields)
        assign = "".join(f", {name} = ?" for name in sets)
        with self._write() as conn:
            changed = conn.execute(
                f"UPDATE runs SET state = ?, updated = ?{assign} "  # noqa: S608 (checked names)
                "WHERE id = ? AND state IN (SELECT value FROM json_each(?))",
                (to_state, now, *sets.values(), run_id, json.dumps(allowed)),
            ).rowcount
            if changed != 1:
                return False
            conn.execute(
                "INSERT INTO run_events (run_id, time, state, detail) VALUES (?, ?, ?, ?)",
                (run_id, now, to_state, detail),
            )
        return True

    def cancel_queued(
        self, run_ids: Sequence[str], *, detail: str, ended: float | None = None
    ) -> list[str]:
        """Cancel the runs of run_ids that are still queued, in one transaction (a 10,000-run
        grid leaves the queue at once); the ids it cancelled. A run the engine placed in the
        meantime, or handed to a cluster's queue, is left to a cancel command."""
        now = time.time() if ended is None else ended
        done = []
        with self._write() as conn:
            for run_id in run_ids:
                changed = conn.execute(
                    "UPDATE runs SET state = 'cancelled', updated = ?, ended = ?, reason = ? "
                    # a queued run with a host is held by its cluster: cancelled there
                    "WHERE id = ? AND state = 'queued' AND host IS NULL",
                    (now, now, "cancelled before it started", run_id),
                ).rowcount
                if changed == 1:
                    done.append(run_id)
            conn.executemany(
                "INSERT INTO run_events (run_id, time, state, detail) "
                "VALUES (?, ?, 'cancelled', ?)",
                [(run_id, now, detail) for run_id in done],
            )
        return done

    def left_queue(self, run_ids: Sequence[str]) -> list[tuple[str, str, str | None]]:
        """(id, state, detail of its last event) of these runs: what became of runs that
        left the queue."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT r.id, r.state, (SELECT e.detail FROM run_events e WHERE e.run_id = r.id "
                "ORDER BY e.time DESC, e.id DESC LIMIT 1) FROM runs r "
                "WHERE r.id IN (SELECT value FROM json_each(?))",
                (json.dumps(list(run_ids)),),
            ).fetchall()
        return [(r[0], r[1], r[2]) for r in rows]

    def update_run(self, run_id: str, *, now: float | None = None, **fields: Any) -> None:
        """Set columns that change without a state change (progress, log_size, ...)."""
        sets = _assignments(fields)
        if not sets:
            return
        now = time.time() if now is None else now
        assign = ", ".join(f"{name} = ?" for name in sets)
        with self._write() as conn:
            conn.execute(
                f"UPDATE runs SET {assign}, updated = ? WHERE id = ?",  # noqa: S608 (checked names)
                (*sets.values(), now, run_id),
            )

    def set_waiting_reasons(self, reasons: Mapping[str, str], *, now: float | None = None) -> None:
        """Why each queued run waits, for many runs in one transaction (no events)."""
        if not reasons:
            return
        stamp = time.time() if now is None else now
        with self._write() as conn:
            conn.executemany(
                "UPDATE runs SET reason = ?, updated = ? WHERE id = ? AND state = 'queued'",
                [(why, stamp, run_id) for run_id, why in reasons.items()],
            )

    def set_run_priority(self, run_id: str, priority: str, *, now: float | None = None) -> bool:
        """Change a queued run's priority; False when the run is not (or no longer) queued."""
        rank = priority_rank(priority)
        now = time.time() if now is None else now
        with self._write() as conn:
            changed = conn.execute(
                "UPDATE runs SET priority = ?, priority_rank = ?, updated = ? "
                "WHERE id = ? AND state = 'queued'",
                (priority, rank, now, run_id),
            ).rowcount
        return changed == 1

    # -- runs: reads ------------------------------------------------------------------

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's row with its JSON columns decoded, or None."""
        with self._read() as conn:
            row = conn.execute(f"{SELECT_RUNS} WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else decode_run(row)

    def resolve_run(self, ref: str) -> dict[str, Any]:
        """The one run a user's reference (id, id prefix or name) names, or a CvtuiError."""
        found = self.find_runs(ref)
        if not found:
            raise CvtuiError(f"no run matches {ref!r}")
        if len(found) > 1 and found[0]["id"] != ref:
            names = ", ".join(f"{r['id'][:12]} ({r['name']})" for r in found[:5])
            raise CvtuiError(f"{ref!r} matches {len(found)} runs: {names}; give more of the id")
        return found[0]

    def find_runs(self, ref: str) -> list[dict[str, Any]]:
        """Runs a user's reference names, newest first.

        An exact id, else the one run whose id starts with ``ref`` (any case), else every
        run named ``ref``, else every run whose id starts with ``ref`` (an ambiguous prefix:
        the caller lists them). Empty when nothing matches.
        """
        if not ref:
            return []
        prefix = ref.lower()
        newest = "ORDER BY submitted DESC, id DESC"
        with self._read() as conn:
            exact = conn.execute(f"{SELECT_RUNS} WHERE id = ?", (prefix,)).fetchall()
            if exact:
                return [decode_run(r) for r in exact]
            # A range, not LIKE: ids use no LIKE wildcards but a user's ref may.
            by_prefix = conn.execute(
                f"{SELECT_RUNS} WHERE id >= ? AND id < ? {newest}",
                (prefix, prefix + "\U0010ffff"),
            ).fetchall()
            if len(by_prefix) == 1:
                return [decode_run(by_prefix[0])]
            by_name = conn.execute(f"{SELECT_RUNS} WHERE name = ? {newest}", (ref,)).fetchall()
        return [decode_run(r) for r in by_name or by_prefix]

    def list_runs(
        self,
        *,
        states: Sequence[str] | None = None,
        host: str | None = None,
        project: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[dict[str, Any]]:
        """Runs filtered by state, host and project; None means no filter."""
        for state in states or ():
            _check_state(state)
        wanted = None if states is None else json.dumps(list(states))
        order = "DESC" if newest_first else "ASC"
        with self._read() as conn:
            rows = conn.execute(
                f"{SELECT_RUNS} "  # noqa: S608 (order is one of two keywords)
                "WHERE (?1 IS NULL OR state IN (SELECT value FROM json_each(?1))) "
                "AND (?2 IS NULL OR host = ?2) AND (?3 IS NULL OR project = ?3) "
                f"ORDER BY submitted {order}, id {order} LIMIT ?4",
                (wanted, host, project, -1 if limit is None else limit),
            ).fetchall()
        return [decode_run(r) for r in rows]

    def queued_runs(self) -> list[dict[str, Any]]:
        """Queued runs in the order the scheduler should try them: priority, then FIFO."""
        with self._read() as conn:
            rows = conn.execute(
                f"{SELECT_RUNS} WHERE state = 'queued' ORDER BY priority_rank, submitted, id"
            ).fetchall()
        return [decode_run(r) for r in rows]

    def queue_entries(self) -> list[tuple[str, str, float, dict[str, Any]]]:
        """(id, priority, submitted, resources) of queued runs, in queue order.

        What a scheduling pass needs and no more: decoding every column of a 10,000-run
        queue costs ~0.4 s, this ~30 ms.
        """
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, priority, submitted, resources FROM runs WHERE state = 'queued' "
                "ORDER BY priority_rank, submitted, id"
            ).fetchall()
        return [(r[0], r[1], r[2], json.loads(r[3]) if r[3] else {}) for r in rows]

    def run_events(self, run_id: str) -> list[dict[str, Any]]:
        """The run's state changes, oldest first: id, run_id, time, state, detail."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, run_id, time, state, detail FROM run_events "
                "WHERE run_id = ? ORDER BY id",
                (run_id,),
            ).fetchall()
        keys = ("id", "run_id", "time", "state", "detail")
        return [dict(zip(keys, r, strict=True)) for r in rows]

    def run_usage(self, since: float | None, now: float) -> RunUsage:
        """What `cvtui stats` needs of the runs active at or after ``since`` (None: all runs),
        summed by SQLite: a year of a busy lab is ~75,000 runs, and decoding each row in
        Python took most of the command's second.

        A run counts when it was submitted, or had not yet ended, at ``since``. Its GPU time
        is clipped to [since, now]; a run still running counts up to now.
        """
        with self._read() as conn:
            states = conn.execute(
                "SELECT state, CASE WHEN started IS NOT NULL AND ended IS NOT NULL "
                "THEN max(0.0, ended - started) END FROM runs "
                "WHERE ?1 IS NULL OR submitted >= ?1 OR ended >= ?1 OR ended IS NULL",
                (since,),
            ).fetchall()
            groups = conn.execute(
                "SELECT user, host, gpus, count(*), total(max(0.0, "
                "min(coalesce(ended, ?2), ?2) - max(started, coalesce(?1, started)))) "
                "FROM runs NOT INDEXED "
                "WHERE (?1 IS NULL OR submitted >= ?1 OR ended >= ?1 OR ended IS NULL) "
                "AND started IS NOT NULL AND host IS NOT NULL AND host != '' "
                "AND gpus IS NOT NULL GROUP BY user, host, gpus",
                (since, now),
            ).fetchall()
        counts: dict[str, int] = {}
        spans: dict[str, list[float]] = {}
        for state, span in states:
            counts[state] = counts.get(state, 0) + 1
            if span is not None:
                spans.setdefault(state, []).append(span)
        usage = []
        for user, host, gpus, runs, seconds in groups:
            indexes = json.loads(gpus)
            if indexes:
                usage.append(GpuUsage(user or None, host, tuple(indexes), runs, seconds))
        return RunUsage(counts, spans, usage)

    def runs_summary(self) -> dict[str, int]:
        """How many runs are in each state; every state is present, zero included."""
        with self._read() as conn:
            counts = dict(conn.execute("SELECT state, count(*) FROM runs GROUP BY state"))
        return {state: int(counts.get(state, 0)) for state in RUN_STATES}

    # -- commands: CLI/TUI -> engine ----------------------------------------------------

    def submit_command(
        self, kind: str, args: Mapping[str, Any], *, now: float | None = None
    ) -> int:
        """Queue a command for the engine (cancel, retry, ...); return its id."""
        if not kind:
            raise ValueError("a command needs a kind")
        now = time.time() if now is None else now
        with self._write() as conn:
            cursor = conn.execute(
                "INSERT INTO commands (created, kind, args, state) VALUES (?, ?, ?, 'pending')",
                (now, kind, json.dumps(dict(args))),
            )
        assert cursor.lastrowid is not None  # an INSERT into a rowid table always sets it
        return cursor.lastrowid

    def pending_commands(self) -> list[dict[str, Any]]:
        """Commands the engine has not finished, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT id, created, kind, args, state, result, finished FROM commands "
                "WHERE state = 'pending' ORDER BY id"
            ).fetchall()
        return [_decode_command(r) for r in rows]

    def finish_command(
        self, command_id: int, *, ok: bool, result: Any = None, now: float | None = None
    ) -> None:
        """Record a command's outcome; a command already finished keeps its first outcome."""
        now = time.time() if now is None else now
        with self._write() as conn:
            conn.execute(
                "UPDATE commands SET state = ?, result = ?, finished = ? "
                "WHERE id = ? AND state = 'pending'",
                ("done" if ok else "failed", json.dumps(result), now, command_id),
            )

    def get_command(self, command_id: int) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(
                "SELECT id, created, kind, args, state, result, finished FROM commands "
                "WHERE id = ?",
                (command_id,),
            ).fetchone()
        return None if row is None else _decode_command(row)


def _check_state(state: str) -> None:
    if state not in RUN_STATES:
        raise ValueError(f"unknown run state {state!r}; expected one of {RUN_STATES}")


def _encode(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in JSON_COLUMNS or isinstance(value, list | tuple | dict):
        return json.dumps(value)
    if name == "progress":
        return min(100.0, max(0.0, float(value)))  # a parsed tqdm bar may overshoot
    return value


def _assignments(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Column -> stored value for the columns a caller may set directly."""
    for name in fields:
        if name not in RUN_COLUMNS or name in _NOT_SETTABLE:
            raise ValueError(f"cannot set run column {name!r}")
    return {name: _encode(name, value) for name, value in fields.items()}


def _insert_row(run: Mapping[str, Any], now: float) -> dict[str, Any]:
    missing = [name for name in REQUIRED_ON_INSERT if name not in run]
    if missing:
        raise ValueError(f"run {run.get('id')!r} lacks {', '.join(missing)}")
    extra = [n for n in run if n not in RUN_COLUMNS or n in ("state", "priority_rank", "updated")]
    if extra:
        raise ValueError(f"run {run['id']!r}: cannot insert column(s) {', '.join(extra)}")
    row = {name: _encode(name, value) for name, value in run.items()}
    row["priority_rank"] = priority_rank(run["priority"])
    row["state"] = "queued"
    if row.get("submitted") is None:
        row["submitted"] = now
    row["updated"] = now
    return row


def decode_run(row: Sequence[Any]) -> dict[str, Any]:
    run = dict(zip(RUN_COLUMNS, row, strict=True))
    for name in JSON_COLUMNS:
        if run[name] is not None:
            run[name] = json.loads(run[name])
    return run


def _decode_command(row: Sequence[Any]) -> dict[str, Any]:
    command_id, created, kind, args, state, result, finished = row
    return {
        "id": command_id,
        "created": created,
        "kind": kind,
        "args": json.loads(args) if args is not None else {},
        "state": state,
        "result": json.loads(result) if result is not None else None,
        "finished": finished,
    }
