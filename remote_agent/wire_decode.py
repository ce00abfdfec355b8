"""Messages read off the wire into protocol dataclasses, every field checked (wire_fields.py).

A bad entry of a list (one file of a listing, one GPU of a sample) fails alone: it is left out
and named with its reason, the rest of the message is used. A bad field of a measurement
(a temperature of 1e300) reads as unknown (None). Anything else wrong raises ProtocolError.
Python 3.8+, standard library only: the agent imports protocol.py, which defers to this.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from remote_agent import protocol
from remote_agent.protocol import (
    ClusterSample,
    FileEntry,
    FileListing,
    GpuProcess,
    GpuSample,
    Hello,
    HostSample,
    ProtocolError,
    RunStatus,
    SkippedFile,
    SlurmJob,
    SlurmNode,
    SlurmPartition,
    Telemetry,
    WorkspaceFile,
    WorkspaceListing,
)
from remote_agent.wire_fields import (
    INT64_MAX,
    MAX_ID,
    MAX_NAME,
    MAX_PATH,
    MAX_TEXT,
    PID_MAX,
    TIME_MAX_S,
    UID_MAX,
    FieldError,
    boolean,
    get,
    integer,
    items,
    number,
    one_of,
    relative_path,
    shown_path,
    text,
)

MAX_GPUS = 1024
MAX_GPU_INDEX = 4095
MAX_PROCESSES = 4096  # per GPU
MAX_COMMAND = 4096  # characters of a process's command line kept (cut, not refused)

_T = TypeVar("_T")


def _entry_path(raw: Any) -> str:
    return shown_path(raw.get("path") if isinstance(raw, dict) else None)


def _checked_file_entry(data: Any) -> FileEntry:
    return FileEntry(
        path=relative_path(data),
        size=integer(data, "size", 0) or 0,
        mtime_ns=integer(data, "mtime_ns") or 0,
        ino=integer(data, "ino", 0) or 0,
        link=boolean(data, "link", False),
    )


def file_entry(data: Any) -> FileEntry:
    try:
        return _checked_file_entry(data)
    except FieldError as exc:
        raise ProtocolError(f"bad file entry {_entry_path(data)}: {exc}") from None


def skipped_file(data: Any) -> SkippedFile:
    return SkippedFile(
        path=text(data, "path", MAX_PATH) or "",
        reason=text(data, "reason", MAX_TEXT, cut=True) or "",
    )


def file_listing(data: Any) -> FileListing:
    try:
        raw_files = items(data, "files")
        raw_skipped = items(data, "skipped")
        truncated = boolean(data, "truncated", False)
    except FieldError as exc:
        raise ProtocolError(f"bad file listing: {exc}") from None
    files: list[FileEntry] = []
    rejected: list[SkippedFile] = []
    for raw in raw_files:
        try:
            files.append(_checked_file_entry(raw))
        except FieldError as exc:
            rejected.append(SkippedFile(_entry_path(raw), f"refused from the host: {exc}"))
    skipped: list[SkippedFile] = []
    for raw in raw_skipped:
        try:
            skipped.append(skipped_file(raw))
        except FieldError as exc:
            rejected.append(SkippedFile(_entry_path(raw), f"refused from the host: {exc}"))
    try:
        base = one_of(data, "base", (protocol.WORK_DIR, ""), default=protocol.WORK_DIR)
        unmatched = _names(data, "unmatched", MAX_PATH, 1000)
    except FieldError as exc:
        raise ProtocolError(f"bad file listing: {exc}") from None
    return FileListing(
        files=tuple(files),
        skipped=tuple(skipped),
        truncated=truncated,
        base=base,
        unmatched=unmatched,
        rejected=tuple(rejected),
    )


# -- telemetry ----------------------------------------------------------------------------------


def _measured(read: Callable[[], _T | None], where: str, problems: list[str]) -> _T | None:
    """A measurement, or None (unknown) with the problem noted when the host sent nonsense."""
    try:
        return read()
    except FieldError as exc:
        problems.append(f"{where}: {exc}")
        return None


def host_sample(data: Any, problems: list[str]) -> HostSample:
    if not isinstance(data, dict):
        raise FieldError(f"host {data!r:.40} is not an object")

    def measure(name: str, low: float, high: float) -> float | None:
        return _measured(lambda: number(data, name, low, high, optional=True), "host", problems)

    def count(name: str) -> int | None:
        return _measured(lambda: integer(data, name, 0, optional=True), "host", problems)

    return HostSample(
        cpu_percent=measure("cpu_percent", 0, 100_000),
        load1=measure("load1", 0, 1e9),
        load5=measure("load5", 0, 1e9),
        load15=measure("load15", 0, 1e9),
        mem_used=count("mem_used"),
        mem_total=count("mem_total"),
        disk_free=count("disk_free"),
        disk_total=count("disk_total"),
    )


def gpu_process(data: Any) -> GpuProcess:
    return GpuProcess(
        pid=integer(data, "pid", 0, PID_MAX) or 0,
        user=text(data, "user", MAX_NAME, optional=True),
        command=text(data, "command", MAX_COMMAND, cut=True) or "",
        container=text(data, "container", MAX_NAME, optional=True, cut=True),
        mem=integer(data, "mem", 0, optional=True),
        run_id=text(data, "run_id", MAX_ID, optional=True),
    )


def gpu_sample(data: Any, problems: list[str]) -> GpuSample:
    index = integer(data, "index", 0, MAX_GPU_INDEX) or 0
    where = f"GPU {index}"

    def measure(name: str, low: float, high: float) -> float | None:
        return _measured(lambda: number(data, name, low, high, optional=True), where, problems)

    def count(name: str) -> int | None:
        return _measured(lambda: integer(data, name, 0, optional=True), where, problems)

    processes = []
    for raw in items(data, "processes", MAX_PROCESSES):
        try:
            processes.append(gpu_process(raw))
        except FieldError as exc:
            problems.append(f"{where}: a process refused: {exc}")
    return GpuSample(
        index=index,
        uuid=text(data, "uuid", MAX_ID) or "",
        name=text(data, "name", MAX_NAME, cut=True) or "",
        util=measure("util", 0, 100),
        mem_used=count("mem_used"),
        mem_total=count("mem_total"),
        temperature=measure("temperature", -273.15, 1000),
        power=measure("power", 0, 1e6),
        power_limit=measure("power_limit", 0, 1e6),
        fan=measure("fan", 0, 1000),
        processes=tuple(processes),
        leased_by=text(data, "leased_by", MAX_ID, optional=True),
        pci_bus_id=text(data, "pci_bus_id", MAX_NAME, optional=True),
    )


# -- telemetry, the common case ------------------------------------------------------------------
# A controller reads one sample per host per second: 1,000 hosts of 8 GPUs are 8,000 GPU entries
# a second. These read an entry that is exactly as an agent writes it in a few type checks, and
# answer None at the first thing out of the ordinary; the checked readers above then read that
# entry and name what is wrong. Same results for every entry: only the cost differs.

_GPU_MEASURES = (
    ("util", 0.0, 100.0),
    ("temperature", -273.15, 1000.0),
    ("power", 0.0, 1e6),
    ("power_limit", 0.0, 1e6),
    ("fan", 0.0, 1000.0),
)
_HOST_MEASURES = (
    ("cpu_percent", 0.0, 100_000.0),
    ("load1", 0.0, 1e9),
    ("load5", 0.0, 1e9),
    ("load15", 0.0, 1e9),
)
_HOST_COUNTS = ("mem_used", "mem_total", "disk_free", "disk_total")
_ODD = object()  # a value the fast readers leave to the checked ones


def _plain_number(value: Any, low: float, high: float) -> Any:
    """value as number() reads it (optional), or _ODD."""
    if value is None:
        return None
    kind = type(value)
    if kind is int:
        if not -INT64_MAX <= value <= INT64_MAX:
            return _ODD
        value = float(value)
    elif kind is not float:
        return _ODD
    return value if low <= value <= high else _ODD  # NaN and infinities fail this too


def _plain_count(value: Any) -> Any:
    """value as integer(..., 0, optional=True) reads it, or _ODD."""
    if value is None or (type(value) is int and 0 <= value <= INT64_MAX):
        return value
    return _ODD


def _plain_text(value: Any, longest: int) -> Any:
    """An optional string of at most longest characters, or _ODD."""
    if value is None or (type(value) is str and len(value) <= longest):
        return value
    return _ODD


def _plain_process(data: Any) -> GpuProcess | None:
    if type(data) is not dict:
        return None
    pid, command, mem = data.get("pid"), data.get("command"), data.get("mem")
    if type(pid) is not int or not 0 <= pid <= PID_MAX or type(command) is not str:
        return None
    user = _plain_text(data.get("user"), MAX_NAME)
    container = data.get("container")
    run_id = _plain_text(data.get("run_id"), MAX_ID)
    if user is _ODD or run_id is _ODD or _plain_count(mem) is _ODD:
        return None
    if container is not None:
        if type(container) is not str:
            return None
        container = container[:MAX_NAME]
    return GpuProcess(pid, user, command[:MAX_COMMAND], container, mem, run_id)


def _plain_gpu(data: Any) -> GpuSample | None:
    if type(data) is not dict:
        return None
    index, uuid, name = data.get("index"), data.get("uuid"), data.get("name")
    if type(index) is not int or not 0 <= index <= MAX_GPU_INDEX:
        return None
    if type(uuid) is not str or len(uuid) > MAX_ID or type(name) is not str:
        return None
    measured = [_plain_number(data.get(key), low, high) for key, low, high in _GPU_MEASURES]
    mem_used, mem_total = _plain_count(data.get("mem_used")), _plain_count(data.get("mem_total"))
    leased_by = _plain_text(data.get("leased_by"), MAX_ID)
    pci_bus_id = _plain_text(data.get("pci_bus_id"), MAX_NAME)
    if _ODD in measured or _ODD in (mem_used, mem_total, leased_by, pci_bus_id):
        return None
    raw = data.get("processes", [])
    if type(raw) is not list or len(raw) > MAX_PROCESSES:
        return None
    processes = []
    for item in raw:
        process = _plain_process(item)
        if process is None:
            return None
        processes.append(process)
    util, temperature, power, power_limit, fan = measured
    return GpuSample(
        index,
        uuid,
        name[:MAX_NAME],
        util,
        mem_used,
        mem_total,
        temperature,
        power,
        power_limit,
        fan,
        tuple(processes),
        leased_by,
        pci_bus_id,
    )


def _plain_host(data: Any) -> HostSample | None:
    if type(data) is not dict:
        return None
    measured = [_plain_number(data.get(key), low, high) for key, low, high in _HOST_MEASURES]
    counts = [_plain_count(data.get(key)) for key in _HOST_COUNTS]
    if _ODD in measured or _ODD in counts:
        return None
    return HostSample(*measured, *counts)


def telemetry(data: Any) -> Telemetry:
    problems: list[str] = []
    try:
        time = number(data, "time", 0, TIME_MAX_S) or 0.0
        backend = text(data, "backend", MAX_NAME) or ""
        raw_host = get(data, "host")
        host = _plain_host(raw_host) or host_sample(raw_host, problems)
        raw_gpus = items(data, "gpus", MAX_GPUS)
        raw_cluster = get(data, "cluster", None)
    except FieldError as exc:
        raise ProtocolError(f"bad telemetry: {exc}") from None
    gpus: dict[int, GpuSample] = {}
    for raw in raw_gpus:
        try:
            gpu = _plain_gpu(raw) or gpu_sample(raw, problems)
        except FieldError as exc:
            problems.append(f"a GPU refused: {exc}")
            continue
        if gpu.index in gpus:
            problems.append(f"GPU {gpu.index} listed twice: the second left out")
            continue
        gpus[gpu.index] = gpu
    cluster = None
    if raw_cluster is not None:
        try:
            cluster = cluster_sample(raw_cluster, problems)
        except FieldError as exc:
            raise ProtocolError(f"bad telemetry: cluster: {exc}") from None
    return Telemetry(time, backend, host, tuple(gpus.values()), cluster, tuple(problems))


MAX_SLURM_ENTRIES = 100_000  # nodes, partitions or jobs in one cluster sample


def _slurm_entries(
    data: Any, name: str, read: Callable[[Any], _T], problems: list[str]
) -> tuple[_T, ...]:
    """The entries of one list of a cluster sample; a bad one is left out with its reason."""
    found = []
    for raw in items(data, name, MAX_SLURM_ENTRIES):
        try:
            found.append(read(raw))
        except FieldError as exc:
            problems.append(f"cluster {name}: an entry refused: {exc}")
    return tuple(found)


def _count(data: Any, name: str) -> int:
    return integer(data, name, 0, 1 << 40) or 0


def slurm_node(data: Any) -> SlurmNode:
    return SlurmNode(
        name=text(data, "name", MAX_NAME) or "",
        state=text(data, "state", MAX_NAME, cut=True) or "",
        partitions=_names(data, "partitions", MAX_NAME, 1000),
        gpus=_count(data, "gpus"),
        gpus_alloc=_count(data, "gpus_alloc"),
        gpus_idle=_count(data, "gpus_idle"),
    )


def slurm_partition(data: Any) -> SlurmPartition:
    return SlurmPartition(
        name=text(data, "name", MAX_NAME) or "",
        available=text(data, "available", MAX_NAME, cut=True) or "",
        default=boolean(data, "default", False),
        nodes=_count(data, "nodes"),
        gpus=_count(data, "gpus"),
        gpus_alloc=_count(data, "gpus_alloc"),
        gpus_idle=_count(data, "gpus_idle"),
    )


def slurm_job(data: Any) -> SlurmJob:
    return SlurmJob(
        job_id=text(data, "job_id", MAX_ID) or "",
        run_id=text(data, "run_id", MAX_ID) or "",
        state=text(data, "state", MAX_NAME) or "",
        reason=text(data, "reason", MAX_TEXT, cut=True) or "",
        gpus=_count(data, "gpus"),
        nodes=text(data, "nodes", MAX_TEXT, cut=True) or "",
        gpu_ids=_gpu_indexes({"gpus": get(data, "gpu_ids", [])}),
    )


def cluster_sample(data: Any, problems: list[str]) -> ClusterSample:
    return ClusterSample(
        partitions=_slurm_entries(data, "partitions", slurm_partition, problems),
        nodes=_slurm_entries(data, "nodes", slurm_node, problems),
        jobs=_slurm_entries(data, "jobs", slurm_job, problems),
        pending=_count(data, "pending"),
        running=_count(data, "running"),
        error=text(data, "error", MAX_TEXT, optional=True, cut=True),
    )


# -- hello and runs -----------------------------------------------------------------------------


def _names(data: Any, name: str, longest: int, count: int) -> tuple[str, ...]:
    values = items(data, name, count)
    for value in values:
        if not isinstance(value, str) or len(value) > longest:
            raise FieldError(f"{name} holds {value!r:.40}, not a name")
    return tuple(values)


def hello(data: Any) -> Hello:
    try:
        return Hello(
            protocol=integer(data, "protocol", 0, PID_MAX) or 0,
            python=text(data, "python", MAX_NAME) or "",
            hostname=text(data, "hostname", MAX_NAME) or "",
            user=text(data, "user", MAX_NAME) or "",
            pid=integer(data, "pid", 0, PID_MAX) or 0,
            backend=text(data, "backend", MAX_NAME) or "",
            backend_errors=tuple(e[:MAX_TEXT] for e in _names(data, "backend_errors", 1 << 20, 64)),
            gpu_count=integer(data, "gpu_count", 0, MAX_GPUS, default=0) or 0,
            hash_algorithms=_names(data, "hash_algorithms", MAX_NAME, 16),
            root=text(data, "root", MAX_PATH, default="") or "",
            home=text(data, "home", MAX_PATH, default="") or "",
        )
    except FieldError as exc:
        raise ProtocolError(f"bad hello: {exc}") from None


def _gpu_indexes(data: Any) -> tuple[int, ...]:
    found = []
    for value in items(data, "gpus", MAX_GPUS):
        if isinstance(value, bool) or not isinstance(value, int):
            raise FieldError(f"gpus holds {value!r:.40}, not a GPU index")
        if not 0 <= value <= MAX_GPU_INDEX:
            raise FieldError(f"gpus holds {value}, out of range [0, {MAX_GPU_INDEX}]")
        found.append(value)
    return tuple(found)


def _optional_time(data: Any, name: str) -> float | None:
    return number(data, name, 0, TIME_MAX_S, optional=True)


def _optional_pid(data: Any, name: str) -> int | None:
    return integer(data, name, 0, PID_MAX, optional=True)


# One check per RunStatus field: a field added to RunStatus needs one here (a test says so).
RUN_STATUS_FIELDS: dict[str, Callable[[Any], Any]] = {
    "run_id": lambda d: text(d, "run_id", MAX_ID),
    "state": lambda d: one_of(d, "state", protocol.RUN_STATES),
    "run_dir": lambda d: text(d, "run_dir", MAX_PATH, default=""),
    "gpus": _gpu_indexes,
    "supervisor_pid": lambda d: _optional_pid(d, "supervisor_pid"),
    "supervisor_start": lambda d: integer(d, "supervisor_start", 0, optional=True),
    "pid": lambda d: _optional_pid(d, "pid"),
    "pgid": lambda d: _optional_pid(d, "pgid"),
    "uid": lambda d: integer(d, "uid", 0, UID_MAX, optional=True),
    "started": lambda d: _optional_time(d, "started"),
    "ended": lambda d: _optional_time(d, "ended"),
    "heartbeat": lambda d: _optional_time(d, "heartbeat"),
    "exit_code": lambda d: integer(d, "exit_code", -PID_MAX, PID_MAX, optional=True),
    "progress": lambda d: number(d, "progress", 0, 100, optional=True),
    "progress_msg": lambda d: text(d, "progress_msg", MAX_TEXT, optional=True, cut=True),
    "reason": lambda d: text(d, "reason", MAX_TEXT, optional=True, cut=True),
    "log_size": lambda d: integer(d, "log_size", 0, INT64_MAX, default=0),
    "work_dir": lambda d: text(d, "work_dir", MAX_PATH, default=""),
    "recorded_by": lambda d: (
        None
        if get(d, "recorded_by", None) is None
        else one_of(d, "recorded_by", protocol.RECORDED_BY)
    ),
    "job_id": lambda d: text(d, "job_id", MAX_ID, optional=True),
}


def run_status(data: Any) -> RunStatus:
    run = _entry_run(data)
    try:
        fields = {
            name: check(data)
            for name, check in RUN_STATUS_FIELDS.items()
            if name in RunStatus.__dataclass_fields__
        }
        # A field this table does not know yet passes as sent (RUN_STATUS_FIELDS lists them all
        # today; a test fails the day one is added without its check).
        for name in RunStatus.__dataclass_fields__:
            if name not in fields and name in data:
                fields[name] = data[name]
        return RunStatus(**fields)
    except (FieldError, TypeError) as exc:
        raise ProtocolError(f"bad run status{run}: {exc}") from None


def _entry_run(data: Any) -> str:
    run_id = data.get("run_id") if isinstance(data, dict) else None
    return f" of run {run_id}" if isinstance(run_id, str) and len(run_id) <= MAX_ID else ""


# -- workspaces ---------------------------------------------------------------------------------


def workspace_file(data: Any) -> WorkspaceFile:
    digest = text(data, "hash", MAX_ID) or ""
    if not digest or any(c not in "0123456789abcdef" for c in digest):
        raise FieldError(f"hash {digest!r:.40} is not hexadecimal")
    return WorkspaceFile(
        path=relative_path(data),
        size=integer(data, "size", 0) or 0,
        mtime_ns=integer(data, "mtime_ns") or 0,
        executable=boolean(data, "executable"),
        hash=digest,
        link=boolean(data, "link", False),
    )


def workspace_listing(data: Any) -> WorkspaceListing:
    try:
        directory = text(data, "dir", MAX_PATH) or ""
        exists = boolean(data, "exists")
        algo = text(data, "algo", MAX_NAME) or ""
        raw_files = items(data, "files")
        raw_skipped = items(data, "skipped")
        after = text(data, "next", MAX_PATH, optional=True)
    except FieldError as exc:
        raise ProtocolError(f"bad workspace listing: {exc}") from None
    files: list[WorkspaceFile] = []
    skipped: list[SkippedFile] = []
    for raw in raw_files:
        try:
            files.append(workspace_file(raw))
        except FieldError as exc:
            skipped.append(SkippedFile(_entry_path(raw), f"refused from the host: {exc}"))
    for raw in raw_skipped:
        try:
            skipped.append(skipped_file(raw))
        except FieldError as exc:
            skipped.append(SkippedFile(_entry_path(raw), f"refused from the host: {exc}"))
    return WorkspaceListing(directory, exists, algo, tuple(files), tuple(skipped), after)
