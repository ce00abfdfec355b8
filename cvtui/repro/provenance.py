"""Run provenance at submit: the code dir's git state, command, config and env of each run.

The host half (GPUs, driver, the run's python and packages) is recorded by the engine when a
run starts (cvtui.engine.provenance); both go to the catalog's run_provenance table.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.repro.blobstore import BlobStore
    from cvtui.runspec import RunSpec

GIT_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class GitState:
    """A code dir's git state; all None when it is not a work tree (or git is missing)."""

    head: str | None = None  # `git rev-parse HEAD`
    dirty: bool | None = None  # tracked files of the code dir differ from HEAD
    diff: bytes | None = None  # `git diff HEAD --binary` of the code dir, when dirty


def _git(code_dir: str | Path, *args: str) -> bytes | None:
    """stdout of one git command in code_dir, or None when it fails or git is missing."""
    try:
        done = subprocess.run(
            ["git", "-C", str(code_dir), *args],
            capture_output=True,
            timeout=GIT_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def read_git_state(code_dir: str | Path) -> GitState:
    """HEAD, dirty flag and diff of a code dir: two git calls, none of them fatal."""
    head = _git(code_dir, "rev-parse", "--verify", "--quiet", "HEAD")
    if not head:
        return GitState()
    # `-- .` keeps the diff to the code dir (the files shipped); paths stay relative to the
    # top of the work tree, and the options undo user settings, so `git apply` works there.
    diff = _git(
        code_dir,
        "diff",
        "HEAD",
        "--binary",
        "--no-color",
        "--no-ext-diff",
        "--no-textconv",
        "--src-prefix=a/",
        "--dst-prefix=b/",
        "--",
        ".",
    )
    commit = head.decode("ascii", "replace").strip()
    if diff is None:
        return GitState(head=commit)
    return GitState(head=commit, dirty=bool(diff), diff=diff or None)


def submit_half(
    catalog: Catalog,
    blobs: BlobStore,
    runs: Sequence[Mapping[str, Any]],
    specs: Sequence[RunSpec],
    untracked: Mapping[str, bool] | None = None,
) -> list[dict[str, Any]]:
    """The submit half of each run about to be queued: code, git state, command, config, env.

    git runs once per distinct code dir, however many runs share it; a dirty tree's diff goes
    to the content store. A code dir whose snapshot ships files git does not track (untracked,
    by code dir) is dirty too: HEAD alone does not give that code. Write the rows with
    catalog.write_submit_provenance once the runs are inserted.
    """
    states: dict[str, tuple[str, GitState, str | None]] = {}
    rows = []
    now = time.time()
    for run, spec in zip(runs, specs, strict=True):
        if spec.code_dir not in states:
            root = str(Path(spec.code_dir).resolve())
            git = read_git_state(root)
            if git.head is not None and (untracked or {}).get(spec.code_dir):
                git = GitState(head=git.head, dirty=True, diff=git.diff)
            diff_hash = None
            if git.diff is not None:
                diff_hash = blobs.put_bytes(git.diff)
                catalog.record_blobs([(diff_hash, len(git.diff))], "diff")
            states[spec.code_dir] = (root, git, diff_hash)
        root, git, diff_hash = states[spec.code_dir]
        rows.append(
            {
                "run_id": run["id"],
                "code_hash": run.get("code_hash"),
                "code_root": root,
                "git_head": git.head,
                "git_dirty": None if git.dirty is None else int(git.dirty),
                "git_diff_hash": diff_hash,
                "command": json.dumps(run["command"]),
                "config": json.dumps(dict(spec.config)),
                "env": json.dumps(dict(spec.env)),
                "submitted_at": now,
            }
        )
    return rows
