"""A run dir's output files: safe run-relative names, glob matching, and the listing."""

from __future__ import annotations

import fnmatch
import os
import stat
from typing import Any, Tuple

from remote_agent.protocol import (
    E_BAD_REQUEST,
    E_NO_SUCH_FILE,
    E_UNSAFE_PATH,
    FileEntry,
    FileListing,
    RemoteError,
    SkippedFile,
)

MAX_DEPTH = 32
MAX_LISTED_FILES = 4000
MAX_LISTED_NAME_BYTES = 400_000  # so a listing reply stays well under protocol.MAX_LINE_BYTES

StatKey = Tuple[int, int, int, int]  # dev, inode, size in bytes, mtime in ns


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
