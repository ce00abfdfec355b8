"""GPU leases: flock files shared by every user, watched without being taken, and `exec`."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from remote_agent_harness import REPO, child_env
from run_harness import wait_until

from remote_agent.leases import (
    EXIT_LEASE_BUSY,
    LeaseBusy,
    LeaseWatcher,
    held_flock_keys,
    lease_path,
    release_leases,
    take_leases,
)

ME = pwd.getpwuid(os.getuid()).pw_name


def _exec(leases: Path, *args: str, **kwargs: object) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "remote_agent", "exec", "--leases-dir", str(leases), *args]
    return subprocess.Popen(  # type: ignore[call-overload, no-any-return]
        argv,
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.fixture
def leases(tmp_path: Path) -> Path:
    return tmp_path / "leases"


@pytest.fixture
def holder(leases: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding GPU 1's lease (through `exec`) until the test ends."""
    proc = _exec(leases, "--gpus", "1", "--", "sh", "-c", "echo held; exec sleep 1000")
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n"
    yield proc
    proc.kill()
    proc.wait()


def test_leases_are_labelled_shared_files_held_by_fds_that_do_not_leak(leases: Path) -> None:
    fds = take_leases(str(leases), [3, 0], "abcdefghij")
    try:
        assert stat.S_IMODE(leases.stat().st_mode) == 0o1777
        for gpu in (0, 3):
            path = Path(lease_path(str(leases), gpu))
            assert path.read_text() == f"abcdefghij {ME} {os.getpid()}\n"
            assert stat.S_IMODE(path.stat().st_mode) == 0o666
        assert not any(os.get_inheritable(fd) for fd in fds)
        assert LeaseWatcher(str(leases)).leased([0, 1, 3]) == {0: "abcdefghij", 3: "abcdefghij"}
    finally:
        release_leases(fds)
    assert LeaseWatcher(str(leases)).leased([0, 1, 3]) == {}
    assert Path(lease_path(str(leases), 0)).exists()  # never unlinked: the inode stays the lock


def test_a_busy_lease_names_its_holder_and_gives_back_what_was_taken(
    leases: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(LeaseBusy) as caught:
        take_leases(str(leases), [0, 1], "abcdefghij", retry_s=0.1)
    assert caught.value.gpu == 1
    assert caught.value.holder == f"exec-{holder.pid} {ME} {holder.pid}"
    fds = take_leases(str(leases), [0], "klmnopqrst", retry_s=0)  # GPU 0 was released
    release_leases(fds)


def test_a_lease_is_retried_while_its_holder_ends(leases: Path) -> None:
    brief = _exec(leases, "--gpus", "2", "--", "sh", "-c", "echo held; sleep 0.3")
    assert brief.stdout is not None and brief.stdout.readline() == "held\n"
    began = time.monotonic()
    fds = take_leases(str(leases), [2], "abcdefghij", retry_s=5.0)
    assert time.monotonic() - began < 3.0
    release_leases(fds)
    assert brief.wait() == 0


def test_watching_never_takes_a_lock(leases: Path) -> None:
    watcher = LeaseWatcher(str(leases))
    release_leases(take_leases(str(leases), [0], "abcdefghij"))  # create the file
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            watcher.leased([0])

    thread = threading.Thread(target=watch)
    thread.start()
    try:
        # With no retry at all, a watcher that took the lock even briefly would fail one of these.
        for _ in range(300):
            release_leases(take_leases(str(leases), [0], "abcdefghij", retry_s=0))
    finally:
        stop.set()
        thread.join()


def test_proc_locks_parsing_skips_waiters_and_other_lock_kinds() -> None:
    text = (
        "1: FLOCK  ADVISORY  WRITE 5578 fe:00:2146662 0 EOF\n"
        "1: -> FLOCK  ADVISORY  WRITE 5590 fe:00:2146662 0 EOF\n"
        "2: POSIX  ADVISORY  WRITE 612 00:1a:77 0 EOF\n"
        "3: FLOCK  ADVISORY  READ 14914 08:11:16039943 0 EOF\n"
        "garbage\n"
    )
    assert held_flock_keys(text) == {(0xFE, 0, 2146662), (8, 17, 16039943)}


def test_exec_holds_the_leases_for_the_commands_life_and_passes_its_exit_code(
    leases: Path,
) -> None:
    script = (
        "import os, sys\n"
        "print(os.environ['CUDA_VISIBLE_DEVICES'], flush=True)\n"
        "sys.stdin.readline()\n"
        "sys.exit(7)\n"
    )
    proc = _exec(leases, "--gpus", "0,1", "--", sys.executable, "-c", script, stdin=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline() == "0,1\n"
    # The command (same pid as exec, after execvp) holds both locks, as /proc/locks shows.
    keys = {}
    for gpu in (0, 1):
        st = Path(lease_path(str(leases), gpu)).stat()
        keys[(os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)] = gpu
    with open("/proc/locks") as f:
        mine = "".join(line for line in f if line.split()[4:5] == [str(proc.pid)])
    assert {keys[k] for k in held_flock_keys(mine) if k in keys} == {0, 1}, mine
    assert LeaseWatcher(str(leases)).leased([0, 1]) == {
        0: f"exec-{proc.pid}",
        1: f"exec-{proc.pid}",
    }
    proc.stdin.write("\n")
    proc.stdin.close()
    assert proc.wait() == 7
    wait_until(lambda: LeaseWatcher(str(leases)).leased([0, 1]) == {}, what="the leases to go")


def test_exec_refuses_a_busy_gpu_with_exit_75_and_one_line(
    leases: Path, holder: subprocess.Popen[str]
) -> None:
    proc = _exec(leases, "--gpus", "1", "--", "echo", "ran")
    out, err = proc.communicate(timeout=10)
    assert proc.returncode == EXIT_LEASE_BUSY
    assert out == ""  # the command never ran
    assert err == f"cvtui exec: GPU 1 is leased by exec-{holder.pid} {ME} {holder.pid}\n"


def test_exec_reports_usage_and_missing_commands(leases: Path) -> None:
    proc = _exec(leases, "--gpus", "0")
    assert proc.communicate(timeout=10)[1].startswith("cvtui exec: no command given")
    assert proc.returncode == 2
    proc = _exec(leases, "--gpus", "x", "--", "true")
    assert "--gpus wants GPU indexes" in proc.communicate(timeout=10)[1]
    assert proc.returncode == 2
    proc = _exec(leases, "--", "/nonexistent/tool")
    assert "cannot run '/nonexistent/tool'" in proc.communicate(timeout=10)[1]
    assert proc.returncode == 127
