"""`cvtui reindex`: rebuild a lost or damaged catalog from the hosts' run dirs and the mirror.

A fresh catalog is written beside the old one (catalog.db.reindex): every run dir the reachable
hosts hold (their run.json record, status.json and config.yaml) and every run the local mirror
holds (the engine's record of it, its files, its metrics parsed again by the sync's own ingest).
What only the old catalog held (models, components, blobs, history ...) is copied from it when
SQLite can still read it. Then the new file replaces the old in one rename; the old one is kept
as catalog.db.bak-<time>.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.catalog import Catalog
from cvtui.catalog.rebuild import RECORD_COLUMNS, spec_from_record
from cvtui.catalog.runs import RUN_ID_LENGTH
from cvtui.catalog.store import CATALOG_FILE
from cvtui.engine.ingest import ingest_file
from cvtui.engine.lock import EngineLock, lock_holder
from cvtui.errors import CvtuiError, EngineLockedError
from cvtui.metrics_parse import metrics_kind
from cvtui.mirror import RUN_RECORD, Mirror, UnsafePathError, mirror_dir, read_run_record
from cvtui.states import FINAL_STATES, RUN_STATES
from remote_agent import protocol

if TYPE_CHECKING:
    from cvtui.engine.host_records import HostRecords
    from cvtui.inventory import Inventory

NEW_SUFFIX = ".reindex"
SIDECARS = ("-wal", "-shm", "-journal")
# The agent's words for a run on its host -> the catalog's (a Slurm job held in its queue is a
# queued run with a host; a supervisor still starting is a run being dispatched).
HOST_STATES = {
    protocol.RUN_PENDING: "queued",
    protocol.RUN_STARTING: "dispatching",
    protocol.RUN_RUNNING: "running",
    **{state: state for state in protocol.RUN_FINAL_STATES},
}
MIRROR_ONLY_REASON = "restored by reindex from the local mirror alone: no record of its state"


@dataclass
class ReindexReport:
    """What a reindex did: runs per source, files and metric values, what it could not do."""

    runs_by_host: dict[str, int] = field(default_factory=dict)  # "(mirror)" for mirror alone
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> why
    files: int = 0
    metric_values: int = 0
    problems: list[str] = field(default_factory=list)  # a run restored in part, and why
    kept: dict[str, int] = field(default_factory=dict)  # table -> rows copied from the old file
    old_unreadable: list[str] = field(default_factory=list)
    backup: Path | None = None
    catalog: Path | None = None

    @property
    def runs(self) -> int:
        return sum(self.runs_by_host.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "catalog": str(self.catalog) if self.catalog else None,
            "backup": str(self.backup) if self.backup else None,
            "runs": self.runs,
            "runs_by_host": self.runs_by_host,
            "unreachable": self.unreachable,
            "files": self.files,
            "metric_values": self.metric_values,
            "problems": self.problems,
            "kept_from_old": self.kept,
            "old_unreadable": self.old_unreadable,
        }


@dataclass
class _Found:
    """Everything known of one run before it is written."""

    run_id: str
    host: str | None = None  # where its run dir was found
    host_entry: Mapping[str, Any] | None = None  # the run_records entry
    mirrored: Mapping[str, Any] | None = None  # the mirror's record (run, events, files)


def refuse_when_engine_runs(home: Path) -> None:
    pid = lock_holder(home)
    if pid is not None:
        who = f"pid {pid}" if pid > 0 else "another process"
        raise CvtuiError(
            f"an engine ({who}) holds {home}: stop it (`cvtui daemon`, the dashboard, a "
            "`cvtui run --follow`) before `cvtui reindex`"
        )


def reindex(home: Path, inventory: Inventory | None, *, now: float | None = None) -> ReindexReport:
    """Rebuild home's catalog; inventory None reads the mirror alone (--from-mirror-only)."""
    refuse_when_engine_runs(home)
    lock = EngineLock(home)
    try:
        lock.acquire()  # no engine may start on the old catalog while it is replaced
    except EngineLockedError as exc:
        raise CvtuiError(f"{exc}: stop it before `cvtui reindex`") from None
    try:
        return _reindex(home, inventory, time.time() if now is None else now)
    finally:
        lock.release()


def _reindex(home: Path, inventory: Inventory | None, now: float) -> ReindexReport:
    from cvtui.engine.host_records import read_host_records  # asyncssh: only here

    report = ReindexReport()
    records: list[HostRecords] = []
    if inventory is not None and inventory.hosts:
        records = asyncio.run(read_host_records(inventory.hosts, inventory.policy))
    found: dict[str, _Found] = {}
    for host_records in records:
        if host_records.error is not None:
            report.unreachable[host_records.host] = host_records.error
        for entry in host_records.runs:
            run_id = str(entry.get("run_id"))
            found.setdefault(run_id, _Found(run_id))
            if found[run_id].host is not None:
                report.problems.append(
                    f"{run_id}: run dirs on {found[run_id].host} and {host_records.host}; "
                    f"kept {found[run_id].host}'s"
                )
                continue
            found[run_id].host, found[run_id].host_entry = host_records.host, entry
    for run_id in _mirrored_run_ids(home):
        found.setdefault(run_id, _Found(run_id)).mirrored = read_run_record(home, run_id)

    target = home / CATALOG_FILE
    fresh = home / f"{CATALOG_FILE}{NEW_SUFFIX}"
    for leftover in (fresh, *(Path(f"{fresh}{s}") for s in SIDECARS)):
        leftover.unlink(missing_ok=True)  # an earlier reindex that was interrupted
    known_hosts = {h.name for h in inventory.hosts} if inventory is not None else None
    catalog = Catalog(fresh, check=False)
    try:
        for run_id in sorted(found):
            _restore(catalog, home, found[run_id], report, known_hosts, now)
        if target.exists():
            copied, problems = catalog.copy_kept_tables(target, sorted(found))
            report.kept = {table: count for table, count in copied.items() if count}
            report.old_unreadable = problems
        else:
            report.old_unreadable = [f"{target} is gone"]
    except BaseException:
        catalog.close()
        raise
    catalog.checkpoint_and_close()
    fresh.chmod(0o600)
    report.backup = _swap(fresh, target, now)
    report.catalog = target
    return report


def _mirrored_run_ids(home: Path) -> list[str]:
    try:
        entries = sorted(os.scandir(home / "runs"), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    return [
        e.name
        for e in entries
        if e.is_dir(follow_symlinks=False) and len(e.name) == RUN_ID_LENGTH and e.name.isalnum()
    ]


def _swap(fresh: Path, target: Path, now: float) -> Path | None:
    """Put fresh in target's place in one rename; the old file (and its -wal and -shm, which
    must never meet the new file) kept as catalog.db.bak-<time>. The backup's path."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    backup = target.with_name(f"{target.name}.bak-{stamp}")
    taken = 1
    while any(Path(f"{backup}{s}").exists() for s in ("", *SIDECARS)):
        taken += 1  # two reindexes within one second
        backup = target.with_name(f"{target.name}.bak-{stamp}-{taken}")
    moved = None
    if target.exists():
        os.link(target, backup)  # the old file stays whole at target until the rename
        moved = backup
    for suffix in SIDECARS:
        sidecar = Path(f"{target}{suffix}")
        if sidecar.exists():
            sidecar.replace(Path(f"{backup}{suffix}"))
            moved = backup
    fresh.replace(target)  # one rename: readers see the old catalog or the new one
    return moved


def _restore(
    catalog: Catalog,
    home: Path,
    found: _Found,
    report: ReindexReport,
    known_hosts: set[str] | None,
    now: float,
) -> None:
    row, events, files = _run_row(found, report, known_hosts, now)
    files = _file_rows(home, found.run_id, files)
    try:
        catalog.restore_run(row, events, files)
    except (ValueError, TypeError) as exc:
        report.problems.append(f"{found.run_id}: not restored: {exc}")
        return
    source = found.host or row.get("host") or "(mirror)"
    report.runs_by_host[source] = report.runs_by_host.get(source, 0) + 1
    report.files += len(files)
    final = row["state"] in FINAL_STATES
    mirror = Mirror(home, found.run_id)
    for file in files:
        if metrics_kind(file["path"]) is None:
            continue
        try:
            local = mirror.path(file["path"])
            if local.is_file():
                report.metric_values += ingest_file(
                    catalog, found.run_id, file["path"], local, final=final
                )
        except (OSError, UnsafePathError) as exc:
            report.problems.append(f"{found.run_id}: metrics of {file['path']}: {exc}")


def _run_row(
    found: _Found, report: ReindexReport, known_hosts: set[str] | None, now: float
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's row, events and mirrored file rows from what the host and the mirror hold."""
    row: dict[str, Any] = {"id": found.run_id}
    events: list[dict[str, Any]] = []
    files: list[dict[str, Any]] = []
    entry = found.host_entry or {}
    record = entry.get("record") if isinstance(entry.get("record"), dict) else None
    if record is not None:
        row.update({k: record[k] for k in RECORD_COLUMNS if record.get(k) is not None})
        if isinstance(record.get("spec"), dict):
            row["spec"] = spec_from_record(record, entry.get("config_yaml"))
            row["config"] = row["spec"].get("config") or {}
    mirrored = found.mirrored or {}
    if isinstance(mirrored.get("run"), dict):
        row.update({k: v for k, v in mirrored["run"].items() if v is not None})
        events = [e for e in mirrored.get("events") or [] if isinstance(e, dict)]
        files = [f for f in mirrored.get("files") or [] if isinstance(f, dict)]
    status = entry.get("status") if isinstance(entry.get("status"), dict) else None
    for problem in entry.get("problems") or []:
        report.problems.append(f"{found.run_id} on {found.host}: {problem}")
    if status is not None:
        _apply_status(row, status, found.host or "")
    elif "state" not in row:
        row.update(state="lost", reason=MIRROR_ONLY_REASON, ended=row.get("ended"))
    elif row["state"] not in FINAL_STATES and row.get("host"):
        host = row["host"]
        if known_hosts is not None and host not in known_hosts:
            row["reason"] = f"host {host} is not in the inventory; last recorded {row['state']}"
            row["state"] = "lost"
        elif host in report.unreachable or known_hosts is None:
            report.problems.append(
                f"{found.run_id}: {row['state']} as last recorded; {host} is checked when an "
                "engine reaches it"
            )
    if record is None and not isinstance(mirrored.get("run"), dict):
        if _from_config(row, entry.get("config_yaml")):
            report.problems.append(
                f"{found.run_id}: no record of it (a run started before run.json): name, "
                "params and command read from its config.yaml"
            )
        else:
            report.problems.append(
                f"{found.run_id}: no record of its name, params or command (restored as "
                f"{row['state']}, named by its id)"
            )
    _fill_required(row, found, now)
    if row["state"] not in RUN_STATES:
        row["state"] = "lost"
    return row, _events(row, events), files


def _from_config(row: dict[str, Any], text: Any) -> bool:
    """Name, project, params, command and config from a run's config.yaml (the resolved config
    of a plain run config): for a run dir from before run.json. Whether it could be read."""
    if not isinstance(text, str) or not text:
        return False
    import yaml

    from cvtui.grid import flatten

    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError:
        return False
    if not isinstance(config, dict):
        return False
    row["config"] = config
    if isinstance(config.get("name"), str):
        row["name"] = config["name"]
        row["project"] = config.get("project") or config["name"]
    if isinstance(config.get("params"), dict):
        row["params"] = flatten(config["params"])
    command = config.get("command")
    if isinstance(command, str) or (
        isinstance(command, list) and all(isinstance(a, str) for a in command)
    ):
        row["command"] = command
    return True


def _apply_status(row: dict[str, Any], status: Mapping[str, Any], host: str) -> None:
    """The host's status.json over what the records say: it is the newest word on the run."""
    state = HOST_STATES.get(str(status.get("state")), "lost")
    recorded = row.get("state")
    if recorded in FINAL_STATES and state not in FINAL_STATES:
        state = recorded  # a run the catalog ended (cancelled while starting) stays ended
    row["state"] = state
    row["host"] = host
    for name, key in (
        ("exit_code", "exit_code"),
        ("started", "started"),
        ("ended", "ended"),
        ("reason", "reason"),
        ("run_dir", "run_dir"),
        ("work_dir", "work_dir"),
        ("pgid", "pgid"),
        ("supervisor_pid", "supervisor_pid"),
        ("progress", "progress"),
        ("progress_msg", "progress_msg"),
        ("final_by", "recorded_by"),
        ("slurm_job", "job_id"),
    ):
        value = status.get(key)
        if value is not None and value != "":
            row[name] = value
    if status.get("gpus") and not row.get("gpus"):
        row["gpus"] = list(status["gpus"])


def _fill_required(row: dict[str, Any], found: _Found, now: float) -> None:
    """Columns a run row cannot lack, for a run known only by its id."""
    row.setdefault("name", found.run_id)
    row.setdefault("project", "")
    row.setdefault("user", "")
    row.setdefault("priority", "normal")
    row.setdefault("command", "")
    row.setdefault("params", {})
    row.setdefault("config", {})
    row.setdefault("spec", {})
    row.setdefault("resources", {})
    row.setdefault("submitted", row.get("dispatched") or row.get("started") or now)
    row["updated"] = now


def _events(row: Mapping[str, Any], recorded: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The recorded events, with the run's current state added when they end elsewhere; a run
    without recorded events gets those its times say: queued, running, its end."""
    events = [
        {"time": e.get("time") or row["submitted"], "state": e["state"], "detail": e.get("detail")}
        for e in recorded
        if e.get("state") in RUN_STATES
    ]
    if not events:
        events.append({"time": row["submitted"], "state": "queued", "detail": None})
        if row.get("started") and row["state"] != "queued":
            events.append({"time": row["started"], "state": "running", "detail": None})
    if events[-1]["state"] != row["state"]:
        when = row.get("ended") or row.get("started") or row["updated"]
        events.append({"time": when, "state": row["state"], "detail": row.get("reason")})
    return events


def _file_rows(
    home: Path, run_id: str, recorded: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """File rows of a run: the recorded row of a file whose local copy is still the one it
    describes (or that has no local copy: skipped, vanished ...), else one from the copy."""
    root = mirror_dir(home, run_id)
    local = dict(_local_files(root))
    rows = []
    for row in recorded:
        path = str(row.get("path"))
        st = local.get(path)
        if st is None and row.get("synced_size"):
            continue  # its copy is gone from the mirror: nothing here to restore
        if st is not None and (row.get("local_mtime_ns"), row.get("local_ino")) != (
            st.st_mtime_ns,
            st.st_ino,
        ):
            continue  # the copy changed after the record: described from the copy below
        rows.append(dict(row))
        local.pop(path, None)
    for path, st in sorted(local.items()):
        rows.append(
            {
                "path": path,
                "size": st.st_size,
                "synced_size": st.st_size,
                "sync_status": "synced",
                "synced_at": st.st_mtime,
                "local_mtime_ns": st.st_mtime_ns,
                "local_ino": st.st_ino,
                "reason": "restored by reindex from the local copy; checked at the next sync",
            }
        )
    return rows


def _local_files(root: Path) -> list[tuple[str, os.stat_result]]:
    """(run-relative path, lstat) of the regular files of a run's mirror, the record aside."""
    found = []
    for directory, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(directory) / d).is_symlink()]
        for name in names:
            full = Path(directory) / name
            rel = full.relative_to(root).as_posix()
            if rel == RUN_RECORD or rel.startswith(f"{RUN_RECORD}.tmp-"):
                continue
            st = full.lstat()
            if stat.S_ISREG(st.st_mode):
                found.append((rel, st))
    return found
