"""The supervisor: progress parsing, status files, and real runs it follows to the end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_agent_harness import AgentProcess
from run_harness import gone, run_status, start, wait_state, wait_until

from remote_agent.protocol import RUN_CANCELLED, RUN_FAILED, RUN_SUCCEEDED, StartRequest
from remote_agent.rundir import process_alive, process_stat, read_status, write_status
from remote_agent.runenv import base_env
from remote_agent.supervisor import (
    TAIL_KEEP_BYTES,
    ProgressParser,
    exit_reason,
    parse_progress,
)

MIB = 1 << 20
GATE_PY = "import os, time\nwhile not os.path.exists('go'):\n    time.sleep(0.02)\n"


def test_progress_marks_anywhere_in_a_line_and_the_last_one_wins() -> None:
    assert parse_progress(b"epoch [PROGRESS:40:epoch 2] tail") == (40.0, "epoch 2")
    assert parse_progress(b"[PROGRESS:10:a] [PROGRESS:12.5:b]") == (12.5, "b")
    assert parse_progress(b"[PROGRESS:140:too far]") == (100.0, "too far")
    assert parse_progress(b"just a line with 50% of nothing") is None
    assert parse_progress(b"[PROGRESS:x:bad]") is None


def test_tqdm_bars_give_percent_and_a_short_message() -> None:
    bar = b"train:  45%|####5     | 45/100 [00:10<00:12, 4.5it/s]"
    assert parse_progress(bar) == (45.0, "train 45/100 [00:10<00:12, 4.5it/s]")
    assert parse_progress(b"100%|##########| 8/8 [00:01<00:00]") == (100.0, "8/8 [00:01<00:00]")
    assert parse_progress(b"\x1b[A 7%|7 | 7/100 [00:00<?, ?it/s]\x1b[K")[0] == 7.0


def test_the_parser_follows_carriage_returns_and_chunk_boundaries() -> None:
    parser = ProgressParser()
    assert parser.feed(b"loading\n") is None
    assert parser.feed(b"\r 10%|#  | 1/10\r 20%|## | 2/10") == (20.0, "2/10")
    assert parser.feed(b"\n[PROG") == (20.0, "2/10")  # the bar is still the newest
    assert parser.feed(b"RESS:55:half]\nplain output\n") == (55.0, "half")
    assert parser.feed(b"more plain output\n") is None  # nothing new: progress stays put


def bar(desc: str, done: int, total: int) -> bytes:
    """A tqdm line as it lands in a log file (no terminal: \r before each redraw)."""
    pct = 100 * done // total
    filled = "#" * (pct // 10)
    return f"\r{desc}{pct:3d}%|{filled:10}| {done}/{total} [00:01<00:02, 9.5it/s]".encode()


def test_a_bar_restarted_every_epoch_gives_the_runs_progress_not_the_epochs() -> None:
    parser = ProgressParser()
    seen = []
    for epoch in (1, 2, 3, 4):
        for step in (1, 5, 10):  # 10%, 50%, 100% of each epoch
            found = parser.feed(bar(f"Epoch {epoch}/4: ", step, 10))
            assert found is not None
            seen.append(found[0])
        parser.feed(b"\n")
    # Without epochs this read 10, 50, 100, 10, 50, 100, ...: now it only grows.
    assert seen == sorted(seen) and seen[-1] == 100.0
    assert seen[:4] == [2.5, 12.5, 25.0, 27.5]
    found = parser.feed(bar("Epoch 3/4: ", 5, 10))
    assert found is not None and found[1].startswith("epoch 3/4 · Epoch 3/4 5/10")


def test_epoch_lines_around_a_bar_without_a_description() -> None:
    parser = ProgressParser()
    assert parser.feed(b"Epoch [2/10]\n") == (10.0, "epoch 2/10")
    found = parser.feed(bar("", 50, 100))
    assert found is not None and found[0] == 15.0
    assert parser.feed(b"\nepoch 3 of 10 loss=0.5\n") == (20.0, "epoch 3/10")
    zero = ProgressParser()  # counted from 0: epoch 0/10 is the first
    assert zero.feed(b"epoch: 0/10\n") == (0.0, "epoch 0/10")
    assert zero.feed(b"epoch: 1/10\n") == (10.0, "epoch 1/10")
    # Numbers that are no epoch count (k > N, N = 0) are not taken for one.
    assert ProgressParser().feed(b"epoch 12/10\nepoch 1/0\n") is None


def test_nested_bars_follow_the_outer_one() -> None:
    parser = ProgressParser()
    for epoch in range(3):
        parser.feed(bar("epochs: ", epoch, 10) + b"\n")
        for step in (10, 60, 100):
            found = parser.feed(bar("  batch: ", step, 100))
    # The inner bar restarted while the outer one went on: the outer one is the run's.
    assert found is not None and found[0] == 20.0 and "2/10" in found[1]
    # A bar seen once (an evaluation at the end) does not take over.
    found = parser.feed(b"\n" + bar("eval: ", 5, 10))
    assert found is not None and found[0] == 20.0


def test_progress_marks_win_over_bars_for_good() -> None:
    parser = ProgressParser()
    assert parser.feed(bar("Epoch 1/2: ", 5, 10)) is not None
    assert parser.feed(b"\n[PROGRESS:70:stage b]\n") == (70.0, "stage b")
    assert parser.feed(bar("Epoch 2/2: ", 9, 10)) is None
    assert parser.feed(b"\n[PROGRESS:90:stage c]\n") == (90.0, "stage c")


def test_the_parser_survives_invalid_utf8_and_never_holds_a_long_line() -> None:
    parser = ProgressParser()
    assert parser.feed(b"\xff\xfe[PROGRESS:3:caf\xc3\x28]\n") == (3.0, "caf\ufffd(")
    chunk = b"y" * 65536
    for _ in range(160):  # 10 MiB without a newline
        assert parser.feed(chunk) is None
        assert len(parser._tail) <= TAIL_KEEP_BYTES
    assert parser.feed(b"[PROGRESS:9:end of a long line]\n") == (9.0, "end of a long line")


def test_run_env_keeps_the_agents_gpu_and_run_variables_out(tmp_path: Path) -> None:
    base = {
        "PATH": "/usr/bin",
        "CUDA_VISIBLE_DEVICES": "7",
        "CVTUI_SIM_GPUS": "3",
        "CVTUI_RUN_ID": "old",
    }
    request = StartRequest(
        "abcdefghij", "true", gpus=(2,), env={"CUDA_VISIBLE_DEVICES": "9", "A": "b"}
    )
    env = base_env(base, request, str(tmp_path), [])
    assert env == {
        "PATH": "/usr/bin",
        "A": "b",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "CUDA_VISIBLE_DEVICES": "2",
        "CVTUI_GPUS": "2",
        "CVTUI_RUN_ID": "abcdefghij",
        "CVTUI_RUN_DIR": str(tmp_path),
        "CVTUI_PARAMS": "{}",
    }
    no_gpus = base_env(base, StartRequest("abcdefghij", "true"), str(tmp_path), [])
    assert no_gpus["CUDA_VISIBLE_DEVICES"] == ""
    assert exit_reason(3) == "exit code 3"
    assert exit_reason(-9) == "killed by signal 9"


def test_gpus_are_named_by_uuid_when_every_leased_one_has_one(tmp_path: Path) -> None:
    request = StartRequest("abcdefghij", "true", gpus=(3, 1))
    env = base_env({}, request, str(tmp_path), ["GPU-c", "GPU-a"])
    assert env["CUDA_VISIBLE_DEVICES"] == "GPU-c,GPU-a"
    assert env["CVTUI_GPUS"] == "3,1"
    # One UUID short: indexes, in the PCI bus order NVML counts in.
    partial = base_env({}, request, str(tmp_path), ["GPU-c"])
    assert partial["CUDA_VISIBLE_DEVICES"] == "3,1"
    assert partial["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_process_alive_tells_reused_pids_and_zombies_apart() -> None:
    me = process_stat(os.getpid())
    assert me is not None
    assert process_alive(os.getpid(), me[2])
    assert not process_alive(os.getpid(), me[2] + 1)  # same pid, another process
    child = subprocess.Popen(["true"])
    wait_until(lambda: (process_stat(child.pid) or ("Z",))[0] == "Z", what="a zombie")
    assert not process_alive(child.pid, None)  # exited, not yet reaped
    child.wait()
    assert not process_alive(child.pid, None)
    assert not process_alive(None, None)


def test_status_files_are_replaced_whole(tmp_path: Path) -> None:
    write_status(str(tmp_path), {"run_id": "abcdefghij", "state": "running"})
    write_status(str(tmp_path), {"run_id": "abcdefghij", "state": "failed"}, durable=True)
    assert read_status(str(tmp_path)) == {"run_id": "abcdefghij", "state": "failed"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
    (tmp_path / "status.json").write_bytes(b"[1, 2")
    assert read_status(str(tmp_path)) is None


# --- real runs ---


@pytest.fixture
def agent(root: Path) -> Iterator[AgentProcess]:
    with AgentProcess(root, simulate={"gpus": 2}, interval_s=0.05) as proc:
        proc.hello()
        yield proc


def _peak_rss(pid: int) -> int:
    """VmHWM of a process, in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_hostile_output_reaches_the_log_byte_for_byte_in_bounded_memory(
    agent: AgentProcess,
) -> None:
    writer = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'\\xff\\xfe not utf-8 \\xc3\\x28\\n')\n"
        "out.write(b'x' * (10 << 20))\n"  # one 10 MiB line, its newline much later
        "out.write(b'\\n')\n"
        "out.write(b''.join(b'line %d\\n' % i for i in range(100000)))\n"
        "out.write(b'[PROGRESS:99:all read]\\n')\n"
        "out.flush()\n" + GATE_PY
    )
    quiet = start(agent, [sys.executable, "-c", GATE_PY])
    loud = start(agent, [sys.executable, "-c", writer])
    expected = (
        b"\xff\xfe not utf-8 \xc3\x28\n"
        + b"x" * (10 << 20)
        + b"\n"
        + b"".join(b"line %d\n" % i for i in range(100000))
        + b"[PROGRESS:99:all read]\n"
    )
    # Progress 99 is the last line: once it shows, the supervisor has read everything.
    wait_until(lambda: run_status(agent, loud["run_id"])["progress"] == 99.0, what="the tail")
    baseline = _peak_rss(quiet["supervisor_pid"])
    peak = _peak_rss(loud["supervisor_pid"])
    assert peak - baseline < 4 * MIB, (peak, baseline)
    for reply in (quiet, loud):
        (Path(reply["work_dir"]) / "go").touch()
    status = wait_state(agent, loud["run_id"])
    assert status["state"] == RUN_SUCCEEDED
    assert status["log_size"] == len(expected)
    assert (Path(loud["run_dir"]) / "output.log").read_bytes() == expected
    assert wait_state(agent, quiet["run_id"])["state"] == RUN_SUCCEEDED


def test_a_simulated_gpu_shows_the_runs_command_not_its_supervisor(agent: AgentProcess) -> None:
    reply = start(agent, "sleep 1000", gpus=[1], env={"CVTUI_SIM_MEM": str(3 * MIB)})
    pid = run_status(agent, reply["run_id"])["pid"]
    sample = agent.latest_telemetry_where(lambda t: bool(t.gpus[1].processes))
    (proc,) = sample.gpus[1].processes
    assert (proc.pid, proc.run_id, proc.mem) == (pid, reply["run_id"], 3 * MIB)
    assert sample.gpus[1].leased_by == reply["run_id"]
    assert sample.gpus[0].processes == () and sample.gpus[0].leased_by is None


def test_a_command_that_cannot_start_fails_with_the_reason_in_its_log(
    agent: AgentProcess,
) -> None:
    reply = start(agent, ["/nonexistent/train"])
    status = wait_state(agent, reply["run_id"])
    assert status["state"] == RUN_FAILED
    assert status["reason"].startswith("cannot start '/nonexistent/train'")
    assert b"No such file or directory" in (Path(reply["run_dir"]) / "output.log").read_bytes()
    wait_until(lambda: gone(reply["supervisor_pid"]), what="the supervisor to exit")


def test_sigterm_to_the_supervisor_cancels_its_run(agent: AgentProcess) -> None:
    reply = start(agent, "sleep 1000", grace_s=0.5)
    os.kill(reply["supervisor_pid"], signal.SIGTERM)
    status = wait_state(agent, reply["run_id"])
    assert (status["state"], status["reason"]) == (
        RUN_CANCELLED,
        "cancelled by SIGTERM to the supervisor",
    )
    assert gone(status["pid"])


def test_what_a_finished_command_left_running_is_ended_before_the_lease_goes(
    agent: AgentProcess,
) -> None:
    reply = start(agent, "sleep 1000 & echo $!", gpus=[0], grace_s=0.5)
    status = wait_state(agent, reply["run_id"])
    assert status["state"] == RUN_SUCCEEDED
    leftover = int((Path(reply["run_dir"]) / "output.log").read_text())
    wait_until(lambda: gone(leftover), 3.0, "the leftover sleep to end")
    wait_until(lambda: gone(reply["supervisor_pid"]), 3.0, "the supervisor to exit")
    agent.latest_telemetry_where(lambda t: t.gpus[0].leased_by is None)


def test_status_json_tracks_the_run_while_it_runs(agent: AgentProcess) -> None:
    reply = start(agent, [sys.executable, "-c", "print('hi', flush=True)\n" + GATE_PY])
    run_dir = Path(reply["run_dir"])
    written = read_status(str(run_dir))
    assert written is not None and written["state"] == "running"
    me = process_stat(reply["supervisor_pid"])
    assert me is not None and written["supervisor_start"] == me[2]
    # OP_RUNS reports the log's real size, between the supervisor's heartbeats too.
    wait_until(lambda: run_status(agent, reply["run_id"])["log_size"] == 3, what="log_size")
    (Path(reply["work_dir"]) / "go").touch()
    final = wait_state(agent, reply["run_id"])
    assert json.loads((run_dir / "status.json").read_text())["exit_code"] == 0
    assert final["heartbeat"] >= final["started"]
