"""Run ops on a Slurm login node: each run is one sbatch job that starts cvtui's supervisor.

The run dir is made as on any host (work dir, code copy, links, config.yaml), on the shared
file system; then the supervisor's start message is left in it and a batch script that runs
the supervisor is submitted. Slurm picks the node and GPUs; the supervisor keeps status.json
and output.log as on an SSH host. A run's state joins Slurm's view of its job (one squeue
call per interval for all of the user's jobs) with the supervisor's record; the verdict on a
run that ended is written to slurm.json so it never changes afterwards.
Python 3.8+, standard library only.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import replace
from typing import Any, Callable

from remote_agent import slurm
from remote_agent.protocol import (
    BACKEND_SLURM,
    E_INTERNAL,
    E_NO_SUCH_RUN,
    E_SUBMIT_REFUSED,
    EVENT_RUN,
    RUN_FINAL_STATES,
    RUN_LOST,
    RUN_PENDING,
    RUN_RUNNING,
    RUN_STARTING,
    Check,
    ClusterSample,
    GpuSample,
    RemoteError,
    RunStatus,
    SlurmNode,
    SlurmPartition,
    StartRequest,
    event,
)
from remote_agent.rundir import (
    CANCEL_FILE,
    LOG_FILE,
    file_size,
    read_status,
    stat_key,
    status_from,
    write_json,
)
from remote_agent.runs import RUN_ID, RunOps, checked_run_id, importable_parent, remove_tree
from remote_agent.slurm import JobRow, SlurmError
from remote_agent.slurm_jobs import VERDICT_FIELDS, batch_script, judge, sbatch_options

SLURM_RECORD = "slurm.json"  # {job_id, submitted, options, verdict?}: the agent's, per run
START_FILE = "start.json"  # the supervisor's start message, read when the job starts
BATCH_SCRIPT = "job.sh"
SUBMIT_TIMEOUT_S = 20.0  # under the controller's 30 s for OP_START
CLUSTER_EVERY_S = 5.0  # sinfo at most this often; squeue every interval
FOLLOW_S = 0.05  # how often a just-submitted or just-cancelled job is polled ...
FOLLOW_FOR_S = 10.0  # ... and for how long, so its start or end is seen at once


class ClusterBackend:
    """The GPU backend of a login node: none of its own; the cluster's are in the sample."""

    name = BACKEND_SLURM

    def sample(self) -> list[GpuSample]:
        return []

    def driver_version(self) -> str | None:
        return None

    def close(self) -> None:
        pass


def read_record(run_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(run_dir, SLURM_RECORD), "rb") as f:
            data = json.loads(f.read(1 << 16).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def cancelled_by(run_dir: str) -> str | None:
    try:
        with open(os.path.join(run_dir, CANCEL_FILE), "rb") as f:
            asked = json.loads(f.read(65536).decode("utf-8"))
        return str(asked.get("by")) if isinstance(asked, dict) and asked.get("by") else None
    except (OSError, ValueError, RecursionError):
        return None


class _Seen:
    """What the controller was last told about a watched run, and the files behind it."""

    __slots__ = ("key", "record", "status_key", "supervisor", "waiting")

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record  # slurm.json as read (it changes only when a verdict is written)
        self.status_key: Any = None  # status.json's (mtime, size) when last read
        self.supervisor: RunStatus | None = None
        self.key: Any = None  # the last status sent
        self.waiting: JobRow | None = None  # the pending job row last told, unchanged since


class SlurmRunOps(RunOps):
    """RunOps whose start submits a job and whose status, cancel and watch ask Slurm."""

    def __init__(
        self,
        root: str,
        leases_dir: str,
        user: str,
        interval_s: float,
        send: Callable[[dict[str, Any]], bool],
    ) -> None:
        super().__init__(root, leases_dir, user)
        self.interval_s = interval_s
        self.send = send
        self.missing = slurm.missing_commands()
        self.jobs: dict[str, JobRow] = {}  # run id -> its job in the last poll
        self.all_jobs: list[JobRow] = []
        self.polled_at = 0.0  # time.time() when the last good poll began
        self.poll_error: str | None = None
        self._poll_lock = threading.Lock()
        self._emit_lock = threading.Lock()
        self._seen: dict[str, _Seen] = {}
        self._nodes: tuple[list[SlurmNode], list[SlurmPartition]] | None = None
        self._nodes_at = 0.0
        self._nodes_key: list[tuple[str, str]] = []  # the jobs' states when nodes were read
        # run id -> (monotonic time it was submitted or cancelled, follow until it ended)
        self._young: dict[str, tuple[float, bool]] = {}
        self._follower: threading.Thread | None = None
        self._moved: set[str] = set()  # runs whose job changed state in a poll, not yet told
        # Jobs squeue no longer lists, as Slurm's accounting (sacct) knows them; None as long
        # as accounting answers, else why it does not (then the run dir is all there is).
        self.accounted: dict[str, JobRow] = {}
        self.no_accounting: str | None = None

    # --- Slurm's view ---

    def refresh(self, max_age_s: float | None = None) -> None:
        """Poll the user's jobs (one squeue call) unless the last poll is younger than max_age_s."""
        with self._poll_lock:
            age = time.time() - self.polled_at
            if max_age_s is not None and age < max_age_s and self.poll_error is None:
                return
            if self.missing:
                self.poll_error = f"{self.missing[0]} not found"
                return
            started = time.time()
            try:
                rows = slurm.poll_jobs(self.user)
            except SlurmError as exc:
                self.poll_error = str(exc)
                return
            self.poll_error = None
            self.polled_at = started
            self.all_jobs = rows
            before = self.jobs
            self.jobs = {row.run_id: row for row in rows if row.run_id is not None}
            for run_id, row in self.jobs.items():
                old = before.get(run_id)
                if old is None or old.state != row.state:
                    self._moved.add(run_id)

    def cluster_sample(self) -> ClusterSample:
        """The cluster for telemetry: partitions and nodes (sinfo, cached), our jobs, or why
        Slurm cannot be read."""
        self.refresh(max_age_s=self.interval_s * 0.5)
        if self.poll_error is not None:
            return ClusterSample(error=f"slurm: {self.poll_error}")
        now = time.monotonic()
        # Nodes change as jobs start and end: read them again then, else every few seconds.
        jobs_key = [(job.job_id, job.state) for job in self.all_jobs]
        if (
            self._nodes is None
            or now - self._nodes_at >= CLUSTER_EVERY_S
            or jobs_key != self._nodes_key
        ):
            try:
                self._nodes = slurm.read_nodes()
            except SlurmError as exc:
                return ClusterSample(error=f"slurm: {exc}")
            self._nodes_at, self._nodes_key = now, jobs_key
        gpu_ids = {
            run_id: seen.supervisor.gpus
            for run_id, seen in list(self._seen.items())
            if seen.supervisor is not None and seen.supervisor.gpus
        }
        return slurm.cluster_sample(*self._nodes, self.all_jobs, gpu_ids)

    def check(self) -> Check:
        """`cvtui doctor`'s line for Slurm: its commands, and whether slurmctld answers."""
        if self.missing:
            return Check("slurm", False, f"not on PATH: {', '.join(self.missing)}")
        self.refresh()
        if self.poll_error is not None:
            return Check("slurm", False, f"squeue: {self.poll_error}")
        ours = len(self.jobs)
        return Check(
            "slurm", True, f"squeue lists {len(self.all_jobs)} of your jobs ({ours} cvtui's)"
        )

    # --- start ---

    def launch(self, request: StartRequest, run_dir: str) -> dict[str, Any]:
        if self.missing:
            raise RemoteError(E_SUBMIT_REFUSED, f"slurm: {self.missing[0]} not found")
        if self._import_from is None:
            self._import_from = importable_parent()
        start = {"request": request.to_wire(), "run_dir": run_dir}
        write_json(os.path.join(run_dir, START_FILE), start)
        script = os.path.join(run_dir, BATCH_SCRIPT)
        fd = os.open(script, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o700)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(batch_script(sys.executable or "python3", self._import_from, run_dir))
        options = sbatch_options(request, run_dir)
        submitted = time.time()
        try:
            job_id = slurm.submit(script, options, timeout_s=SUBMIT_TIMEOUT_S)
        except SlurmError as exc:
            remove_tree(run_dir)  # nothing was queued: the run id may be used again
            raise RemoteError(E_SUBMIT_REFUSED, str(exc)) from None
        record = {"job_id": job_id, "submitted": submitted, "options": options}
        write_json(os.path.join(run_dir, SLURM_RECORD), record)
        self._follow(request.run_id, until_end=False)
        return {"job_id": job_id}

    # --- status ---

    def status_of(self, run_id: str) -> RunStatus | None:
        run_dir = self.run_dir(run_id)
        seen = self._seen.get(run_id)
        record = seen.record if seen is not None else read_record(run_dir)
        if record is None:
            if not os.path.isdir(run_dir):
                return None
            return RunStatus(run_id, RUN_LOST, run_dir, reason=f"{SLURM_RECORD} is missing")
        if seen is None:
            seen = _Seen(record)
        job_id = str(record.get("job_id") or "")
        log_size = file_size(os.path.join(run_dir, LOG_FILE))
        status = RunStatus(run_id, RUN_PENDING, run_dir, job_id=job_id, log_size=log_size)
        key = stat_key(os.path.join(run_dir, "status.json"))
        if key != seen.status_key:
            data = read_status(run_dir)
            seen.supervisor = None if data is None else status_from(data, run_id, run_dir)
            seen.status_key = key
        supervisor = seen.supervisor
        if supervisor is not None:
            supervisor = replace(supervisor, log_size=log_size, job_id=job_id)
        verdict = record.get("verdict")
        if isinstance(verdict, dict):
            base = supervisor or status
            return replace(base, **{k: v for k, v in verdict.items() if k in VERDICT_FIELDS})
        if self.poll_error is not None:
            # Slurm cannot be asked: say what the run dir says, never a verdict.
            if supervisor is None:
                return replace(status, reason=f"slurm unreachable: {self.poll_error}")
            if supervisor.state in RUN_FINAL_STATES or supervisor.state == RUN_STARTING:
                return replace(supervisor, state=RUN_RUNNING, ended=None, recorded_by=None)
            return supervisor
        job = self.jobs.get(run_id) or self.accounted.get(job_id)
        judged = judge(
            status,
            supervisor,
            job,
            float(record.get("submitted") or 0.0),
            self.polled_at,
            time.time(),
            cancelled_by(run_dir),
        )
        if judged.state in RUN_FINAL_STATES:
            record = dict(record)
            record["verdict"] = {name: getattr(judged, name) for name in VERDICT_FIELDS}
            try:
                write_json(os.path.join(run_dir, SLURM_RECORD), record)
            except OSError as exc:  # told again next time; the verdict is the same
                sys.stderr.write(f"cvtui agent: cannot write {SLURM_RECORD} of {run_id}: {exc}\n")
            seen.record = record
        return replace(judged, log_size=log_size)

    def op_runs(self, message: dict[str, Any]) -> dict[str, Any]:
        self.refresh(max_age_s=self.interval_s * 0.5)
        run_ids = message.get("run_ids")
        if isinstance(run_ids, list):
            self.account_for([r for r in run_ids if isinstance(r, str)])
        return super().op_runs(message)

    def account_for(self, run_ids: list[str]) -> None:
        """Ask Slurm's accounting, in one sacct call, about the jobs of these runs that squeue
        no longer lists (they ended over MinJobAge ago, say while cvtui was away)."""
        if self.no_accounting is not None or self.poll_error is not None:
            return
        missing = []
        for run_id in run_ids:
            record = read_record(self.run_dir(run_id)) if RUN_ID.match(run_id) else None
            if record is None or "verdict" in record or run_id in self.jobs:
                continue
            job_id = str(record.get("job_id") or "")
            if job_id and job_id not in self.accounted:
                missing.append(job_id)
        if not missing:
            return
        try:
            self.accounted.update(slurm.accounted_jobs(missing))
        except SlurmError as exc:  # accounting off: "Slurm accounting storage is disabled"
            self.no_accounting = str(exc)

    # --- cancel ---

    def op_cancel(self, message: dict[str, Any]) -> dict[str, Any]:
        run_id = checked_run_id(message.get("run_id"))
        by = message.get("by")
        by = by if isinstance(by, str) and by else self.user
        run_dir = self.run_dir(run_id)
        record = read_record(run_dir)
        if record is None or not record.get("job_id"):
            raise RemoteError(E_NO_SUCH_RUN, f"no Slurm job recorded for run {run_id} at {run_dir}")
        self.refresh(max_age_s=self.interval_s * 0.5)
        status = self.status_of(run_id)
        if status is not None and status.state in RUN_FINAL_STATES:
            return {"state": status.state, "signalled": False}
        write_json(os.path.join(run_dir, CANCEL_FILE), {"by": by, "time": time.time()})
        try:
            slurm.cancel(str(record["job_id"]), self.user)
        except SlurmError as exc:
            raise RemoteError(E_INTERNAL, f"scancel: {exc}") from None
        self._follow(run_id, until_end=True)
        return {"state": status.state if status else RUN_PENDING, "signalled": True}

    # --- watch ---

    def op_watch(self, message: dict[str, Any]) -> dict[str, Any]:
        run_ids = message.get("run_ids")
        if isinstance(run_ids, list):
            self.refresh(max_age_s=self.interval_s * 0.5)
            self.account_for([r for r in run_ids if isinstance(r, str)])
        return super().op_watch(message)

    def watch(self, run_ids: list[str]) -> None:
        with self._emit_lock:
            for run_id in run_ids:
                record = read_record(self.run_dir(run_id))
                if record is not None:
                    self._seen[run_id] = _Seen(record)
        super().watch(run_ids)

    def watch_events(self) -> list[dict[str, Any]]:
        """EVENT_RUN messages for watched runs whose state, progress or log changed."""
        self.refresh(max_age_s=self.interval_s * 0.5)
        with self._lock:
            watched = list(self._watched)
        return self._changes(watched)

    def _changes(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """Events for these runs' changes, ends first (GPUs freed before others take them)."""
        events = []
        with self._emit_lock:
            for run_id in run_ids:
                self._moved.discard(run_id)
            for run_id in run_ids:
                seen = self._seen.get(run_id)
                if seen is not None and seen.waiting is not None:
                    # A pending job Slurm lists just as before, not started: nothing to read
                    # (a queue of thousands costs a dict lookup each).
                    if self.jobs.get(run_id) == seen.waiting:
                        continue
                    seen.waiting = None
                status = self.status_of(run_id)
                if status is None or seen is None:
                    with self._lock:
                        self._watched.pop(run_id, None)
                    self._seen.pop(run_id, None)
                    continue
                key = (status.state, status.reason, status.progress, status.log_size, status.gpus)
                job = self.jobs.get(run_id)
                if status.state == RUN_PENDING and job is not None and seen.supervisor is None:
                    seen.waiting = job
                if key == seen.key:
                    continue
                seen.key = key
                events.append(event(EVENT_RUN, **status.to_wire()))
                if status.state in RUN_FINAL_STATES:
                    with self._lock:
                        self._watched.pop(run_id, None)
                    self._seen.pop(run_id, None)
        events.sort(key=lambda message: message["state"] not in RUN_FINAL_STATES)
        return events

    def _follow(self, run_id: str, until_end: bool) -> None:
        """Poll often for a while, so a job's start (or end, after scancel) is seen at once."""
        with self._lock:
            self._young[run_id] = (time.monotonic(), until_end)
            if self._follower is not None and self._follower.is_alive():
                return
            self._follower = threading.Thread(target=self._follow_loop, name="follow", daemon=True)
            self._follower.start()

    def _follow_loop(self) -> None:
        while True:
            time.sleep(FOLLOW_S)
            horizon = time.monotonic() - FOLLOW_FOR_S
            with self._lock:
                for run_id in [r for r, (at, _) in self._young.items() if at < horizon]:
                    del self._young[run_id]
                young = [r for r in self._young if r in self._watched]
                if not self._young:
                    self._follower = None
                    return
            if not young:
                continue
            try:
                self.refresh()
                # Every job the poll saw change goes with them: a job that ended is told no
                # later than the one that started in its place.
                with self._lock:
                    moved = [r for r in list(self._moved) if r in self._watched and r not in young]
                events = self._changes(young + moved)
            except Exception as exc:  # never let one bad run dir end the follower
                sys.stderr.write(
                    f"cvtui agent: following jobs failed: {type(exc).__name__}: {exc}\n"
                )
                continue
            for message in events:
                with self._lock:
                    _, until_end = self._young.get(message["run_id"], (0.0, False))
                    if message["state"] in RUN_FINAL_STATES or (
                        message["state"] == RUN_RUNNING and not until_end
                    ):
                        self._young.pop(message["run_id"], None)
                self.send(message)
