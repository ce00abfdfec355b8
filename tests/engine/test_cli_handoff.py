"""`cvtui run` hands off to an engine and returns; the engine logs every change of plan."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import parse_logfmt

from cvtui.catalog import Catalog
from cvtui.engine.lock import lock_holder
from cvtui.lab import Lab, LabHostSpec

pytestmark = pytest.mark.sshd


def cvtui(
    lab: Lab, home: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)


def config(tmp_path: Path, name: str, **document: Any) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    path = code / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "command": "sleep 30", **document}))
    return path


def until(predicate: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def events(home: Path) -> list[dict[str, str]]:
    log = home / "engine.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [parse_logfmt(line) for line in lines if line.startswith("time=")]


def test_run_starts_a_background_engine_returns_and_the_run_goes_on(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    quick = config(tmp_path, "quick", command="echo done")
    started = time.monotonic()
    done = cvtui(lab, home, "run", str(quick))
    assert done.returncode == 0, done.stderr
    _, name, *where = done.stdout.split()
    assert name == "quick" and where[:3] in (
        ["dispatching", "on", "gpu-01"],
        ["running", "on", "gpu-01"],
    ), done.stdout
    # The engine is not this command: a process of its own, logging in the home.
    engine = lock_holder(home)
    assert engine is not None and engine > 0
    assert (home / "engine.log").exists() and (home / "engine.sock").exists()
    until(lambda: cvtui(lab, home, "ps", "--all").stdout.count("succeeded") == 1, 30, "the run")
    assert time.monotonic() - started < 60
    assert lock_holder(home) == engine  # one engine served both commands

    # Commands ask the same engine; a queued run says why it waits, at once.
    hog = config(tmp_path, "hog", resources={"gpus": 2})
    cvtui(lab, home, "run", str(hog))
    waits = cvtui(lab, home, "run", str(config(tmp_path, "later", resources={"gpus": 2})))
    assert waits.returncode == 0, waits.stderr
    assert "waits: needs 2 free GPUs" in waits.stdout, waits.stdout


def test_a_run_no_host_could_ever_hold_is_refused_and_nothing_is_queued(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2, tags=("a100",)))
    big = cvtui(lab, home, "run", str(config(tmp_path, "big", resources={"gpus": 9})))
    assert big.returncode == 1
    assert "needs 9 GPUs on one host; the largest matching host, gpu-01, has 2" in big.stderr
    tagged = cvtui(lab, home, "run", str(config(tmp_path, "h100", resources={"tags": ["h100"]})))
    assert tagged.returncode == 1
    assert "no host has the tags [h100]" in tagged.stderr
    with Catalog.open_home(home) as catalog:
        assert catalog.list_runs() == []
    assert lock_holder(home) is None  # nothing queued, so no engine was needed either


def test_the_engine_logs_cancels_moves_and_drains(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    first = cvtui(lab, home, "run", str(config(tmp_path, "first")))
    assert first.returncode == 0, first.stderr
    queued = cvtui(lab, home, "run", str(config(tmp_path, "second")))
    second = queued.stdout.split()[0]
    assert "waits:" in queued.stdout
    moved = cvtui(lab, home, "queue", "move", second, "--priority", "urgent")
    assert moved.returncode == 0, moved.stderr
    assert cvtui(lab, home, "hosts", "drain", "gpu-01").returncode == 0
    started = time.monotonic()
    cancelled = cvtui(lab, home, "cancel", first.stdout.split()[0], "--grace", "1")
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancel sent" in cancelled.stdout
    assert time.monotonic() - started < 20
    assert cvtui(lab, home, "cancel", second).stdout.strip().endswith("cancelled (was queued)")

    def logged() -> list[str]:
        return [e.get("event", "") for e in events(home)]

    # the queued run left the queue in the catalog; the engine logs it at its next pass
    until(
        lambda: {"queue_move", "drain"} <= set(logged()) and logged().count("cancel") >= 2,
        20,
        "the engine's log lines",
    )
    found = events(home)
    assert any(e["event"] == "queue_move" and e.get("run") == second for e in found)
    assert any(e["event"] == "drain" and e.get("host") == "gpu-01" for e in found)
    assert any(e["event"] == "cancel" and e.get("run") == second for e in found)
    assert sum(e["event"] == "cancel" for e in found) == 2


def test_an_idle_background_engine_leaves_by_itself(lab: Lab, home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), "daemon", "--idle-exit", "2"]
    daemon = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _, err = daemon.communicate(timeout=60)
    finally:
        daemon.kill()
    assert daemon.returncode == 0
    assert "event=idle_exit" in err
    assert not (home / "engine.sock").exists()
