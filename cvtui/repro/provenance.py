"""Run provenance: what a run needs to be reproduced, recorded at submit and at dispatch."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from remote_agent import protocol
from remote_agent.protocol import BACKEND_SIMULATED, RemoteError

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.engine import HostSession
    from cvtui.engine.scheduler import Placement
    from cvtui.repro.blobstore import BlobStore
    from cvtui.runspec import RunSpec

log = logging.getLogger("cvtui.repro.provenance")

GIT_TIMEOUT_S = 20.0
ENVIRONMENT_TIMEOUT_S = 30.0  # the agent gives its package listing 20 s
ENVIRONMENT_POLL_S = 0.25  # how often the agent is asked again while it reads
ENVIRONMENT_FRESH_S = 3600.0  # a host's environment younger than this is not read again
SIMULATED_MARK = " [simulated]"  # after a GPU model, so a simulated GPU never reads as real

SUBMIT_COLUMNS = (
    "code_hash",
    "code_root",
    "git_head",
    "git_dirty",
    "git_diff_hash",
    "command",
    "config",
    "env",
    "submitted_at",
)
DISPATCH_COLUMNS = (
    "host",
    "gpus",
    "gpu_models",
    "driver",
    "command",
    "dispatched_at",
    "links",
    "gpu_uuids",
    "env_key",
)
RUN_PYTHON_TIMEOUT_S = 60.0  # the run's setup may take a while before its python is known


# -- submit half --------------------------------------------------------------------------
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
    write_submit_half once the runs are inserted.
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


def write_submit_half(catalog: Catalog, rows: Sequence[Mapping[str, Any]]) -> None:
    """Upsert the submit columns; a dispatch half already written (a fast engine) is kept."""
    if not rows:
        return
    names = ("run_id", *SUBMIT_COLUMNS)
    updates = ", ".join(f"{c} = excluded.{c}" for c in SUBMIT_COLUMNS if c != "command")
    with catalog._write() as conn:
        conn.executemany(
            f"INSERT INTO run_provenance ({', '.join(names)})"  # noqa: S608 (fixed names)
            f" VALUES ({', '.join('?' * len(names))})"
            # The command rendered at dispatch is the more exact one: keep it if it is there.
            f" ON CONFLICT (run_id) DO UPDATE SET {updates},"
            " command = COALESCE(run_provenance.command, excluded.command)",
            [tuple(row.get(c) for c in names) for row in rows],
        )


def provenance(catalog: Catalog, run_id: str) -> dict[str, Any] | None:
    """A run's provenance row, JSON columns decoded; None when none was recorded."""
    with catalog._read() as conn:
        cursor = conn.execute("SELECT * FROM run_provenance WHERE run_id = ?", (run_id,))
        names = [d[0] for d in cursor.description]
        found = cursor.fetchone()
    if found is None:
        return None
    row = dict(zip(names, found, strict=True))
    for column in ("command", "config", "env", "gpus", "gpu_models", "links", "gpu_uuids"):
        if row[column] is not None:
            row[column] = json.loads(row[column])
    return row


# -- dispatch half ------------------------------------------------------------------------
def record_dispatch(
    catalog: Catalog,
    run: dict[str, Any],
    session: HostSession,
    placement: Placement,
    command: str | Sequence[str],
    *,
    links: Sequence[Mapping[str, Any]] = (),
    gpu_uuids: Sequence[str] = (),
    env_key: str | None = None,
) -> None:
    """The host half of a run's provenance and its file manifest, once it has started.

    The python and its packages are the run's own, recorded by capture_run_python once the
    run environment is set up. Never raises: a run that started keeps running whatever its
    bookkeeping does.
    """
    try:
        _record_dispatch(
            catalog, run, session, placement, command, list(links), list(gpu_uuids), env_key
        )
    except Exception:
        log.exception("run %s: provenance not recorded", run.get("id"))


def _record_dispatch(
    catalog: Catalog,
    run: dict[str, Any],
    session: HostSession,
    placement: Placement,
    command: str | Sequence[str],
    links: list[Mapping[str, Any]],
    gpu_uuids: list[str],
    env_key: str | None,
) -> None:
    run_id = run["id"]
    if run.get("code_hash"):
        catalog.write_run_manifest(run_id, run["code_hash"])
    host = placement.host
    names: dict[int, str] = {}
    backend = None
    if session.latest is not None:
        backend = session.latest.backend
        names = {g.index: g.name for g in session.latest.gpus}
    if any(i not in names for i in placement.gpus):
        stored = catalog.gpu_models()
        names.update({i: stored[(host, i)] for i in placement.gpus if (host, i) in stored})
    if backend is None and session.hello is not None:
        backend = session.hello.backend
    mark = SIMULATED_MARK if backend == BACKEND_SIMULATED else ""
    models = [f"{names[i]}{mark}" if i in names else None for i in placement.gpus]
    now = time.time()
    env = fresh_environment(catalog, host, session.hello.python if session.hello else None, now)
    row = {
        "run_id": run_id,
        "host": host,
        "gpus": json.dumps(list(placement.gpus)),
        "gpu_models": json.dumps(models),
        "driver": env.get("driver"),
        "command": json.dumps(command if isinstance(command, str) else list(command)),
        "dispatched_at": now,
        "links": json.dumps(links),
        "gpu_uuids": json.dumps(gpu_uuids),
        "env_key": env_key,
    }
    submit_half = _submit_half_for(catalog, run)
    names_all = ("run_id", *DISPATCH_COLUMNS, *(c for c in SUBMIT_COLUMNS if c != "command"))
    values = [row.get(c, submit_half.get(c)) for c in names_all]
    updates = ", ".join(f"{c} = excluded.{c}" for c in DISPATCH_COLUMNS)
    with catalog._write() as conn:
        conn.execute(
            f"INSERT INTO run_provenance ({', '.join(names_all)})"  # noqa: S608 (fixed names)
            f" VALUES ({', '.join('?' * len(names_all))})"
            f" ON CONFLICT (run_id) DO UPDATE SET {updates}",
            values,
        )


def _submit_half_for(catalog: Catalog, run: Mapping[str, Any]) -> dict[str, Any]:
    """Submit columns for a run that has none yet: a retry takes its first attempt's.

    Only used when the row is new; an existing row keeps what submit wrote.
    """
    with catalog._read() as conn:
        if conn.execute("SELECT 1 FROM run_provenance WHERE run_id = ?", (run["id"],)).fetchone():
            return {}
        cursor = conn.execute(
            "SELECT p.* FROM run_provenance p JOIN runs r ON r.id = p.run_id"
            " WHERE r.name = ? AND r.submitted = ? AND r.id != ? AND p.submitted_at IS NOT NULL"
            " ORDER BY r.attempt LIMIT 1",
            (run.get("name"), run.get("submitted"), run["id"]),
        )
        names = [d[0] for d in cursor.description]
        found = cursor.fetchone()
        if found is not None:
            earlier = dict(zip(names, found, strict=True))
            return {c: earlier[c] for c in SUBMIT_COLUMNS}
        root = None
        if run.get("code_hash"):
            hit = conn.execute(
                "SELECT root FROM snapshots WHERE hash = ?", (run["code_hash"],)
            ).fetchone()
            root = hit[0] if hit else None
    spec = run.get("spec") or {}
    return {
        "code_hash": run.get("code_hash"),
        "code_root": root,
        "config": json.dumps(run.get("config") or {}),
        "env": json.dumps(spec.get("env") or {}),
    }


# -- host environment ---------------------------------------------------------------------
def host_environment(catalog: Catalog, host: str) -> dict[str, Any] | None:
    """The host_environments row of a host, or None."""
    with catalog._read() as conn:
        cursor = conn.execute("SELECT * FROM host_environments WHERE host = ?", (host,))
        names = [d[0] for d in cursor.description]
        found = cursor.fetchone()
    return None if found is None else dict(zip(names, found, strict=True))


def fresh_environment(
    catalog: Catalog, host: str, python: str | None, now: float
) -> dict[str, Any]:
    """The host_environments row when it was taken for this python within the hour, else {}."""
    env = host_environment(catalog, host)
    if env is None or env["python"] != python or now - env["taken"] >= ENVIRONMENT_FRESH_S:
        return {}
    return env


def store_host_environment(
    catalog: Catalog,
    host: str,
    python: str | None,
    freeze_hash: str | None,
    reason: str | None,
    *,
    driver: str | None = None,
    taken: float,
    since: float,
) -> None:
    """Upsert a host's environment (the agent's python and the GPU driver); runs dispatched
    there since `since` get its driver (their python and packages are their own)."""
    with catalog._write() as conn:
        conn.execute(
            "INSERT INTO host_environments (host, python, pip_freeze_hash, reason, driver, taken)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (host) DO UPDATE SET"
            " python = excluded.python, pip_freeze_hash = excluded.pip_freeze_hash,"
            " reason = excluded.reason, driver = excluded.driver, taken = excluded.taken",
            (host, python, freeze_hash, reason, driver, taken),
        )
        # Runs started while the environment was being read (it is read in the background).
        conn.execute(
            "UPDATE run_provenance SET driver = coalesce(driver, ?)"
            " WHERE host = ? AND dispatched_at >= ?",
            (driver, host, since),
        )


async def capture_host_environment(
    catalog: Catalog, session: HostSession, since: float | None = None
) -> None:
    """Once per connection, in the background: the GPU driver and the interpreter's packages.

    Asked of the agent (OP_ENVIRONMENT: a child interpreter lists the installed distributions
    like `pip freeze`, about 0.1 s); skipped when the catalog has an answer for the same python
    younger than an hour. Runs dispatched to the host since `since` (default: now) get its
    driver. Never raises (but lets itself be cancelled): dispatch never waits.
    """
    hello = session.hello
    client = session.client
    if hello is None or client is None:
        return
    name = session.host.name
    since = time.time() if since is None else since
    try:
        env = host_environment(catalog, name)
        if (
            env is not None
            and env["python"] == hello.python
            and since - env["taken"] < ENVIRONMENT_FRESH_S
        ):
            return
        reply: dict[str, Any] = {"pending": True}
        deadline = time.monotonic() + ENVIRONMENT_TIMEOUT_S
        try:
            while reply.get("pending"):
                if time.monotonic() > deadline:
                    reply = {"packages": None, "packages_reason": "the host took too long"}
                    break
                reply = await client.call(protocol.OP_ENVIRONMENT, timeout_s=10)
                if reply.get("pending"):
                    await asyncio.sleep(ENVIRONMENT_POLL_S)
        except RemoteError as exc:  # an agent from before the op: say so, keep going
            reply = {"packages": None, "packages_reason": exc.message}
        packages = reply.get("packages")
        freeze_hash = None
        if isinstance(packages, str):
            from cvtui.repro.blobstore import BlobStore

            data = packages.encode()
            freeze_hash = BlobStore.in_home(catalog.path.parent).put_bytes(data)
            catalog.record_blobs([(freeze_hash, len(data))], "pip_freeze")
        driver = reply.get("driver")
        store_host_environment(
            catalog,
            name,
            hello.python,
            freeze_hash,
            None if freeze_hash else str(reply.get("packages_reason") or "no package list"),
            driver=str(driver) if driver else None,
            taken=time.time(),
            since=since,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the connection went away, or the catalog is busy
        log.info("host %s: environment not recorded: %r", name, exc)


async def capture_run_python(catalog: Catalog, session: HostSession, run_id: str) -> None:
    """The interpreter a run's environment resolved (after its setup), its version and its
    packages, into the run's provenance. The agent lists them once per environment.

    Never raises (but lets itself be cancelled): a run's bookkeeping never stops it.
    """
    client = session.client
    if client is None:
        return
    try:
        reply: dict[str, Any] = {"pending": True}
        deadline = time.monotonic() + RUN_PYTHON_TIMEOUT_S
        while reply.get("pending"):
            if time.monotonic() > deadline:
                return
            reply = await client.call(protocol.OP_RUN_PYTHON, run_id=run_id, timeout_s=10)
            if reply.get("pending"):
                await asyncio.sleep(ENVIRONMENT_POLL_S)
        packages = reply.get("packages")
        freeze_hash = None
        if isinstance(packages, str):
            from cvtui.repro.blobstore import BlobStore

            data = packages.encode()
            freeze_hash = BlobStore.in_home(catalog.path.parent).put_bytes(data)
            catalog.record_blobs([(freeze_hash, len(data))], "pip_freeze")
        with catalog._write() as conn:
            conn.execute(
                "UPDATE run_provenance SET python = ?, python_executable = ?,"
                " pip_freeze_hash = ? WHERE run_id = ?",
                (reply.get("python"), reply.get("executable"), freeze_hash, run_id),
            )
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the connection went away, an old agent, a busy catalog
        log.info("run %s: its python not recorded: %r", run_id, exc)
