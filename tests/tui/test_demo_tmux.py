"""`cvtui demo` as a person runs it: in a real terminal (tmux), read back from the screen."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.sshd,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


def alive(session: str) -> bool:
    return (
        subprocess.run(["tmux", "has-session", "-t", session], capture_output=True).returncode == 0
    )


def wait_screen(session: str, text: str, timeout_s: float = 30.0) -> str:
    deadline = time.monotonic() + timeout_s
    screen = ""
    while time.monotonic() < deadline:
        screen = tmux("capture-pane", "-p", "-t", session)
        if text in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared; screen was:\n{screen}")


def demo_processes(marker: str) -> list[str]:
    """Processes naming marker in their command line or working in a directory below it."""
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    found = [line for line in ps.splitlines() if marker in line]
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str((proc / "cwd").readlink()).startswith(marker):
                found.append(f"pid {proc.name} in {(proc / 'cwd').readlink()}")
        except OSError:
            continue
    return found


def test_demo_shows_live_hosts_and_ctrl_c_leaves_nothing(tmp_path) -> None:
    session = f"cvtui-test-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    command = f"TMPDIR={tmp} {sys.executable} -m cvtui.cli demo"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", command)
    try:
        screen = wait_screen(session, "Hosts 3/3")
        for name in ("gpu-01", "gpu-02", "gpu-03", "A100-SXM4-80GB", "simulated"):
            assert name in screen
        assert demo_processes(str(tmp)), "the demo's sshd servers should be running"
        tmux("send-keys", "-t", session, "2")
        # The demo run that cannot fit, and why: the why comes with the engine's next pass,
        # which may be after the screen first shows.
        screen = wait_screen(session, "needs")
        assert "huge" in screen and "WAITS FOR" in screen
        tmux("send-keys", "-t", session, "3")
        wait_screen(session, "▶ running")  # demo runs started on the simulated GPUs
        tmux("send-keys", "-t", session, "C-c")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and demo_processes(str(tmp)):
            time.sleep(0.2)
        assert demo_processes(str(tmp)) == []
        assert list(tmp.iterdir()) == []  # the demo's temp dir is gone
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def test_closing_the_terminal_ends_the_demo_and_leaves_nothing(tmp_path) -> None:
    """The hangup of a closed terminal, twice, as under `uv run cvtui demo` (the kernel signals
    the child, and uv forwards its own): the second one used to cut the cleanup short and
    leave the process waiting on a thread of the app, forever."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    screen = tmp_path / "stderr"  # Textual draws on stderr: the screen, as bytes
    session = f"cvtui-test-{uuid.uuid4().hex[:8]}"
    command = f"TMPDIR={tmp} exec {sys.executable} -m cvtui.cli demo 2>{screen}"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", command)
    try:
        pid = int(tmux("list-panes", "-t", session, "-F", "#{pane_pid}").strip())
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and b"healthy" not in read_bytes(screen):
            time.sleep(0.2)
        time.sleep(2)  # runs starting, the inventory watched: the app in full swing
        assert demo_processes(str(tmp)), "the demo should be running"
        os.kill(pid, signal.SIGHUP)
        time.sleep(0.3)  # the second one lands while the first one's cleanup runs
        os.kill(pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and demo_processes(str(tmp)):
            time.sleep(0.2)
        assert demo_processes(str(tmp)) == []
        assert list(tmp.iterdir()) == []
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_cvtui_alone_opens_the_dashboard_hosting_or_beside_an_engine(tmp_path) -> None:
    from cvtui.catalog import Catalog
    from cvtui.engine.lock import EngineLock
    from cvtui.inventory import load_inventory
    from cvtui.lab import free_port

    inventory = tmp_path / "inventory.yaml"
    # Nothing listens on this port: the hosted engine reports the host as unreachable.
    inventory.write_text(f"hosts:\n  lonely: {{address: 127.0.0.1, port: {free_port()}}}\n")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    command = f"{sys.executable} -m cvtui.cli --home {home} --inventory {inventory}"
    for hosting in (False, True):
        session = f"cvtui-test-{uuid.uuid4().hex[:8]}"
        lock = EngineLock(home)
        if not hosting:
            lock.acquire()  # a daemon has the catalog: the dashboard only reads
            with Catalog.open_home(home) as catalog:  # and the daemon listed the hosts
                catalog.sync_hosts(load_inventory(inventory).hosts)
        try:
            tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "24", command)
            expected = "engine here" if hosting else f"engine pid {os.getpid()}"
            screen = wait_screen(session, expected, timeout_s=20)
            assert "lonely" in screen
            if hosting:
                wait_screen(session, "disconnec", timeout_s=20)  # the engine tried, refused
            tmux("send-keys", "-t", session, "q")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and alive(session):
                time.sleep(0.1)
            assert not alive(session)  # q quit the dashboard, which ended the session
        finally:
            lock.release()
            subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)


def test_bang_opens_a_shell_on_the_host_and_the_dashboard_comes_back(
    lab_factory, home: Path
) -> None:
    """`!` on the hosts screen of a dashboard that is the engine: the dashboard hands the
    terminal to `cvtui shell` (served by its own engine over its connection), and shows
    itself again when the shell exits, with the exit code."""
    lab = lab_factory()
    session = f"cvtui-test-{uuid.uuid4().hex[:8]}"
    env = "".join(f"unset {k}; " for k in os.environ if k.startswith("CVTUI_"))
    command = f"{env}{sys.executable} -m cvtui.cli --home {home} --inventory {lab.inventory_path}"
    tmux("new-session", "-d", "-s", session, "-x", "110", "-y", "30", command)
    try:
        wait_screen(session, "healthy")
        assert "engine here" in tmux("capture-pane", "-p", "-t", session)
        lab.known_hosts.write_text("")  # a connection of the shell's own would now fail
        tmux("send-keys", "-t", session, "!")
        prompt = "#" if os.geteuid() == 0 else "$"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the dashboard gone, the host's shell prompting
            lines = [x.rstrip() for x in tmux("capture-pane", "-p", "-t", session).splitlines()]
            if lines and "cvtui" not in lines[0] and any(x.endswith(prompt) for x in lines):
                break
            time.sleep(0.2)
        else:
            raise AssertionError("no shell prompt: " + "\n".join(lines))
        time.sleep(0.5)
        tmux("send-keys", "-t", session, "echo IN-SHELL-$((6*7)) $PWD", "Enter")
        screen = wait_screen(session, "IN-SHELL-42")
        assert "cvtui" not in screen.splitlines()[0]  # the dashboard is not drawn meanwhile
        tmux("send-keys", "-t", session, "exit 4", "Enter")
        screen = wait_screen(session, "exited with 4")
        assert "healthy" in screen and "Shell on gpu-01" in screen
        tmux("send-keys", "-t", session, "q")
        deadline = time.monotonic() + 20
        while alive(session) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not alive(session)
    finally:
        if alive(session):
            tmux("kill-session", "-t", session)
