"""The agent's file ops: list a run's output files, hash them in blocks for delta sync, watch them.

The block hash tree is remote_agent/blocktree.py, names and listings remote_agent/outputs.py.
"""

from __future__ import annotations

import base64
import fnmatch
import os
import stat
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict

from remote_agent.blocktree import (
    DIGEST_BYTES,
    GROUP_BLOCKS,
    READ_BYTES,
    block_size_for,
    group_digests,
    hash_workers,
    leaf_digests,
    measure_speeds,
    new_hasher,
    rank_algorithms,
    tree_digest,
    valid_block_size,
)
from remote_agent.doctor import block_hash_algorithms
from remote_agent.outputs import check_relpath, list_files, matches, open_in_run_dir, stat_key
from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_NO_SUCH_FILE,
    EVENT_FILES,
    OP_FILES_ALGORITHMS,
    OP_FILES_HASH,
    OP_FILES_LIST,
    OP_FILES_SIGNATURE,
    OP_FILES_WATCH,
    OWN_FILES_PREFIX,
    SIGNATURE_CHANGED,
    SIGNATURE_HASHING,
    SIGNATURE_READY,
    WORK_DIR,
    FileEntry,
    FileListing,
    RemoteError,
    event,
    host_relpath,
)
from remote_agent.rundir import LOG_FILE, OWN_FILES, RUN_ID
from remote_agent.workdir import read_snapshot_record

MAX_GLOBS = 100
MAX_GROUPS_PER_REPLY = 16384  # 256 KiB of digests
MAX_LEAVES_PER_REPLY = 16384
MAX_HASH_RANGES = 64
MAX_HASH_RANGE_BYTES = 64 << 20  # per files_hash request, all ranges together
MAX_WAIT_S = 2.0
DEFAULT_WAIT_S = 0.3
CACHED_SIGNATURES = 16
COMPARE_MAX_BYTES = 1 << 20  # a rewritten code file up to this size is compared with its source
OWN_OUTPUTS = (LOG_FILE,)  # cvtui's files that sync as outputs, under OWN_FILES_PREFIX
WATCH_TICK_S = 0.2  # known files are stat'ed this often
RESCAN_S = 1.0  # the whole run dir is listed again (new files) this often, at most
RESCAN_COST_FACTOR = 20  # ... and only after 20 times as long as the last listing took

Op = Callable[[Dict[str, Any]], Dict[str, Any]]


def run_dir_of(runs_dir: str, run_id: Any) -> str:
    """The run dir of a run id from a request, or RemoteError saying why there is none."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id):
        raise RemoteError(E_BAD_REQUEST, f"run id {run_id!r} is not 10 to 64 of [0-9a-z]")
    run_dir = os.path.join(runs_dir, run_id)
    if not os.path.isdir(run_dir):
        raise RemoteError(E_NO_SUCH_FILE, f"no run dir {run_dir}")
    return run_dir


def open_output(run_dir: str, path: str) -> tuple[int, os.stat_result, str]:
    """(fd, fstat, real path) of an output file named as listings name it (host_relpath)."""
    base = WORK_DIR if os.path.isdir(os.path.join(run_dir, WORK_DIR)) else ""
    if path.startswith(OWN_FILES_PREFIX) and path[len(OWN_FILES_PREFIX) :] not in OWN_OUTPUTS:
        raise RemoteError(E_NO_SUCH_FILE, f"{path[:200]} is not a file of cvtui's")
    return open_in_run_dir(run_dir, host_relpath(check_relpath(path), base))


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
                leaves = leaf_digests(
                    fh, self.size, self.block_size, self.algo, self._progress, hash_workers()
                )
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
        self.base = listing.base
        self.scanned = time.monotonic()
        self.rescan_s = RESCAN_S  # grows for a run dir so big that listing it costs much


class _RunOutputs:
    """What of a run dir is an output: the work dir's files matching the globs, less the code
    files the run left as shipped and the links made for it, plus cvtui's own output.log."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir
        self.base = WORK_DIR if os.path.isdir(os.path.join(run_dir, WORK_DIR)) else ""
        self.code_hash, self.shipped, self.links = read_snapshot_record(run_dir)

    def listing(self, globs: list[str], compared: dict[Any, bool], code_root: str) -> FileListing:
        own = [g[len(OWN_FILES_PREFIX) :] for g in globs if g.startswith(OWN_FILES_PREFIX)]
        mine = [g for g in globs if not g.startswith(OWN_FILES_PREFIX)]
        top = os.path.join(self.run_dir, self.base) if self.base else self.run_dir
        found = list_files(top, mine) if mine else FileListing(base=self.base)
        files = [f for f in found.files if self._is_output(f, compared, code_root)]
        skipped = [s for s in found.skipped if s.path.split("/")[0] not in self.links]
        for name in OWN_OUTPUTS:
            if any(fnmatch.fnmatchcase(name, g) for g in own):
                try:
                    st = os.stat(os.path.join(self.run_dir, name))
                except OSError:
                    continue
                path = OWN_FILES_PREFIX + name
                files.append(FileEntry(path, st.st_size, st.st_mtime_ns, st.st_ino))
        unmatched = tuple(g for g in mine if not any(matches(f.path, [g]) for f in files))
        return FileListing(tuple(files), tuple(skipped), found.truncated, self.base, unmatched)

    def _is_output(self, entry: FileEntry, compared: dict[Any, bool], code_root: str) -> bool:
        if not self.base and "/" not in entry.path and entry.path in OWN_FILES:
            return False  # an older run dir: cvtui's files sat beside the outputs
        if entry.path.split("/")[0] in self.links:
            return False
        shipped = self.shipped.get(entry.path)
        if not shipped or shipped[0] != entry.size:
            return True
        if shipped[1] == entry.mtime_ns:
            return False
        if entry.size > COMPARE_MAX_BYTES or not self.code_hash:
            return True
        key = (self.run_dir, entry.path, entry.size, entry.mtime_ns, entry.ino)
        if key not in compared:
            source = os.path.join(code_root, self.code_hash, entry.path)
            here = os.path.join(self.run_dir, self.base, entry.path)
            compared[key] = _same_bytes(source, here)
            while len(compared) > 4096:
                compared.pop(next(iter(compared)))
        return not compared[key]


def _same_bytes(one: str, other: str) -> bool:
    try:
        with open(one, "rb") as a, open(other, "rb") as b:
            return a.read(COMPARE_MAX_BYTES + 1) == b.read(COMPARE_MAX_BYTES + 1)
    except OSError:
        return False


class FileOps:
    """File ops over <root>/runs/<run_id>/; `ops` is merged into the agent's ops."""

    def __init__(self, root: str, send: Callable[[dict[str, Any]], bool]) -> None:
        self.runs_dir = os.path.join(root, "runs")
        self.code_root = os.path.join(root, "code")
        self._compared: dict[Any, bool] = {}  # rewritten code files: same bytes as shipped?
        self.send = send
        self.algorithms = block_hash_algorithms()
        self._speeds: dict[str, float] | None = None  # timed on the first files_algorithms
        self._lock = threading.Lock()
        self._jobs: OrderedDict[tuple[str, str, str, int], _HashJob] = OrderedDict()
        self._watched: dict[str, _Watch] = {}
        self._watcher: threading.Thread | None = None
        self.ops: dict[str, Op] = {
            OP_FILES_LIST: self.op_list,
            OP_FILES_WATCH: self.op_watch,
            OP_FILES_SIGNATURE: self.op_signature,
            OP_FILES_HASH: self.op_hash,
            OP_FILES_ALGORITHMS: self.op_algorithms,
        }

    # --- arguments ---

    def run_dir(self, message: dict[str, Any]) -> tuple[str, str]:
        run_id = message.get("run_id")
        return str(run_id), run_dir_of(self.runs_dir, run_id)

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

    def op_algorithms(self, message: dict[str, Any]) -> dict[str, Any]:
        """The hashes this host offers for sync, fastest first, timed once (about 10 ms)."""
        with self._lock:
            if self._speeds is None:
                self._speeds = measure_speeds(self.algorithms)
            speeds = dict(self._speeds)
        return {"algorithms": rank_algorithms(speeds), "speeds": speeds}

    # --- list and watch ---

    def op_list(self, message: dict[str, Any]) -> dict[str, Any]:
        _, run_dir = self.run_dir(message)
        return self._listing(run_dir, self.globs(message)).to_wire()

    def op_watch(self, message: dict[str, Any]) -> dict[str, Any]:
        """Start (or stop, with watch: false) pushing EVENT_FILES for a run; reply the listing."""
        run_id = message.get("run_id")
        if message.get("watch") is False:
            with self._lock:
                self._watched.pop(str(run_id), None)
            return {}
        run_id, run_dir = self.run_dir(message)
        globs = self.globs(message)
        listing = self._listing(run_dir, globs)
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
        if now - watch.scanned >= watch.rescan_s:
            if not os.path.isdir(run_dir):
                with self._lock:
                    self._watched.pop(run_id, None)
                return None
            current = self._rescan(run_dir, watch)
        else:
            current = {}
            for path, known in watch.known.items():
                try:
                    st = os.stat(os.path.join(run_dir, host_relpath(path, watch.base)))
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

    def _listing(self, run_dir: str, globs: list[str]) -> FileListing:
        return _RunOutputs(run_dir).listing(globs, self._compared, self.code_root)

    def _rescan(self, run_dir: str, watch: _Watch) -> dict[str, FileEntry]:
        started = time.monotonic()
        found = {f.path: f for f in self._listing(run_dir, watch.globs).files}
        watch.scanned = time.monotonic()
        # Listing at most ~5% of the time: a code snapshot of 10,000 files is walked less often.
        watch.rescan_s = max(RESCAN_S, RESCAN_COST_FACTOR * (watch.scanned - started))
        return found

    @staticmethod
    def _open(run_dir: str, path: str) -> tuple[int, os.stat_result, str]:
        return open_output(run_dir, path)

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
        fd, st, real = self._open(run_dir, path)
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
        fd, st, _ = self._open(run_dir, path)
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
