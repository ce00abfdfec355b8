"""A run as a Slurm job: its name, sbatch options and batch script, and its state judged from
Slurm's view of the job and the supervisor's record of the command. Pure functions, tested on
their own. Python 3.8+, standard library only.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import replace

from remote_agent import slurm
from remote_agent.protocol import (
    RECORDED_BY_AGENT,
    RECORDED_BY_SLURM,
    RECORDED_BY_SUPERVISOR,
    RUN_FAILED,
    RUN_FINAL_STATES,
    RUN_LOST,
    RUN_PENDING,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    RunStatus,
    StartRequest,
)
from remote_agent.rundir import LOG_FILE, SUPERVISOR_LOG
from remote_agent.runs import SUPERVISOR_BOOT
from remote_agent.slurm import JobRow

SETTLE_S = 10.0  # how long an ended job waits for its supervisor's record to show up
JOB_NAME_CHARS = 64
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._=,+\[\]-]+")
# What a run's verdict (its end, as judged) keeps in slurm.json.
VERDICT_FIELDS = ("state", "reason", "exit_code", "started", "ended", "recorded_by")


def job_name(name: str, run_id: str) -> str:
    """`cvtui-<run name>` as squeue shows it, with characters a shell or Slurm mangles dropped."""
    safe = _UNSAFE_NAME.sub("_", name).strip("_") or run_id
    return ("cvtui-" + safe)[:JOB_NAME_CHARS]


def sbatch_options(request: StartRequest, run_dir: str) -> list[str]:
    """The sbatch options of a run (besides --parsable), from its request's slurm settings."""
    settings = request.slurm
    options = [
        f"--job-name={job_name(str(settings.get('name') or ''), request.run_id)}",
        f"--comment={slurm.COMMENT_PREFIX}{request.run_id}",
        f"--chdir={run_dir}",
        f"--output={os.path.join(run_dir, LOG_FILE)}",
        "--open-mode=append",  # the supervisor writes the command's output there too
        "--no-requeue",  # a run never starts twice: cvtui's `retries` make new attempts
    ]
    options += slurm.job_options(settings)
    nice = int(settings.get("nice") or 0)
    if nice > 0:
        options.append(f"--nice={nice}")
    return options


def batch_script(python: str, import_from: str, run_dir: str) -> str:
    """A POSIX sh script that execs the supervisor (so Slurm signals it directly)."""
    supervisor = [import_from, "--slurm", run_dir]
    return (
        "#!/bin/sh\n"
        "# Written by cvtui's agent: Slurm runs this, it runs cvtui's supervisor for the run.\n"
        f"PY={shlex.quote(python)}\n"
        '[ -x "$PY" ] || PY=python3  # a node without the login node\'s interpreter path\n'
        f'exec "$PY" -I -c {shlex.quote(SUPERVISOR_BOOT)} {shlex.join(supervisor)} '
        f"2>>{shlex.quote(os.path.join(run_dir, SUPERVISOR_LOG))}\n"
    )


def judge(
    status: RunStatus,
    supervisor: RunStatus | None,
    job: JobRow | None,
    submitted: float,
    polled_at: float,
    now: float,
    who: str | None = None,
) -> RunStatus:
    """A run's state from Slurm's view of its job (None: squeue no longer lists it) and the
    supervisor's status.json (None: not started). `status` carries the run's identity; the
    result is final only when Slurm's is (or Slurm forgot a job that must have ended)."""
    recorded = None  # the supervisor's own record of the command's end
    if supervisor is not None:
        if supervisor.recorded_by == RECORDED_BY_SUPERVISOR:
            recorded = supervisor if supervisor.state in RUN_FINAL_STATES else None
        status = replace(
            supervisor, run_id=status.run_id, run_dir=status.run_dir, job_id=status.job_id
        )
    if job is None:
        if polled_at < submitted + 1.0:  # the poll began before the job existed
            return replace(status, state=RUN_PENDING, reason="PENDING (submitted)")
        if recorded is not None:
            return recorded
        why = f"job {status.job_id} is no longer known to Slurm"
        why += " and its supervisor recorded no end" if supervisor else "; it never started"
        return replace(status, state=RUN_LOST, reason=why, ended=now, recorded_by=RECORDED_BY_AGENT)
    if job.state in slurm.PENDING_STATES:
        why = f" ({job.reason})" if job.reason and job.reason != "None" else ""
        return replace(status, state=RUN_PENDING, reason=f"{job.state}{why}")
    still = replace(status, state=RUN_RUNNING, ended=None, exit_code=None, recorded_by=None)
    if job.state not in slurm.FINAL_STATES:  # RUNNING, COMPLETING, SUSPENDED, ...
        # A supervisor's end state waits for Slurm's: a TIMEOUT or NODE_FAIL outranks it.
        note = None if job.state in ("RUNNING", "COMPLETING") else job.state
        return replace(still, started=status.started or job.start, reason=note)
    verdict = slurm.FINAL_STATES[job.state]
    if recorded is None and supervisor is not None and job.end and now - job.end < SETTLE_S:
        # The command ran: its supervisor records how it ended (its exit code) as it stops,
        # and that record may take a moment to reach this node over the shared file system.
        return still
    if job.state in ("COMPLETED", "FAILED") and recorded is not None:
        if recorded.state == RUN_SUCCEEDED:  # the exit code is the supervisor's to tell
            return recorded
        return replace(recorded, reason=f"{job.state}: {recorded.reason}")
    # Slurm gives a job cancelled while pending a start time equal to its end: it never ran.
    ran_from = job.start if job.start and job.end and job.start < job.end else None
    reason = job.state
    if job.state == "CANCELLED" and who:
        reason = f"CANCELLED by {who}"
    elif recorded is not None and recorded.reason and recorded.state == RUN_FAILED:
        # e.g. OUT_OF_MEMORY: killed by signal 9. A supervisor that took Slurm's SIGTERM for a
        # cancel (at a time limit) has nothing to add.
        reason = f"{job.state}: {recorded.reason}"
    return replace(
        status,
        state=verdict,
        reason=None if verdict == RUN_SUCCEEDED else reason,
        started=status.started or ran_from,
        ended=(recorded.ended if recorded else None) or job.end or now,
        exit_code=recorded.exit_code if recorded else (0 if verdict == RUN_SUCCEEDED else None),
        recorded_by=RECORDED_BY_SLURM,
    )
