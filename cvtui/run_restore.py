"""How `cvtui reindex` puts one run back: its row, events and file rows, from what its host's
run dir (status.json, run.json, config.yaml) and the local mirror (the engine's record of it,
the copies of its files) hold."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cvtui.catalog.rebuild import RECORD_COLUMNS, spec_from_record
from cvtui.mirror import RUN_RECORD, mirror_dir
from cvtui.states import FINAL_STATES, RUN_STATES
from remote_agent import protocol

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
class RunSources:
    """Everything known of one run before it is written back."""

    run_id: str
    host: str | None = None  # where its run dir was found
    host_entry: Mapping[str, Any] | None = None  # the run_records entry
    mirrored: Mapping[str, Any] | None = None  # the mirror's record (run, events, files)


def restored_run(
    found: RunSources,
    problems: list[str],
    unreachable: Mapping[str, str],
    known_hosts: set[str] | None,
    now: float,
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The run's row, events and mirrored file rows from what the host and the mirror hold;
    what was missing or doubtful is added to problems. unreachable: the hosts not read now;
    known_hosts: the inventory's (None: no host was read)."""
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
        problems.append(f"{found.run_id} on {found.host}: {problem}")
    if status is not None:
        _apply_status(row, status, found.host or "")
    elif "state" not in row:
        row.update(state="lost", reason=MIRROR_ONLY_REASON, ended=row.get("ended"))
    elif row["state"] not in FINAL_STATES and row.get("host"):
        host = row["host"]
        if known_hosts is not None and host not in known_hosts:
            row["reason"] = f"host {host} is not in the inventory; last recorded {row['state']}"
            row["state"] = "lost"
        elif host in unreachable or known_hosts is None:
            problems.append(
                f"{found.run_id}: {row['state']} as last recorded; {host} is checked when an "
                "engine reaches it"
            )
    if record is None and not isinstance(mirrored.get("run"), dict):
        if _from_config(row, entry.get("config_yaml")):
            problems.append(
                f"{found.run_id}: no record of it (a run started before run.json): name, "
                "params and command read from its config.yaml"
            )
        else:
            problems.append(
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


def _fill_required(row: dict[str, Any], found: RunSources, now: float) -> None:
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


def file_rows(
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
