"""`cvtui demo` as a person runs it: in a real terminal (tmux), read back from the screen."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = [
    pytest.mark.sshd,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux"),
]


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True).stdout


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
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if marker in line]


def test_demo_shows_live_hosts_and_ctrl_c_leaves_nothing(tmp_path) -> None:
    session = f"cvtui-test-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    command = f"TMPDIR={tmp} {sys.executable} -m cvtui.cli demo"
    tmux("new-session", "-d", "-s", session, "-x", "100", "-y", "30", command)
    try:
        screen = wait_screen(session, "3/3 hosts healthy")
        for name in ("gpu-01", "gpu-02", "gpu-03", "A100-SXM4-80GB", "simulated"):
            assert name in screen
        assert demo_processes(str(tmp)), "the demo's sshd servers should be running"
        tmux("send-keys", "-t", session, "C-c")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and demo_processes(str(tmp)):
            time.sleep(0.2)
        assert demo_processes(str(tmp)) == []
        assert list(tmp.iterdir()) == []  # the demo's temp dir is gone
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
