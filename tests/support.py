"""Helpers for tests: polling a condition, an engine in the background, runs, the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvtui.catalog import Catalog


def catalog_intact(catalog: Catalog) -> bool:
    """Whether SQLite's integrity_check finds the catalog file sound."""
    rows = catalog.db.execute("PRAGMA integrity_check").fetchall()
    return [tuple(r) for r in rows] == [("ok",)]


def metric_count(catalog: Catalog, run_id: str, path: str | None = None) -> int:
    """Values stored for a run (from one file when path is given), as the metrics view has them."""
    row = catalog.db.execute(
        "SELECT count(*) FROM metrics WHERE run_id = ?1 AND (?2 IS NULL OR file = ?2)",
        [run_id, path],
    ).fetchone()
    return int(row[0])


def parse_logfmt(line: str) -> dict[str, str]:
    """The fields of one logfmt line: the inverse of cvtui.engine.daemon.LogfmtFormatter."""
    fields: dict[str, str] = {}
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i] == " ":
            i += 1
        start = i
        while i < n and line[i] not in "= ":
            i += 1
        key = line[start:i]
        if not key:
            break
        if i >= n or line[i] != "=":
            fields[key] = ""
            continue
        i += 1
        if i < n and line[i] == '"':
            i += 1
            chars = []
            while i < n and line[i] != '"':
                if line[i] == "\\" and i + 1 < n:
                    i += 1
                    chars.append({"n": "\n", "r": "\r", "t": "\t"}.get(line[i], line[i]))
                else:
                    chars.append(line[i])
                i += 1
            i += 1
            fields[key] = "".join(chars)
        else:
            start = i
            while i < n and line[i] != " ":
                i += 1
            fields[key] = line[start:i]
    return fields


async def wait_for(
    predicate: Callable[[], object], timeout_s: float = 10.0, step_s: float = 0.05
) -> None:
    """Poll predicate until it is truthy; fail the test with what it last returned."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    last: object = None
    while asyncio.get_running_loop().time() < deadline:
        last = predicate()
        if last:
            return
        await asyncio.sleep(step_s)
    raise AssertionError(f"condition not met within {timeout_s} s (last value {last!r})")


@contextlib.asynccontextmanager
async def running(coro_factory: Callable[[asyncio.Event], object]) -> AsyncIterator[asyncio.Event]:
    """Run an engine-style `run(stop)` coroutine in the background for the with-block."""
    stop = asyncio.Event()
    task = asyncio.create_task(coro_factory(stop))  # type: ignore[arg-type]
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def add_finished_run(
    catalog: Catalog, run_id: str, name: str, spec: dict[str, Any] | None = None
) -> None:
    """A run that ran on gpu-01 and succeeded, as the engine leaves it."""
    catalog.insert_runs(
        [
            {
                "id": run_id,
                "name": name,
                "project": "p",
                "user": "me",
                "priority": "normal",
                "command": "python3 train.py",
                "params": {},
                "config": {},
                "spec": spec or {},
                "resources": {},
                "retries": 0,
            }
        ]
    )
    catalog.transition_run(run_id, "running", expect=["queued"], host="gpu-01")
    catalog.transition_run(run_id, "succeeded", expect=["running"])


def cvtui_process(
    *args: str,
    home: Path,
    inventory: Path,
    user_home: Path,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """`cvtui --home HOME --inventory INV ARGS` as a user runs it, with HOME=user_home (so the
    real ~/.ssh is never read or written), no ssh-agent, and no terminal."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    env.pop("SSH_AUTH_SOCK", None)
    env["HOME"] = str(user_home)
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory", str(inventory)]
    return subprocess.run(
        [*argv, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def stop_engine(home: Path, timeout_s: float = 15.0) -> None:
    """Stop the engine holding home (e.g. the one `cvtui run` started in the background) and
    wait until it is gone, so the next command runs one of its own."""
    import os
    import signal
    import time

    from cvtui.engine.lock import lock_holder

    pid = lock_holder(home)
    if not pid or pid < 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while lock_holder(home) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"engine {pid} of {home} did not stop within {timeout_s} s")
        time.sleep(0.05)


def stop_engine_once_running(home: Path, run_ids: list[str], timeout_s: float = 60.0) -> None:
    """Wait until these runs run on their hosts, then stop_engine: what happens to them next
    is up to the commands a test runs (no background engine syncs them)."""
    import time

    from cvtui.catalog import Catalog

    deadline = time.monotonic() + timeout_s
    with Catalog.open_home(home) as catalog:
        while not all((catalog.get_run(i) or {}).get("state") != "dispatching" for i in run_ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"runs {run_ids} not started within {timeout_s} s")
            time.sleep(0.05)
    stop_engine(home)


# A run that serves its work dir over HTTP on 127.0.0.1:PORT (the port forwarding tests).
SERVE = """\
import http.server, os, sys
os.makedirs("site", exist_ok=True)
with open("site/hello.txt", "w") as f:
    f.write("hello from " + os.environ["CVTUI_RUN_ID"])
os.chdir("site")
handler = http.server.SimpleHTTPRequestHandler
server = http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), handler)
print("serving", flush=True)
server.serve_forever()
"""


def serving_project(tmp_path: Path) -> tuple[Path, int]:
    """A project whose config `serve.yaml` runs SERVE on a free port: (config, that port)."""
    from cvtui.lab import free_port

    code = tmp_path / "project"
    code.mkdir()
    (code / "serve.py").write_text(SERVE)
    remote = free_port()
    (code / "serve.yaml").write_text(
        f"name: board\ncommand: [python3, serve.py, '{remote}']\nresources: {{gpus: 0}}\n"
    )
    return code / "serve.yaml", remote


def serving_lab(
    lab_factory: Any, home: Path, tmp_path: Path, monkeypatch: Any
) -> tuple[Any, Any, Path, int]:
    """A one-GPU lab, the serving project and the library over them, for the forwarding
    tests (a detached engine leaves a minute after it idles): (lab, cvtui.Lab, config, port)."""
    import cvtui
    from cvtui.lab import LabHostSpec

    monkeypatch.setenv("CVTUI_ENGINE_IDLE_EXIT", "60")
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    config, remote = serving_project(tmp_path)
    return lab, cvtui.Lab(lab.inventory_path, home), config, remote


def wait_running(api: Any, run: Any, timeout_s: float = 30.0) -> None:
    """Until the library says run is running (or timeout_s passed)."""
    deadline = time.monotonic() + timeout_s
    while api.get(run)["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.1)


def wait_or_dump(process: subprocess.Popen[Any], timeout_s: float, stderr: Path) -> int:
    """process's exit code; when it is still running after timeout_s, it is made to dump
    every thread's stack (SIGABRT; the process needs PYTHONFAULTHANDLER=1 and its stderr
    in the file `stderr`) and the test fails with that dump, so a rare hang can be read."""
    import signal

    try:
        return process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        dump = stderr.read_text(errors="replace") if stderr.exists() else ""
        raise AssertionError(f"still running after {timeout_s} s; its threads:\n{dump}") from None
