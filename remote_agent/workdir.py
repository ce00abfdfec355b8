"""A run's work dir: the code copy, the data links, and the code files that are not outputs."""

from __future__ import annotations

import json
import os
from typing import Any

from remote_agent.outputs import matches
from remote_agent.protocol import (
    E_BAD_LINK,
    E_BAD_REQUEST,
    OWN_FILES_PREFIX,
    WORK_DIR,
    RemoteError,
)
from remote_agent.rundir import SNAPSHOT_RECORD

MAX_LINKS = 64
MAX_LINK_NAME_CHARS = 255
MAX_RECORDED_FILES = 20_000  # snapshot.json stays small even for a huge code dir


def link_pairs(links: Any) -> list[tuple[str, str]]:
    """(name in the work dir, absolute target) of a start request's links, each checked.

    A target that does not exist refuses the start (E_BAD_LINK) before anything is made, so
    nothing of the run exists on the host afterwards.
    """
    if not isinstance(links, dict) or len(links) > MAX_LINKS:
        raise RemoteError(E_BAD_REQUEST, f"links must map at most {MAX_LINKS} names to paths")
    pairs = []
    for name, target in links.items():
        if not isinstance(name, str) or not isinstance(target, str) or not target:
            raise RemoteError(E_BAD_REQUEST, "links must map names to paths (strings)")
        parts = name.split("/")
        if (
            not name
            or len(name) > MAX_LINK_NAME_CHARS
            or "\0" in name
            or name.startswith("/")
            or any(part in ("", ".", "..") for part in parts)
            or (parts[0] + "/").startswith(OWN_FILES_PREFIX)
        ):
            raise RemoteError(
                E_BAD_REQUEST,
                f"link name {name[:80]!r} must be a relative path inside the work dir "
                f"(no '..', not {OWN_FILES_PREFIX.rstrip('/')!r})",
            )
        path = os.path.expanduser(target)
        if not os.path.isabs(path):
            raise RemoteError(E_BAD_LINK, f"link {name}: target {target!r} is not an absolute path")
        if not os.path.exists(path):
            why = "dangling symlink" if os.path.lexists(path) else "no such file or directory"
            raise RemoteError(E_BAD_LINK, f"link {name} -> {path}: {why}")
        pairs.append((name, path))
    return pairs


def make_links(work_dir: str, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Symlink each target into the work dir; their manifest: target, size and mtime of the top."""
    made = []
    for name, target in pairs:
        path = os.path.join(work_dir, *name.split("/"))
        if os.path.lexists(path):
            raise RemoteError(
                E_BAD_LINK,
                f"link {name}: the code snapshot already has {name}; leave it out of the "
                "snapshot (exclude) or link it under another name",
            )
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
        os.symlink(target, path)
        try:
            st = os.stat(target)
            made.append({"name": name, "target": target, "size": st.st_size, "mtime": st.st_mtime})
        except OSError:  # gone since it was checked: the run will say so itself
            made.append({"name": name, "target": target, "size": None, "mtime": None})
    return made


def make_work_dir(run_dir: str) -> str:
    work = os.path.join(run_dir, WORK_DIR)
    os.mkdir(work, 0o700)
    os.chmod(work, 0o700)  # mkdir applied the umask
    return work


def record_predicate(outputs: list[str]) -> Any:
    """Which copied code files to record: those the run's output globs would sync."""
    globs = [glob for glob in outputs if not glob.startswith(OWN_FILES_PREFIX)]
    return (lambda path: matches(path, globs)) if globs else None


def write_snapshot_record(
    run_dir: str, code_hash: str | None, files: dict[str, list[int]], links: list[str]
) -> None:
    """Which work-dir names are not outputs: code files as copied, and the links."""
    if not files and not links:
        return
    kept = dict(sorted(files.items())[:MAX_RECORDED_FILES])
    record = {"code_hash": code_hash or "", "files": kept, "links": links}
    with open(os.path.join(run_dir, SNAPSHOT_RECORD), "w", encoding="utf-8") as f:
        json.dump(record, f, separators=(",", ":"))


def read_snapshot_record(run_dir: str) -> tuple[str, dict[str, list[int]], frozenset[str]]:
    """(code hash, {path: [size, mtime_ns]}, top-level link names); empty when none was made."""
    try:
        with open(os.path.join(run_dir, SNAPSHOT_RECORD), "rb") as f:
            data = json.loads(f.read(16 << 20).decode("utf-8"))
        files, code_hash, links = data["files"], data["code_hash"], data.get("links", [])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return "", {}, frozenset()
    if not isinstance(files, dict) or not isinstance(code_hash, str) or not isinstance(links, list):
        return "", {}, frozenset()
    tops = frozenset(str(name).split("/")[0] for name in links)
    return code_hash, files, tops
