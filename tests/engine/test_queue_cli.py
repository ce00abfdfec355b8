"""Queue commands on hand-built catalogs, and the daemon's lock, log format and signals."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support import parse_logfmt

from cvtui.catalog import Catalog
from cvtui.cli import main
from cvtui.engine.daemon import LogfmtFormatter, logfmt_value
from cvtui.engine.engine import Engine
from cvtui.engine.lock import EngineLock
from cvtui.inventory import load_inventory
from cvtui.lab import free_port
from cvtui.report import format_hosts

INVENTORY = """\
policy: {interval: 1s}
hosts:
  gpu-01: {address: 127.0.0.1, port: PORT, known_hosts: KNOWN}
  gpu-03: {address: 127.0.0.1, port: PORT, known_hosts: KNOWN, tags: [h100]}
"""


@pytest.fixture
def inventory_path(tmp_path: Path) -> Path:
    """Two hosts on a loopback port where nothing listens: every connect is refused at once."""
    path = tmp_path / "inventory.yaml"
    known = tmp_path / "known_hosts"
    known.write_text("")
    path.write_text(INVENTORY.replace("PORT", str(free_port())).replace("KNOWN", str(known)))
    return path


def queued(run_id: str, priority: str, submitted: float, **extra: Any) -> dict[str, Any]:
    return {
        "id": run_id,
        "name": f"train-{run_id}",
        "project": "vision",
        "user": "alice",
        "priority": priority,
        "command": ["python", "train.py"],
        "params": {},
        "config": {},
        "spec": {},
        "resources": {"gpus": 2, "min_free_mem": 40 << 30, "hosts": [], "tags": ["h100"]},
        "retries": 0,
        "submitted": submitted,
        **extra,
    }


def invoke(home: Path, *args: str, inventory: Path | None = None) -> Any:
    argv = ["--home", str(home)]
    if inventory is not None:
        argv += ["--inventory", str(inventory)]
    return CliRunner().invoke(main, [*argv, *args], catch_exceptions=False)


def test_queue_lists_in_start_order_and_move_reorders(home: Path) -> None:
    with Catalog.open_home(home) as catalog:
        catalog.insert_runs(
            [
                queued("r-low", "low", 1.0),
                queued("r-normal-late", "normal", 3.0),
                queued("r-normal-early", "normal", 2.0, reason="needs 2 GPUs; best host has 1"),
                queued("r-high", "high", 4.0),
                queued("r-done", "normal", 0.5),
            ]
        )
        catalog.transition_run("r-done", "running", host="gpu-01", gpus=[0, 1])
    done = invoke(home, "queue", "--json")
    assert done.exit_code == 0, done.output
    listed = json.loads(done.output)
    assert [r["id"] for r in listed] == ["r-high", "r-normal-early", "r-normal-late", "r-low"]
    assert [r["position"] for r in listed] == [1, 2, 3, 4]
    early = listed[1]
    assert early["reason"] == "needs 2 GPUs; best host has 1"
    assert (early["gpus"], early["min_free_mem"], early["tags"]) == (2, 40 << 30, ["h100"])
    assert early["waiting_s"] > 0 and early["user"] == "alice"

    table = invoke(home, "queue").output.splitlines()
    assert table[0].split()[:3] == ["#", "ID", "NAME"]
    assert table[1].split()[:4] == ["1", "r-high", "train-r-high", "high"]
    assert table[2].endswith("needs 2 GPUs; best host has 1")
    assert table[3].endswith("not looked at yet")
    assert "no engine is running" in table[-1]  # (stderr, mixed in by CliRunner)

    moved = invoke(home, "queue", "move", "r-low", "--priority", "urgent")
    assert moved.exit_code == 0
    assert moved.output == "r-low  train-r-low: low -> urgent, now 1st of 4\n"
    assert json.loads(invoke(home, "queue", "--json").output)[0]["id"] == "r-low"

    running = invoke(home, "queue", "move", "r-done", "--priority", "high")
    assert running.exit_code == 1
    assert "run r-done (train-r-done) is running, not queued" in running.output
    missing = invoke(home, "queue", "move", "r-nope", "--priority", "high")
    assert missing.exit_code == 1 and "no run matches 'r-nope'" in missing.output
    bad = invoke(home, "queue", "move", "r-low", "--priority", "asap")
    assert bad.exit_code == 2


def test_an_empty_queue(home: Path) -> None:
    assert invoke(home, "queue").output == "the queue is empty\n"
    assert json.loads(invoke(home, "queue", "--json").output) == []


def test_drain_is_kept_in_the_catalog_and_read_by_the_engine(
    home: Path, inventory_path: Path
) -> None:
    # Drained before any engine wrote the host: the row is made so the drain is not lost.
    done = invoke(home, "hosts", "drain", "gpu-03", inventory=inventory_path)
    assert done.exit_code == 0, done.output
    assert done.output == "gpu-03 drained: nothing new is placed there; its 0 runs finish\n"
    again = invoke(home, "hosts", "drain", "gpu-03", inventory=inventory_path)
    assert again.output == "gpu-03 was already drained\n"
    unknown = invoke(home, "hosts", "drain", "gpu-09", inventory=inventory_path)
    assert unknown.exit_code == 2 and "unknown host 'gpu-09'" in unknown.output
    with Catalog.open_home(home) as catalog:
        assert catalog.drained_hosts() == {"gpu-03"}
        inventory = load_inventory(inventory_path)
        catalog.sync_hosts(inventory.hosts)  # as an engine starting up does: the drain stays
        engine = Engine(inventory, catalog)
        assert engine.drained == {"gpu-03"}
        [row] = catalog.hosts_report(names=["gpu-03"])
        assert row["drained"] is True
        assert format_hosts([row]).split() == [
            "gpu-03",
            "connecting",
            "drained",
            "(no",
            "new",
            "runs)",
        ]
        undone = invoke(home, "hosts", "undrain", "gpu-03", inventory=inventory_path)
        assert undone.output == "gpu-03 takes new runs again\n"
        assert engine.drained == set()  # read from the catalog each time, not kept in memory
        assert invoke(home, "hosts", "undrain", "gpu-03", inventory=inventory_path).output == (
            "gpu-03 was not drained\n"
        )
        drained_at = catalog.db.execute("SELECT drained_at FROM hosts WHERE name = 'gpu-03'")
        assert drained_at.fetchone() == (None,)


# -- the daemon ---------------------------------------------------------------------------


def daemon_argv(home: Path, inventory: Path) -> list[str]:
    return [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory", str(inventory)]


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}


def test_a_second_daemon_names_the_pid_that_holds_the_catalog(
    home: Path, inventory_path: Path
) -> None:
    lock = EngineLock(home)
    lock.acquire()
    try:
        done = subprocess.run(
            [*daemon_argv(home, inventory_path), "daemon", "--foreground"],
            capture_output=True, text=True, timeout=30, env=env(),
        )  # fmt: skip
    finally:
        lock.release()
    assert done.returncode == 1
    assert done.stderr == f"cvtui: an engine (pid {os.getpid()}) already holds {home}/engine.lock\n"


def test_daemon_refuses_a_broken_inventory(home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("hosts:\n  gpu-01: {adress: x}\n")
    done = subprocess.run(
        [*daemon_argv(home, broken), "daemon"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env(),
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"cvtui: {broken}:2:12: unknown key 'adress'")


def test_daemon_logs_logfmt_and_stops_cleanly_on_sigterm(home: Path, inventory_path: Path) -> None:
    process = subprocess.Popen(
        [*daemon_argv(home, inventory_path), "daemon", "--foreground"],
        stderr=subprocess.PIPE, text=True, env=env(),
    )  # fmt: skip
    try:
        assert process.stderr is not None
        lines = [process.stderr.readline() for _ in range(3)]  # start, then both hosts fail
        process.send_signal(signal.SIGTERM)
        _, rest = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0
    fields = [parse_logfmt(line) for line in [*lines, *rest.splitlines()]]
    assert fields[0]["event"] == "start" and f"pid {process.pid}" in fields[0]["msg"]
    failures = {f["host"]: f for f in fields[1:3]}
    assert set(failures) == {"gpu-01", "gpu-03"}
    assert {f["event"] for f in failures.values()} == {"disconnected"}
    assert all("connection refused" in f["msg"] for f in failures.values())
    assert [f["event"] for f in fields[-2:]] == ["stop", "exit"]
    assert fields[-2]["msg"] == "SIGTERM: stopping; runs keep going on the hosts"
    for f in fields:
        assert f["level"] in ("info", "warning") and f["time"].endswith("Z")
    with Catalog.open_home(home) as catalog:
        assert {h["name"] for h in catalog.hosts_report()} == {"gpu-01", "gpu-03"}


def test_logfmt_quotes_what_needs_it_and_keeps_one_line_per_record() -> None:
    assert logfmt_value("gpu-01") == "gpu-01"
    assert logfmt_value("") == '""'
    assert logfmt_value('say "hi"\nnow') == '"say \\"hi\\"\\nnow"'
    assert logfmt_value("a=b") == '"a=b"'
    formatter = LogfmtFormatter()
    record = logging.LogRecord(
        "cvtui.engine.runs", logging.WARNING, __file__, 1, "%s x", ("a",), None
    )
    record.created = 0.25
    assert formatter.format(record) == (
        'time=1970-01-01T00:00:00.250Z level=warning event=runs msg="a x"'
    )
    record.event, record.host, record.run = "dispatch", "gpu-01", "01abc"
    assert formatter.format(record).split(" ")[2:5] == [
        "event=dispatch",
        "host=gpu-01",
        "run=01abc",
    ]
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        failed = logging.LogRecord("cvtui", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    line = formatter.format(failed)
    assert "\n" not in line
    parsed = parse_logfmt(line)
    assert parsed["msg"] == "oops" and parsed["level"] == "error"
    assert parsed["error"].startswith("Traceback") and "ValueError: bad\nthing" in parsed["error"]
    assert parse_logfmt('a=1 b="x y" c= d') == {"a": "1", "b": "x y", "c": "", "d": ""}
    assert time.gmtime(0).tm_year == 1970  # the formatter's clock is UTC, whatever TZ says
