"""Slurm's output as the agent reads it (captured from Slurm 22.05), and how a run's state is
judged from Slurm's view of its job and the supervisor's record."""

from __future__ import annotations

from remote_agent import slurm
from remote_agent.protocol import (
    RECORDED_BY_AGENT,
    RECORDED_BY_SLURM,
    RECORDED_BY_SUPERVISOR,
    RunStatus,
    StartRequest,
)
from remote_agent.slurm import JobRow, gpu_count, job_options, parse_jobs, parse_nodes
from remote_agent.slurm_jobs import batch_script, job_name, judge, sbatch_options

# squeue --user=root --states=all --noheader --Format=JobID:|,State:|,... (SLURM_TIME_FORMAT=%s)
SQUEUE = """\
11|PENDING|N/A|N/A|1|gres:gpu:2|cpu=1,mem=1000M,node=1,billing=1||Resources|cvtui:01abcdefghjk|
8|RUNNING|1796526001|NONE|1|gres:gpu:1|cpu=1,node=1,billing=1|vm|None|cvtui:01abcdefghjm|
9|COMPLETED|1796525771|1796525791|1|gres:gpu:1|cpu=1,node=1,billing=1|vm|None|(null)|
12|TIMEOUT|1796525771|1796525791|2|gres:gpu:a100:2|cpu=2,node=2,gres/gpu=4|vm[1-2]|TimeLimit|cvtui:01abcdefghjn|
13|PENDING|N/A|N/A|1||cpu=1|vm|ReqNodeNotAvail, UnavailableNodes:vm|my|own|comment|
not a job line
"""

# sinfo --Node --noheader --Format=NodeList:|,Partition:|,Available:|,StateLong:|,Gres:|,GresUsed:|
SINFO = """\
vm|gpu*|up|mixed|gpu:4|gpu:3|
vm|debug|up|mixed|gpu:4|gpu:3|
n2|gpu*|up|down*|gpu:a100:8(S:0-1)|gpu:a100:0(IDX:N/A)|
n3|gpu*|up|drained|gpu:2|gpu:0|
"""


def test_squeue_lines_become_jobs_with_run_ids_from_our_comment() -> None:
    jobs = {job.job_id: job for job in parse_jobs(SQUEUE)}
    assert sorted(jobs) == ["11", "12", "13", "8", "9"]
    assert jobs["11"] == JobRow("11", "PENDING", None, None, 2, "", "Resources", "01abcdefghjk")
    assert jobs["8"].start == 1796526001.0 and jobs["8"].end is None
    assert jobs["8"].run_id == "01abcdefghjm" and jobs["8"].gpus == 1
    assert jobs["9"].run_id is None  # the user's own job: listed, never ours
    assert jobs["12"].gpus == 4  # AllocTRES gres/gpu wins over the per-node ask
    assert jobs["13"].reason == "ReqNodeNotAvail, UnavailableNodes:vm"
    assert jobs["13"].run_id is None  # a comment with '|' in it stays whole, and not ours


def test_gpu_counts_from_tres_strings() -> None:
    assert gpu_count("gres:gpu:2", "cpu=1", 3) == 6
    assert gpu_count("gres/gpu:a100:2", "", 1) == 2  # newer Slurms write gres/gpu
    assert gpu_count("", "cpu=4,gres/gpu:h100=8,node=1", 1) == 8
    assert gpu_count("", "cpu=1", 1) == 0


def test_sinfo_lines_become_nodes_and_partitions_with_idle_gpus() -> None:
    nodes, partitions = parse_nodes(SINFO)
    by_name = {n.name: n for n in nodes}
    assert by_name["vm"].partitions == ("gpu", "debug")
    assert (by_name["vm"].gpus, by_name["vm"].gpus_alloc, by_name["vm"].gpus_idle) == (4, 3, 1)
    assert (by_name["n2"].gpus, by_name["n2"].gpus_idle) == (8, 0)  # not responding
    assert by_name["n3"].gpus_idle == 0  # drained
    gpu = next(p for p in partitions if p.name == "gpu")
    assert gpu.default and gpu.nodes == 3
    assert (gpu.gpus, gpu.gpus_alloc, gpu.gpus_idle) == (14, 3, 1)
    debug = next(p for p in partitions if p.name == "debug")
    assert not debug.default and (debug.gpus, debug.gpus_idle) == (4, 1)


def test_sbatch_options_and_script() -> None:
    request = StartRequest(
        run_id="01abcdefghjk",
        command="python train.py",
        slurm={
            "gpus": 2,
            "gres_type": "a100",
            "partition": "gpu",
            "time": "1-00:00:00",
            "nice": 20,
            "name": "sweep[lr=0.1] 'x'",
        },
    )
    options = sbatch_options(request, "/scratch/u/cvtui/runs/01abcdefghjk")
    assert options == [
        "--job-name=cvtui-sweep[lr=0.1]_x",
        "--comment=cvtui:01abcdefghjk",
        "--chdir=/scratch/u/cvtui/runs/01abcdefghjk",
        "--output=/scratch/u/cvtui/runs/01abcdefghjk/output.log",
        "--open-mode=append",
        "--no-requeue",
        "--gres=gpu:a100:2",
        "--partition=gpu",
        "--time=1-00:00:00",
        "--nice=20",
    ]
    assert job_options({"gpus": 1, "gres_type": "gpu"}) == ["--gres=gpu:1"]
    assert job_options({"gpus": 0, "qos": "high"}) == ["--qos=high"]
    assert len(job_name("x" * 200, "01abcdefghjk")) == 64
    script = batch_script("/usr/bin/python3", "/home/u/agent/lib", "/scratch/a b")
    assert script.startswith("#!/bin/sh\n")
    assert 'exec "$PY" -I -c' in script and "--slurm '/scratch/a b'" in script


def _status(**fields: object) -> RunStatus:
    return RunStatus("01abcdefghjk", "pending", "/r", job_id="7", **fields)  # type: ignore[arg-type]


def _job(state: str, **fields: object) -> JobRow:
    values: dict[str, object] = {
        "job_id": "7",
        "state": state,
        "start": 100.0,
        "end": None,
        "gpus": 2,
        "nodes": "vm",
        "reason": "None",
        "run_id": "01abcdefghjk",
    }
    values.update(fields)
    return JobRow(**values)  # type: ignore[arg-type]


def _supervisor(state: str, **fields: object) -> RunStatus:
    values: dict[str, object] = {"started": 101.0, "gpus": (0, 1), "recorded_by": None}
    if state in ("succeeded", "failed", "cancelled"):
        values.update(ended=150.0, recorded_by=RECORDED_BY_SUPERVISOR)
    values.update(fields)
    return RunStatus("01abcdefghjk", state, "/r", **values)  # type: ignore[arg-type]


def test_pending_jobs_carry_slurms_reason() -> None:
    judged = judge(_status(), None, _job("PENDING", reason="Priority", start=None), 0, 10, 10)
    assert (judged.state, judged.reason) == ("pending", "PENDING (Priority)")
    judged = judge(_status(), None, _job("PENDING", start=None), 0, 10, 10)
    assert judged.reason == "PENDING"
    # A poll that began before the job was submitted has not seen it yet.
    assert judge(_status(), None, None, submitted=50, polled_at=49, now=51).state == "pending"


def test_running_waits_for_slurms_end_state() -> None:
    running = judge(_status(), _supervisor("running"), _job("RUNNING"), 0, 120, 120)
    assert running.state == "running" and running.gpus == (0, 1)
    assert running.started == 101.0
    # The supervisor recorded an end, Slurm is still completing the job: still running.
    ending = judge(_status(), _supervisor("failed", exit_code=-15), _job("COMPLETING"), 0, 160, 160)
    assert ending.state == "running" and ending.recorded_by is None


def test_final_states_map_to_cvtui_states_with_slurms_state_as_reason() -> None:
    end = {"end": 150.0}
    done = judge(
        _status(), _supervisor("succeeded", exit_code=0), _job("COMPLETED", **end), 0, 160, 160
    )
    assert (done.state, done.reason, done.recorded_by) == (
        "succeeded",
        None,
        RECORDED_BY_SUPERVISOR,
    )
    failed = _supervisor("failed", exit_code=3, reason="exit code 3")
    judged = judge(_status(), failed, _job("FAILED", **end), 0, 160, 160)
    assert (judged.state, judged.reason, judged.exit_code) == ("failed", "FAILED: exit code 3", 3)
    killed = _supervisor(
        "cancelled", exit_code=-15, reason="cancelled by SIGTERM to the supervisor"
    )
    judged = judge(_status(), killed, _job("TIMEOUT", **end), 0, 160, 160)
    assert (judged.state, judged.reason, judged.recorded_by) == (
        "failed",
        "TIMEOUT",
        RECORDED_BY_SLURM,
    )
    for state, cvtui in (("NODE_FAIL", "lost"), ("PREEMPTED", "lost"), ("OUT_OF_MEMORY", "failed")):
        judged = judge(_status(), _supervisor("running"), _job(state, **end), 0, 160, 160)
        assert (judged.state, judged.reason) == (cvtui, state)
    cancelled = judge(_status(), None, _job("CANCELLED", start=None, **end), 0, 160, 160, "alice")
    assert (cancelled.state, cancelled.reason) == ("cancelled", "CANCELLED by alice")


def test_an_ended_job_waits_a_little_for_the_supervisors_record() -> None:
    fresh = judge(_status(), _supervisor("running"), _job("COMPLETED", end=150.0), 0, 152, 152)
    assert fresh.state == "running"  # status.json may not have reached the login node yet
    late = judge(_status(), _supervisor("running"), _job("COMPLETED", end=150.0), 0, 170, 170)
    assert (late.state, late.recorded_by) == ("succeeded", RECORDED_BY_SLURM)


def test_a_job_slurm_forgot() -> None:
    recorded = _supervisor("succeeded", exit_code=0)
    assert judge(_status(), recorded, None, 0, 500, 500) == recorded
    lost = judge(_status(), _supervisor("running"), None, 0, 500, 500)
    assert lost.state == "lost" and lost.recorded_by == RECORDED_BY_AGENT
    assert lost.reason == "job 7 is no longer known to Slurm and its supervisor recorded no end"
    never = judge(_status(), None, None, 0, 500, 500)
    assert never.reason == "job 7 is no longer known to Slurm; it never started"


def test_states_cover_every_slurm_end_state() -> None:
    assert set(slurm.FINAL_STATES.values()) <= {"succeeded", "failed", "cancelled", "lost"}
    assert not set(slurm.FINAL_STATES) & slurm.PENDING_STATES


def test_accounting_rows_for_jobs_squeue_forgot() -> None:
    # sacct --allocations --noheader --parsable2 --format=JobID,State,Start,End,NNodes,
    # AllocTRES,NodeList (its documented layout; the test cluster runs without slurmdbd).
    text = (
        "7|TIMEOUT|1796525771|1796525831|1|billing=1,cpu=1,gres/gpu=2,node=1|vm\n"
        "8|CANCELLED by 1000|1796525771|1796525771|0||\n"
        "9|COMPLETED|1796525700|1796525790|2|cpu=2,gres/gpu:a100=8,node=2|n[1-2]\n"
    )
    rows = slurm.parse_accounting(text)
    assert rows["7"] == JobRow("7", "TIMEOUT", 1796525771.0, 1796525831.0, 2, "vm", "", None)
    assert rows["8"].state == "CANCELLED" and rows["8"].gpus == 0
    assert rows["9"].gpus == 8
    judged = judge(_status(), _supervisor("cancelled"), rows["7"], 0, 1796526000, 1796526000)
    assert (judged.state, judged.reason) == ("failed", "TIMEOUT")  # not the supervisor's cancel
