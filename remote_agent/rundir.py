"""A run dir's files (status.json, output.log, ...) and the processes its status names.

A run dir <root>/runs/<run_id>/ (0700) holds cvtui's own files; the command runs in its work
dir (protocol.WORK_DIR), which holds the code copy, the links and whatever the run writes, so a
script's own status.json or config.yaml never meets ours. Runs started before protocol 2 have
no work dir: their command ran in the run dir itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from typing import Any

from remote_agent.hoststats import read_environ
from remote_agent.protocol import RUN_LOST, WORK_DIR, ProtocolError, RunStatus

RUN_ID = re.compile(r"[0-9a-z]{10,64}\Z")  # also a safe directory name
CODE_HASH = re.compile(r"[0-9a-f]{8,128}\Z")  # names <root>/code/<hash>
WRITER = "cvtui-supervisor"  # status.json's "writer": only such runs of our uid may be signalled
STATUS_FILE = "status.json"
LOG_FILE = "output.log"
CANCEL_FILE = "cancel"
SUPERVISOR_LOG = "supervisor.log"  # the supervisor's own stderr
CONFIG_FILE = "config.yaml"
SNAPSHOT_RECORD = "snapshot.json"  # the code files copied into the work dir that are outputs
PYTHON_RECORD = "python.json"  # the interpreter the run environment resolves, for provenance
RUN_RECORD = "run.json"  # the controller's record of the run (StartRequest.record), for reindex
# A run's params as JSON when they are too long for the CVTUI_PARAMS variable (one environment
# string may hold 128 KiB on Linux: exec fails on a longer one); CVTUI_PARAMS_FILE names it.
PARAMS_FILE = "params.json"
PARAMS_ENV_MAX = 64 << 10
# cvtui's files in a run dir; in a run dir from before work dirs they are not outputs either.
OWN_FILES = frozenset(
    {
        STATUS_FILE,
        LOG_FILE,
        CANCEL_FILE,
        SUPERVISOR_LOG,
        CONFIG_FILE,
        SNAPSHOT_RECORD,
        PYTHON_RECORD,
        RUN_RECORD,
        PARAMS_FILE,
    }
)
# Run variables the agent's own environment must not pass to a supervisor or a run: the
# simulated GPU backend counts the topmost process carrying them.
RUN_ENV_KEYS = frozenset(
    {
        "CUDA_VISIBLE_DEVICES",
        "CVTUI_SIM_GPUS",
        "CVTUI_SIM_MEM",
        "CVTUI_RUN_ID",
        "CVTUI_RUN_DIR",
        "CVTUI_PARAMS",
        "CVTUI_PARAMS_FILE",
        "CVTUI_GPUS",
    }
)


def params_json(params: dict[str, Any]) -> str:
    """CVTUI_PARAMS's value (and params.json's text when that is too long)."""
    return json.dumps(params, sort_keys=True)


def work_dir_of(run_dir: str) -> str:
    """Where the run's command runs: its work dir, or the run dir itself for an older run."""
    work = os.path.join(run_dir, WORK_DIR)
    return work if os.path.isdir(work) else run_dir


def process_stat(pid: int) -> tuple[str, int, int] | None:
    """(state letter, pgid, starttime in clock ticks) of a process from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read(4096)
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parens: fields restart after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0].decode("ascii", "replace"), int(fields[2]), int(fields[19])
    except (IndexError, ValueError):
        return None


def process_alive(pid: int | None, start: int | None) -> bool:
    """Whether this exact process (pid and start time) still runs; zombies count as gone."""
    if not pid:
        return False
    found = process_stat(pid)
    if found is None or found[0] in ("Z", "X"):
        return False
    return start is None or found[2] == start


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    members = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            found = process_stat(int(name))
            if found is not None and found[1] == pgid and found[0] not in ("Z", "X"):
                members.append(int(name))
    return members


def read_status(run_dir: str) -> dict[str, Any] | None:
    """status.json as written (RunStatus fields plus writer and uid), None when absent or bad."""
    try:
        with open(os.path.join(run_dir, STATUS_FILE), "rb") as f:
            data = json.loads(f.read(1 << 20).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def write_status(run_dir: str, status: dict[str, Any], durable: bool = False) -> None:
    """Replace status.json atomically, so a reader never sees half of it."""
    path = os.path.join(run_dir, STATUS_FILE)
    tmp = f"{path}.tmp-{os.getpid()}"
    data = json.dumps(status, indent=1, sort_keys=True).encode() + b"\n"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write of {tmp}")
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def stat_key(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def write_json(path: str, data: dict[str, Any]) -> None:
    """Replace a small JSON file atomically."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def group_runs(pgid: int, run_id: str) -> bool:
    """Whether a live process of the group carries this run id: never signal a stranger."""
    for pid in group_members(pgid):
        env = read_environ(pid)
        if env is not None and env.get("CVTUI_RUN_ID") == run_id:
            return True
    return False


def signal_group(pgid: int, run_id: str, sig: int) -> None:
    """Signal the group only while one of its processes carries the run id."""
    if group_runs(pgid, run_id):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def kill_group_later(pgid: int, run_id: str, grace_s: float) -> None:
    """SIGKILL the group after grace_s unless it ended (or stopped carrying the run id)."""
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if not group_runs(pgid, run_id):
            return
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
    signal_group(pgid, run_id, signal.SIGKILL)


def status_from(data: dict[str, Any], run_id: str, run_dir: str) -> RunStatus:
    """status.json's fields as a RunStatus at this run dir; lost when they do not parse."""
    try:
        return RunStatus.from_wire({**data, "run_id": run_id, "run_dir": run_dir})
    except ProtocolError:
        return RunStatus(run_id, RUN_LOST, run_dir, reason="status.json is unreadable")
