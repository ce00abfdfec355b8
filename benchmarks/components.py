"""`cvtui components scan` at lab scale: a 5,000-file git work tree, cold, then warm after 1 edit.

The baseline is `git status --porcelain` on the same tree, after the same edit, interleaved
with the scans: both list the work tree and stat every file, so their ratio shows what the
catalog and the content store add.
"""

from __future__ import annotations

import cProfile
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks import Options
from benchmarks.table import Row, Target
from cvtui.catalog import Catalog
from cvtui.repro.blobstore import BlobStore
from cvtui.repro.components import scan

FILES = 5000
PACKAGES = 50  # top-level dirs (component categories), like a lab's models/, data/, ...
AGE_S = 3600.0  # the tree was checked out an hour ago: its files are not racy
GIT_ENV = {
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.org",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.org",
}


def git(tree: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["git", "-C", str(tree), *args],
        check=True,
        capture_output=True,
        env={**os.environ, **GIT_ENV},
    )


def make_tree(tree: Path, files: int) -> Path:
    """A committed git work tree of `files` small Python files in PACKAGES dirs, 3 levels deep."""
    past = time.time() - AGE_S
    for index in range(files):
        path = tree / f"pkg{index % PACKAGES:02d}" / f"sub{index % 7}" / f"mod_{index:04d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        body = "".join(f"value_{n} = {index * n}\n" for n in range(20 + index % 120))
        path.write_text(f'"""Module {index}."""\n{body}')
        os.utime(path, (past, past))
    (tree / ".gitignore").write_text("outputs/\n__pycache__/\n")
    os.utime(tree / ".gitignore", (past, past))
    git(tree, "init", "-q")
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", "bench tree")
    return tree


def edit(path: Path, round_: int) -> None:
    with open(path, "a") as fh:
        fh.write(f"edited_{round_} = {round_}\n")


def timed_s(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def git_status_s(tree: Path) -> float:
    return timed_s(lambda: git(tree, "status", "--porcelain"))


def cli_scan_s(home: Path, tree: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "components", "scan"]
    start = time.perf_counter()
    done = subprocess.run([*argv, str(tree), "--json"], capture_output=True, text=True, env=env)
    elapsed = time.perf_counter() - start
    if done.returncode != 0 or len(json.loads(done.stdout)["new_versions"]) != 1:
        raise RuntimeError(f"cvtui components scan: {done.stderr or done.stdout}".strip())
    return elapsed


def run(options: Options) -> list[Row]:
    runs = 3 if options.quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        tree = make_tree(Path(tmp) / "code", FILES)
        home = Path(tmp) / "home"
        catalog = Catalog.open_home(home)
        blobs = BlobStore.in_home(home)
        git_status_s(tree)  # let git write its index stat data once, as a lab's tree has
        start = time.perf_counter()
        cold = scan(catalog, blobs, tree)
        cold_s = time.perf_counter() - start
        if cold.hashed != FILES + 1:  # + .gitignore
            raise RuntimeError(f"cold scan hashed {cold.hashed} files, expected {FILES + 1}")
        target = tree / "pkg07" / "sub0" / "mod_0007.py"
        profiler = cProfile.Profile() if options.profile else None
        warm_s, hashed, status_s = [], [], []
        for round_ in range(runs):
            edit(target, round_)
            if round_ % 2:  # alternate who reads the edited tree first (page cache, index)
                status_s.append(git_status_s(tree))
            if profiler is not None:
                profiler.enable()
            start = time.perf_counter()
            result = scan(catalog, blobs, tree)
            warm_s.append(time.perf_counter() - start)
            if profiler is not None:
                profiler.disable()
            if not round_ % 2:
                status_s.append(git_status_s(tree))
            if [e.path for e in result.new_versions] != [target.relative_to(tree).as_posix()]:
                raise RuntimeError(f"warm scan found {len(result.new_versions)} new versions")
            hashed.append(result.hashed)
        catalog.close()
        cli_s = []
        for round_ in range(runs, runs + max(3, runs // 2)):
            edit(target, round_)
            cli_s.append(cli_scan_s(home, tree))
        if profiler is not None:
            stats = pstats.Stats(profiler, stream=sys.stderr)
            stats.sort_stats("cumulative").print_stats(25)
    git_ms = statistics.median(status_s) * 1000
    return [
        Row("components cold scan 5k", cold_s * 1000, "ms",
            note=f"{FILES + 1} files of a git work tree hashed and stored as blobs "
            "(one file each: the disk's file-create cost dominates)"),
        Row("components warm scan 5k", statistics.median(warm_s) * 1000, "ms",
            baseline=git_ms, baseline_name="git status --porcelain",
            target=Target(1000.0, strict=True),
            note=f"median of {runs}, 1 file edited before each; max "
            f"{max(warm_s) * 1000:.0f} ms; files hashed {min(hashed)}-{max(hashed)}"),
        Row("components scan CLI 5k", statistics.median(cli_s) * 1000, "ms",
            baseline=git_ms, baseline_name="git status --porcelain",
            target=Target(1000.0, strict=True),
            note=f"median of {len(cli_s)}: `cvtui components scan DIR` as a user runs it, "
            "python start and catalog open included"),
    ]  # fmt: skip
