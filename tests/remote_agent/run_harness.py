"""Helpers for run tests: fresh run ids, waiting on run states, and killing leftover runs."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

from remote_agent_harness import AgentProcess

from remote_agent.protocol import OP_RUNS, OP_START, RUN_FINAL_STATES
from remote_agent.rundir import group_members, process_alive, process_stat, read_status

WAIT_S = 10.0


def new_run_id() -> str:
    return "r" + secrets.token_hex(8)


def gone(pid: int) -> bool:
    """Whether a process has ended (a zombie nobody reaps counts as ended)."""
    found = process_stat(pid)
    return found is None or found[0] in ("Z", "X")


def wait_until(check: Any, timeout_s: float = WAIT_S, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def start(agent: AgentProcess, command: Any, **fields: Any) -> dict[str, Any]:
    """OP_START with a fresh run id unless one is given; the raw reply plus the run id."""
    fields.setdefault("run_id", new_run_id())
    reply = agent.request(OP_START, command=command, **fields)
    reply["run_id"] = fields["run_id"]
    return reply


def run_status(agent: AgentProcess, run_id: str) -> dict[str, Any]:
    reply = agent.request(OP_RUNS, run_ids=[run_id])
    (status,) = reply["runs"]
    return dict(status)


def wait_state(
    agent: AgentProcess, run_id: str, states: tuple[str, ...] = RUN_FINAL_STATES
) -> dict[str, Any]:
    """Poll OP_RUNS until the run is in one of the states; its status."""
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(run_status(agent, run_id))
        return found["state"] in states

    wait_until(reached, what=f"run {run_id} to become one of {states}")
    return found


def wait_file_state(run_dir: Path, states: tuple[str, ...] = RUN_FINAL_STATES) -> dict[str, Any]:
    """Wait for status.json itself (no agent needed) to reach one of the states."""

    def reached() -> dict[str, Any] | None:
        status = read_status(str(run_dir))
        return status if status is not None and status["state"] in states else None

    found: dict[str, Any] = wait_until(reached, what=f"{run_dir} to become one of {states}")
    return found


def kill_runs(root: Path) -> None:
    """SIGKILL every supervisor and command group still alive under root (test teardown)."""
    for status_path in root.glob("runs/*/status.json"):
        status = read_status(str(status_path.parent))
        if status is None:
            continue
        pid = status.get("supervisor_pid")
        if pid and process_alive(pid, status.get("supervisor_start")):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        pgid = status.get("pgid")
        if pgid and group_members(pgid):
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
