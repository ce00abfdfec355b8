"""Slurm's commands as the agent on a login node uses them: sbatch, squeue, sinfo, scancel.

Every call is one subprocess with a timeout; its failure is a SlurmError carrying Slurm's own
message. Parsing is kept apart from running (pure functions over the text Slurm prints), so it
is tested on captured output. Times are asked for as unix seconds (SLURM_TIME_FORMAT=%s).
Python 3.8+, standard library only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Sequence

from remote_agent.protocol import (
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_LOST,
    RUN_SUCCEEDED,
    ClusterSample,
    SlurmJob,
    SlurmNode,
    SlurmPartition,
)

COMMANDS = ("sbatch", "squeue", "scancel", "sinfo", "srun")  # what a login node must have
CALL_TIMEOUT_S = 30.0
COMMENT_PREFIX = "cvtui:"  # --comment=cvtui:<run id> tells our jobs apart from the user's others
FIELD_END = "|"
# squeue --Format fields of the status poll, one line per job; the comment comes last since it
# is the only field a user's own job may fill with any text.
JOB_FIELDS = (
    "JobID",
    "State",
    "StartTime",
    "EndTime",
    "NumNodes",
    "tres-per-node",
    "tres-alloc",
    "NodeList",
    "Reason",
    "Comment",
)
NODE_FIELDS = ("NodeList", "Partition", "Available", "StateLong", "Gres", "GresUsed")

# Slurm job states (squeue %T) and what they are for cvtui. A state not listed is taken as
# still going (newer Slurms add transitional states).
PENDING_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "CONFIGURING"}
)
# Slurm's final states: cvtui's state for each. COMPLETED and FAILED defer to the supervisor's
# record of the command's exit (it has the exit code); the others are Slurm's verdict.
FINAL_STATES: dict[str, str] = {
    "COMPLETED": RUN_SUCCEEDED,
    "FAILED": RUN_FAILED,
    "CANCELLED": RUN_CANCELLED,
    "TIMEOUT": RUN_FAILED,
    "OUT_OF_MEMORY": RUN_FAILED,
    "BOOT_FAIL": RUN_FAILED,
    "DEADLINE": RUN_FAILED,
    "SPECIAL_EXIT": RUN_FAILED,
    "NODE_FAIL": RUN_LOST,  # the node died under it: outcome unknown, `retries` apply
    "PREEMPTED": RUN_LOST,
    "REVOKED": RUN_CANCELLED,
}
DOWN_NODE_STATES = ("down", "drain", "fail", "maint", "reboot", "power", "future", "unknown")

_JOB_ID = re.compile(r"\d+(?:_\d+)?\Z")
_GRES_GPU = re.compile(r"(?:^|,)(?:gres[:/])?gpu(?::[^:,()]+)?:(\d+)")  # gres:gpu:2, gpu:a100:2
_TRES_GPU = re.compile(r"(?:^|,)gres/gpu(?::[^=,]+)?=(\d+)")  # AllocTRES gres/gpu=2
_SBATCH_ID = re.compile(r"(\d+)(?:;\S*)?\s*\Z")  # --parsable: "123" or "123;cluster"


class SlurmError(Exception):
    """A Slurm command failed; str() is Slurm's message (or why it could not run)."""


@dataclass(frozen=True)
class JobRow:
    """One job of the status poll."""

    job_id: str
    state: str
    start: float | None  # unix seconds, None before it started
    end: float | None  # unix seconds, None while it runs
    gpus: int  # allocated (AllocTRES gres/gpu) when Slurm says, else asked for per node x nodes
    nodes: str
    reason: str
    run_id: str | None  # from our --comment; None for the user's other jobs


def missing_commands() -> list[str]:
    """The Slurm commands not on PATH, in COMMANDS order."""
    return [name for name in COMMANDS if shutil.which(name) is None]


def run_slurm(argv: list[str], timeout_s: float = CALL_TIMEOUT_S) -> str:
    """stdout of a Slurm command; SlurmError with its stderr when it fails."""
    env = dict(os.environ)
    env["SLURM_TIME_FORMAT"] = "%s"
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            env=env,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise SlurmError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{argv[0]} did not answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise SlurmError(f"cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise SlurmError(slurm_message(done.stderr, done.stdout, argv[0], done.returncode))
    return done.stdout.decode("utf-8", "replace")


def slurm_message(stderr: bytes, stdout: bytes, program: str, code: int) -> str:
    """What a failed Slurm command said, on one line (sbatch says it over two or three)."""
    lines = [
        line.strip()
        for line in stderr.decode("utf-8", "replace").splitlines()
        if line.strip() and "mpi/pmix" not in line and "MPI: Cannot create" not in line
    ]
    if not lines:
        lines = [line.strip() for line in stdout.decode("utf-8", "replace").splitlines()]
    text = "; ".join(line for line in lines if line)
    return text[:2000] if text else f"{program} exited with status {code}"


def format_arg(fields: Sequence[str]) -> str:
    return ",".join(f"{name}:{FIELD_END}" for name in fields)


def _time(value: str) -> float | None:
    try:
        seconds = float(value)
    except ValueError:
        return None  # N/A, NONE, Unknown
    return seconds if seconds > 0 else None


def gpu_count(per_node: str, alloc: str, nodes: int) -> int:
    """GPUs of a job: AllocTRES when accounting tracks gres/gpu, else the per-node ask x nodes."""
    tres = _TRES_GPU.search(alloc)
    if tres is not None:
        return int(tres.group(1))
    asked = sum(int(m.group(1)) for m in _GRES_GPU.finditer(per_node))
    return asked * max(1, nodes)


def parse_jobs(text: str) -> list[JobRow]:
    """The rows of `squeue --Format` with JOB_FIELDS; lines that do not parse are skipped."""
    rows = []
    last = len(JOB_FIELDS) - 1
    for line in text.splitlines():
        parts = line.split(FIELD_END, last)
        if len(parts) != len(JOB_FIELDS):
            continue
        job_id, state, start, end, nodes, per_node, alloc, nodelist, reason, comment = parts
        job_id = job_id.strip()
        if not _JOB_ID.match(job_id):
            continue
        comment = comment.rstrip()
        if comment.endswith(FIELD_END):
            comment = comment[:-1]
        run_id = comment[len(COMMENT_PREFIX) :] if comment.startswith(COMMENT_PREFIX) else None
        try:
            node_count = int(nodes.strip() or "0")
        except ValueError:
            node_count = 0
        state = state.strip().split()[0] if state.strip() else "UNKNOWN"
        rows.append(
            JobRow(
                job_id=job_id,
                state=state.rstrip("+"),
                start=_time(start.strip()),
                end=_time(end.strip()),
                gpus=gpu_count(per_node.strip(), alloc.strip(), node_count),
                nodes=nodelist.strip(),
                reason=reason.strip(),
                run_id=run_id or None,
            )
        )
    return rows


def poll_jobs(user: str) -> list[JobRow]:
    """Every job of the user Slurm still knows (ended ones for MinJobAge): one squeue call."""
    text = run_slurm(
        [
            "squeue",
            f"--user={user}",
            "--states=all",
            "--noheader",
            f"--Format={format_arg(JOB_FIELDS)}",
        ]
    )
    return parse_jobs(text)


ACCOUNTING_FIELDS = ("JobID", "State", "Start", "End", "NNodes", "AllocTRES", "NodeList")


def parse_accounting(text: str) -> dict[str, JobRow]:
    """Job id -> its row from `sacct --parsable2 --format` with ACCOUNTING_FIELDS (allocations
    only; a state such as `CANCELLED by 1000` keeps its first word)."""
    found = {}
    for line in text.splitlines():
        parts = line.split(FIELD_END)
        if len(parts) != len(ACCOUNTING_FIELDS) or not _JOB_ID.match(parts[0].strip()):
            continue
        job_id, state, start, end, nodes, alloc, nodelist = (p.strip() for p in parts)
        try:
            node_count = int(nodes or "0")
        except ValueError:
            node_count = 0
        found[job_id] = JobRow(
            job_id=job_id,
            state=(state.split() or ["UNKNOWN"])[0].rstrip("+"),
            start=_time(start),
            end=_time(end),
            gpus=gpu_count("", alloc, node_count),
            nodes=nodelist,
            reason="",
            run_id=None,
        )
    return found


def accounted_jobs(job_ids: Sequence[str]) -> dict[str, JobRow]:
    """Jobs slurmctld no longer lists, from Slurm's accounting (sacct): one call for all.
    SlurmError when accounting is off (then a run's own record is all there is)."""
    wanted = [job_id for job_id in job_ids if _JOB_ID.match(job_id)]
    if not wanted:
        return {}
    text = run_slurm(
        [
            "sacct",
            f"--jobs={','.join(wanted)}",
            "--allocations",
            "--noheader",
            "--parsable2",
            f"--format={','.join(ACCOUNTING_FIELDS)}",
        ]
    )
    return parse_accounting(text)


def _gres_gpus(gres: str) -> int:
    return sum(int(m.group(1)) for m in _GRES_GPU.finditer(gres.replace("(", ",(")))


class _Tally:
    """GPUs added up over the nodes of a partition (or one node's partitions)."""

    def __init__(self, state: str, default: bool = False) -> None:
        self.state = state  # a node's long state, or a partition's availability
        self.default = default
        self.names: list[str] = []  # a node's partitions
        self.nodes = 0
        self.gpus = 0
        self.alloc = 0
        self.idle = 0


def parse_nodes(text: str) -> tuple[list[SlurmNode], list[SlurmPartition]]:
    """Nodes and partitions from `sinfo --Node --Format` with NODE_FIELDS (a node appears once
    per partition it is in). Idle GPUs are those of usable nodes in partitions that are up."""
    nodes: dict[str, _Tally] = {}
    partitions: dict[str, _Tally] = {}
    for line in text.splitlines():
        parts = line.split(FIELD_END)
        if len(parts) < len(NODE_FIELDS):
            continue
        name, partition, available, state, gres, used = (p.strip() for p in parts[:6])
        if not name:
            continue
        total = _gres_gpus(gres)
        alloc = min(total, _gres_gpus(used))
        lowered = state.lower()
        # sinfo marks an unreachable node with *, one powered off or rebooting with ~ # ! % @ ^.
        usable = not lowered.startswith(DOWN_NODE_STATES) and not set(state) & set("*~#!%@^")
        node = nodes.get(name)
        if node is None:
            node = nodes[name] = _Tally(state)
            node.gpus, node.alloc = total, alloc
            node.idle = total - alloc if usable else 0
        node.names.append(partition.rstrip("*"))
        part = partitions.get(partition.rstrip("*"))
        if part is None:
            part = partitions[partition.rstrip("*")] = _Tally(available, partition.endswith("*"))
        part.nodes += 1
        part.gpus += total
        part.alloc += alloc
        if usable and available == "up":
            part.idle += total - alloc
    return (
        [
            SlurmNode(name, n.state, tuple(n.names), n.gpus, n.alloc, n.idle)
            for name, n in nodes.items()
        ],
        [
            SlurmPartition(name, p.state, p.default, p.nodes, p.gpus, p.alloc, p.idle)
            for name, p in partitions.items()
        ],
    )


def read_nodes() -> tuple[list[SlurmNode], list[SlurmPartition]]:
    """Nodes and partitions with their GPUs: one sinfo call."""
    text = run_slurm(["sinfo", "--Node", "--noheader", f"--Format={format_arg(NODE_FIELDS)}"])
    return parse_nodes(text)


def cluster_sample(
    nodes: Sequence[SlurmNode],
    partitions: Sequence[SlurmPartition],
    jobs: Sequence[JobRow],
    gpu_ids: dict[str, tuple[int, ...]] | None = None,
) -> ClusterSample:
    """The cluster as telemetry shows it: nodes, partitions, and the user's jobs of a poll
    (gpu_ids: run id -> the GPU indexes its job got, as far as known)."""
    known = gpu_ids or {}
    ours = [
        SlurmJob(
            job.job_id,
            job.run_id,
            job.state,
            job.reason,
            job.gpus,
            job.nodes,
            known.get(job.run_id, ()),
        )
        for job in jobs
        if job.run_id is not None and job.state not in FINAL_STATES
    ]
    return ClusterSample(
        partitions=tuple(partitions),
        nodes=tuple(nodes),
        jobs=tuple(ours),
        pending=sum(1 for job in jobs if job.state in PENDING_STATES),
        running=sum(1 for job in jobs if job.state == "RUNNING"),
    )


def job_options(settings: dict[str, Any]) -> list[str]:
    """sbatch/srun options for a job's resources (protocol.SLURM_OPTION_KEYS): GPUs as
    --gres=gpu:N (gpu:TYPE:N for a gres_type other than gpu), partition, account, qos, time."""
    options = []
    gpus = int(settings.get("gpus") or 0)
    if gpus > 0:
        kind = str(settings.get("gres_type") or "gpu")
        options.append(f"--gres=gpu:{gpus}" if kind == "gpu" else f"--gres=gpu:{kind}:{gpus}")
    for key in ("partition", "account", "qos", "time"):
        if settings.get(key):
            options.append(f"--{key}={settings[key]}")
    return options


def submit(script: str, options: Sequence[str], timeout_s: float = CALL_TIMEOUT_S) -> str:
    """sbatch --parsable the script; the job id, or SlurmError with sbatch's message."""
    out = run_slurm(["sbatch", "--parsable", *options, script], timeout_s)
    found = _SBATCH_ID.search(out.strip().splitlines()[-1] if out.strip() else "")
    if found is None:
        raise SlurmError(f"sbatch printed no job id: {out.strip()[:200]!r}")
    return found.group(1)


def cancel(job_id: str, user: str) -> None:
    """scancel one job, and only if it is this user's (scancel matches both filters)."""
    if not _JOB_ID.match(job_id):
        raise SlurmError(f"not a Slurm job id: {job_id!r}")
    run_slurm(["scancel", f"--user={user}", job_id])
