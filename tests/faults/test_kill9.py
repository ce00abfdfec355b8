"""Fault rounds over real sshd: kill -9 of the daemon during dispatch, of the agent, of
`cvtui sync`, and sshd stopped and restarted while runs write. After every variant: 0 lost
runs, 0 runs started twice, 0 differing bytes, 0 duplicate metric rows, integrity_check ok.

Each test runs a short variant by default and a long one (>= 20 rounds) with `-m faults`.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support import stop_engine_once_running

from cvtui.lab import Lab, LabHostSpec, descendants

from .workload import (
    Daemon,
    Workload,
    agent_pids,
    check_outcome,
    cli_argv,
    cli_env,
    cvtui,
    read_catalog,
    settled,
    states,
    tune_inventory,
    until,
)

pytestmark = pytest.mark.sshd


def variants(short: int) -> list[object]:
    """A short variant for every run, and 20 rounds with -m faults."""
    return [
        pytest.param(short, id="short"),
        pytest.param(20, id="long", marks=[pytest.mark.faults, pytest.mark.timeout(900)]),
    ]


ROUNDS = variants(2)  # sshd alternates a restart and a crash: two rounds show both


def dispatches(home: Path) -> int:
    rows = read_catalog(home, "SELECT count(*) FROM run_events WHERE state = 'dispatching'")
    return int(rows[0][0])


@pytest.mark.parametrize("rounds", variants(1))
def test_kill_9_of_the_daemon_during_dispatch(
    lab_factory: Callable[..., Lab], tmp_path: Path, rounds: int
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    tune_inventory(lab)
    home = tmp_path / "home"
    # Two GPUs and two runs per round: each round's daemon finds a wave to dispatch.
    work = Workload(tmp_path, runs=2 * rounds + 2, rows=10, pace_s=0.05)
    run_ids = work.queue(lab, home)
    rng = random.Random(rounds)
    for number in range(rounds):
        seen = dispatches(home)
        daemon = Daemon(lab, home, tmp_path / f"daemon{number}.log")
        until(lambda seen=seen: dispatches(home) > seen, 60, 0.002)
        time.sleep(rng.choice([0, 0, 0.005, 0.02, 0.1]))  # before or after the start lands
        daemon.kill()
    final = Daemon(lab, home, tmp_path / "final.log")
    until(lambda: settled(home, run_ids), 120 + 5 * rounds, 0.2)
    assert final.stop() == 0
    outcome = check_outcome(lab, home, work, run_ids)
    print(outcome.line(f"daemon kill -9 during dispatch ({dispatches(home)} dispatches)", rounds))


@pytest.mark.parametrize("rounds", variants(1))
def test_kill_9_of_the_agent_while_runs_write(
    lab_factory: Callable[..., Lab], tmp_path: Path, rounds: int
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    tune_inventory(lab)
    home = tmp_path / "home"
    work = Workload(tmp_path, runs=2, rows=5, pace_s=0.02, until_stopped=True)
    run_ids = work.queue(lab, home)
    daemon = Daemon(lab, home, tmp_path / "daemon.log")
    until(lambda: all(s == "running" for s, _ in states(home, run_ids).values()), 60)
    rng = random.Random(rounds)
    killed = 0
    for _ in range(rounds):
        # One agent per connection: an earlier one never lingers (a slow start that the engine
        # gave up on may overlap its successor for a moment, no longer).
        until(lambda: len(agent_pids(lab, "gpu-01")) == 1, 60)
        time.sleep(rng.uniform(0.1, 0.8))  # mid-sync: the runs write a line every 20 ms
        agents = agent_pids(lab, "gpu-01")
        for agent in agents:
            subprocess.run(["kill", "-9", str(agent)], check=True)
            killed += 1
        until(lambda agents=agents: agent_pids(lab, "gpu-01") - agents, 60)
    work.stop.touch()
    until(lambda: settled(home, run_ids), 120, 0.2)
    assert daemon.stop() == 0
    outcome = check_outcome(lab, home, work, run_ids)
    print(outcome.line(f"agent kill -9 ({killed} kills)", rounds))


def files_touched_after(home: Path, moment: float) -> bool:
    """Whether a sync has written a file row since moment (its pass is under way)."""
    rows = read_catalog(home, "SELECT count(*) FROM files WHERE updated > ?", (moment,))
    return bool(rows[0][0])


@pytest.mark.parametrize("rounds", variants(1))
def test_kill_9_of_cvtui_sync(lab_factory: Callable[..., Lab], tmp_path: Path, rounds: int) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    home = tmp_path / "home"
    size = 24 << 20
    work = Workload(tmp_path, runs=2, rows=5000, pace_s=0, checkpoint_bytes=size)
    done = cvtui(lab, home, "run", str(work.config))
    assert done.returncode == 0, done.stderr
    run_ids = [line.split()[0] for line in done.stdout.splitlines()]
    # The background engine `run` started would sync them: only `sync` may.
    stop_engine_once_running(home, run_ids)
    until(lambda: len(work.run_dirs()) == 2, 60)
    until(lambda: all((d / "model.pt").exists() for d in work.run_dirs().values()), 60)
    rng = random.Random(rounds)
    killed = 0
    for number in range(rounds):
        if number:  # the host's files change between syncs: rows appended, blocks rewritten
            for run_dir in work.run_dirs().values():
                with open(run_dir / "metrics.csv", "a") as fh:
                    for step in range(5000 * number, 5000 * (number + 1)):
                        fh.write(f"{step},{1 / (step + 1):.6f},{step / 1000:.4f}\n")
                with open(run_dir / "model.pt", "r+b") as fh:
                    fh.seek(rng.randrange(size))
                    fh.write(rng.randbytes(4 << 20))
        began = time.time()
        syncing = subprocess.Popen(
            cli_argv(lab, home, "sync", "--all"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=cli_env(),
        )

        # Once its pass is under way (listing recorded), at a random point of it:
        def under_way(process: subprocess.Popen[bytes] = syncing, since: float = began) -> bool:
            return process.poll() is not None or files_touched_after(home, since)

        until(under_way, 60, 0.005)
        time.sleep(rng.uniform(0, 0.4))
        if syncing.poll() is None:
            syncing.send_signal(signal.SIGKILL)
            killed += 1
        syncing.wait()
    finished = cvtui(lab, home, "sync", "--all")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert settled(home, run_ids)
    outcome = check_outcome(lab, home, work, run_ids)
    print(outcome.line(f"cvtui sync kill -9 ({killed} kills)", rounds))
    assert killed >= max(1, rounds // 2)  # most rounds did kill a sync in flight


def one_agent(lab: Lab, host: str, sessions: frozenset[int]) -> set[int] | None:
    """The host's agent pids when there is exactly one, else None (wait for it)."""
    found = agent_pids(lab, host, sessions)
    return found if len(found) == 1 else None


def last_seen(home: Path) -> float:
    return float(read_catalog(home, "SELECT max(last_seen) FROM hosts")[0][0] or 0)


@pytest.mark.parametrize("rounds", ROUNDS)
def test_sshd_stopped_and_restarted_while_runs_write(
    lab_factory: Callable[..., Lab], tmp_path: Path, rounds: int
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    tune_inventory(lab)
    home = tmp_path / "home"
    work = Workload(tmp_path, runs=2, rows=5, pace_s=0.02, until_stopped=True)
    run_ids = work.queue(lab, home)
    daemon = Daemon(lab, home, tmp_path / "daemon.log")
    until(lambda: all(s == "running" for s, _ in states(home, run_ids).values()), 60)
    rng = random.Random(rounds)
    server = lab.servers["gpu-01"]
    # Sessions of a stopped sshd live on, as after `systemctl restart ssh`: the engine keeps
    # its connection through them until a crash round kills them too.
    sessions: set[int] = set()
    try:
        for number in range(rounds):
            # One agent: while a reconnect replaces it, the old one may still be on its way out.
            [agent] = until(lambda s=frozenset(sessions): one_agent(lab, "gpu-01", s), 60)
            time.sleep(rng.uniform(0.1, 0.8))  # mid-sync: the runs write a line every 20 ms
            if number % 2:
                assert server.process is not None
                sessions |= set(descendants(server.process.pid))
                server.stop()  # SIGTERM to the listener only
                time.sleep(rng.uniform(0.1, 0.5))
                server.start()
                restarted = time.time()
                until(lambda restarted=restarted: last_seen(home) > restarted, 60)
            else:
                server.kill()  # the listener and its sessions, as a crash would
                for pid in sessions:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                sessions.clear()
                time.sleep(rng.uniform(0.1, 0.5))
                server.start()
                until(lambda agent=agent: agent_pids(lab, "gpu-01") - {agent}, 60)
        work.stop.touch()
        until(lambda: settled(home, run_ids), 120, 0.2)
        assert daemon.stop() == 0
    finally:
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    outcome = check_outcome(lab, home, work, run_ids)
    print(outcome.line("sshd stopped/restarted and crashed", rounds))
