"""Host figures (CPU, load, memory, disk) and per-process details, read cheaply from /proc."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
from dataclasses import dataclass

from remote_agent.protocol import HostSample

# A 64-hex container id as a cgroup path segment, possibly wrapped by a runtime's naming:
# docker-<id>.scope, /docker/<id>, libpod-<id>.scope, cri-containerd-<id>.scope, crio-<id>.scope,
# and the kubepods cgroupfs layout /kubepods/<qos>/pod<uid>/<id>.
_CONTAINER_SEGMENT = re.compile(r"(?:^|-)([0-9a-f]{64})(?:\.scope)?$")
CONTAINER_ID_CHARS = 12  # the short id `docker ps` shows

MIB = 1 << 20
GIB = 1 << 30
_ENVIRON_LIMIT_BYTES = MIB  # a process environment larger than this is not worth reading


def expand_root(root: str) -> str:
    """The agent's work root as an absolute path (``~`` expanded)."""
    return os.path.abspath(os.path.expanduser(root))


def container_id(cgroup_text: str) -> str | None:
    """Short container id from the text of /proc/PID/cgroup, or None outside containers."""
    found: str | None = None
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        # The innermost (last) id in the path wins, so docker-in-docker names the inner one.
        for segment in parts[2].split("/"):
            match = _CONTAINER_SEGMENT.search(segment)
            if match:
                found = match.group(1)[:CONTAINER_ID_CHARS]
        if found is not None and parts[0] == "0":
            break  # the cgroup v2 line is authoritative
    return found


def _read_bytes(path: str, limit: int = 65536) -> bytes | None:
    """Up to `limit` bytes of a small /proc file, None when unreadable (os-level: no buffering)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    try:
        chunks = []
        size = 0
        while size < limit:
            chunk = os.read(fd, min(limit - size, 16384))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_environ(pid: int) -> dict[str, str] | None:
    """The environment a process was started with, or None when unreadable (another user's)."""
    raw = _read_bytes(f"/proc/{pid}/environ", _ENVIRON_LIMIT_BYTES)
    if raw is None:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
    return env


def process_uid(pid: int) -> int | None:
    """Real uid of a process from the Uid line of /proc/PID/status."""
    raw = _read_bytes(f"/proc/{pid}/status")
    if raw is None:
        return None
    for line in raw.split(b"\n"):
        if line.startswith(b"Uid:"):
            fields = line.split()
            try:
                return int(fields[1])
            except (IndexError, ValueError):
                return None
    return None


def parent_pid(pid: int) -> int | None:
    """PPid of a process, from /proc/PID/stat (the command name may hold spaces and parens)."""
    raw = _read_bytes(f"/proc/{pid}/stat", 4096)
    if raw is None:
        return None
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return int(fields[1])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessInfo:
    """Who runs a pid; each field None (command '') when /proc does not say."""

    user: str | None
    command: str
    container: str | None
    run_id: str | None  # CVTUI_RUN_ID from the process environment


class ProcessReader:
    """Reads ProcessInfo for pids; caches uid -> login name since passwd lookups are slow."""

    def __init__(self) -> None:
        self._names: dict[int, str | None] = {}

    def user_name(self, uid: int) -> str | None:
        if uid not in self._names:
            try:
                self._names[uid] = pwd.getpwuid(uid).pw_name
            except KeyError:
                self._names[uid] = None
        return self._names[uid]

    def info(self, pid: int) -> ProcessInfo:
        uid = process_uid(pid)
        user = None if uid is None else self.user_name(uid)
        cmdline = _read_bytes(f"/proc/{pid}/cmdline", 16384) or b""
        command = cmdline.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
        cgroup = _read_bytes(f"/proc/{pid}/cgroup")
        container = None if cgroup is None else container_id(cgroup.decode("utf-8", "replace"))
        env = read_environ(pid)
        run_id = None if env is None else env.get("CVTUI_RUN_ID") or None
        return ProcessInfo(user, command, container, run_id)


def existing_ancestor(path: str) -> str:
    """The path itself, or its nearest parent that exists."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


class HostStats:
    """Samples HostSample; keeps /proc files open and remembers /proc/stat for the CPU delta."""

    def __init__(self, root: str) -> None:
        self.root = expand_root(root)
        # When the root cannot be made, disk figures come from its nearest existing parent.
        with contextlib.suppress(OSError):
            os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._stat_fd = self._open("/proc/stat")
        self._meminfo_fd = self._open("/proc/meminfo")
        self._last_cpu: tuple[int, int] | None = None  # (busy, total) jiffies

    @staticmethod
    def _open(path: str) -> int | None:
        try:
            return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None

    def _cpu_percent(self) -> float | None:
        if self._stat_fd is None:
            return None
        try:
            # Only the first line ("cpu  user nice system idle iowait irq softirq steal ...").
            head = os.pread(self._stat_fd, 512, 0).split(b"\n", 1)[0].split()
            ticks = [int(x) for x in head[1:9]]
        except (OSError, ValueError):
            return None
        total = sum(ticks)
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
        busy = total - idle
        previous, self._last_cpu = self._last_cpu, (busy, total)
        if previous is None or total <= previous[1]:
            return None
        return round(100.0 * (busy - previous[0]) / (total - previous[1]), 1)

    def _memory(self) -> tuple[int | None, int | None]:
        if self._meminfo_fd is None:
            return None, None
        try:
            text = os.pread(self._meminfo_fd, 1024, 0)
        except OSError:
            return None, None
        values: dict[bytes, int] = {}
        for line in text.split(b"\n"):
            fields = line.split()
            if len(fields) >= 2 and fields[0] in (b"MemTotal:", b"MemAvailable:"):
                with contextlib.suppress(ValueError):
                    values[fields[0]] = int(fields[1]) * 1024  # kB -> bytes
        total = values.get(b"MemTotal:")
        available = values.get(b"MemAvailable:")
        if total is None or available is None:
            return None, total
        return total - available, total

    def _disk(self) -> tuple[int | None, int | None]:
        try:
            st = os.statvfs(existing_ancestor(self.root))
        except OSError:
            return None, None
        return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize

    def sample(self) -> HostSample:
        load: tuple[float | None, float | None, float | None]
        try:
            one, five, fifteen = os.getloadavg()
            load = (round(one, 2), round(five, 2), round(fifteen, 2))
        except OSError:
            load = (None, None, None)
        mem_used, mem_total = self._memory()
        disk_free, disk_total = self._disk()
        return HostSample(
            cpu_percent=self._cpu_percent(),
            load1=load[0],
            load5=load[1],
            load15=load[2],
            mem_used=mem_used,
            mem_total=mem_total,
            disk_free=disk_free,
            disk_total=disk_total,
        )

    def close(self) -> None:
        for fd in (self._stat_fd, self._meminfo_fd):
            if fd is not None:
                os.close(fd)
        self._stat_fd = self._meminfo_fd = None


def list_pids() -> list[int]:
    """Every pid currently in /proc."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    return [int(name) for name in names if name.isdigit()]
