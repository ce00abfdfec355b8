"""The agent's file ops: list a run's output files, hash them in blocks for delta sync, watch them.

The block hash tree defined here is also what the controller computes over its local copies
(cvtui/engine/delta.py imports it), so both sides always agree on what a digest means:
leaf digests of fixed-size blocks, a digest per group of GROUP_BLOCKS leaves, and a file
digest over the size, the block size and the group digests.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import os
import stat
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, Tuple

from remote_agent.doctor import hash_algorithms
from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_NO_SUCH_FILE,
    E_UNSAFE_PATH,
    EVENT_FILES,
    OP_FILES_HASH,
    OP_FILES_LIST,
    OP_FILES_SIGNATURE,
    OP_FILES_WATCH,
    SIGNATURE_CHANGED,
    SIGNATURE_HASHING,
    SIGNATURE_READY,
    FileEntry,
    FileListing,
    RemoteError,
    SkippedFile,
    event,
)
from remote_agent.rundir import RUN_ID

DIGEST_BYTES = 16  # both algorithms give 128-bit digests
ALGO_XXH3 = "xxh3_128"
ALGO_BLAKE2B = "blake2b-128"
MIN_BLOCK_BYTES = 16 << 10  # small enough that a scattered 64 KiB change costs ~80 KiB
MAX_BLOCK_BYTES = 1 << 20
TARGET_BLOCKS = 1 << 16  # the block size doubles until a file has at most this many blocks
GROUP_BLOCKS = 64  # leaf digests per group digest, the first level a sync compares
TREE_TAG = b"cvtui-tree-1"
READ_BYTES = 4 << 20  # a multiple of every block size

MAX_GLOBS = 100
MAX_DEPTH = 32
MAX_LISTED_FILES = 4000
MAX_LISTED_NAME_BYTES = 400_000  # so a listing reply stays well under protocol.MAX_LINE_BYTES
MAX_GROUPS_PER_REPLY = 16384  # 256 KiB of digests
MAX_LEAVES_PER_REPLY = 16384
MAX_HASH_RANGES = 64
MAX_HASH_RANGE_BYTES = 64 << 20  # per files_hash request, all ranges together
MAX_WAIT_S = 2.0
DEFAULT_WAIT_S = 0.3
CACHED_SIGNATURES = 16
WATCH_TICK_S = 0.2  # known files are stat'ed this often
RESCAN_S = 1.0  # the whole run dir is listed again (new files) this often

Hasher = Callable[[Any], bytes]  # bytes-like -> digest
Op = Callable[[Dict[str, Any]], Dict[str, Any]]
StatKey = Tuple[int, int, int, int]  # dev, inode, size in bytes, mtime in ns


# --- the block hash tree, shared with the controller ---


def hash_function(algo: str) -> Hasher:
    """One-shot 16-byte digest of a bytes-like object with the named algorithm."""
    if algo == ALGO_BLAKE2B:

        def blake(data: Any) -> bytes:
            return hashlib.blake2b(data, digest_size=DIGEST_BYTES).digest()

        return blake
    if algo == ALGO_XXH3:
        import xxhash  # optional on hosts: hello lists it only when importable

        def xxh3(data: Any) -> bytes:
            return bytes(xxhash.xxh3_128(data).digest())

        return xxh3
    raise ValueError(f"unknown hash algorithm {algo!r}")


def new_hasher(algo: str) -> Any:
    """An incremental hasher (update/digest) giving the same digests as hash_function."""
    if algo == ALGO_BLAKE2B:
        return hashlib.blake2b(digest_size=DIGEST_BYTES)
    if algo == ALGO_XXH3:
        import xxhash

        return xxhash.xxh3_128()
    raise ValueError(f"unknown hash algorithm {algo!r}")


def block_size_for(size: int) -> int:
    """Leaf block size (bytes) for a file of this size: a power of two, 16 KiB to 1 MiB."""
    block = MIN_BLOCK_BYTES
    while block < MAX_BLOCK_BYTES and size > block * TARGET_BLOCKS:
        block *= 2
    return block


def valid_block_size(block_size: Any) -> bool:
    return (
        isinstance(block_size, int)
        and not isinstance(block_size, bool)
        and MIN_BLOCK_BYTES <= block_size <= MAX_BLOCK_BYTES
        and block_size & (block_size - 1) == 0
    )


def leaf_count(size: int, block_size: int) -> int:
    return (size + block_size - 1) // block_size


def group_digests(leaves: bytes, algo: str) -> bytes:
    """The digest of every run of GROUP_BLOCKS leaf digests, concatenated."""
    digest = hash_function(algo)
    step = GROUP_BLOCKS * DIGEST_BYTES
    return b"".join(digest(leaves[i : i + step]) for i in range(0, len(leaves), step))


def tree_digest(size: int, block_size: int, groups: bytes, algo: str) -> bytes:
    """The whole-file digest: size, block size and group digests, hashed together."""
    header = TREE_TAG + size.to_bytes(8, "little") + block_size.to_bytes(4, "little")
    return hash_function(algo)(header + groups)


def leaf_digests(
    fh: Any,
    size: int,
    block_size: int,
    algo: str,
    progress: Callable[[int], None] | None = None,
) -> bytes:
    """Leaf digests of the first `size` bytes read from fh (fewer if the file is shorter)."""
    digest = hash_function(algo)
    out = bytearray()
    buffer = bytearray(max(READ_BYTES, block_size))
    view = memoryview(buffer)
    done = 0
    while done < size:
        want = min(len(buffer), size - done)
        got = _read_full(fh, view[:want])
        for start in range(0, got, block_size):
            out += digest(view[start : min(start + block_size, got)])
        done += got
        if progress is not None:
            progress(done)
        if got < want:
            break  # the file shrank while read: the caller's stat check sees it
    return bytes(out)


def _read_full(fh: Any, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = fh.readinto(view[got:])
        if not n:
            break
        got += n
    return got


# --- names ---


def display_name(name: str) -> str:
    """A file name as printable text: bytes that are not UTF-8 become \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_relpath(path: Any) -> str:
    """A run-relative path from a request, or RemoteError(E_UNSAFE_PATH) saying what is wrong."""
    if not isinstance(path, str) or not path:
        raise RemoteError(E_BAD_REQUEST, '"path" must be a non-empty string')
    if "\0" in path:
        raise RemoteError(E_UNSAFE_PATH, "path contains a NUL byte")
    if path.startswith("/"):
        raise RemoteError(E_UNSAFE_PATH, f"path {path[:200]!r} is absolute")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise RemoteError(E_UNSAFE_PATH, f"path {path[:200]!r} has an empty, '.' or '..' part")
    return path


def inside(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def matches(path: str, globs: list[str]) -> bool:
    """Whether a run-relative path matches one of the output globs.

    A glob with a '/' matches the whole path ('*' crosses directories); one without
    matches the file name at any depth, so '*.csv' finds logs/metrics.csv too.
    """
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in glob else name, glob) for glob in globs)


def list_files(run_dir: str, globs: list[str]) -> FileListing:
    """Regular files under run_dir matching globs; what matches but is not synced, and why."""
    real_dir = os.path.realpath(run_dir)
    files: list[FileEntry] = []
    skipped: list[SkippedFile] = []
    name_bytes = 0
    truncated = False
    stack: list[tuple[str, str, int]] = [("", run_dir, 0)]
    while stack and not truncated:
        rel_dir, abs_dir, depth = stack.pop()
        try:
            with os.scandir(abs_dir) as scan:
                entries = sorted(scan, key=lambda e: e.name)
        except OSError:
            continue  # vanished or unreadable directory
        for entry in entries:
            rel = entry.name if not rel_dir else rel_dir + "/" + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if depth < MAX_DEPTH:
                        stack.append((rel, entry.path, depth + 1))
                    continue
                if not matches(rel, globs):
                    continue
                found = _file_entry(entry, rel, real_dir)
            except FileNotFoundError:
                continue  # vanished while listed: the next listing tells
            except OSError as exc:
                found = SkippedFile(display_name(rel), f"cannot stat: {exc.strerror or exc}")
            if isinstance(found, FileEntry):
                files.append(found)
            else:
                skipped.append(found)
            name_bytes += len(rel)
            if len(files) + len(skipped) >= MAX_LISTED_FILES or name_bytes > MAX_LISTED_NAME_BYTES:
                truncated = True
                break
    files.sort(key=lambda f: f.path)
    return FileListing(tuple(files), tuple(skipped), truncated)


def _file_entry(entry: os.DirEntry[str], rel: str, real_dir: str) -> FileEntry | SkippedFile:
    if not is_utf8(rel):
        return SkippedFile(display_name(rel), "name is not valid UTF-8")
    if entry.is_symlink():
        target = os.path.realpath(entry.path)
        if not inside(target, real_dir):
            where = display_name(os.readlink(entry.path))
            return SkippedFile(rel, f"symlink to {where} leaves the run dir")
        try:
            st = os.stat(target)
        except FileNotFoundError:
            return SkippedFile(rel, "dangling symlink")
        if not stat.S_ISREG(st.st_mode):
            return SkippedFile(rel, "symlink to something that is not a regular file")
        return FileEntry(rel, st.st_size, st.st_mtime_ns, st.st_ino, link=True)
    st = entry.stat(follow_symlinks=False)
    if not stat.S_ISREG(st.st_mode):
        return SkippedFile(rel, "not a regular file")
    return FileEntry(rel, st.st_size, st.st_mtime_ns, st.st_ino)


def open_in_run_dir(run_dir: str, rel: str) -> tuple[int, os.stat_result, str]:
    """(fd, fstat, real path) of a regular file inside run_dir, refusing ways out of it."""
    real_dir = os.path.realpath(run_dir)
    real = os.path.realpath(os.path.join(run_dir, rel))
    if not inside(real, real_dir):
        raise RemoteError(E_UNSAFE_PATH, f"{rel[:200]} leaves the run dir")
    try:
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise RemoteError(E_NO_SUCH_FILE, f"no file {rel[:200]} in the run dir") from None
    except OSError as exc:
        raise RemoteError(E_NO_SUCH_FILE, f"cannot open {rel[:200]}: {exc}") from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RemoteError(E_UNSAFE_PATH, f"{rel[:200]} is not a regular file")
    return fd, st, real


def stat_key(st: os.stat_result) -> StatKey:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


# --- hashing jobs ---


class _HashJob:
    """Leaf digests of one file version, computed in a thread so requests keep flowing."""

    def __init__(self, fd: int, st: os.stat_result, real: str, block_size: int, algo: str):
        self.key = stat_key(st)
        self.read_ns = time.time_ns()  # host clock when it was stat'ed, before the first read
        self.real = real
        self.size = st.st_size
        self.block_size = block_size
        self.algo = algo
        self.hashed = 0  # bytes so far
        self.done = threading.Event()
        self.leaves = b""
        self.groups = b""
        self.digest = b""
        self.changed = False  # the file changed while it was read
        self.error: str | None = None
        thread = threading.Thread(target=self._run, args=(fd,), name="hash", daemon=True)
        thread.start()

    def _progress(self, done: int) -> None:
        self.hashed = done

    def _run(self, fd: int) -> None:
        try:
            with os.fdopen(fd, "rb", buffering=0) as fh:
                leaves = leaf_digests(fh, self.size, self.block_size, self.algo, self._progress)
                after = os.fstat(fh.fileno())
            try:
                now = os.stat(self.real)
            except OSError:
                now = None
            self.changed = stat_key(after) != self.key or now is None or stat_key(now) != self.key
            self.leaves = leaves
            self.groups = group_digests(leaves, self.algo)
            self.digest = tree_digest(self.size, self.block_size, self.groups, self.algo)
        except Exception as exc:  # reported to the controller instead of killing the thread
            self.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()


# --- the ops ---


class _Watch:
    def __init__(self, globs: list[str], listing: FileListing) -> None:
        self.globs = globs
        self.known = {f.path: f for f in listing.files}
        self.scanned = time.monotonic()


class FileOps:
    """File ops over <root>/runs/<run_id>/; `ops` is merged into the agent's ops."""

    def __init__(self, root: str, send: Callable[[dict[str, Any]], bool]) -> None:
        self.runs_dir = os.path.join(root, "runs")
        self.send = send
        self.algorithms = hash_algorithms()
        self._lock = threading.Lock()
        self._jobs: OrderedDict[tuple[str, str, str, int], _HashJob] = OrderedDict()
        self._watched: dict[str, _Watch] = {}
        self._watcher: threading.Thread | None = None
        self.ops: dict[str, Op] = {
            OP_FILES_LIST: self.op_list,
            OP_FILES_WATCH: self.op_watch,
            OP_FILES_SIGNATURE: self.op_signature,
            OP_FILES_HASH: self.op_hash,
        }

    # --- arguments ---

    def run_dir(self, message: dict[str, Any]) -> tuple[str, str]:
        run_id = message.get("run_id")
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise RemoteError(E_BAD_REQUEST, f"run id {run_id!r} is not 10 to 64 of [0-9a-z]")
        run_dir = os.path.join(self.runs_dir, run_id)
        if not os.path.isdir(run_dir):
            raise RemoteError(E_NO_SUCH_FILE, f"no run dir {run_dir}")
        return run_id, run_dir

    def algo(self, message: dict[str, Any]) -> str:
        algo = message.get("algo")
        if algo not in self.algorithms:
            known = ", ".join(self.algorithms)
            raise RemoteError(E_BAD_REQUEST, f"hash {algo!r} is not available here ({known})")
        return str(algo)

    @staticmethod
    def globs(message: dict[str, Any]) -> list[str]:
        globs = message.get("globs")
        if (
            not isinstance(globs, list)
            or len(globs) > MAX_GLOBS
            or not all(isinstance(g, str) and g for g in globs)
        ):
            raise RemoteError(E_BAD_REQUEST, '"globs" must be a list of non-empty strings')
        return globs

    # --- list and watch ---

    def op_list(self, message: dict[str, Any]) -> dict[str, Any]:
        _, run_dir = self.run_dir(message)
        return list_files(run_dir, self.globs(message)).to_wire()

    def op_watch(self, message: dict[str, Any]) -> dict[str, Any]:
        """Start (or stop, with watch: false) pushing EVENT_FILES for a run; reply the listing."""
        run_id = message.get("run_id")
        if message.get("watch") is False:
            with self._lock:
                self._watched.pop(str(run_id), None)
            return {}
        run_id, run_dir = self.run_dir(message)
        globs = self.globs(message)
        listing = list_files(run_dir, globs)
        with self._lock:
            self._watched[run_id] = _Watch(globs, listing)
            if self._watcher is None:
                self._watcher = threading.Thread(target=self._watch_loop, name="files", daemon=True)
                self._watcher.start()
        return listing.to_wire()

    def _watch_loop(self) -> None:
        while True:
            time.sleep(WATCH_TICK_S)
            with self._lock:
                watched = list(self._watched.items())
                if not watched:
                    self._watcher = None
                    return
            for run_id, watch in watched:
                try:
                    message = self._changes(run_id, watch)
                except Exception:  # one unreadable run dir must not stop watching the others
                    message = None
                if message is not None and not self.send(message):
                    with self._lock:
                        self._watched.clear()
                        self._watcher = None
                    return

    def _changes(self, run_id: str, watch: _Watch) -> dict[str, Any] | None:
        run_dir = os.path.join(self.runs_dir, run_id)
        now = time.monotonic()
        if now - watch.scanned >= RESCAN_S:
            if not os.path.isdir(run_dir):
                with self._lock:
                    self._watched.pop(run_id, None)
                return None
            current = {f.path: f for f in list_files(run_dir, watch.globs).files}
            watch.scanned = now
        else:
            current = {}
            for path, known in watch.known.items():
                try:
                    st = os.stat(os.path.join(run_dir, path))
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    current[path] = FileEntry(
                        path, st.st_size, st.st_mtime_ns, st.st_ino, link=known.link
                    )
        changed = [f for path, f in current.items() if watch.known.get(path) != f]
        removed = [path for path in watch.known if path not in current]
        watch.known = current
        if not changed and not removed:
            return None
        files = [f.__dict__ for f in changed]
        return event(EVENT_FILES, run_id=run_id, files=files, removed=removed)

    # --- hashing ---

    def op_signature(self, message: dict[str, Any]) -> dict[str, Any]:
        """Block digests of a file: group digests (a page of them) and the leaves of some groups.

        Hashing runs in a thread; a request waits up to `wait` seconds for it and otherwise
        answers SIGNATURE_HASHING with the progress, to be asked again.
        """
        run_id, run_dir = self.run_dir(message)
        path = check_relpath(message.get("path"))
        algo = self.algo(message)
        wait_s = message.get("wait", DEFAULT_WAIT_S)
        if isinstance(wait_s, bool) or not isinstance(wait_s, (int, float)):
            raise RemoteError(E_BAD_REQUEST, '"wait" must be a number of seconds')
        fd, st, real = open_in_run_dir(run_dir, path)
        block_size = message.get("block_size") or block_size_for(st.st_size)
        if not valid_block_size(block_size):
            os.close(fd)
            raise RemoteError(E_BAD_REQUEST, f"block size {block_size!r} is not a power of two")
        job_key = (run_id, path, algo, block_size)
        with self._lock:
            job = self._jobs.get(job_key)
            if job is not None and job.key == stat_key(st) and not job.changed:
                os.close(fd)
                self._jobs.move_to_end(job_key)
            else:
                job = self._jobs[job_key] = _HashJob(fd, st, real, block_size, algo)
                while len(self._jobs) > CACHED_SIGNATURES:
                    self._jobs.popitem(last=False)
        job.done.wait(max(0.0, min(float(wait_s), MAX_WAIT_S)))
        common = {
            "size": job.size,
            "mtime_ns": job.key[3],
            "ino": job.key[1],
            "read_ns": job.read_ns,
        }
        if not job.done.is_set():
            return dict(common, state=SIGNATURE_HASHING, hashed=job.hashed)
        if job.error is not None:
            raise RemoteError(E_NO_SUCH_FILE, f"hashing {path} failed: {job.error}")
        if job.changed:
            return dict(common, state=SIGNATURE_CHANGED)
        return dict(common, state=SIGNATURE_READY, **self._signature_fields(job, message))

    @staticmethod
    def _signature_fields(job: _HashJob, message: dict[str, Any]) -> dict[str, Any]:
        count = len(job.groups) // DIGEST_BYTES
        first = _int_arg(message, "groups_from", 0, 0, count)
        many = _int_arg(message, "groups_count", MAX_GROUPS_PER_REPLY, 0, MAX_GROUPS_PER_REPLY)
        wanted = message.get("leaves_of", [])
        if not isinstance(wanted, list) or not all(
            isinstance(g, int) and not isinstance(g, bool) and 0 <= g < count for g in wanted
        ):
            raise RemoteError(E_BAD_REQUEST, '"leaves_of" must list group indexes')
        if len(wanted) * GROUP_BLOCKS > MAX_LEAVES_PER_REPLY:
            raise RemoteError(E_BAD_REQUEST, f"at most {MAX_LEAVES_PER_REPLY} leaves per request")
        step = GROUP_BLOCKS * DIGEST_BYTES
        leaves = {str(g): _b64(job.leaves[g * step : (g + 1) * step]) for g in sorted(set(wanted))}
        groups = job.groups[first * DIGEST_BYTES : (first + many) * DIGEST_BYTES]
        return {
            "algo": job.algo,
            "block_size": job.block_size,
            "group_blocks": GROUP_BLOCKS,
            "group_count": count,
            "digest": job.digest.hex(),
            "groups_from": first,
            "groups": _b64(groups),
            "leaves": leaves,
        }

    def op_hash(self, message: dict[str, Any]) -> dict[str, Any]:
        """Digests of byte ranges of a file (None for a range past its end), and its stat."""
        _, run_dir = self.run_dir(message)
        path = check_relpath(message.get("path"))
        algo = self.algo(message)
        ranges = message.get("ranges")
        if (
            not isinstance(ranges, list)
            or len(ranges) > MAX_HASH_RANGES
            or not all(_is_range(r) for r in ranges)
        ):
            raise RemoteError(E_BAD_REQUEST, '"ranges" must be a list of [offset, length] pairs')
        if sum(r[1] for r in ranges) > MAX_HASH_RANGE_BYTES:
            raise RemoteError(E_BAD_REQUEST, f"at most {MAX_HASH_RANGE_BYTES} bytes per request")
        fd, st, _ = open_in_run_dir(run_dir, path)
        read_ns = time.time_ns()
        try:
            digests = [
                _hash_range(fd, offset, length, st.st_size, algo) for offset, length in ranges
            ]
        finally:
            os.close(fd)
        return {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ino": st.st_ino,
            "read_ns": read_ns,
            "digests": digests,
        }


def _hash_range(fd: int, offset: int, length: int, size: int, algo: str) -> str | None:
    if offset + length > size:
        return None
    hasher = new_hasher(algo)
    done = 0
    while done < length:
        chunk = os.pread(fd, min(READ_BYTES, length - done), offset + done)
        if not chunk:
            return None  # shrank while read
        hasher.update(chunk)
        done += len(chunk)
    return str(hasher.hexdigest())


def _is_range(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def _int_arg(message: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = message.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RemoteError(E_BAD_REQUEST, f"{name!r} must be an integer from {low} to {high}")
    return value


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
