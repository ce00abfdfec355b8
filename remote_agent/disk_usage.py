"""Disk usage per top-level dir and owner of configured paths: a niced, budgeted scan child.

The agent never walks a tree itself. Op `disk_usage` answers from the cache file
(<root>/disk_usage.json) at once and, when a path's last scan is older than RESCAN_AFTER_S and
no scan runs, starts a child (`ionice -c3` when on PATH, and os.nice(19)) that walks the due
paths until its time budget runs out and rewrites the cache. Telemetry never waits on it.

Incremental, honestly: a top-level dir's mtime does not change when a file deep inside grows,
so no result is reused on the strength of an mtime. Instead each scan visits the top-level
entries oldest result first (never scanned first); an entry the budget did not reach keeps its
previous result with its own `scanned_at`, so a tree too big for one budget is covered round
robin over several scans, and every entry says how old its figure is.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pwd
import stat
import sys
import time
from dataclasses import asdict, dataclass
from typing import IO, Any, Callable, Dict

from remote_agent.protocol import E_BAD_REQUEST, OP_DISK_USAGE, RemoteError

CACHE_NAME = "disk_usage.json"
LOCK_NAME = "disk_usage.lock"
RESCAN_AFTER_S = 3600.0  # a path is scanned at most this often
SCAN_BUDGET_S = 60.0  # one scan stops (and reports partial results) after this long
MAX_BUDGET_S = 3600.0
MAX_PATHS = 64
NOT_REACHED = "not reached within the scan's time budget"

Op = Callable[[Dict[str, Any]], Dict[str, Any]]


@dataclass(frozen=True)
class DirUsage:
    """One top-level entry of a scanned path: who owns it and what it holds."""

    name: str  # the entry's name under the path
    uid: int
    owner: str  # user name, or the uid as text when the host has no passwd entry for it
    bytes: int  # allocated: st_blocks * 512, hard links once, symlinks not followed
    files: int  # non-directory entries, the top-level entry itself included if it is one
    scanned_at: float  # unix time this entry's figure was taken
    partial: bool = False  # the figure misses something; reason says what
    reason: str = ""


@dataclass(frozen=True)
class PathUsage:
    """The latest scan of one configured path."""

    path: str
    scanned_at: float  # unix time the last scan of this path ended
    entries: tuple[DirUsage, ...] = ()
    partial: bool = False  # some entry is partial or older than this scan
    error: str = ""  # why the path itself could not be read (then no entries)

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


def _field(data: dict[str, Any], name: str, kind: Any, where: str) -> Any:
    value = data.get(name)
    if isinstance(value, bool) and kind is not bool:
        raise ValueError(f"{where}: {name!r} must not be a boolean")
    if not isinstance(value, kind):
        raise ValueError(f"{where}: {name!r} is {type(value).__name__}")
    return value


def path_usage_from_wire(data: Any) -> PathUsage:
    """A PathUsage from its JSON form; ValueError says which field is wrong."""
    if not isinstance(data, dict):
        raise ValueError("disk usage: a path's entry is not an object")
    path = _field(data, "path", str, "disk usage")
    where = f"disk usage of {path}"
    entries = []
    for item in _field(data, "entries", (list, tuple), where):
        if not isinstance(item, dict):
            raise ValueError(f"{where}: an entry is not an object")
        entries.append(
            DirUsage(
                name=_field(item, "name", str, where),
                uid=_field(item, "uid", int, where),
                owner=_field(item, "owner", str, where),
                bytes=_field(item, "bytes", int, where),
                files=_field(item, "files", int, where),
                scanned_at=float(_field(item, "scanned_at", (int, float), where)),
                partial=_field(item, "partial", bool, where),
                reason=_field(item, "reason", str, where),
            )
        )
    return PathUsage(
        path=path,
        scanned_at=float(_field(data, "scanned_at", (int, float), where)),
        entries=tuple(entries),
        partial=_field(data, "partial", bool, where),
        error=_field(data, "error", str, where),
    )


def shown(name: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not (a name from another locale) become
    U+FFFD, so the JSON line and the controller's SQLite always take it."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def owner_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (an NFS home from elsewhere): show the uid
        return str(uid)


# --- the scan (runs in the child) ---


class TreeWalk:
    """Sizes trees under one device until a deadline; hard links are counted once per scan."""

    def __init__(self, deadline: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline = deadline
        self.clock = clock
        self.seen_links: set[tuple[int, int]] = set()

    def out_of_time(self) -> bool:
        return self.clock() >= self.deadline

    def blocks(self, st: os.stat_result) -> int:
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in self.seen_links:
                return 0
            self.seen_links.add(key)
        return st.st_blocks * 512

    def size_tree(self, top: str, top_stat: os.stat_result) -> tuple[int, int, str]:
        """(bytes, files, why partial or "") of the dir `top`, its own blocks included."""
        total, files = self.blocks(top_stat), 0
        problems: list[str] = []
        stack = [top]
        while stack:
            if self.out_of_time():
                problems.insert(0, "time budget ran out")
                break
            current = stack.pop()
            try:
                with os.scandir(current) as entries:
                    for entry in entries:
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except FileNotFoundError:  # removed while we looked
                            continue
                        except OSError as exc:
                            problems.append(f"{shown(entry.path)}: {exc.strerror or exc}")
                            continue
                        if stat.S_ISDIR(st.st_mode):
                            if st.st_dev != top_stat.st_dev:  # a mount point: not crossed
                                continue
                            total += self.blocks(st)
                            stack.append(entry.path)
                        else:  # files, symlinks (their own blocks, never the target), sockets...
                            total += self.blocks(st)
                            files += 1
            except FileNotFoundError:
                continue
            except OSError as exc:
                reason = "permission denied" if exc.errno in (errno.EACCES, errno.EPERM) else None
                problems.append(f"{reason or exc.strerror or exc}: {shown(current)}")
        why = ""
        if problems:
            why = problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
        return total, files, why


def scan_path(
    path: str, previous: PathUsage | None, walk: TreeWalk, now: Callable[[], float] = time.time
) -> PathUsage:
    """One path's usage: entries oldest result first until the walk's deadline, the rest kept."""
    try:
        path_stat = os.stat(path)
        names = os.listdir(path)
    except OSError as exc:
        return PathUsage(path, now(), (), True, f"cannot read {path}: {exc.strerror or exc}")
    if not stat.S_ISDIR(path_stat.st_mode):
        return PathUsage(path, now(), (), True, f"{path} is not a directory")
    # Keyed by the shown name, as stored: a name that is not UTF-8 finds its earlier figure.
    before = {e.name: e for e in previous.entries} if previous is not None else {}

    # Never scanned first, then the oldest figures: round robin when one budget is not enough.
    def age_order(name: str) -> tuple[bool, float, str]:
        old = before.get(shown(name))
        return (old is not None, old.scanned_at if old is not None else 0.0, name)

    order = sorted(names, key=age_order)
    results: dict[str, DirUsage] = {}
    for name in order:
        full = os.path.join(path, name)
        try:
            st = os.lstat(full)
        except OSError:  # gone since the listing
            continue
        uid, owner, label = st.st_uid, owner_name(st.st_uid), shown(name)
        if walk.out_of_time():
            old = before.get(label)
            if old is not None:  # kept, with its own age; the path says it is partial
                results[name] = DirUsage(
                    label, uid, owner, old.bytes, old.files, old.scanned_at, True,
                    f"{NOT_REACHED}; figure from an earlier scan",
                )  # fmt: skip
            else:
                results[name] = DirUsage(label, uid, owner, 0, 0, now(), True, NOT_REACHED)
            continue
        if stat.S_ISDIR(st.st_mode):
            if st.st_dev != path_stat.st_dev:
                results[name] = DirUsage(
                    label, uid, owner, 0, 0, now(), True, "another filesystem (not crossed)"
                )
                continue
            size, files, why = walk.size_tree(full, st)
            results[name] = DirUsage(label, uid, owner, size, files, now(), bool(why), why)
        else:
            results[name] = DirUsage(label, uid, owner, walk.blocks(st), 1, now())
    entries = tuple(results[name] for name in sorted(results))
    return PathUsage(path, now(), entries, any(e.partial for e in entries))


def read_cache(root: str) -> dict[str, PathUsage]:
    """The cached scans by path; an unreadable or damaged cache reads as none (rescanned)."""
    try:
        with open(os.path.join(root, CACHE_NAME), encoding="utf-8") as cache:
            data = json.load(cache)
        return {p.path: p for p in (path_usage_from_wire(item) for item in data["paths"])}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_cache(root: str, scans: dict[str, PathUsage]) -> None:
    target = os.path.join(root, CACHE_NAME)
    temporary = f"{target}.{os.getpid()}.tmp"
    with open(temporary, "w", encoding="utf-8") as cache:
        json.dump({"paths": [scans[p].to_wire() for p in sorted(scans)]}, cache)
    os.replace(temporary, target)


def due_paths(
    paths: list[str], cache: dict[str, PathUsage], rescan_after_s: float, now: float
) -> list[str]:
    return [p for p in paths if p not in cache or now - cache[p].scanned_at >= rescan_after_s]


def scan_main(argv: list[str]) -> int:
    """The child: `--root R --budget S --rescan-after S PATH...`; rewrites the cache, exits 0."""
    import argparse
    import fcntl

    with contextlib.suppress(OSError):
        os.nice(19)
    parser = argparse.ArgumentParser(prog="disk-scan")
    parser.add_argument("--root", required=True)
    parser.add_argument("--budget", type=float, default=SCAN_BUDGET_S)
    parser.add_argument("--rescan-after", type=float, default=RESCAN_AFTER_S)
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    with open(os.path.join(args.root, LOCK_NAME), "a") as lock:
        try:  # another agent of this root (a second controller) is scanning: leave it to it
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 0
        cache = read_cache(args.root)
        walk = TreeWalk(deadline)
        for path in due_paths(args.paths, cache, args.rescan_after, time.time()):
            cache[path] = scan_path(path, cache.get(path), walk)
            write_cache(args.root, cache)  # each path as it ends: a kill loses one path at most
    return 0


# --- the agent's side ---


class DiskUsageOps:
    """Op `disk_usage`: the cached figures now, and a scan child started when one is due."""

    def __init__(self, root: str, log: IO[str] = sys.stderr) -> None:
        self.root = root
        self.log = log
        self.child: Any = None  # subprocess.Popen of the running scan, or None
        self.ops: dict[str, Op] = {OP_DISK_USAGE: self.disk_usage}

    def scanning(self) -> bool:
        if self.child is not None and self.child.poll() is not None:
            self.child = None  # reaped
        return self.child is not None

    def disk_usage(self, message: dict[str, Any]) -> dict[str, Any]:
        paths = message.get("paths")
        if (
            not isinstance(paths, list)
            or len(paths) > MAX_PATHS
            or not all(isinstance(p, str) and p.startswith("/") for p in paths)
        ):
            problem = f"'paths' must be a list of at most {MAX_PATHS} absolute paths"
            raise RemoteError(E_BAD_REQUEST, problem)
        budget_s = _seconds(message, "budget_s", SCAN_BUDGET_S)
        rescan_after_s = _seconds(message, "rescan_after_s", RESCAN_AFTER_S)
        cache = read_cache(self.root)
        due = due_paths(paths, cache, rescan_after_s, time.time())
        if due and not self.scanning():
            self.start_scan(due, budget_s, rescan_after_s)
        known = [cache[p].to_wire() for p in paths if p in cache]
        return {"paths": known, "scanning": self.scanning()}

    def start_scan(self, paths: list[str], budget_s: float, rescan_after_s: float) -> None:
        import shutil
        import subprocess  # here: an agent that never scans does not pay for it

        # The dir holding the remote_agent package: the agent.pyz itself when zipped.
        package_home = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        code = (
            "import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from remote_agent.disk_usage import scan_main; sys.exit(scan_main(sys.argv[1:]))"
        )
        command = [sys.executable, "-c", code, package_home, "--root", self.root]
        command += ["--budget", repr(budget_s), "--rescan-after", repr(rescan_after_s), *paths]
        ionice = shutil.which("ionice")
        if ionice is not None:  # idle IO class: the scan reads only when nobody else does
            command = [ionice, "-c3", "-t", *command]  # -t: run anyway if refused
        try:
            self.child = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, close_fds=True
            )
        except OSError as exc:
            self.log.write(f"cvtui agent: disk usage scan did not start: {exc}\n")


def _seconds(message: dict[str, Any], name: str, default: float) -> float:
    value = message.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RemoteError(E_BAD_REQUEST, f"{name!r} must be a number of seconds")
    if not 0 <= value <= MAX_BUDGET_S * 24:
        problem = f"{name!r} must be from 0 to {MAX_BUDGET_S * 24:.0f} seconds"
        raise RemoteError(E_BAD_REQUEST, problem)
    return float(value)
