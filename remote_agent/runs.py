"""The agent's run ops: unpack code, start a supervised run, list, cancel and watch runs."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Dict

from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_CODE_CHANGED,
    E_GPU_BUSY,
    E_INTERNAL,
    E_NO_SUCH_RUN,
    E_NOT_OURS,
    E_RUN_EXISTS,
    EVENT_RUN,
    OP_CANCEL,
    OP_RUNS,
    OP_START,
    OP_UNPACK_CODE,
    OP_WATCH,
    RECORDED_BY_AGENT,
    RUN_CANCELLED,
    RUN_FINAL_STATES,
    RUN_LOST,
    RUN_RUNNING,
    RUN_STARTING,
    ProtocolError,
    RemoteError,
    RunStatus,
    StartRequest,
    event,
)
from remote_agent.rundir import (
    CANCEL_FILE,
    CODE_HASH,
    CONFIG_FILE,
    LOG_FILE,
    PARAMS_ENV_MAX,
    PARAMS_FILE,
    RUN_ENV_KEYS,
    RUN_RECORD,
    STATUS_FILE,
    SUPERVISOR_LOG,
    WRITER,
    file_size,
    group_runs,
    kill_group_later,
    params_json,
    process_alive,
    read_status,
    signal_group,
    stat_key,
    status_from,
    write_json,
    write_status,
)
from remote_agent.rundir import RUN_ID as RUN_ID  # re-exported: remote_agent.files uses it

if TYPE_CHECKING:
    import socket

START_TIMEOUT_S = 25.0  # the controller gives OP_START 30 s
NO_STATUS_LOST_S = 5.0  # a run dir this old without status.json is lost
WATCH_LINGER_TICKS = 3  # ticks a final run stays watched, for its last log bytes
LOST_REASON = "supervisor gone without an exit status"
# The supervisor is a fresh interpreter (never a fork of this threaded agent), importing
# remote_agent from where this agent runs: a source tree or agent.pyz.
SUPERVISOR_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from remote_agent.supervisor import main; sys.exit(main(sys.argv[2:]))"
)
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def importable_parent(parent: str = _PACKAGE_PARENT) -> str:
    """Where the supervisor imports remote_agent from: an extracted copy when we run from a zipapp.

    zipimport compiles every module again at each interpreter start (it never caches .pyc),
    which cost ~100 ms per run start. The agent's directory is named by the zipapp's hash, so
    a copy extracted beside it is never stale, and its .pyc files are written once.
    """
    if not os.path.isfile(parent):
        return parent
    target = os.path.join(os.path.dirname(parent), "lib")
    if os.path.isdir(os.path.join(target, "remote_agent")):
        return target
    import compileall
    import shutil
    import tempfile
    import zipfile

    staging = tempfile.mkdtemp(dir=os.path.dirname(parent), prefix=".lib-")
    try:
        with zipfile.ZipFile(parent) as bundle:
            for name in bundle.namelist():
                if name.startswith("remote_agent/") and name.endswith(".py"):
                    bundle.extract(name, staging)
        compileall.compile_dir(staging, quiet=2)
        os.rename(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not os.path.isdir(os.path.join(target, "remote_agent")):
            return parent  # could not extract (read-only, full disk): the zip still works
    return target


Op = Callable[[Dict[str, Any]], Dict[str, Any]]


def bad_request(message: str) -> RemoteError:
    return RemoteError(E_BAD_REQUEST, message)


def checked_run_id(value: Any) -> str:
    if not isinstance(value, str) or not RUN_ID.match(value):
        raise bad_request(f"run id {str(value)[:80]!r} is not 10 to 64 of [0-9a-z]")
    return value


def _validate_start(request: StartRequest) -> None:
    checked_run_id(request.run_id)
    command = request.command
    if isinstance(command, str):
        if not command.strip():
            raise bad_request("command is empty")
    elif not (isinstance(command, list) and command and all(isinstance(a, str) for a in command)):
        raise bad_request("command must be a string or a non-empty list of strings")
    if any(g < 0 for g in request.gpus) or len(set(request.gpus)) != len(request.gpus):
        raise bad_request("GPU indexes must be distinct, 0 or more")
    env = request.env
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and k and "=" not in k for k, v in env.items()
    ):
        raise bad_request("env must map variable names to strings")
    if not isinstance(request.params, dict):
        raise bad_request("params must be an object")
    if request.code_hash is not None and not (
        isinstance(request.code_hash, str) and CODE_HASH.match(request.code_hash)
    ):
        raise bad_request("code_hash must be lowercase hex")
    grace = request.grace_s
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0:
        raise bad_request("grace_s must be a number of seconds, 0 or more")
    if not isinstance(request.config_yaml, str):
        raise bad_request("config_yaml must be a string")
    for name in ("setup", "path", "outputs"):
        value = getattr(request, name)
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise bad_request(f"{name} must be a list of strings")
    if not all(os.path.isabs(os.path.expanduser(entry)) for entry in request.path):
        raise bad_request("path entries must be absolute directories")
    if not isinstance(request.python, str) or not request.python.strip():
        raise bad_request("python must be a non-empty string")
    if not isinstance(request.env_key, str):
        raise bad_request("env_key must be a string")
    if not isinstance(request.record, dict):
        raise bad_request("record must be an object")


@dataclass
class _Watch:
    """What the last EVENT_RUN of a watched run was based on."""

    key: tuple[Any, ...] | None = None  # (status.json mtime ns and size, output.log size)
    state: str | None = None
    supervisor: tuple[int | None, int | None] = (None, None)  # pid, start time
    linger: int = WATCH_LINGER_TICKS


class RunOps:
    """Run ops over <root>/runs/<run_id>/ run dirs; `ops` is merged into the agent's ops."""

    def __init__(
        self,
        root: str,
        leases_dir: str,
        user: str,
        gpu_uuids: Callable[[], dict[int, str]] = dict,
    ) -> None:
        self.root = root
        self.gpu_uuids = gpu_uuids  # index -> UUID of the host's GPUs, from the last sample
        self.runs_dir = os.path.join(root, "runs")
        self.leases_dir = leases_dir
        self.user = user
        self._lock = threading.Lock()
        self._watched: dict[str, _Watch] = {}
        self._import_from: str | None = None  # see importable_parent
        self.ops: dict[str, Op] = {
            OP_UNPACK_CODE: self.op_unpack_code,
            OP_START: self.op_start,
            OP_RUNS: self.op_runs,
            OP_CANCEL: self.op_cancel,
            OP_WATCH: self.op_watch,
        }

    def run_dir(self, run_id: str) -> str:
        return os.path.join(self.runs_dir, run_id)

    # --- unpack_code ---

    def op_unpack_code(self, message: dict[str, Any]) -> dict[str, Any]:
        code_hash, archive = message.get("hash"), message.get("archive")
        if not isinstance(code_hash, str) or not isinstance(archive, str):
            raise bad_request('"hash" and "archive" must be strings')
        from remote_agent.snapshots import unpack_code  # see remove_tree

        try:
            return {"path": unpack_code(self.root, code_hash, archive)}
        except ValueError as exc:  # UnsafeArchive included
            raise bad_request(str(exc)) from exc

    # --- start ---

    def op_start(self, message: dict[str, Any]) -> dict[str, Any]:
        try:
            request = StartRequest.from_wire(message)
        except ProtocolError as exc:
            raise bad_request(str(exc)) from exc
        _validate_start(request)
        from remote_agent import workdir  # see remove_tree

        links = workdir.link_pairs(request.links)  # checked before anything exists
        snapshot = None
        if request.code_hash is not None:
            snapshot = os.path.join(self.root, "code", request.code_hash)
            if not os.path.isdir(snapshot):
                raise bad_request(
                    f"code snapshot {request.code_hash} is not unpacked at {snapshot}: "
                    "upload it and call unpack_code first"
                )
        os.makedirs(self.runs_dir, mode=0o700, exist_ok=True)
        run_dir = self.run_dir(request.run_id)
        try:
            os.mkdir(run_dir, 0o700)  # the never-twice guard: fails when the dir exists
        except FileExistsError:
            raise RemoteError(
                E_RUN_EXISTS, f"run {request.run_id} already exists at {run_dir}"
            ) from None
        try:
            os.chmod(run_dir, 0o700)  # mkdir applied the umask
            work = workdir.make_work_dir(run_dir)
            if snapshot is not None:
                from remote_agent.snapshots import CodeChanged, copy_snapshot  # see remove_tree

                try:
                    recorded = copy_snapshot(
                        snapshot, work, workdir.record_predicate(request.outputs)
                    )
                except CodeChanged as exc:
                    raise RemoteError(E_CODE_CHANGED, str(exc)) from None
            else:
                recorded = {}
            made_links = workdir.make_links(work, links)
            linked = [name for name, _ in links]
            if request.inputs:
                from remote_agent.inputs import stage_inputs  # see remove_tree

                copies, input_links = stage_inputs(work, self.root, request.inputs)
                recorded.update(copies)
                linked += input_links
            workdir.write_snapshot_record(run_dir, request.code_hash, recorded, linked)
            with open(os.path.join(run_dir, CONFIG_FILE), "w", encoding="utf-8") as f:
                f.write(request.config_yaml)
            if request.record:
                write_json(os.path.join(run_dir, RUN_RECORD), request.record)
            if len(params_json(request.params)) > PARAMS_ENV_MAX:
                write_json(os.path.join(run_dir, PARAMS_FILE), request.params)
        except BaseException:
            remove_tree(run_dir)  # nothing ran: the id may be used again
            raise
        reply = {"run_dir": run_dir, "work_dir": work, "links": made_links}
        reply.update(self.launch(request, run_dir))
        self.watch([request.run_id])
        return reply

    def launch(self, request: StartRequest, run_dir: str) -> dict[str, Any]:
        """Start the run whose run dir is ready; the reply's fields saying how it started."""
        uuids = self._uuids(request.gpus)
        pid = self._launch(request, run_dir, uuids)
        return {"supervisor_pid": pid, "gpu_uuids": uuids}

    def _uuids(self, gpus: tuple[int, ...]) -> list[str]:
        """The GPUs' UUIDs in the order leased, or [] when one of them has none."""
        known = self.gpu_uuids()
        found = [known.get(index, "") for index in gpus]
        return found if all(found) else []

    def _launch(self, request: StartRequest, run_dir: str, gpu_uuids: list[str]) -> int:
        """Start the supervisor (double fork, new session) and wait for its first word."""
        import socket  # see remove_tree
        import subprocess

        ours, theirs = socket.socketpair()
        log_path = os.path.join(run_dir, SUPERVISOR_LOG)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        env = {k: v for k, v in os.environ.items() if k not in RUN_ENV_KEYS}
        python = sys.executable or "python3"
        if self._import_from is None:
            self._import_from = importable_parent()
        argv = [
            python,
            "-I",
            "-c",
            SUPERVISOR_BOOT,
            self._import_from,
            str(theirs.fileno()),
            request.run_id,
        ]
        try:
            # The first child leads a new session, forks the supervisor and exits at once.
            first = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd="/",
                env=env,
                start_new_session=True,
                pass_fds=(theirs.fileno(),),
            )
        except BaseException:
            remove_tree(run_dir)
            raise
        finally:
            os.close(log)
            theirs.close()
        with ours:
            ours.settimeout(START_TIMEOUT_S)
            start = {"request": request.to_wire(), "run_dir": run_dir}
            start["leases_dir"] = self.leases_dir
            start["gpu_uuids"] = gpu_uuids
            try:
                ours.sendall(json.dumps(start).encode())
                ours.shutdown(socket.SHUT_WR)
                first.wait(START_TIMEOUT_S)  # reaped here: no zombie left behind
                answer = _read_line(ours)
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RemoteError(
                    E_INTERNAL, f"the supervisor did not answer ({exc}); see {log_path}"
                ) from exc
        word, _, rest = answer.partition(" ")
        if word == "ok":
            return int(rest)
        if word == "busy":
            gpu, _, holder = rest.partition(" ")
            raise RemoteError(E_GPU_BUSY, f"GPU {gpu} is leased by {holder or '?'}")
        if word == "error":
            raise RemoteError(E_INTERNAL, rest)
        raise RemoteError(
            E_INTERNAL, f"the supervisor exited before starting the run; see {log_path}"
        )

    # --- status ---

    def status_of(self, run_id: str) -> RunStatus | None:
        """The run's status as recorded, or lost when its supervisor is gone; None: no run dir."""
        run_dir = self.run_dir(run_id)
        try:
            dir_mtime = os.stat(run_dir).st_mtime
        except OSError:
            return None
        log_size = file_size(os.path.join(run_dir, LOG_FILE))
        data = read_status(run_dir)
        if data is None:
            if time.time() - dir_mtime < NO_STATUS_LOST_S:
                return RunStatus(run_id, RUN_STARTING, run_dir, log_size=log_size)
            reason = "no status written"
            return RunStatus(run_id, RUN_LOST, run_dir, reason=reason, log_size=log_size)
        status = status_from(data, run_id, run_dir)
        if status.state in (RUN_STARTING, RUN_RUNNING) and not process_alive(
            status.supervisor_pid, status.supervisor_start
        ):
            # It may have written its end state just before exiting: read again before judging.
            data = read_status(run_dir) or data
            status = status_from(data, run_id, run_dir)
            if status.state in (RUN_STARTING, RUN_RUNNING):
                data.update(
                    state=RUN_LOST,
                    reason=LOST_REASON,
                    ended=time.time(),
                    recorded_by=RECORDED_BY_AGENT,
                )
                if data.get("writer") == WRITER and data.get("uid") == os.getuid():
                    write_status(run_dir, data)  # stays lost, whoever asks next
                status = status_from(data, run_id, run_dir)
        return replace(status, log_size=log_size)

    def op_runs(self, message: dict[str, Any]) -> dict[str, Any]:
        run_ids = message.get("run_ids")
        if run_ids is None:
            try:
                names = sorted(os.listdir(self.runs_dir))
            except FileNotFoundError:
                names = []
            run_ids = [name for name in names if RUN_ID.match(name)]
        elif not isinstance(run_ids, list):
            raise bad_request('"run_ids" must be a list of run ids')
        statuses = [self.status_of(checked_run_id(run_id)) for run_id in run_ids]
        return {"runs": [s.to_wire() for s in statuses if s is not None]}

    # --- cancel ---

    def op_cancel(self, message: dict[str, Any]) -> dict[str, Any]:
        run_id = checked_run_id(message.get("run_id"))
        grace = message.get("grace")
        if grace is not None and (
            isinstance(grace, bool) or not isinstance(grace, (int, float)) or grace < 0
        ):
            raise bad_request('"grace" must be a number of seconds, 0 or more')
        by = message.get("by")
        by = by if isinstance(by, str) and by else self.user
        run_dir = self.run_dir(run_id)
        if not os.path.isdir(run_dir):
            raise RemoteError(E_NO_SUCH_RUN, f"no run {run_id} at {run_dir}")
        data = read_status(run_dir)
        if data is not None and (data.get("writer") != WRITER or data.get("uid") != os.getuid()):
            raise RemoteError(
                E_NOT_OURS, f"{run_dir}/status.json was not written by a supervisor of this user"
            )
        status = self.status_of(run_id)
        if status is None:
            raise RemoteError(E_NO_SUCH_RUN, f"no run {run_id} at {run_dir}")
        asked = {"by": by, "time": time.time(), "grace": grace}
        if status.state == RUN_STARTING:
            write_json(os.path.join(run_dir, CANCEL_FILE), asked)  # read once it starts
            return {"state": status.state, "signalled": False}
        if status.state in RUN_FINAL_STATES and status.state != RUN_LOST:
            return {"state": status.state, "signalled": False}
        if status.state != RUN_LOST:
            write_json(os.path.join(run_dir, CANCEL_FILE), asked)
            if process_alive(status.supervisor_pid, status.supervisor_start):
                assert status.supervisor_pid is not None
                try:
                    os.kill(status.supervisor_pid, signal.SIGUSR1)
                    return {"state": status.state, "signalled": True}
                except ProcessLookupError:
                    status = self.status_of(run_id) or status
        return self._cancel_orphan(run_id, status, by, grace)

    def _cancel_orphan(
        self, run_id: str, status: RunStatus, by: str, grace: float | None
    ) -> dict[str, Any]:
        """With the supervisor gone, signal the group ourselves if it still runs this run."""
        pgid = status.pgid
        if not pgid or not group_runs(pgid, run_id):
            return {"state": status.state, "signalled": False}
        signal_group(pgid, run_id, signal.SIGTERM)
        grace_s = float(grace if grace is not None else 10.0)
        threading.Thread(
            target=kill_group_later, args=(pgid, run_id, grace_s), name="kill", daemon=True
        ).start()
        data = read_status(status.run_dir) or status.to_wire()
        reason = f"cancelled by {by} (its supervisor was gone)"
        data.update(
            state=RUN_CANCELLED, reason=reason, ended=time.time(), recorded_by=RECORDED_BY_AGENT
        )
        write_status(status.run_dir, data)
        return {"state": RUN_CANCELLED, "signalled": True}

    # --- watch ---

    def watch(self, run_ids: list[str]) -> None:
        """Push each run's status at the next tick, then whenever it changes."""
        with self._lock:
            for run_id in run_ids:
                self._watched[run_id] = _Watch()

    def op_watch(self, message: dict[str, Any]) -> dict[str, Any]:
        run_ids = message.get("run_ids")
        if not isinstance(run_ids, list):
            raise bad_request('"run_ids" must be a list of run ids')
        self.watch([checked_run_id(run_id) for run_id in run_ids])
        return {}

    def watch_events(self) -> list[dict[str, Any]]:
        """EVENT_RUN messages for watched runs that changed since the last tick (os.stat only,
        unless something changed or a supervisor has to be checked)."""
        with self._lock:
            watched = list(self._watched.items())
        events = []
        for run_id, watch in watched:
            run_dir = self.run_dir(run_id)
            status_path = os.path.join(run_dir, STATUS_FILE)
            key = (stat_key(status_path), file_size(os.path.join(run_dir, LOG_FILE)))
            if watch.state in RUN_FINAL_STATES:
                watch.linger -= 1
                if watch.linger <= 0:
                    self._unwatch(run_id, watch)
                    continue
            if key == watch.key and (
                watch.state in RUN_FINAL_STATES
                or (watch.state == RUN_RUNNING and process_alive(*watch.supervisor))
            ):
                continue
            status = self.status_of(run_id)
            if status is None:
                self._unwatch(run_id, watch)  # its dir is gone (a start refused as busy)
                continue
            if key == watch.key and status.state == watch.state:
                continue
            watch.key = (stat_key(status_path), status.log_size)
            watch.state = status.state
            watch.supervisor = (status.supervisor_pid, status.supervisor_start)
            events.append(event(EVENT_RUN, **status.to_wire()))
        return events

    def _unwatch(self, run_id: str, watch: _Watch) -> None:
        with self._lock:
            if self._watched.get(run_id) is watch:  # not one OP_WATCH just renewed
                del self._watched[run_id]


def remove_tree(path: str) -> None:
    # shutil, tarfile and subprocess are imported when first needed: together they would cost
    # about 2 MB of the agent's 20 MB resident budget on hosts that never start a run.
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _read_line(sock: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < 65536:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace")
