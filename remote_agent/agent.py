"""The serve loop: hello, telemetry every interval, and JSON-line requests answered on stdout."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import IO, Any, Callable, Dict, NoReturn

from remote_agent.disk_usage import DiskUsageOps
from remote_agent.doctor import hash_algorithms, python_version, run_checks
from remote_agent.environment import EnvironmentOps, RunPythonOps
from remote_agent.files import FileOps
from remote_agent.gpus import GpuBackend, open_backend
from remote_agent.hoststats import HostStats, expand_root
from remote_agent.inputs import InputOps
from remote_agent.leases import LeaseWatcher
from remote_agent.protocol import (
    E_BAD_ARGUMENTS,
    E_BAD_REQUEST,
    E_INTERNAL,
    E_MALFORMED,
    E_UNKNOWN_OP,
    EVENT_HELLO,
    EVENT_TELEMETRY,
    MAX_LINE_BYTES,
    OP_CHECK,
    OP_PING,
    OP_SET_INTERVAL,
    OP_SHUTDOWN,
    OP_SNAPSHOT,
    PROTOCOL_VERSION,
    Check,
    ClusterSample,
    Hello,
    ProtocolError,
    RemoteError,
    Telemetry,
    decode,
    encode,
    event,
    reply_error,
    reply_ok,
)
from remote_agent.records import RecordOps
from remote_agent.runs import RunOps
from remote_agent.sendfile import SendOps
from remote_agent.workspace import WorkspaceOps

DEFAULT_ROOT = "~/.cache/cvtui"
DEFAULT_LEASES_DIR = "/tmp/cvtui-leases"
DEFAULT_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.01
MAX_INTERVAL_S = 3600.0
EXIT_BAD_ARGUMENTS = 2
_DISCARD_CHUNK_BYTES = 1 << 16

# request message -> fields of the ok reply (typing.Dict: this alias is evaluated on Python 3.8)
Op = Callable[[Dict[str, Any]], Dict[str, Any]]


class BadRequest(Exception):
    """A request whose arguments are missing or of the wrong type (answered E_BAD_REQUEST)."""


@dataclass(frozen=True)
class Options:
    """What `serve` was asked to do."""

    root: str  # absolute, ~ expanded
    leases_dir: str  # absolute, ~ expanded
    interval_s: float  # seconds between telemetry pushes
    simulate: dict[str, Any] | None  # the inventory's simulate: mapping, or None for real GPUs
    slurm: bool = False  # a Slurm login node: runs are sbatch jobs, GPUs are the cluster's


class _ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse would print usage and exit
        raise ValueError(message)


def parse_args(argv: list[str]) -> Options:
    """Options of `serve`; ValueError says what is wrong."""
    parser = _ArgumentParser(prog="agent.pyz", add_help=False)
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--leases-dir", default=DEFAULT_LEASES_DIR)
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S)
    parser.add_argument("--simulate", default=None)
    parser.add_argument("--slurm", action="store_true")
    args = parser.parse_args(argv)
    if not MIN_INTERVAL_S <= args.interval <= MAX_INTERVAL_S:
        raise ValueError(f"--interval must be {MIN_INTERVAL_S} to {MAX_INTERVAL_S} seconds")
    simulate = None
    if args.simulate is not None:
        try:
            simulate = json.loads(args.simulate)
        except ValueError as exc:
            raise ValueError(f"--simulate is not JSON: {exc}") from exc
        if not isinstance(simulate, dict):
            raise ValueError('--simulate must be a JSON object like {"gpus": 4}')
    leases_dir = os.path.abspath(os.path.expanduser(args.leases_dir))
    return Options(expand_root(args.root), leases_dir, args.interval, simulate, args.slurm)


def user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def parse_request_line(line: bytes) -> dict[str, Any]:
    """A request line as a JSON object, or ProtocolError: only strict UTF-8 JSON objects pass."""
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"not UTF-8: {exc.reason} at byte {exc.start}") from exc
    if b"\0" in line:  # never valid JSON, and it would make json.loads guess UTF-16
        raise ProtocolError("not JSON: NUL byte in line")
    try:
        return decode(line)
    except RecursionError as exc:
        raise ProtocolError("not JSON: nested too deeply") from exc


def safe_encode(message: dict[str, Any]) -> bytes:
    """encode(), falling back to ASCII escapes for strings that are not valid Unicode."""
    try:
        return encode(message)
    except (UnicodeEncodeError, ValueError, TypeError):
        pass
    try:
        return (json.dumps(message, separators=(",", ":")) + "\n").encode("ascii")
    except (ValueError, TypeError):
        return encode(reply_error(None, E_INTERNAL, "reply could not be encoded"))


def telemetry_wire(sample: Telemetry) -> dict[str, Any]:
    """Telemetry.to_wire() without dataclasses.asdict's deep copies: a third of the tick's CPU."""

    def plain(obj: Any) -> Any:
        if hasattr(obj, "__dataclass_fields__"):
            return {name: plain(getattr(obj, name)) for name in obj.__dataclass_fields__}
        if isinstance(obj, tuple):
            return tuple(plain(item) for item in obj)
        return obj

    wire: dict[str, Any] = plain(sample)
    del wire["problems"]  # the controller's notes on what it read, never sent
    return wire


def number_arg(message: dict[str, Any], name: str, low: float, high: float) -> float:
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadRequest(f"{name!r} must be a number")
    if not low <= value <= high:
        raise BadRequest(f"{name!r} must be from {low} to {high}")
    return float(value)


class Agent:
    """One serving agent. `ops` maps op names to handlers, so other modules can add ops."""

    def __init__(
        self, options: Options, backend: GpuBackend, backend_errors: list[str], out: IO[bytes]
    ) -> None:
        self.options = options
        self.backend = backend
        self.backend_errors = backend_errors
        self.host = HostStats(options.root)
        self.leases = LeaseWatcher(options.leases_dir)
        self._gpu_uuids: dict[int, str] = {}  # of the last sample
        self.runs: RunOps
        self.cluster: Callable[[], ClusterSample] | None = None
        self.slurm_check: Callable[[], Check] | None = None
        if options.slurm:
            # Imported here: subprocess and threads cost an agent on a GPU host memory for nothing.
            from remote_agent.slurm_runs import SlurmRunOps

            slurm_ops = SlurmRunOps(
                options.root, options.leases_dir, user_name(), options.interval_s, self.send
            )
            self.runs, self.cluster = slurm_ops, slurm_ops.cluster_sample
            self.slurm_check = slurm_ops.check
        else:
            self.runs = RunOps(
                options.root, options.leases_dir, user_name(), lambda: dict(self._gpu_uuids)
            )
        self._out = out
        self._write_lock = threading.Lock()
        self._sample_lock = threading.Lock()
        self._cond = threading.Condition()
        self._interval_s = options.interval_s
        self._next_due = 0.0  # time.monotonic() of the next telemetry push
        self._stopping = False
        self._exit_code = 0
        self._gpu_count = 0
        self._last_sample_error = ""
        self._reader: threading.Thread | None = None
        self.ops: dict[str, Op] = {
            OP_PING: lambda message: {"time": time.time()},
            OP_SNAPSHOT: lambda message: {"telemetry": telemetry_wire(self.telemetry())},
            OP_SET_INTERVAL: self._op_set_interval,
            OP_CHECK: lambda message: {"checks": [asdict(c) for c in self.checks()]},
            OP_SHUTDOWN: self._op_shutdown,
        }
        self.ops.update(self.runs.ops)
        self.files = FileOps(options.root, self.send)
        self.ops.update(self.files.ops)
        self.ops.update(SendOps(options.root, lambda: self.files.algorithms).ops)
        self.ops.update(WorkspaceOps().ops)  # `cvtui components sync`
        self.ops.update(EnvironmentOps(self._driver_version).ops)  # run provenance
        self.ops.update(RunPythonOps(options.root).ops)
        self.ops.update(InputOps(options.root).ops)  # run inputs (models, checkpoints)
        self.ops.update(RecordOps(self.runs).ops)  # `cvtui reindex`
        self.ops.update(DiskUsageOps(options.root).ops)  # per-owner sizes, scanned by a child

    # --- output ---

    def send(self, message: dict[str, Any]) -> bool:
        """Write one message line; False (and the agent stops) once stdout is gone."""
        data = safe_encode(message)
        with self._write_lock:
            try:
                self._out.write(data)
                self._out.flush()
                return True
            except (OSError, ValueError):
                pass
        self.stop(0)  # the controller closed the channel
        return False

    def telemetry(self) -> Telemetry:
        with self._sample_lock:
            try:
                gpus = self.backend.sample()
                self._last_sample_error = ""
            except Exception as exc:
                gpus = []
                said = f"{type(exc).__name__}: {exc}"
                if said != self._last_sample_error:  # once per distinct failure, not every tick
                    self._last_sample_error = said
                    sys.stderr.write(f"cvtui agent: GPU sample failed: {said}\n")
            self._gpu_count = max(self._gpu_count, len(gpus))
            if gpus:
                self._gpu_uuids = {g.index: g.uuid for g in gpus if g.uuid}
            try:
                gpus = self.leases.annotate(gpus)
            except Exception as exc:  # leases are an annotation: never lose the sample for them
                sys.stderr.write(f"cvtui agent: reading leases failed: {exc}\n")
            cluster = self.cluster() if self.cluster is not None else None
            return Telemetry(
                time.time(), self.backend.name, self.host.sample(), tuple(gpus), cluster
            )

    def _telemetry_event(self) -> dict[str, Any] | None:
        try:
            return event(EVENT_TELEMETRY, **telemetry_wire(self.telemetry()))
        except Exception as exc:  # never let one bad sample end the stream
            sys.stderr.write(f"cvtui agent: telemetry failed: {type(exc).__name__}: {exc}\n")
            return None

    def hello(self) -> Hello:
        return Hello(
            protocol=PROTOCOL_VERSION,
            python=python_version(),
            hostname=os.uname().nodename,
            user=user_name(),
            pid=os.getpid(),
            backend=self.backend.name,
            backend_errors=tuple(self.backend_errors),
            gpu_count=self._gpu_count,
            hash_algorithms=tuple(hash_algorithms()),
            root=self.options.root,
            home=os.path.expanduser("~"),
        )

    # --- requests ---

    def handle_line(self, line: bytes) -> dict[str, Any]:
        """The reply to one request line (without its newline)."""
        try:
            message = parse_request_line(line)
        except ProtocolError as exc:
            return reply_error(None, E_MALFORMED, str(exc))
        request_id = message.get("id")
        if isinstance(request_id, bool) or not isinstance(request_id, (int, str)):
            return reply_error(None, E_BAD_REQUEST, 'a request needs an integer or string "id"')
        op_name = message.get("op")
        if not isinstance(op_name, str):
            return reply_error(request_id, E_BAD_REQUEST, 'a request needs a string "op"')
        op = self.ops.get(op_name)
        if op is None:
            known = ", ".join(sorted(self.ops))
            return reply_error(
                request_id, E_UNKNOWN_OP, f"unknown op {op_name[:80]!r} (known: {known})"
            )
        try:
            return reply_ok(request_id, **op(message))
        except BadRequest as exc:
            return reply_error(request_id, E_BAD_REQUEST, f"{op_name}: {exc}")
        except RemoteError as exc:  # an op refusing with a specific code (E_RUN_EXISTS...)
            return reply_error(request_id, exc.code, f"{op_name}: {exc.message}")
        except Exception as exc:
            return reply_error(request_id, E_INTERNAL, f"{op_name}: {type(exc).__name__}: {exc}")

    def _op_set_interval(self, message: dict[str, Any]) -> dict[str, Any]:
        interval_s = number_arg(message, "interval", MIN_INTERVAL_S, MAX_INTERVAL_S)
        with self._cond:
            self._next_due += interval_s - self._interval_s
            self._interval_s = interval_s
            self._cond.notify_all()
        return {}

    def _driver_version(self) -> str | None:
        version = getattr(self.backend, "driver_version", None)
        return version() if version is not None else None

    def _op_shutdown(self, message: dict[str, Any]) -> dict[str, Any]:
        self.stop(0)  # the reader sends the reply, then stops reading
        return {}

    def read_requests(self, infile: IO[bytes]) -> None:
        """Answer request lines until EOF (the SSH channel closed) or shutdown."""
        while not self.stopping:
            try:
                line = infile.readline(MAX_LINE_BYTES + 1)
            except (OSError, ValueError):
                break
            if not line:
                break
            if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
                # Drop the rest of an over-long line without holding it in memory.
                while True:
                    try:
                        chunk = infile.readline(_DISCARD_CHUNK_BYTES)
                    except (OSError, ValueError):
                        chunk = b""
                    if not chunk or chunk.endswith(b"\n"):
                        break
                reply = reply_error(None, E_MALFORMED, f"line over the {MAX_LINE_BYTES} byte limit")
            else:
                reply = self.handle_line(line.rstrip(b"\r\n"))
            if not self.send(reply):
                break
        self.stop(self._exit_code)

    # --- lifecycle ---

    @property
    def stopping(self) -> bool:
        with self._cond:
            return self._stopping

    def stop(self, exit_code: int) -> None:
        with self._cond:
            if not self._stopping:
                self._stopping = True
                self._exit_code = exit_code
            self._cond.notify_all()

    def serve(self, infile: IO[bytes]) -> int:
        """Hello, then telemetry every interval while a thread answers requests; the exit code."""
        first = self._telemetry_event()  # before the hello, which carries the GPU count
        self.send(event(EVENT_HELLO, **self.hello().to_wire()))
        if first is not None:
            self.send(first)
        with self._cond:
            self._next_due = time.monotonic() + self._interval_s
        reader = self._reader = threading.Thread(
            target=self.read_requests, args=(infile,), name="requests", daemon=True
        )
        reader.start()
        while True:
            with self._cond:
                while not self._stopping:
                    wait_s = self._next_due - time.monotonic()
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                if self._stopping:
                    break
                now = time.monotonic()
                # Skip ticks missed while a slow sample ran, instead of bursting to catch up.
                self._next_due = max(self._next_due + self._interval_s, now)
            message = self._telemetry_event()
            if message is not None:
                self.send(message)
            for message in self._run_events():
                self.send(message)
        reader.join(timeout=0.2)
        self.backend.close()
        self.host.close()
        return self._exit_code

    def _run_events(self) -> list[dict[str, Any]]:
        try:
            return self.runs.watch_events()
        except Exception as exc:  # never let one unreadable run dir end the stream
            sys.stderr.write(f"cvtui agent: watching runs failed: {type(exc).__name__}: {exc}\n")
            return []

    @property
    def reader_blocked(self) -> bool:
        """Whether the request thread is still stuck reading stdin after serve() returned."""
        return self._reader is not None and self._reader.is_alive()

    def checks(self) -> list[Check]:
        """What `cvtui doctor` shows for this host."""
        checks = run_checks(
            self.options.root,
            self.options.leases_dir,
            self.backend.name,
            self.backend_errors,
            self._gpu_count,
        )
        if self.slurm_check is not None:
            checks.append(self.slurm_check())
        return checks


def _refuse(message: str) -> int:
    error = {"code": E_BAD_ARGUMENTS, "message": message}
    sys.stdout.write(json.dumps(event(EVENT_HELLO, error=error)) + "\n")
    sys.stdout.flush()
    return EXIT_BAD_ARGUMENTS


def main(argv: list[str]) -> int:
    """`agent.pyz serve ...`: serve until stdin closes or a shutdown request; the exit status."""
    try:
        options = parse_args(argv)
        backend: GpuBackend
        errors: list[str]
        if options.slurm:
            from remote_agent.slurm_runs import ClusterBackend

            backend, errors = ClusterBackend(), []
        else:
            backend, errors = open_backend(options.simulate, options.root, os.uname().nodename)
    except ValueError as exc:
        return _refuse(str(exc))
    # The protocol owns fd 1; anything else printing (a library, a warning) goes to stderr.
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "wb")
    try:
        os.dup2(2, 1)
    except OSError:  # no stderr at all: stray output is dropped instead
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    infile = os.fdopen(os.dup(0), "rb")
    agent = Agent(options, backend, errors, out)
    try:
        code = agent.serve(infile)
    except KeyboardInterrupt:
        code = 130
    if agent.reader_blocked:
        # stdout went away first: leave now rather than let interpreter shutdown contend with
        # a read of stdin that may never return.
        sys.stderr.flush()
        os._exit(code)
    return code
