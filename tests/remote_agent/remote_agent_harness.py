"""Runs the real agent as a subprocess and sorts its stdout into replies and events."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any

import pytest

from remote_agent.protocol import EVENT_TELEMETRY, Telemetry

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 10.0


class AgentProcess:
    """`python -m remote_agent serve ...` with a thread parsing every line it writes."""

    def __init__(
        self,
        root: Path,
        *extra: str,
        simulate: dict[str, Any] | None = None,
        interval_s: float = 0.05,
        leases_dir: Path | None = None,
        argv: list[str] | None = None,
        python: str = sys.executable,
    ) -> None:
        if argv is None:
            argv = [python, "-m", "remote_agent", "serve", "--root", str(root)]
            argv += ["--interval", str(interval_s)]
            argv += ["--leases-dir", str(leases_dir or root.parent / "leases")]
            if simulate is not None:
                argv += ["--simulate", json.dumps(simulate)]
            argv += list(extra)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (closed in close())
        self.proc = subprocess.Popen(
            argv,
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self.replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.raw_lines: list[bytes] = []
        assert self.proc.stdout is not None
        self._thread = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._thread.start()
        self._next_id = 1000

    def _read(self, stdout: IO[bytes]) -> None:
        # A test may close stdout under this thread; that simply ends the reading.
        with contextlib.suppress(OSError, ValueError):
            self._read_lines(stdout)

    def _read_lines(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            self.raw_lines.append(line)
            try:
                message = json.loads(line)
            except ValueError:  # every line the agent writes must be JSON: make tests fail
                message = {"id": "<not JSON>", "line": line.decode(errors="replace")}
            (self.replies if "id" in message else self.events).put(message)

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def write(self, data: bytes) -> None:
        self.stdin.write(data)
        self.stdin.flush()

    def send(self, message: dict[str, Any]) -> None:
        self.write(json.dumps(message).encode() + b"\n")

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """Send one request and return its reply (which must be the next reply)."""
        self._next_id += 1
        self.send({"id": self._next_id, "op": op, **args})
        reply = self.reply()
        assert reply["id"] == self._next_id, reply
        return reply

    def reply(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        return self.replies.get(timeout=timeout_s)

    def event(self, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
        return self.events.get(timeout=timeout_s)

    def hello(self) -> dict[str, Any]:
        message = self.event()
        assert message["event"] == "hello", message
        return message

    def telemetry(self, timeout_s: float = TIMEOUT_S) -> Telemetry:
        """The next telemetry event, parsed."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.event(max(0.01, deadline - time.monotonic()))
            if message["event"] == EVENT_TELEMETRY:
                return Telemetry.from_wire({k: v for k, v in message.items() if k != "event"})

    def latest_telemetry_where(self, accept: Any, timeout_s: float = TIMEOUT_S) -> Telemetry:
        """Wait for a telemetry sample that `accept` likes; fail with the last one seen."""
        deadline = time.monotonic() + timeout_s
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.telemetry(max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if accept(last):
                return last
        raise AssertionError(f"no telemetry matched within {timeout_s} s; last: {last}")

    def drain_events(self) -> None:
        while True:
            try:
                self.events.get_nowait()
            except queue.Empty:
                return

    def wait(self, timeout_s: float = TIMEOUT_S) -> int:
        return self.proc.wait(timeout=timeout_s)

    def stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self._stderr.close()

    def __enter__(self) -> AgentProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra)
    return env


# Names the Python 3.8 to run the agent's tests on, where it is in none of the usual places.
PYTHON38_VARIABLE = "CVTUI_TEST_PYTHON38"


@functools.cache
def find_python(version: str) -> str | None:
    """An interpreter of exactly this version ("3.8"), or None: the one $CVTUI_TEST_PYTHON38
    names (for 3.8), else python3.8 on PATH, else one installed by pyenv."""
    candidates = [os.environ.get(PYTHON38_VARIABLE) if version == "3.8" else None]
    candidates.append(shutil.which(f"python{version}"))
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += sorted(str(p) for p in pyenv.glob(f"versions/{version}.*/bin/python"))
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                timeout=30,
            )
        except OSError:
            continue
        if done.returncode == 0 and done.stdout.decode().strip() == version:
            return candidate
    return None


def python38() -> str:
    """The Python 3.8 that the agent's tests run on (the oldest the agent supports); the test
    fails, not skips, when there is none: hosts run 3.8, so the agent must be tried on it."""
    found = find_python("3.8")
    if found is None:
        pytest.fail(
            "no Python 3.8 to run the agent on: install one (pyenv install 3.8, or a python3.8 "
            f"package) or name it in ${PYTHON38_VARIABLE}",
            pytrace=False,
        )
    return found


@functools.cache
def python_version_of(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import platform; print(platform.python_version())"],
        capture_output=True,
        check=True,
        timeout=30,
    )
    return done.stdout.decode().strip()
