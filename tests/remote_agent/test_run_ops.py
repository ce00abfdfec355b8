"""Run ops end to end: a real agent subprocess starts, lists, watches and cancels real runs."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_agent_harness import AgentProcess, python38
from run_harness import (
    gone,
    new_run_id,
    run_status,
    start,
    wait_file_state,
    wait_state,
    wait_until,
)

from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_GPU_BUSY,
    E_NO_SUCH_RUN,
    E_NOT_OURS,
    E_RUN_EXISTS,
    EVENT_RUN,
    OP_CANCEL,
    OP_RUNS,
    OP_WATCH,
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_FINAL_STATES,
    RUN_LOST,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    RunStatus,
)
from remote_agent.rundir import group_members, read_status

GATE = "while [ ! -e go ]; do sleep 0.02; done"  # a run that waits for the test to say go


# Hosts run whatever python3 they have: these ops run on this interpreter and on the oldest the
# agent supports (the supervisor runs on the agent's interpreter); without a Python 3.8 they fail.
@pytest.fixture(params=["current", "py3.8"])
def python(request: pytest.FixtureRequest) -> str:
    return sys.executable if request.param == "current" else python38()


@pytest.fixture
def agent(root: Path, python: str) -> Iterator[AgentProcess]:
    with AgentProcess(root, simulate={"gpus": 2}, interval_s=0.05, python=python) as proc:
        proc.hello()
        yield proc


def _log(run_dir: str | Path) -> bytes:
    return (Path(run_dir) / "output.log").read_bytes()


def _run_events(agent: AgentProcess, run_id: str, until: tuple[str, ...]) -> list[RunStatus]:
    """EVENT_RUN statuses of one run, read until one of them is in `until`."""
    seen: list[RunStatus] = []
    deadline = time.monotonic() + 10
    while not seen or seen[-1].state not in until:
        message = agent.event(max(0.01, deadline - time.monotonic()))
        if message["event"] == EVENT_RUN and message["run_id"] == run_id:
            seen.append(RunStatus.from_wire(message))
    return seen


def test_a_failing_run_records_its_exit_code_and_exact_output(
    agent: AgentProcess, root: Path
) -> None:
    reply = start(agent, "printf 'out\\n'; printf 'err\\n' >&2; exit 3")
    run_id = reply["run_id"]
    assert reply["ok"] is True
    assert reply["run_dir"] == str(root / "runs" / run_id)
    status = wait_state(agent, run_id)
    assert (status["state"], status["exit_code"], status["reason"]) == (
        RUN_FAILED,
        3,
        "exit code 3",
    )
    assert _log(reply["run_dir"]) == b"out\nerr\n"
    assert status["log_size"] == 8
    assert status["supervisor_pid"] == reply["supervisor_pid"]
    assert status["pgid"] == status["pid"]
    assert status["started"] <= status["ended"]
    assert stat.S_IMODE(Path(reply["run_dir"]).stat().st_mode) == 0o700
    written = json.loads((Path(reply["run_dir"]) / "status.json").read_text())
    assert (written["writer"], written["uid"]) == ("cvtui-supervisor", os.getuid())


def test_a_run_starts_with_default_signal_dispositions(agent: AgentProcess) -> None:
    """The supervisor ignores SIGINT and SIGHUP; the command must not inherit that (ignored
    signals survive exec): a shell's `trap ... INT` would be silently dropped, python would
    never raise KeyboardInterrupt, and a training script's own Ctrl-C handling would not run."""
    script = (
        "trap 'echo trapped INT' INT; trap 'echo trapped HUP' HUP; kill -INT $$; kill -HUP $$; "
        "grep SigIgn /proc/self/status; "
        "python3 -c 'import signal as s; print(s.getsignal(s.SIGINT) is s.default_int_handler)'"
    )
    reply = start(agent, script)
    status = wait_state(agent, reply["run_id"])
    assert status["state"] == RUN_SUCCEEDED, _log(reply["run_dir"])
    lines = _log(reply["run_dir"]).decode().splitlines()
    assert lines[:2] == ["trapped INT", "trapped HUP"]
    ignored = int(lines[2].split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1) | 1 << (signal.SIGHUP - 1)), lines[2]
    assert lines[3] == "True"


def test_a_run_gets_its_environment_params_config_and_own_session(
    root: Path, python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the agent's own environment says about GPUs and runs must reach neither the
    # supervisor nor the run.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    monkeypatch.setenv("CVTUI_RUN_ID", "agentsownid0")
    script = (
        "import json, os\n"
        "fds = []\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try: fds.append(os.readlink('/proc/self/fd/' + fd))\n"
        "    except OSError: pass  # listdir's own fd\n"
        "print(json.dumps({'env': {k: v for k, v in os.environ.items()\n"
        "                          if k.startswith(('CVTUI_', 'CUDA_', 'EXTRA'))\n"
        # the test runner's own settings (CI exports CVTUI_TEST_PYTHON38) pass through
        "                          and not k.startswith('CVTUI_TEST_')},\n"
        "  'cwd': os.getcwd(), 'stdin': os.readlink('/proc/self/fd/0'), 'fds': fds,\n"
        "  'pgid': os.getpgid(0), 'sid': os.getsid(0), 'pid': os.getpid()}))\n"
    )
    with AgentProcess(root, simulate={"gpus": 2}, interval_s=0.05, python=python) as agent:
        agent.hello()
        reply = start(
            agent,
            [sys.executable, "-c", script],
            gpus=[1, 0],
            env={"EXTRA": "yes", "CVTUI_SIM_MEM": "1024"},
            params={"lr": 0.1, "model": "resnet"},
            config_yaml="lr: 0.1\nmodel: resnet\n",
        )
        status = wait_state(agent, reply["run_id"])
    run_dir = reply["run_dir"]
    work_dir = reply["work_dir"]
    assert work_dir == f"{run_dir}/work"
    assert status["state"] == RUN_SUCCEEDED and status["exit_code"] == 0, _log(run_dir)
    assert status["work_dir"] == work_dir
    seen = json.loads(_log(run_dir))
    uuids = reply["gpu_uuids"]
    assert len(set(uuids)) == 2 and all(u.startswith("GPU-sim-") for u in uuids)
    assert seen["env"] == {
        # In the order asked (CUDA device 0 is GPU 1), by UUID: exact whatever CUDA's order.
        "CUDA_VISIBLE_DEVICES": ",".join(uuids),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CVTUI_GPUS": "1,0",
        "CVTUI_RUN_ID": reply["run_id"],
        "CVTUI_RUN_DIR": work_dir,
        "CVTUI_PARAMS": json.dumps({"lr": 0.1, "model": "resnet"}, sort_keys=True),
        "CVTUI_SIM_MEM": "1024",
        "EXTRA": "yes",
    }
    assert seen["cwd"] == work_dir
    assert seen["stdin"] == "/dev/null"
    assert seen["pgid"] == seen["sid"] == seen["pid"] == status["pid"]
    # No lease fd (nor anything else of the supervisor's) leaked into the command.
    assert not [fd for fd in seen["fds"] if fd.endswith(".lock")], seen["fds"]
    assert (Path(run_dir) / "config.yaml").read_text() == "lr: 0.1\nmodel: resnet\n"
    assert status["gpus"] == [1, 0]


def test_a_run_survives_its_agent_being_killed(agent: AgentProcess, root: Path) -> None:
    reply = start(agent, "sleep 0.3; echo done")
    supervisor = reply["supervisor_pid"]
    # Double fork and a new session: the supervisor is neither the agent's child nor in its
    # session, so the SSH session ending cannot take it down.
    with open(f"/proc/{supervisor}/stat") as f:
        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    assert ppid != agent.proc.pid
    assert os.getsid(supervisor) != os.getsid(agent.proc.pid)
    agent.proc.kill()
    agent.wait()
    status = wait_file_state(Path(reply["run_dir"]))
    assert status["state"] == RUN_SUCCEEDED
    assert _log(reply["run_dir"]) == b"done\n"


def test_a_run_id_is_started_at_most_once(agent: AgentProcess, root: Path) -> None:
    first = start(agent, "sleep 0.2; echo once")
    again = start(agent, "echo twice", run_id=first["run_id"])
    assert again["error"]["code"] == E_RUN_EXISTS
    assert first["run_id"] in again["error"]["message"]
    assert wait_state(agent, first["run_id"])["state"] == RUN_SUCCEEDED
    assert _log(first["run_dir"]) == b"once\n"
    for bad in ("UPPERCASE01", "short", "../../etc0000", "a" * 65):
        reply = start(agent, "true", run_id=bad)
        assert reply["error"]["code"] == E_BAD_REQUEST, bad
    assert sorted(p.name for p in (root / "runs").iterdir()) == [first["run_id"]]


def test_a_busy_gpu_refuses_a_second_run_until_the_first_ends(
    agent: AgentProcess, root: Path
) -> None:
    holder = start(agent, "sleep 1000", gpus=[1])
    agent.latest_telemetry_where(
        lambda t: t.gpus[1].leased_by == holder["run_id"] and t.gpus[0].leased_by is None
    )
    refused = start(agent, "echo never", gpus=[0, 1])
    assert refused["error"]["code"] == E_GPU_BUSY
    assert f"GPU 1 is leased by {holder['run_id']}" in refused["error"]["message"]
    assert not (root / "runs" / refused["run_id"]).exists()  # so it can be dispatched elsewhere
    # What the refused run took before meeting the busy GPU was given back.
    agent.latest_telemetry_where(lambda t: t.gpus[0].leased_by is None)
    assert agent.request(OP_CANCEL, run_id=holder["run_id"], grace=0.5)["signalled"] is True
    assert wait_state(agent, holder["run_id"])["state"] == RUN_CANCELLED
    after = start(agent, "echo now", gpus=[1])
    assert after["ok"] is True
    assert wait_state(agent, after["run_id"])["state"] == RUN_SUCCEEDED
    agent.latest_telemetry_where(lambda t: t.gpus[1].leased_by is None)


def test_cancel_ends_the_whole_process_tree_and_nothing_else(
    agent: AgentProcess, root: Path
) -> None:
    sibling = subprocess.Popen(["sleep", "1000"])  # ours too, but not in the run's group
    try:
        reply = start(agent, "sleep 1000 & sh -c 'sleep 1000 & wait' & echo started; wait")
        run_id = reply["run_id"]
        wait_until(lambda: _log(reply["run_dir"]) == b"started\n", what="the tree to start")
        pgid = run_status(agent, run_id)["pgid"]
        tree = wait_until(lambda: len(group_members(pgid)) >= 4 and group_members(pgid))
        answer = agent.request(OP_CANCEL, run_id=run_id, grace=5, by="tester")
        assert (answer["state"], answer["signalled"]) == (RUN_RUNNING, True)
        status = wait_state(agent, run_id)
        assert (status["state"], status["reason"]) == (RUN_CANCELLED, "cancelled by tester")
        assert status["exit_code"] == -signal.SIGTERM
        wait_until(lambda: all(gone(pid) for pid in tree), 2.0, "the tree to be gone")
        assert sibling.poll() is None
        asked = json.loads((Path(reply["run_dir"]) / "cancel").read_text())
        assert (asked["by"], asked["grace"]) == ("tester", 5)
    finally:
        sibling.kill()
        sibling.wait()


def test_cancel_kills_a_run_that_ignores_sigterm_once_the_grace_is_over(
    agent: AgentProcess,
) -> None:
    stubborn = (
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ready', flush=True)\n"
        "time.sleep(1000)\n"
    )
    reply = start(agent, [sys.executable, "-c", stubborn])
    wait_until(lambda: _log(reply["run_dir"]) == b"ready\n", what="the handler")
    began = time.monotonic()
    agent.request(OP_CANCEL, run_id=reply["run_id"], grace=0.5)
    status = wait_state(agent, reply["run_id"])
    took = time.monotonic() - began
    assert status["state"] == RUN_CANCELLED
    assert status["exit_code"] == -signal.SIGKILL
    assert 0.5 <= took < 5.0
    assert gone(status["pid"])


def test_cancel_of_a_finished_run_signals_nothing(agent: AgentProcess) -> None:
    reply = start(agent, "true")
    wait_state(agent, reply["run_id"])
    answer = agent.request(OP_CANCEL, run_id=reply["run_id"])
    assert (answer["state"], answer["signalled"]) == (RUN_SUCCEEDED, False)
    missing = agent.request(OP_CANCEL, run_id=new_run_id())
    assert missing["error"]["code"] == E_NO_SUCH_RUN


def _fake_run(root: Path, **status: object) -> str:
    run_id = new_run_id()
    run_dir = root / "runs" / run_id
    run_dir.mkdir(parents=True)
    fields = {"run_id": run_id, "state": RUN_RUNNING, "run_dir": str(run_dir), **status}
    (run_dir / "status.json").write_text(json.dumps(fields))
    return run_id


def test_cancel_signals_only_process_groups_our_supervisor_started(
    agent: AgentProcess, root: Path
) -> None:
    stranger = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        pgid = stranger.pid
        # Not written by our supervisor, or by one of another user: refused outright.
        for fake in (
            {"writer": "someone-else", "uid": os.getuid(), "pgid": pgid},
            {"writer": "cvtui-supervisor", "uid": os.getuid() + 1, "pgid": pgid},
            {"pgid": pgid},
        ):
            reply = agent.request(OP_CANCEL, run_id=_fake_run(root, **fake), grace=0)
            assert reply["error"]["code"] == E_NOT_OURS, fake
        # Ours by the file, its supervisor gone, but the group does not carry the run id.
        forged = _fake_run(
            root, writer="cvtui-supervisor", uid=os.getuid(), pgid=pgid, supervisor_pid=None
        )
        reply = agent.request(OP_CANCEL, run_id=forged, grace=0)
        assert (reply["state"], reply["signalled"]) == (RUN_LOST, False)
        time.sleep(0.2)
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


def test_a_killed_supervisor_makes_the_run_lost_and_cancel_still_ends_it(
    agent: AgentProcess,
) -> None:
    reply = start(agent, "sleep 1000")
    run_id = reply["run_id"]
    pgid = run_status(agent, run_id)["pgid"]
    os.kill(reply["supervisor_pid"], signal.SIGKILL)
    status = wait_state(agent, run_id, (RUN_LOST,))
    assert status["reason"] == "supervisor gone without an exit status"
    assert read_status(reply["run_dir"])["state"] == RUN_LOST  # recorded, not just reported
    assert _run_events(agent, run_id, (RUN_LOST,))[-1].state == RUN_LOST  # pushed to watchers
    assert group_members(pgid)  # the command itself runs on
    answer = agent.request(OP_CANCEL, run_id=run_id, grace=0.5)
    assert (answer["state"], answer["signalled"]) == (RUN_CANCELLED, True)
    wait_until(lambda: not group_members(pgid), 5.0, "the orphaned run to end")
    assert run_status(agent, run_id)["state"] == RUN_CANCELLED


def test_progress_comes_from_progress_lines_and_tqdm_bars(agent: AgentProcess) -> None:
    marked = start(agent, f"echo 'step [PROGRESS:40:epoch 2] done'; {GATE}")
    tqdm = (
        "import os, sys, time\n"
        "for bar in ('train:  10%|#         | 10/100 [00:01<00:09, 9.0it/s]',\n"
        "            'train:  45%|####5     | 45/100 [00:10<00:12, 4.5it/s]'):\n"
        "    sys.stderr.write('\\r' + bar)\n"
        "sys.stderr.flush()\n"
        "while not os.path.exists('go'):\n"
        "    time.sleep(0.02)\n"
    )
    barred = start(agent, [sys.executable, "-c", tqdm])
    for reply, expected in (
        (marked, (40.0, "epoch 2")),
        (barred, (45.0, "train 45/100 [00:10<00:12, 4.5it/s]")),
    ):

        def progress(run_id: str = reply["run_id"]) -> tuple[float | None, str | None]:
            status = run_status(agent, run_id)
            return status["progress"], status["progress_msg"]

        wait_until(lambda: progress() == expected, what=f"progress {expected}")  # noqa: B023
        (Path(reply["work_dir"]) / "go").touch()
        status = wait_state(agent, reply["run_id"])
        assert (status["state"], status["progress"]) == (RUN_SUCCEEDED, expected[0])


def test_started_runs_are_watched_and_watch_adds_more(agent: AgentProcess) -> None:
    reply = start(agent, f"echo hello; {GATE}; echo bye")
    run_id = reply["run_id"]
    first = _run_events(agent, run_id, (RUN_RUNNING,))
    assert first[-1].run_dir == reply["run_dir"]
    (Path(reply["work_dir"]) / "go").touch()
    rest = _run_events(agent, run_id, RUN_FINAL_STATES)
    assert rest[-1].state == RUN_SUCCEEDED
    assert rest[-1].log_size == len(b"hello\nbye\n")
    # A finished run that nobody watched: watching it pushes its final status once.
    other = start(agent, "true")
    wait_state(agent, other["run_id"])
    agent.drain_events()
    assert agent.request(OP_WATCH, run_ids=[other["run_id"]])["ok"] is True
    assert _run_events(agent, other["run_id"], RUN_FINAL_STATES)[-1].state == RUN_SUCCEEDED
    assert agent.request(OP_WATCH, run_ids=["../x"])["error"]["code"] == E_BAD_REQUEST


def test_runs_lists_every_run_dir_and_flags_one_without_status(
    agent: AgentProcess, root: Path
) -> None:
    done = start(agent, "true")
    wait_state(agent, done["run_id"])
    silent = root / "runs" / new_run_id()
    silent.mkdir()
    old = time.time() - 60
    os.utime(silent, (old, old))
    listed = {s["run_id"]: s for s in agent.request(OP_RUNS)["runs"]}
    assert listed[done["run_id"]]["state"] == RUN_SUCCEEDED
    assert (listed[silent.name]["state"], listed[silent.name]["reason"]) == (
        RUN_LOST,
        "no status written",
    )
    assert agent.request(OP_RUNS, run_ids=[new_run_id()])["runs"] == []
