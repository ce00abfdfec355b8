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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvtui.catalog import Catalog
from cvtui.catalog.rebuild import CONTROLLER_KEY
from cvtui.catalog.runs import RUN_ID_LENGTH
from cvtui.catalog.store import CATALOG_FILE
from cvtui.engine.ingest import ingest_file
from cvtui.engine.lock import EngineLock, lock_holder
from cvtui.errors import CvtuiError, EngineLockedError
from cvtui.metrics_parse import metrics_kind
from cvtui.mirror import Mirror, UnsafePathError, read_run_record
from cvtui.paths import controller_id
from cvtui.run_restore import RunSources, file_rows, restored_run
from cvtui.states import FINAL_STATES

if TYPE_CHECKING:
    from cvtui.engine.host_records import HostRecords
    from cvtui.inventory import Inventory

NEW_SUFFIX = ".reindex"
SIDECARS = ("-wal", "-shm", "-journal")


@dataclass
class ReindexReport:
    """What a reindex did: runs per source, files and metric values, what it could not do."""

    runs_by_host: dict[str, int] = field(default_factory=dict)  # "(mirror)" for mirror alone
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> why
    # host -> run dirs left alone there: recorded by another controller sharing its root
    others: dict[str, int] = field(default_factory=dict)
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
            "other_controllers_runs": self.others,
            "files": self.files,
            "metric_values": self.metric_values,
            "problems": self.problems,
            "kept_from_old": self.kept,
            "old_unreadable": self.old_unreadable,
        }


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
    found: dict[str, RunSources] = {}
    ours = controller_id(home)
    for host_records in records:
        if host_records.error is not None:
            report.unreachable[host_records.host] = host_records.error
        for entry in host_records.runs:
            record = entry.get("record")
            owner = record.get(CONTROLLER_KEY) if isinstance(record, dict) else None
            if owner and owner != ours:  # unstamped (older) run dirs are taken as ours
                report.others[host_records.host] = report.others.get(host_records.host, 0) + 1
                continue
            run_id = str(entry.get("run_id"))
            found.setdefault(run_id, RunSources(run_id))
            if found[run_id].host is not None:
                report.problems.append(
                    f"{run_id}: run dirs on {found[run_id].host} and {host_records.host}; "
                    f"kept {found[run_id].host}'s"
                )
                continue
            found[run_id].host, found[run_id].host_entry = host_records.host, entry
    for run_id in _mirrored_run_ids(home):
        found.setdefault(run_id, RunSources(run_id)).mirrored = read_run_record(home, run_id)

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
        try:
            os.link(target, backup)  # the old file stays whole at target until the rename
        except OSError:  # a file system without hard links: a copy, as the old file is now
            shutil.copy2(target, backup)
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
    found: RunSources,
    report: ReindexReport,
    known_hosts: set[str] | None,
    now: float,
) -> None:
    row, events, files = restored_run(found, report.problems, report.unreachable, known_hosts, now)
    files = file_rows(home, found.run_id, files)
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
