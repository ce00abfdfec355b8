"""The agent's workspace ops: list a host's copy of a code dir with content hashes, replace or
delete one of its files atomically, and never touch anything outside it."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import stat
from collections import OrderedDict
from typing import Any, Callable, Dict, Tuple

from remote_agent.blocktree import READ_BYTES, new_hasher
from remote_agent.doctor import hash_algorithms
from remote_agent.outputs import check_relpath, display_name, inside, is_utf8
from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_NO_SUCH_FILE,
    E_UNSAFE_PATH,
    E_WORKSPACE_CHANGED,
    OP_WORKSPACE_DELETE,
    OP_WORKSPACE_LIST,
    OP_WORKSPACE_PUT,
    OP_WORKSPACE_PUT_MANY,
    WORKSPACE_UPLOAD_PREFIX,
    RemoteError,
    SkippedFile,
    WorkspaceFile,
    WorkspaceListing,
)

MAX_DEPTH = 32
PAGE_BYTES = 512 << 10  # JSON bytes of entries per reply, well under protocol.MAX_LINE_BYTES
PAGE_HASH_BYTES = 256 << 20  # content hashed per reply, so one request never runs for minutes
ENTRY_OVERHEAD_BYTES = 120  # the fields of an entry besides its path and hash
CACHED_HASHES = 50_000
MAX_PATTERNS = 200
UPLOAD_NAME = re.compile(re.escape(WORKSPACE_UPLOAD_PREFIX) + r"[0-9a-f]{8,64}\Z")
HEX_DIGEST = re.compile(r"[0-9a-f]{16,128}\Z")

Op = Callable[[Dict[str, Any]], Dict[str, Any]]
# realpath, dev, inode, size, mtime_ns, algo -> hex digest
HashKey = Tuple[str, int, int, int, int, str]


def _upload_name(message: dict[str, Any]) -> str:
    name = message.get("upload")
    if not isinstance(name, str) or not UPLOAD_NAME.match(name):
        raise RemoteError(E_BAD_REQUEST, f'"upload" must be {WORKSPACE_UPLOAD_PREFIX}<hex>')
    return name


def resolve_dir(value: Any) -> str:
    """A workspace dir from a request as an absolute, normalised path (not yet checked)."""
    if not isinstance(value, str) or not value or "\0" in value:
        raise RemoteError(E_BAD_REQUEST, '"dir" must be a non-empty path')
    path = os.path.expanduser(value)
    if not os.path.isabs(path):
        path = os.path.join(os.path.expanduser("~"), path)
    return os.path.normpath(path)


def _strings(message: dict[str, Any], name: str) -> list[str]:
    value = message.get(name, [])
    if (
        not isinstance(value, list)
        or len(value) > MAX_PATTERNS
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise RemoteError(E_BAD_REQUEST, f"{name!r} must be a list of non-empty strings")
    return value


def _digest(message: dict[str, Any], name: str, optional: bool = False) -> str | None:
    value = message.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not HEX_DIGEST.match(value):
        raise RemoteError(E_BAD_REQUEST, f"{name!r} must be a lowercase hex digest")
    return value


class _Filter:
    """Which names of a workspace are code: the controller's skip lists, and never our uploads."""

    def __init__(self, message: dict[str, Any]) -> None:
        self.dirs = set(_strings(message, "skip_dirs"))
        self.suffixes = tuple(_strings(message, "skip_suffixes"))
        self.exclude = _strings(message, "exclude")

    def skip_dir(self, name: str, path: str) -> bool:
        return name in self.dirs or os.path.exists(os.path.join(path, "pyvenv.cfg"))

    def skip_file(self, rel: str, name: str) -> bool:
        if name.startswith(WORKSPACE_UPLOAD_PREFIX):
            return True
        if self.suffixes and name.endswith(self.suffixes):
            return True
        return any(fnmatch.fnmatch(rel, p) or fnmatch.fnmatch(name, p) for p in self.exclude)


class WorkspaceOps:
    """The workspace ops; `ops` is merged into the agent's ops."""

    def __init__(self) -> None:
        self.algorithms = hash_algorithms()
        self._hashes: OrderedDict[HashKey, str] = OrderedDict()
        self.ops: dict[str, Op] = {
            OP_WORKSPACE_LIST: self.op_list,
            OP_WORKSPACE_PUT: self.op_put,
            OP_WORKSPACE_PUT_MANY: self.op_put_many,
            OP_WORKSPACE_DELETE: self.op_delete,
        }

    # --- arguments ---

    def algo(self, message: dict[str, Any]) -> str:
        algo = message.get("algo")
        if algo is None:
            return self.algorithms[0]
        if algo not in self.algorithms:
            known = ", ".join(self.algorithms)
            raise RemoteError(E_BAD_REQUEST, f"hash {algo!r} is not available here ({known})")
        return str(algo)

    @staticmethod
    def existing_dir(message: dict[str, Any]) -> str:
        top = resolve_dir(message.get("dir"))
        if not os.path.isdir(top):
            raise RemoteError(E_NO_SUCH_FILE, f"no workspace dir {top}")
        return top

    # --- hashing ---

    def file_hash(self, real: str, st: os.stat_result, algo: str) -> str:
        """Hex digest of a regular file's content; unchanged files are not read again."""
        key = (real, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, algo)
        cached = self._hashes.get(key)
        if cached is not None:
            self._hashes.move_to_end(key)
            return cached
        digest = hash_path(real, algo)
        self._hashes[key] = digest
        while len(self._hashes) > CACHED_HASHES:
            self._hashes.popitem(last=False)
        return digest

    # --- list ---

    def op_list(self, message: dict[str, Any]) -> dict[str, Any]:
        """One page of the workspace's files, sorted by path, each with its content hash."""
        top = resolve_dir(message.get("dir"))
        algo = self.algo(message)
        after = message.get("after")
        if after is not None and not isinstance(after, str):
            raise RemoteError(E_BAD_REQUEST, '"after" must be a path or null')
        if not os.path.lexists(top):
            return WorkspaceListing(top, False, algo).to_wire()
        if not os.path.isdir(top):
            raise RemoteError(E_BAD_REQUEST, f"workspace {top} is not a directory")
        found, skipped = walk(top, _Filter(message))
        real_top = os.path.realpath(top)
        files: list[WorkspaceFile] = []
        page_bytes = hashed = 0
        next_path = None
        for rel, path in found:
            if after is not None and rel <= after:
                continue
            if files and (page_bytes > PAGE_BYTES or hashed > PAGE_HASH_BYTES):
                next_path = files[-1].path
                break
            entry = self.entry(rel, path, real_top, algo)
            if isinstance(entry, SkippedFile):
                skipped.append(entry)
                continue
            if entry is None:
                continue  # gone since it was listed
            files.append(entry)
            page_bytes += len(rel.encode()) + len(entry.hash) + ENTRY_OVERHEAD_BYTES
            hashed += entry.size
        if after is not None:
            skipped = [s for s in skipped if s.path > after]
        if next_path is not None:
            skipped = [s for s in skipped if s.path <= next_path]
        listing = WorkspaceListing(top, True, algo, tuple(files), tuple(skipped), next_path)
        return listing.to_wire()

    def entry(
        self, rel: str, path: str, real_top: str, algo: str
    ) -> WorkspaceFile | SkippedFile | None:
        try:
            st = os.lstat(path)
            link = stat.S_ISLNK(st.st_mode)
            real = os.path.realpath(path) if link else path
            if link:
                if not inside(real, real_top):
                    where = display_name(os.readlink(path))
                    return SkippedFile(rel, f"symlink to {where} leaves the workspace")
                if not os.path.exists(real):
                    return SkippedFile(rel, "dangling symlink")
                st = os.stat(real)
            if not stat.S_ISREG(st.st_mode):
                return SkippedFile(rel, "not a regular file")
            digest = self.file_hash(real, st, algo)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return SkippedFile(rel, f"cannot read: {exc.strerror or exc}")
        executable = bool(st.st_mode & stat.S_IXUSR)
        return WorkspaceFile(rel, st.st_size, st.st_mtime_ns, executable, digest, link)

    # --- put and delete ---

    @staticmethod
    def current_hash(top: str, rel: str, algo: str) -> str | None:
        """The hash of the file at rel now (read afresh), None when there is none.

        Refuses paths that lead out of the workspace and things that are not files.
        """
        path = os.path.join(top, rel)
        parent = os.path.realpath(os.path.dirname(path))
        real_top = os.path.realpath(top)
        if parent != real_top and not inside(parent, real_top):
            raise RemoteError(E_UNSAFE_PATH, f"{rel[:200]} leaves the workspace")
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        real = path
        if stat.S_ISLNK(st.st_mode):
            real = os.path.realpath(path)
            if not inside(real, real_top):
                raise RemoteError(E_UNSAFE_PATH, f"{rel[:200]} is a symlink out of the workspace")
            try:
                st = os.stat(real)
            except FileNotFoundError:
                dangling = f"{rel[:200]} is a dangling symlink"
                raise RemoteError(E_WORKSPACE_CHANGED, dangling) from None
        if not stat.S_ISREG(st.st_mode):
            raise RemoteError(E_WORKSPACE_CHANGED, f"{rel[:200]} is not a regular file")
        return hash_path(real, algo)

    def op_put(self, message: dict[str, Any]) -> dict[str, Any]:
        """Rename an uploaded file to path if the file there is still what was listed."""
        top = self.existing_dir(message)
        upload = os.path.join(top, _upload_name(message))
        try:
            rel = check_relpath(message.get("path"))
            self._place(top, upload, rel, self.algo(message), message)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(upload)
        return {"path": rel}

    def op_put_many(self, message: dict[str, Any]) -> dict[str, Any]:
        """op_put for many files sent as one uploaded tar (members "0", "1", ... in order).

        Each file is checked and placed on its own: {"errors": [null or why, ...]}.
        """
        top = self.existing_dir(message)
        upload = os.path.join(top, _upload_name(message))
        items = message.get("items")
        errors: list[str | None] = []
        try:
            algo = self.algo(message)
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise RemoteError(E_BAD_REQUEST, '"items" must be a list of objects')
            import tarfile  # only this op reads archives

            try:
                archive = tarfile.open(upload, "r:")  # noqa: SIM115 (closed by the with below)
            except FileNotFoundError:
                raise RemoteError(E_NO_SUCH_FILE, "no upload") from None
            except tarfile.TarError as exc:
                raise RemoteError(E_BAD_REQUEST, f"upload is not a tar: {exc}") from None
            with archive:
                members = {m.name: m for m in archive.getmembers() if m.isreg()}
                for index, item in enumerate(items):
                    errors.append(self._place_member(top, archive, members, index, item, algo))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(upload)
        return {"errors": errors}

    def _place_member(
        self, top: str, archive: Any, members: dict[str, Any], index: int, item: Any, algo: str
    ) -> str | None:
        member = members.get(str(index))
        part = os.path.join(top, f"{WORKSPACE_UPLOAD_PREFIX}{os.urandom(8).hex()}")
        try:
            rel = check_relpath(item.get("path"))
            if member is None:
                raise RemoteError(E_BAD_REQUEST, f"no member {index} in the upload")
            stream = archive.extractfile(member)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with stream, os.fdopen(os.open(part, flags, 0o600), "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            self._place(top, part, rel, algo, item)
        except RemoteError as exc:
            return exc.message
        except OSError as exc:
            return f"{exc.strerror or exc}"
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        return None

    def _place(self, top: str, upload: str, rel: str, algo: str, fields: dict[str, Any]) -> None:
        """Check an uploaded file against its hash and the listed one, then rename it to rel."""
        digest = _digest(fields, "hash")
        replaces = _digest(fields, "replaces", optional=True)
        executable = fields.get("executable", False)
        if not isinstance(executable, bool):
            raise RemoteError(E_BAD_REQUEST, '"executable" must be true or false')
        current = self.current_hash(top, rel, algo)
        if current != replaces:
            now = "absent" if current is None else f"{current[:12]}"
            raise RemoteError(E_WORKSPACE_CHANGED, f"{rel[:200]} changed on the host ({now})")
        try:
            st = os.lstat(upload)
        except FileNotFoundError:
            raise RemoteError(E_NO_SUCH_FILE, f"no upload {os.path.basename(upload)}") from None
        if not stat.S_ISREG(st.st_mode):
            raise RemoteError(E_UNSAFE_PATH, f"upload {os.path.basename(upload)} is not a file")
        got = hash_path(upload, algo)
        if got != digest:
            raise RemoteError(E_BAD_REQUEST, f"upload hashes to {got[:12]}, not {digest}")
        parent = os.path.dirname(os.path.join(top, rel))
        os.makedirs(parent, mode=0o755, exist_ok=True)
        self.current_hash(top, rel, algo)  # the dirs just made are checked once more
        os.chmod(upload, 0o755 if executable else 0o644)
        os.replace(upload, os.path.join(top, rel))

    def op_delete(self, message: dict[str, Any]) -> dict[str, Any]:
        """Remove path if it is still what was listed; directories it leaves empty go too."""
        top = self.existing_dir(message)
        rel = check_relpath(message.get("path"))
        algo = self.algo(message)
        digest = _digest(message, "hash")
        current = self.current_hash(top, rel, algo)
        if current != digest:
            now = "absent" if current is None else f"{current[:12]}"
            raise RemoteError(E_WORKSPACE_CHANGED, f"{rel[:200]} changed on the host ({now})")
        os.unlink(os.path.join(top, rel))
        parent = os.path.dirname(rel)
        while parent:
            try:
                os.rmdir(os.path.join(top, parent))
            except OSError:  # not empty (or not ours to remove): stop there
                break
            parent = os.path.dirname(parent)
        return {"path": rel}


def hash_path(path: str, algo: str) -> str:
    """Hex digest of a file's whole content (not following a final symlink)."""
    hasher = new_hasher(algo)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    with os.fdopen(fd, "rb", buffering=0) as fh:
        while True:
            chunk = fh.read(READ_BYTES)
            if not chunk:
                break
            hasher.update(chunk)
    return str(hasher.hexdigest())


def walk(top: str, keep: _Filter) -> tuple[list[tuple[str, str]], list[SkippedFile]]:
    """(relative path, path) of every candidate file under top, sorted; names skipped, and why.

    Directories are never entered through a symlink; symlinks to files are judged by entry().
    """
    found: list[tuple[str, str]] = []
    skipped: list[SkippedFile] = []
    stack: list[tuple[str, str, int]] = [("", top, 0)]
    while stack:
        rel_dir, abs_dir, depth = stack.pop()
        try:
            with os.scandir(abs_dir) as scan:
                entries = list(scan)
        except OSError:
            continue  # vanished or unreadable directory
        for entry in entries:
            rel = entry.name if not rel_dir else rel_dir + "/" + entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                if entry.is_symlink() and entry.is_dir():
                    skipped.append(SkippedFile(display_name(rel), "symlink to a directory"))
                    continue
            except OSError:
                continue
            if is_dir:
                if depth < MAX_DEPTH and not keep.skip_dir(entry.name, entry.path):
                    stack.append((rel, entry.path, depth + 1))
                continue
            if not is_utf8(rel):
                skipped.append(SkippedFile(display_name(rel), "name is not valid UTF-8"))
            elif not keep.skip_file(rel, entry.name):
                found.append((rel, entry.path))
    found.sort()
    skipped.sort(key=lambda s: s.path)
    return found, skipped
