"""The detached per-run supervisor: GPU leases, the command in its own group, status.json."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from remote_agent.leases import LeaseBusy, release_leases, take_leases
from remote_agent.protocol import (
    RECORDED_BY_SUPERVISOR,
    RUN_CANCELLED,
    RUN_FAILED,
    RUN_RUNNING,
    RUN_SUCCEEDED,
    RunStatus,
    StartRequest,
)
from remote_agent.rundir import (
    CANCEL_FILE,
    LOG_FILE,
    STATUS_FILE,
    WRITER,
    group_members,
    process_stat,
    work_dir_of,
    write_status,
)
from remote_agent.runenv import (
    SETUP_FAILED,
    EnvReader,
    base_env,
    command_argv,
    setup_argv,
    with_path,
    write_python_record,
)

TICK_S = 0.25  # how often output.log is read for progress (and the child polled, besides SIGCHLD)
GROUP_POLL_S = 0.05  # while waiting for a cancelled process group to empty
HEARTBEAT_S = 5.0
PROGRESS_WRITE_S = 0.5  # status.json is rewritten for progress at most this often
READ_CHUNK_BYTES = 1 << 16
READ_PER_TICK_BYTES = 8 << 20  # so a flood of output never delays noticing the child's exit
TAIL_KEEP_BYTES = 4096  # of a line still without its end, only this much is kept
PROGRESS_MSG_CHARS = 200
MAX_TRACKED_BARS = 64  # distinct tqdm bars a run's progress keeps apart
SETTLE_AFTER_KILL_S = 1.0  # how long SIGKILLed processes get to disappear before the status
_PROGRESS = re.compile(rb"\[PROGRESS:\s*(\d+(?:\.\d+)?)\s*:([^\]\r\n]*)\]")
_TQDM = re.compile(rb"(\d+(?:\.\d+)?)%\|")
_TQDM_TOTAL = re.compile(rb"\s*\d+(?:\.\d+)?[a-zA-Z]*/(\d+(?:\.\d+)?)")  # after the bar: n/total
_EPOCH = re.compile(rb"\bepoch\b\s*[:=#]?\s*[\[(]?\s*(\d+)\s*(?:/|of)\s*(\d+)", re.IGNORECASE)
_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
_DIGITS = re.compile(rb"\d+")


def _default_signals() -> None:
    """In the run's child, before exec: the signals the supervisor ignores back to their
    defaults. An ignored signal stays ignored across exec, so the command would start with
    SIGINT and SIGHUP ignored: a shell's `trap ... INT` silently dropped, no KeyboardInterrupt
    in python, a training script's own Ctrl-C handling never run."""
    for sig in (signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)


class _Bar:
    """One tqdm bar, told apart from others by its description (digits aside) and total."""

    __slots__ = ("enclosing", "msg", "order", "pct", "restarts")

    def __init__(self, order: int) -> None:
        self.order = order
        self.pct = 0.0
        self.msg = ""
        self.restarts = 0  # times its percentage went down: a bar started anew
        self.enclosing = False  # went on while another bar restarted: an outer bar


class ProgressParser:
    """Finds a run's progress in a stream of output, in bounded memory.

    `[PROGRESS:pct:msg]` lines win: once one was seen, nothing else counts. Else `Epoch k/N`
    lines (or bar descriptions) give the epoch, and the bar that follows it the part of that
    epoch done, so a framework that restarts its tqdm bar every epoch still shows the run's
    progress. Without epochs, the outermost bar counts: one that went on while another
    restarted (nested bars); with no such bar, the newest bar.
    """

    def __init__(self) -> None:
        self._tail = b""  # the line (or \r segment) not yet ended, its last TAIL_KEEP_BYTES
        self._marked = False
        self._epoch: tuple[int, int] | None = None  # (k, N) as printed
        self._zero_based = False  # an `Epoch 0/N` was seen: k counts from 0
        self._within: tuple[float, str] | None = None  # the bar since the epoch line
        self._bars: dict[tuple[bytes, bytes], _Bar] = {}
        self._last: tuple[float, str] | None = None  # the newest bar (or mark)

    def feed(self, data: bytes) -> tuple[float, str] | None:
        """(percent, message) after data, None when data holds no progress."""
        buf = self._tail + data
        cut = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        self._tail = buf[cut + 1 :][-TAIL_KEEP_BYTES:]
        if b"[PROGRESS:" not in buf and b"%|" not in buf and b"poch" not in buf.lower():
            return None
        found = False
        # tqdm redraws with \r, so segments split at \r as well as \n; the unfinished last
        # segment is the bar on screen now (fed again with the next data, which is harmless).
        for segment in re.split(rb"[\r\n]", buf):
            found = self._segment(segment) or found
        return self.progress() if found else None

    def _segment(self, segment: bytes) -> bool:
        marks = _PROGRESS.findall(segment)
        if marks:
            pct, msg = marks[-1]
            self._marked = True
            self._last = (_clamp(float(pct)), _text(msg))
            return True
        if self._marked:
            return False
        clean = _ANSI.sub(b"", segment)
        epoch = _EPOCH.search(clean)
        seen = False
        if epoch is not None:
            k, n = int(epoch.group(1)), int(epoch.group(2))
            if n > 0 and k <= n:
                self._zero_based = self._zero_based or k == 0
                if (k, n) != self._epoch:
                    self._epoch, self._within = (k, n), None
                seen = True
        bar = parse_progress(clean)
        match = _TQDM.search(clean)
        if bar is not None and match is not None:
            total = _TQDM_TOTAL.match(clean, clean.find(b"|", match.end()) + 1)
            key = (
                _DIGITS.sub(b"#", clean[: match.start()].strip()),
                total.group(1) if total else b"",
            )
            self._track(key, bar)
            if self._epoch is not None:
                self._within = bar
            seen = True
        return seen

    def _track(self, key: tuple[bytes, bytes], bar: tuple[float, str]) -> None:
        known = self._bars.get(key)
        if known is None:
            if len(self._bars) >= MAX_TRACKED_BARS:
                return
            known = self._bars[key] = _Bar(len(self._bars))
        if bar[0] + 0.5 < known.pct:
            known.restarts += 1
            for other_key, other in self._bars.items():
                if other_key != key and other.restarts == 0 and other.pct < 100.0:
                    other.enclosing = True
        known.pct, known.msg = bar
        self._last = bar

    def progress(self) -> tuple[float, str] | None:
        if self._marked or self._epoch is None:
            outer = [(b.order, k) for k, b in self._bars.items() if b.enclosing and not b.restarts]
            if not self._marked and outer:
                bar = self._bars[min(outer)[1]]
                return bar.pct, bar.msg
            return self._last
        k, n = self._epoch
        done = (k if self._zero_based else k - 1) + (self._within[0] / 100 if self._within else 0)
        msg = f"epoch {k}/{n}"
        if self._within and self._within[1]:
            msg = f"{msg} · {self._within[1]}"
        return _clamp(round(100.0 * done / n, 2)), msg[:PROGRESS_MSG_CHARS]


def parse_progress(segment: bytes) -> tuple[float, str] | None:
    """Progress in one line: the last [PROGRESS:pct:msg] in it, else a tqdm bar."""
    marks = _PROGRESS.findall(segment)
    if marks:
        pct, msg = marks[-1]
        return _clamp(float(pct)), _text(msg)
    match = _TQDM.search(segment)
    if match is None:
        return None
    desc = segment[: match.start()].strip().rstrip(b":").strip()
    rest = segment[match.end() :]
    bar_end = rest.find(b"|")
    after = rest[bar_end + 1 :].strip() if bar_end >= 0 else b""
    return _clamp(float(match.group(1))), _text(b" ".join(p for p in (desc, after) if p))


def _clamp(pct: float) -> float:
    return min(100.0, max(0.0, pct))


def _text(raw: bytes) -> str:
    return _ANSI.sub(b"", raw).decode("utf-8", "replace").strip()[:PROGRESS_MSG_CHARS]


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class Supervisor:
    """One run: start the command, follow it, record it, cancel it on request."""

    def __init__(
        self,
        request: StartRequest,
        run_dir: str,
        gpu_uuids: list[str] | None = None,
        job: dict[str, str] | None = None,
    ) -> None:
        self.request = request
        self.run_dir = run_dir
        self.work_dir = work_dir_of(run_dir)
        self.gpu_uuids = gpu_uuids or []
        # In a Slurm job: its id and the node's GPU indexes Slurm allocated ("0,1").
        self.job = job
        self.log_path = os.path.join(run_dir, LOG_FILE)
        self.env_reader: EnvReader | None = None  # the environment after the setup lines
        start = process_stat(os.getpid())
        gpus = request.gpus
        if job is not None:
            gpus = tuple(int(g) for g in job["gpus"].split(",") if g.strip().isdigit())
        self.status: dict[str, Any] = RunStatus(
            run_id=request.run_id,
            state=RUN_RUNNING,
            run_dir=run_dir,
            gpus=gpus,
            supervisor_pid=os.getpid(),
            supervisor_start=start[2] if start else None,
            uid=os.getuid(),
            work_dir=self.work_dir,
            job_id=job["id"] if job is not None else None,
        ).to_wire()
        self.status["writer"] = WRITER
        self.proc: subprocess.Popen[bytes] | None = None
        self.parser = ProgressParser()
        self._wake_r = -1
        self._signals: list[int] = []
        self._log_fd = -1
        self._log_offset = 0
        self._last_write = 0.0  # time.monotonic() of the last status.json write
        self._dirty = False
        self._cancel_by: str | None = None
        self._kill_at: float | None = None  # time.monotonic() when the group gets SIGKILL
        self._killed = False

    # --- signals ---

    def install_signals(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._wake_r = wake_r
        signal.set_wakeup_fd(wake_w)  # the main loop's select() wakes on any signal
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._on_signal)
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_IGN)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    # --- status ---

    def write(self, durable: bool = False) -> None:
        now = time.time()
        self.status["heartbeat"] = now
        with contextlib.suppress(OSError):
            self.status["log_size"] = os.stat(self.log_path).st_size
        try:
            write_status(self.run_dir, self.status, durable)
        except OSError as exc:  # a full disk must not end the supervision of the run
            sys.stderr.write(f"cvtui supervisor: cannot write status.json: {exc}\n")
        self._last_write = time.monotonic()
        self._dirty = False

    def _tail_log(self, limit: int = READ_PER_TICK_BYTES) -> None:
        if self._log_fd < 0:
            return
        got = 0
        newest = None
        while got < limit:
            try:
                chunk = os.pread(self._log_fd, READ_CHUNK_BYTES, self._log_offset)
            except OSError:
                return
            if not chunk:
                break
            self._log_offset += len(chunk)
            got += len(chunk)
            found = self.parser.feed(chunk)
            if found is not None:
                newest = found
        if newest is not None and (newest[0], newest[1]) != (
            self.status["progress"],
            self.status["progress_msg"],
        ):
            self.status["progress"], self.status["progress_msg"] = newest
            self._dirty = True

    # --- the run ---

    def start_command(self) -> None:
        """Start the command (state running) or record why it could not start (failed)."""
        request = self.request
        allocated = self.job["gpus"] if self.job is not None else None
        env = base_env(dict(os.environ), request, self.work_dir, self.gpu_uuids, allocated)
        pass_fds: tuple[int, ...] = ()
        if request.setup:
            env_r, env_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            os.set_blocking(env_w, True)
            self.env_reader = EnvReader(env_r)
            argv = setup_argv(request, env_w)
            pass_fds = (env_w,)
        else:
            env = with_path(env, request.path)
            argv = command_argv(request)
            self._record_python(env)
        out = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._log_fd = os.open(self.log_path, os.O_RDONLY | os.O_CLOEXEC)
        self.status["started"] = time.time()
        try:
            # The child writes output.log itself (its own O_APPEND fd), and leads its own group
            # and session, so cancel can signal it and everything it starts.
            self.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                cwd=self.work_dir,
                env=env,
                start_new_session=True,
                close_fds=True,
                pass_fds=pass_fds,
                preexec_fn=_default_signals,  # safe: the supervisor runs no threads
            )
        except (OSError, ValueError) as exc:
            os.write(out, f"cvtui: cannot start {argv[0]!r}: {exc}\n".encode())
            self.status.update(
                state=RUN_FAILED,
                ended=time.time(),
                reason=f"cannot start {argv[0]!r}: {exc}",
                recorded_by=RECORDED_BY_SUPERVISOR,
            )
        finally:
            os.close(out)
            for fd in pass_fds:
                os.close(fd)  # the child holds the write end now: its end is our EOF
        if self.proc is not None:
            self.status.update(pid=self.proc.pid, pgid=self.proc.pid)
        self.write(durable=True)

    def _record_python(self, env: dict[str, str]) -> None:
        try:
            write_python_record(self.run_dir, self.request, env)
        except (OSError, ValueError) as exc:  # provenance only: the run goes on
            sys.stderr.write(f"cvtui supervisor: cannot record the run's python: {exc}\n")

    def _take_env(self) -> None:
        """The setup's environment, once the launcher sent it."""
        reader = self.env_reader
        if reader is None or reader.closed:
            return
        if reader.read() and reader.env:
            self._record_python(reader.env)

    def _begin_cancel(self, who: str, grace_s: float) -> None:
        if self._cancel_by is not None or self.proc is None:
            return
        self._cancel_by = who
        self._kill_at = time.monotonic() + max(0.0, grace_s)
        self._signal_group(signal.SIGTERM)

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def _cancel_request(self, signum: int) -> tuple[str, float]:
        """Who asked and the grace, from <run_dir>/cancel (written by the agent's cancel op)."""
        who, grace_s = "SIGTERM to the supervisor", float(self.request.grace_s)
        if signum == signal.SIGUSR1 or os.path.exists(os.path.join(self.run_dir, CANCEL_FILE)):
            try:
                with open(os.path.join(self.run_dir, CANCEL_FILE), "rb") as f:
                    asked = json.loads(f.read(65536).decode("utf-8"))
                who = str(asked.get("by") or "unknown")
                if isinstance(asked.get("grace"), (int, float)):
                    grace_s = float(asked["grace"])
            except (OSError, ValueError, AttributeError, RecursionError):
                who = "unknown"
        return who, grace_s

    def _wait(self, timeout_s: float) -> None:
        """Sleep until a signal arrives or timeout_s passes, then take the signals seen."""
        try:
            select.select([self._wake_r], [], [], max(0.0, timeout_s))
            while os.read(self._wake_r, 512):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        for signum in self._signals[:]:
            self._signals.remove(signum)
            if signum in (signal.SIGTERM, signal.SIGUSR1):
                self._begin_cancel(*self._cancel_request(signum))

    def follow(self) -> None:
        """Until the command's group is gone: progress, heartbeats, cancel, then the end state."""
        if self.proc is None:
            return
        if os.path.exists(os.path.join(self.run_dir, CANCEL_FILE)):
            self._begin_cancel(*self._cancel_request(signal.SIGUSR1))  # asked before we began
        returncode = None
        while returncode is None:
            returncode = self.proc.poll()
            now = time.monotonic()
            if self._kill_at is not None and now >= self._kill_at and not self._killed:
                self._signal_group(signal.SIGKILL)
                self._killed = True
            self._take_env()
            self._tail_log()
            since_write = now - self._last_write
            if since_write >= (PROGRESS_WRITE_S if self._dirty else HEARTBEAT_S):
                self.write()
            if returncode is None:
                self._wait(self._until_kill(TICK_S))
        self._take_env()
        self._tail_log(limit=1 << 62)
        self._finish(returncode)

    def _finish(self, returncode: int) -> None:
        pgid = self.status["pgid"]
        reason: str | None
        if self._cancel_by is not None:
            self._empty_group(pgid)
            state, reason = RUN_CANCELLED, f"cancelled by {self._cancel_by}"
        elif self.env_reader is not None and self.env_reader.env is None:
            state, reason = RUN_FAILED, f"{SETUP_FAILED} ({exit_reason(returncode)})"
            _append_line(self.log_path, f"cvtui: {reason}")
        else:
            state = RUN_SUCCEEDED if returncode == 0 else RUN_FAILED
            reason = None if returncode == 0 else exit_reason(returncode)
        self.status.update(
            state=state,
            exit_code=returncode,
            ended=time.time(),
            reason=reason,
            recorded_by=RECORDED_BY_SUPERVISOR,
        )
        self.write(durable=True)
        if self._cancel_by is None and group_members(pgid):
            # What the command left running would hold its GPUs with no lease: end it too.
            self._kill_at = time.monotonic() + float(self.request.grace_s)
            self._signal_group(signal.SIGTERM)
            self._empty_group(pgid)

    def _until_kill(self, timeout_s: float) -> float:
        if self._kill_at is None or self._killed:
            return timeout_s
        return min(timeout_s, self._kill_at - time.monotonic())

    def _empty_group(self, pgid: int) -> None:
        """Wait for the group to end, SIGKILLing it at the grace deadline."""
        settle_until = None
        while group_members(pgid):
            now = time.monotonic()
            if not self._killed and self._kill_at is not None and now >= self._kill_at:
                self._signal_group(signal.SIGKILL)
                self._killed = True
            if self._killed:
                settle_until = settle_until or now + SETTLE_AFTER_KILL_S
                if now > settle_until:
                    return
            self._wait(self._until_kill(GROUP_POLL_S))


def _append_line(path: str, line: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            os.write(fd, line.encode("utf-8", "replace") + b"\n")
        finally:
            os.close(fd)


def _answer(sock: socket.socket | None, line: str) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):  # the agent is gone; the run goes on without it
        sock.sendall(line.encode() + b"\n")
    sock.close()


def _receive(sock: socket.socket) -> dict[str, Any]:
    chunks = []
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    data = json.loads(b"".join(chunks).decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError("the start message must be a JSON object")
    return data


def slurm_main(run_dir: str) -> int:
    """The supervisor as a Slurm job's batch script runs it: the start message is in the run
    dir, Slurm gave the GPUs (no leases), and the job's exit status is the command's."""
    from remote_agent.slurm_runs import START_FILE

    with open(os.path.join(run_dir, START_FILE), encoding="utf-8") as f:
        message = json.load(f)
    if os.path.exists(os.path.join(run_dir, STATUS_FILE)):
        sys.stderr.write(f"cvtui supervisor: {run_dir} already ran; a run never starts twice\n")
        return 1
    request = StartRequest.from_wire(message["request"])
    job = {
        "id": os.environ.get("SLURM_JOB_ID", ""),
        "gpus": os.environ.get("SLURM_JOB_GPUS") or os.environ.get("SLURM_STEP_GPUS") or "",
    }
    supervisor = Supervisor(request, run_dir, job=job)
    supervisor.install_signals()
    supervisor.start_command()
    supervisor.follow()
    code = supervisor.status.get("exit_code")
    if not isinstance(code, int):
        return 1  # the command never started
    return code if code >= 0 else 128 - code


def main(argv: list[str]) -> int:
    """argv: SOCKET_FD RUN_ID (the run id only names the process in `ps`), or --slurm RUN_DIR.

    Reads the start message, forks the supervisor proper and exits, so the agent can reap this
    first child; the supervisor leases the GPUs, answers on the socket, runs and records.
    """
    if argv[:1] == ["--slurm"]:
        return slurm_main(argv[1])
    sock = socket.socket(fileno=int(argv[0]))
    message = _receive(sock)
    request = StartRequest.from_wire(message["request"])
    run_dir = str(message["run_dir"])
    if os.fork() != 0:
        os._exit(0)  # the agent reaps this first child; the supervisor is now an orphan
    try:
        leases = take_leases(str(message["leases_dir"]), request.gpus, request.run_id)
    except (LeaseBusy, OSError) as exc:
        # Remove what the agent made, so this run id can be dispatched again elsewhere.
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, LeaseBusy):
            _answer(sock, f"busy {exc.gpu} {exc.holder}")
        else:
            _answer(sock, f"error cannot lease GPUs: {exc}")
        return 0
    uuids = message.get("gpu_uuids")
    uuids = [str(u) for u in uuids] if isinstance(uuids, list) else []
    supervisor = Supervisor(request, run_dir, uuids)
    supervisor.install_signals()
    supervisor.start_command()
    _answer(sock, f"ok {os.getpid()}")
    try:
        supervisor.follow()
    finally:
        release_leases(leases)
    return 0
