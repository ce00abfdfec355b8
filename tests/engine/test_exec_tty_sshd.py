"""`cvtui exec -t`: an interactive command in a pty on the host, driven from a real local
terminal (a pty of this test's), over real sshd: keys typed go to it, the window size is the
terminal's and follows its resizes, and the terminal is as it was afterwards. Both paths: a
connection of the CLI's own, and a running engine's."""

from __future__ import annotations

import asyncio
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from cvtui.lab import Lab

pytestmark = pytest.mark.sshd

# Prints its terminal, its size and $TERM, echoes one line typed, then waits (10 s at most)
# for the pty to take the size the test resizes its terminal to, and says it (stty reads the
# tty's own winsize): a slow machine only takes longer, never misses it.
SCRIPT = (
    "tty; stty size; echo term=$TERM; read line; echo got:$line; i=0; "
    'while [ "$(stty size)" != "40 120" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; '
    "echo resized to $(stty size); exit 7"
)


class Terminal:
    """The CLI under a pty of our own, as a person's terminal runs it."""

    def __init__(self, argv: list[str], cols: int = 97, rows: int = 31) -> None:
        self.master, slave = os.openpty()
        self.resize(cols, rows, signal_it=False)
        self.raw_before = termios.tcgetattr(slave)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
        env["TERM"] = "screen-256color"
        self.process = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        self.slave = slave
        self.output = bytearray()
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if not ready:
                if self.process.poll() is not None:
                    return
                continue
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:
                return
            if not data:
                return
            with self._lock:
                self.output += data

    def text(self) -> str:
        with self._lock:
            return self.output.decode(errors="replace")

    def expect(self, needle: str, timeout_s: float = 30) -> str:
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            assert time.monotonic() < deadline, f"{needle!r} never came: {self.text()!r}"
            time.sleep(0.02)
        return self.text()

    def settle(self, quiet_s: float = 0.5, timeout_s: float = 30) -> str:
        """Wait for some output and then none for quiet_s (a prompt shown), as a person would."""
        deadline = time.monotonic() + timeout_s
        seen, since = "", time.monotonic()
        while time.monotonic() < deadline:
            now = self.text()
            if now != seen:
                seen, since = now, time.monotonic()
            elif seen and time.monotonic() - since >= quiet_s:
                return seen
            time.sleep(0.02)
        raise AssertionError(f"no prompt within {timeout_s} s: {seen!r}")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def resize(self, cols: int, rows: int, signal_it: bool = True) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        if signal_it:  # the kernel signals a terminal's foreground group; ours has none
            os.kill(self.process.pid, signal.SIGWINCH)

    def wait(self, timeout_s: float = 30) -> int:
        code = self.process.wait(timeout_s)
        return code

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self.master)
        os.close(self.slave)


def exec_argv(lab: Lab, home: Path, *command: str) -> list[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    return [*argv, str(lab.inventory_path), "exec", "-t", "--host", "gpu-01", "--", *command]


def drive(terminal: Terminal) -> None:
    """The session a person has: see the pty, type a line, resize the window, type again."""
    try:
        shown = terminal.expect("term=")
        assert "/dev/pts/" in shown  # a terminal on the host, not a pipe
        assert "31 97" in shown  # rows and columns of the local terminal
        terminal.expect("term=screen-256color")
        # Raw mode: the line goes as typed (Enter is a carriage return), echoed by the host's pty.
        terminal.type(b"hello there\r")
        terminal.expect("got:hello there")
        terminal.resize(120, 40)
        terminal.expect("resized to 40 120")
        assert terminal.wait() == 7
        # The terminal is as it was before: cooked again, echo on.
        assert termios.tcgetattr(terminal.slave) == terminal.raw_before
    finally:
        terminal.close()


def test_exec_t_runs_an_interactive_command_in_a_pty(lab_factory: object, home: Path) -> None:
    lab = lab_factory()  # type: ignore[operator]
    drive(Terminal(exec_argv(lab, home, "sh", "-c", SCRIPT)))


async def test_exec_t_through_a_running_engine(lab_factory: object, home: Path) -> None:
    from support import running

    from cvtui.catalog import Catalog
    from cvtui.engine.engine import Engine
    from cvtui.engine.lock import EngineLock
    from cvtui.inventory import load_inventory

    lab = lab_factory()  # type: ignore[operator]
    lock = EngineLock(home)
    lock.acquire()
    try:
        with Catalog.open_home(home) as catalog:
            engine = Engine(load_inventory(lab.inventory_path), catalog)
            async with running(engine.run):
                await engine.wait_answered(15)
                # A connection of the CLI's own would now fail (host key unknown): only the
                # engine's open one can run it.
                lab.known_hosts.write_text("")
                terminal = Terminal(exec_argv(lab, home, "sh", "-c", SCRIPT))
                await asyncio.to_thread(drive, terminal)
    finally:
        lock.release()


def test_shell_on_a_run_opens_in_its_work_dir_and_on_a_host_in_home(
    lab_factory: object, home: Path, tmp_path: Path
) -> None:
    import json

    import yaml

    lab = lab_factory()  # type: ignore[operator]
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text("open('result.txt', 'w').write('42')\n")
    config = code / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "probe", "command": "python3 train.py"}))
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    argv += [str(lab.inventory_path)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    done = subprocess.run(
        [*argv, "run", str(config), "--host", "gpu-01", "--follow"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    listed = subprocess.run([*argv, "ps", "--all", "--json"], capture_output=True, text=True)
    [run] = json.loads(listed.stdout)

    terminal = Terminal([*argv, "shell", "probe"])
    try:
        terminal.settle()  # the shell's prompt, before typing
        terminal.type(b"pwd; cat result.txt; echo; tty; exit 3\r")
        shown = terminal.expect("/dev/pts/")
        assert f"{run['id']}/work" in shown and "42" in shown
        assert terminal.wait() == 3
    finally:
        terminal.close()
    terminal = Terminal([*argv, "shell", "gpu-01"])
    try:
        terminal.settle()
        terminal.type(b"pwd; exit\r")
        assert terminal.wait() == 0
        assert str(Path.home()) in terminal.text()
    finally:
        terminal.close()
