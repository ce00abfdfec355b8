"""Wire format shared by the agent and the controller: one JSON object per line.

This module is imported on the GPU hosts (Python 3.8+, standard library only) and by the
controller, so it is the single definition of every message. Requests are
``{"id": N, "op": NAME, ...}``; replies are ``{"id": N, "ok": true, ...}`` or
``{"id": N, "error": {"code": CODE, "message": TEXT}}``; events are ``{"event": NAME, ...}``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOL_VERSION = 2  # 2: run dirs hold cvtui's files, the command runs in <run_dir>/work
MIN_PYTHON = (3, 8)

# Requests the agent understands.
OP_PING = "ping"  # -> {"time": agent clock}
OP_SNAPSHOT = "snapshot"  # -> {"telemetry": Telemetry} sampled now
OP_SET_INTERVAL = "set_interval"  # {"interval": seconds} -> {}
OP_CHECK = "check"  # -> {"checks": [Check, ...]} for `cvtui doctor`
OP_SHUTDOWN = "shutdown"  # -> {} then the agent exits 0
# -> {python, executable, driver, packages, packages_reason}: for run provenance; `packages`
# is `name==version` lines (as pip freeze), None with a reason when they cannot be listed.
# While the agent is still reading them the reply is {pending: true}: ask again later.
OP_ENVIRONMENT = "environment"

# Unsolicited events.
EVENT_HELLO = "hello"  # first line the agent writes; fields of Hello
EVENT_TELEMETRY = "telemetry"  # every interval; fields of Telemetry

# Error codes in error replies.
E_MALFORMED = "malformed"  # the line is not a JSON object
E_BAD_REQUEST = "bad_request"  # no id/op, or arguments of the wrong type
E_UNKNOWN_OP = "unknown_op"
E_INTERNAL = "internal"  # the op raised; the agent keeps serving
E_TOO_LONG = "too_long"  # the controller did not send it: the request is over MAX_LINE_BYTES

# Codes of a hello line that carries {"error": {"code", "message"}} instead of Hello fields; the
# agent then exits without serving. (remote_agent/__main__.py spells the first one out itself,
# since it must run on Pythons too old to import this module.)
E_PYTHON_TOO_OLD = "python_too_old"  # exit status 3: python3 on the host is older than MIN_PYTHON
E_BAD_ARGUMENTS = "bad_arguments"  # exit status 2: e.g. a --simulate value that is not valid

# GPU backends, always named in the data so a simulated host never passes for a real one.
BACKEND_NVML = "nvml"
BACKEND_NVIDIA_SMI = "nvidia-smi"
BACKEND_SIMULATED = "simulated"
BACKEND_NONE = "none"  # no GPU could be read (a CPU-only host)
BACKEND_SLURM = "slurm"  # a Slurm login node: its GPUs are the cluster's, in Telemetry.cluster

MAX_LINE_BYTES = 1 << 20  # requests longer than this are answered with E_MALFORMED
# Lines a host's login shell may print on stdout before a channel's first line (an rc file's
# banner): the controller skips this many, and shows them in its log, before giving up.
MAX_PREAMBLE_LINES = 50


class ProtocolError(ValueError):
    """A line that is not a well-formed message."""


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on one GPU."""

    pid: int
    user: str | None  # login name, None when the uid has no passwd entry
    command: str  # full command line ('' when unreadable)
    container: str | None  # docker/podman/containerd id or name from /proc/PID/cgroup
    mem: int | None  # bytes of GPU memory, None when the driver does not say
    run_id: str | None  # CVTUI_RUN_ID of the process when it is one of ours


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one instant; None means the backend could not read the value."""

    index: int
    uuid: str
    name: str
    util: float | None  # percent, nvidia-smi utilization.gpu
    mem_used: int | None  # bytes, memory.used
    mem_total: int | None  # bytes, memory.total
    temperature: float | None  # Celsius, temperature.gpu
    power: float | None  # watts, power.draw
    power_limit: float | None  # watts, power.limit
    fan: float | None  # percent, fan.speed
    processes: tuple[GpuProcess, ...] = ()
    leased_by: str | None = None  # run id holding this GPU's lease file ("?" if unreadable)
    pci_bus_id: str | None = None  # e.g. "00000000:3B:00.0", nvidia-smi pci.bus_id


@dataclass(frozen=True)
class HostSample:
    """Host-wide figures at one instant."""

    cpu_percent: float | None  # all cores, since the previous sample
    load1: float | None
    load5: float | None
    load15: float | None
    mem_used: int | None  # bytes, MemTotal - MemAvailable
    mem_total: int | None  # bytes
    disk_free: int | None  # bytes available to the user under the agent's root
    disk_total: int | None  # bytes


@dataclass(frozen=True)
class Telemetry:
    """One sample of a host and its GPUs, as pushed in EVENT_TELEMETRY."""

    time: float  # unix seconds on the agent's clock
    backend: str  # BACKEND_*
    host: HostSample
    gpus: tuple[GpuSample, ...] = ()
    cluster: ClusterSample | None = None  # a Slurm cluster seen from its login node

    # What the controller refused of the sample it read (never sent): each GPU or figure named
    # with why. Those GPUs are left out, those figures read as None.
    problems: tuple[str, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        del data["problems"]
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Telemetry:
        from remote_agent import wire_decode

        return wire_decode.telemetry(data)


@dataclass(frozen=True)
class Hello:
    """The agent's first line: who it is and what it can do."""

    protocol: int
    python: str  # platform.python_version() of the host interpreter
    hostname: str
    user: str
    pid: int
    backend: str  # BACKEND_*
    backend_errors: tuple[str, ...] = ()  # why better backends were not used (NVML error...)
    gpu_count: int = 0
    hash_algorithms: tuple[str, ...] = ()  # e.g. ("xxh3_128", "blake2b-128")
    root: str = ""  # the agent's root as an absolute path on the host
    home: str = ""  # the login user's home on the host: a run env's `~` means this

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> Hello:
        from remote_agent import wire_decode

        return wire_decode.hello(data)


@dataclass(frozen=True)
class Check:
    """One line of `cvtui doctor`: a named check, whether it passed, and what was seen."""

    name: str
    ok: bool
    detail: str = ""


@dataclass
class RemoteError(Exception):
    """An error reply from the agent."""

    code: str
    message: str
    extra: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def encode(message: dict[str, Any]) -> bytes:
    """One message as one line of compact UTF-8 JSON."""
    return (json.dumps(message, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def decode(line: bytes) -> dict[str, Any]:
    """Parse one line into a message object, or raise ProtocolError saying why not."""
    if len(line) > MAX_LINE_BYTES:
        raise ProtocolError(f"line of {len(line)} bytes is over the {MAX_LINE_BYTES} byte limit")
    try:
        # Decode as UTF-8 ourselves: json.loads would guess UTF-16/32 from NUL bytes.
        obj = json.loads(line.decode("utf-8") if isinstance(line, bytes) else line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise ProtocolError(f"not JSON: {exc}") from exc
    except RecursionError as exc:
        raise ProtocolError("not JSON: nested too deeply") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(obj).__name__}")
    return obj


def request(request_id: int, op: str, **args: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"id": request_id, "op": op}
    message.update(args)
    return message


def reply_ok(request_id: Any, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"id": request_id, "ok": True}
    message.update(fields)
    return message


def reply_error(request_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": request_id, "error": {"code": code, "message": message}}


def event(name: str, **fields: Any) -> dict[str, Any]:
    message: dict[str, Any] = {"event": name}
    message.update(fields)
    return message


def parse_reply(message: dict[str, Any]) -> dict[str, Any]:
    """Return the fields of an ok reply, or raise RemoteError for an error reply."""
    err = message.get("error")
    if err is not None:
        if isinstance(err, dict):
            raise RemoteError(str(err.get("code", E_INTERNAL)), str(err.get("message", "")))
        raise RemoteError(E_INTERNAL, str(err))
    return message


# --- Runs ------------------------------------------------------------------------------------
# Ops that start, watch and stop detached runs (see remote_agent/supervisor.py).
OP_UNPACK_CODE = "unpack_code"  # {hash, archive} -> {path}: extract an uploaded code tarball once
OP_START = "start"  # StartRequest fields -> {run_dir, supervisor_pid}
OP_RUNS = "runs"  # {run_ids?: [..]} -> {runs: [RunStatus, ...]} for reconcile
OP_CANCEL = "cancel"  # {run_id, grace} -> {state, signalled}
OP_WATCH = "watch"  # {run_ids: [..]} -> {}: push EVENT_RUN for these runs when they change
# {run_id} -> {python, executable, env_key, packages, packages_reason}: the interpreter the run's
# environment resolves (after its setup), listed once per environment; {pending: true} while
# the agent is still reading it, {python: null, reason} when it cannot be known.
OP_RUN_PYTHON = "run_python"
# {after?: run_id, max_bytes?} -> {runs: [RunRecord fields], next: run_id | null}: the run dirs
# under the root in id order, one page of at most max_bytes of JSON (at least one run): what
# `cvtui reindex` rebuilds a lost catalog from. Ask again with after=next while next is set.
OP_RUN_RECORDS = "run_records"

EVENT_RUN = "run"  # fields of RunStatus, pushed when a watched run's status changes

E_RUN_EXISTS = "run_exists"  # start refused: the run dir is already there (never start twice)
E_GPU_BUSY = "gpu_busy"  # start refused: a GPU lease is held by another run
E_NO_SUCH_RUN = "no_such_run"
E_NOT_OURS = "not_ours"  # cancel refused: the status was not written by our supervisor
E_CODE_CHANGED = "code_changed"  # start refused: the unpacked snapshot was edited; upload again
E_BAD_LINK = "bad_link"  # start refused: a link's target is missing on the host (nothing started)
E_SUBMIT_REFUSED = "submit_refused"  # sbatch refused the job (its message says why): nothing queued
E_BAD_INPUT = "bad_input"  # start refused: an input is not on the host, or the code has its path

# --- Inputs ----------------------------------------------------------------------------------
# A run's inputs (registered models, files of other runs, a retry's checkpoint) are stored once
# per host as <root>/INPUTS_DIR/<xxh3_128 of the content>, mode 0400, and staged into a run's
# work dir at its start (StartRequest.inputs): linked, or copied when the run may rewrite it.
INPUTS_DIR = "inputs"
# {hash, size, algo, digest, upload?} -> {path, present}: present when <root>/inputs/<hash> is
# there with that size. With upload (a file the controller put in the inputs dir, named
# "<hash>.<hex>.part"), it is hashed with algo (one of the hello's hash_algorithms) first:
# kept as <hash> when it gives digest, else deleted and refused with E_INPUT_CORRUPT.
OP_INPUT_STAGE = "input_stage"
E_INPUT_CORRUPT = "input_corrupt"

# A run dir <root>/runs/<run_id>/ holds cvtui's own files (status.json, output.log, config.yaml,
# ...); the command runs in its WORK_DIR, which is the user's: code copy, links and outputs.
WORK_DIR = "work"
# Output paths in file ops are relative to the work dir; this prefix names cvtui's own files
# instead (the run's log is f"{OWN_FILES_PREFIX}output.log"), so a script's own output.log
# never collides with it, on the host or in the local mirror.
OWN_FILES_PREFIX = ".cvtui/"
RUN_LOG = OWN_FILES_PREFIX + "output.log"  # the run's stdout and stderr, as file ops name it


def host_relpath(path: str, base: str) -> str:
    """Where an output path (as file ops and the mirror name it) is, relative to the run dir."""
    if path.startswith(OWN_FILES_PREFIX):
        return path[len(OWN_FILES_PREFIX) :]
    return f"{base}/{path}" if base else path


RECORDED_BY_SUPERVISOR = "supervisor"  # the final state is the supervisor's record of the exit
RECORDED_BY_AGENT = "agent"  # inferred by the agent (lost, or cancelled with no supervisor)
RECORDED_BY_SLURM = "slurm"  # Slurm's own end state of the job (TIMEOUT, NODE_FAIL, ...)
RECORDED_BY = (RECORDED_BY_SUPERVISOR, RECORDED_BY_AGENT, RECORDED_BY_SLURM)

RUN_PENDING = "pending"  # held in the host's own queue (a Slurm job waiting), not started

RUN_STARTING = "starting"  # supervisor forked, command not yet started
RUN_RUNNING = "running"
RUN_SUCCEEDED = "succeeded"
RUN_FAILED = "failed"
RUN_CANCELLED = "cancelled"
RUN_LOST = "lost"  # supervisor gone without writing an exit status
RUN_FINAL_STATES = (RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED, RUN_LOST)
# A status in another state is refused.
RUN_STATES = (RUN_PENDING, RUN_STARTING, RUN_RUNNING, *RUN_FINAL_STATES)


def _with_gpus(cls: type[StartRequest], data: dict[str, Any], what: str) -> StartRequest:
    """cls from a message's known fields, with `gpus` made a tuple of ints."""
    known = set(cls.__dataclass_fields__)
    try:
        fields = {k: v for k, v in data.items() if k in known}
        fields["gpus"] = tuple(int(g) for g in fields.get("gpus", ()))
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"bad {what}: {exc}") from exc


@dataclass(frozen=True)
class StartRequest:
    """What OP_START needs: everything about one run, already resolved by the controller."""

    run_id: str
    command: list[str] | str  # argv (exec'd directly) or a string for `/bin/sh -c`
    gpus: tuple[int, ...] = ()  # GPU indexes to lease; the run sees exactly these GPUs
    env: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # exported as CVTUI_PARAMS (JSON)
    code_hash: str | None = None  # snapshot in <root>/code/<hash>, copied into the work dir
    config_yaml: str = ""  # written to <run_dir>/config.yaml
    grace_s: float = 10.0  # SIGTERM -> SIGKILL delay on cancel
    # The run environment: shell lines run (bash -e, in the work dir) before the command, whose
    # environment the command then gets; absolute dirs put first on PATH after them; and the
    # interpreter whose version and packages are the run's provenance (resolved on that PATH).
    setup: list[str] = field(default_factory=list)
    path: list[str] = field(default_factory=list)
    python: str = "python3"
    env_key: str = ""  # names this environment (setup, path, python) in caches
    links: dict[str, str] = field(default_factory=dict)  # work-dir name -> absolute host path
    # The run's output globs: code files matching them are recorded at the copy, so a file the
    # run left as the snapshot shipped it is not taken for an output.
    outputs: list[str] = field(default_factory=list)
    # On a Slurm host: the job's sbatch settings (SLURM_OPTION_KEYS); Slurm picks the GPUs,
    # so `gpus` stays empty and slurm["gpus"] says how many.
    slurm: dict[str, Any] = field(default_factory=dict)
    # Inputs staged into the work dir from <root>/inputs/: [{"path": work-dir relative path,
    # "hash": stored name, "copy": false (a symlink to the read-only copy) or true (a private
    # copy the run may rewrite, such as a checkpoint it resumes from)}].
    inputs: list[dict[str, Any]] = field(default_factory=list)
    # The controller's record of the run (name, params, spec ...), kept as <run_dir>/run.json so
    # that `cvtui reindex` can rebuild a lost catalog from the hosts; the agent never reads it.
    record: dict[str, Any] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> StartRequest:
        return _with_gpus(cls, data, "start request")


@dataclass(frozen=True)
class RunStatus:
    """A run as its supervisor records it in <run_dir>/status.json (and EVENT_RUN carries)."""

    run_id: str
    state: str  # RUN_*
    run_dir: str = ""  # absolute path on the host
    gpus: tuple[int, ...] = ()
    supervisor_pid: int | None = None
    supervisor_start: int | None = None  # /proc/PID/stat starttime, to tell a reused pid apart
    pid: int | None = None  # the command's pid (leader of its process group)
    pgid: int | None = None
    uid: int | None = None
    started: float | None = None  # unix seconds, host clock
    ended: float | None = None
    heartbeat: float | None = None  # last time the supervisor was seen alive
    exit_code: int | None = None  # the command's exit status; -N when killed by signal N
    progress: float | None = None  # percent, from [PROGRESS:..] lines or tqdm bars
    progress_msg: str | None = None
    reason: str | None = None  # why failed/cancelled/lost, in words
    log_size: int = 0  # bytes in output.log
    work_dir: str = ""  # the command's working directory (absolute, on the host)
    recorded_by: str | None = None  # RECORDED_BY_*: who wrote the final state
    job_id: str | None = None  # the Slurm job running it ("1234"), None on other hosts

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> RunStatus:
        from remote_agent import wire_decode

        return wire_decode.run_status(data)


# --- Files -----------------------------------------------------------------------------------
# Ops that list, hash and watch the output files of a run dir, for sync (remote_agent/files.py).
# Paths are relative to the run dir, '/'-separated, valid UTF-8, never absolute, never '..'.
OP_FILES_LIST = "files_list"  # {run_id, globs} -> FileListing fields
OP_FILES_WATCH = "files_watch"  # {run_id, globs, watch} -> FileListing fields; then EVENT_FILES
OP_FILES_SIGNATURE = "files_signature"  # {run_id, path, algo, ...} -> FileSignature fields
OP_FILES_HASH = "files_hash"  # {run_id, path, algo, ranges: [[offset, length]..]} -> {digests..}
# {} -> {algorithms: [name, ...] fastest first, speeds: {name: bytes per second}}: the hashes
# files_signature and files_hash take here, timed once per agent (the first ask costs ~10 ms).
OP_FILES_ALGORITHMS = "files_algorithms"
# {run_id, path, algo} -> {fifo, size}: the file is streamed into the FIFO at that path (read it
# with `cat` on a channel of its own) as remote_agent/sendfile.py says: a header line, its
# bytes, a trailer line with the digest. Refused with E_SEND_BUSY while two are being sent.
OP_FILES_SEND = "files_send"
# files_signature and files_hash replies carry the file's size, mtime_ns and ino as read, and
# read_ns: the host clock when it was read. A file modified within a timestamp tick of that
# (mtime_ns close to read_ns) may change again without its stat showing it.

EVENT_FILES = "files"  # {run_id, files: [FileEntry], removed: [path]}: a watched run's changes

E_NO_SUCH_FILE = "no_such_file"  # the file (or the run dir) is not there (any more)
E_UNSAFE_PATH = "unsafe_path"  # absolute, '..', or a symlink that leaves the run dir
E_SEND_BUSY = "send_busy"  # files_send refused for now: fetch the file another way

SIGNATURE_READY = "ready"
SIGNATURE_HASHING = "hashing"  # still hashing: ask again (each ask waits a little)
SIGNATURE_CHANGED = "changed"  # the file changed while it was hashed: ask again later


@dataclass(frozen=True)
class FileEntry:
    """One regular file of a run dir (a symlink is followed only when it stays inside)."""

    path: str  # relative to the work dir, or OWN_FILES_PREFIX + a name of cvtui's (host_relpath)
    size: int  # bytes
    mtime_ns: int
    ino: int  # a new inode means the file was replaced, not appended to
    link: bool = False  # reached through a symlink inside the run dir

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> FileEntry:
        from remote_agent import wire_decode

        return wire_decode.file_entry(data)


@dataclass(frozen=True)
class SkippedFile:
    """A name matching the output globs that is not synced, and why."""

    path: str  # for display: bytes that are not UTF-8 are written as \\xNN
    reason: str


@dataclass(frozen=True)
class FileListing:
    files: tuple[FileEntry, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()
    truncated: bool = False  # more files matched than one listing carries
    # Where output paths are, relative to the run dir: WORK_DIR, or "" for a run from before
    # work dirs (see host_relpath).
    base: str = WORK_DIR
    unmatched: tuple[str, ...] = ()  # output globs that matched no output file
    # Entries the controller refused (never sent): a size, mtime or path out of range, and why.
    rejected: tuple[SkippedFile, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        data = asdict(self)
        del data["rejected"]
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> FileListing:
        from remote_agent import wire_decode

        return wire_decode.file_listing(data)


# --- Disk usage ------------------------------------------------------------------------------
# Sizes of the top-level dirs of a host's `disk_usage:` paths by owner (remote_agent/disk_usage.py,
# whose PathUsage is the reply's item). Answered from a cache at once; a due scan runs in a
# niced child with a time budget.
OP_DISK_USAGE = "disk_usage"  # {paths, budget_s?, rescan_after_s?} -> {paths: [PathUsage],
#   scanning: bool}

# --- Workspaces ------------------------------------------------------------------------------
# A host's working copy of a code dir, reconciled with the controller's content store by
# `cvtui components sync` (remote_agent/workspace.py). `dir` is absolute, `~/...`, or relative
# to the login directory; paths inside it are '/'-separated, relative, never '..'. Content
# travels over SFTP: the controller uploads to `<dir>/<WORKSPACE_UPLOAD_PREFIX><hex>` and
# OP_WORKSPACE_PUT renames it into place.
OP_WORKSPACE_LIST = "workspace_list"  # {dir, algo?, after?, skip_dirs?, skip_suffixes?, exclude?}
#   -> WorkspaceListing fields: one page of files sorted by path; ask again with after=next
OP_WORKSPACE_PUT = "workspace_put"  # {dir, upload, path, algo, hash, executable, replaces} -> {}
#   replaces: the hash the file has now (as listed), or null when it must not exist yet
OP_WORKSPACE_PUT_MANY = "workspace_put_many"  # {dir, upload, algo, items: [{path, hash,
#   executable, replaces}]} -> {errors: [null | why, ...]}: upload is a tar whose member "N" is
#   the content of items[N]; each file is checked and placed on its own
OP_WORKSPACE_DELETE = "workspace_delete"  # {dir, path, algo, hash} -> {}: only if still `hash`

E_WORKSPACE_CHANGED = "workspace_changed"  # the file is no longer what the controller listed

WORKSPACE_UPLOAD_PREFIX = ".cvtui-upload-"  # never listed; followed by 8 to 64 hex digits


@dataclass(frozen=True)
class WorkspaceFile:
    """One regular file of a workspace with the hash of its whole content."""

    path: str  # relative to the workspace dir
    size: int  # bytes
    mtime_ns: int
    executable: bool  # the owner's x bit
    hash: str  # hex, in the listing's algo
    link: bool = False  # reached through a symlink that stays inside the dir


@dataclass(frozen=True)
class WorkspaceListing:
    dir: str  # the workspace as an absolute path on the host
    exists: bool
    algo: str  # "xxh3_128" when the host has xxhash, else "blake2b-128"
    files: tuple[WorkspaceFile, ...] = ()
    skipped: tuple[SkippedFile, ...] = ()  # symlinks that leave the dir, names not UTF-8, ...
    next: str | None = None  # more files follow: ask again with after=next

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> WorkspaceListing:
        from remote_agent import wire_decode

        return wire_decode.workspace_listing(data)


# --- Slurm -----------------------------------------------------------------------------------
# A `kind: slurm` host: the agent runs on the login node, submits each run with sbatch and
# follows the user's jobs with one squeue call per interval (remote_agent/slurm*.py).
SLURM_OPTION_KEYS = ("gpus", "gres_type", "partition", "account", "qos", "time", "nice", "name")


@dataclass(frozen=True)
class SlurmNode:
    """One node of the cluster as sinfo lists it."""

    name: str
    state: str  # sinfo's long state: idle, mixed, allocated, down, drained, ...
    partitions: tuple[str, ...]
    gpus: int  # GPUs of the node (Gres gpu count)
    gpus_alloc: int  # allocated to jobs now
    gpus_idle: int  # free for a new job: 0 on a node that is down, drained or failing


@dataclass(frozen=True)
class SlurmPartition:
    """One partition: availability and its nodes' GPUs added up."""

    name: str
    available: str  # up, down, drain, inact
    default: bool
    nodes: int
    gpus: int
    gpus_alloc: int
    gpus_idle: int


@dataclass(frozen=True)
class SlurmJob:
    """One of the user's cvtui jobs as squeue lists it."""

    job_id: str
    run_id: str
    state: str  # Slurm's state: PENDING, RUNNING, COMPLETED, TIMEOUT, ...
    reason: str  # squeue's reason (Resources, Priority, None, ...)
    gpus: int  # GPUs allocated (or asked for, while pending)
    nodes: str  # node list, '' while pending
    gpu_ids: tuple[int, ...] = ()  # the node's GPU indexes it got (SLURM_JOB_GPUS), once known


@dataclass(frozen=True)
class ClusterSample:
    """A Slurm cluster at one instant, from its login node."""

    partitions: tuple[SlurmPartition, ...] = ()
    nodes: tuple[SlurmNode, ...] = ()
    jobs: tuple[SlurmJob, ...] = ()  # the user's cvtui jobs squeue still lists
    pending: int = 0  # all of the user's jobs (cvtui's or not) pending / running
    running: int = 0
    error: str | None = None  # why Slurm could not be read ("slurm: sbatch not found", ...)
