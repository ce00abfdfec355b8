"""What the fault tests run and how they judge the outcome, through the CLI and the catalog only.

A run of the workload appends one line to a ledger outside its run dir when it starts (a run
started twice shows twice), then writes a CSV and a JSONL of metrics, prints a line per step
(and copies what it printed to `printed.txt`, so `cvtui logs --raw` can be compared with it),
and ends with a checkpoint. Where the host keeps a run's files is read from the ledger (the
run's cwd) and where cvtui mirrored them from `cvtui files`, so the checks hold whatever the
layout of the run dir.
"""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from support import catalog_intact

from cvtui.catalog import Catalog
from cvtui.inventory import load_inventory
from cvtui.lab import Lab, descendants
from cvtui.mirror import Mirror
from cvtui.submit import prepare_runs, submit

JOB = r"""
import json, os, time
run = os.environ["CVTUI_RUN_ID"]
with open(os.environ["LEDGER"], "a") as fh:  # outside the run dir: a second start shows here
    fh.write(json.dumps({"run": run, "cwd": os.getcwd(), "pid": os.getpid()}) + "\n")
rows, pace, stop = int(os.environ["ROWS"]), float(os.environ["PACE"]), os.environ.get("STOP")
with open("metrics.csv", "w") as fh:
    fh.write("step,loss,acc\n")
step = 0
while step < rows or (stop and not os.path.exists(stop)):
    with open("metrics.csv", "a") as fh:
        fh.write("%d,%.6f,%.4f\n" % (step, 1 / (step + 1), step / 1000))
    with open("events.jsonl", "a") as fh:
        fh.write(json.dumps({"step": step, "lr": 0.1 * 0.99 ** step}) + "\n")
    line = "step %d \x1b[32mok\x1b[0m\n" % step
    print(line, end="", flush=True)
    with open("printed.txt", "a") as fh:
        fh.write(line)
    step += 1
    time.sleep(pace)
with open("model.part", "wb") as fh:
    fh.write(os.urandom(int(os.environ["CKPT"])))
os.rename("model.part", "model.pt")
"""

OUTPUTS = ("metrics.csv", "events.jsonl", "model.pt")
FINAL = ("succeeded", "failed", "cancelled", "lost")


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}


def cli_argv(lab: Lab, home: Path, *args: str) -> list[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    return [*argv, "--inventory", str(lab.inventory_path), *args]


def cvtui(
    lab: Lab, home: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv(lab, home, *args), capture_output=True, text=True, timeout=timeout, env=cli_env()
    )


def tune_inventory(lab: Lab, interval: str = "0.5s") -> None:
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["policy"]["interval"] = interval
    lab.inventory_path.write_text(yaml.safe_dump(document, sort_keys=False))


@dataclass
class Workload:
    """A sweep of `runs` workload runs, one GPU each; `stop` makes them run until it exists."""

    directory: Path
    runs: int
    rows: int = 20
    pace_s: float = 0.05
    checkpoint_bytes: int = 1 << 20
    until_stopped: bool = False
    ledger: Path = field(init=False)
    stop: Path = field(init=False)
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        code = self.directory / "project"
        code.mkdir(parents=True, exist_ok=True)
        (code / "job.py").write_text(JOB)
        self.ledger = self.directory / "ledger.jsonl"
        self.stop = self.directory / "stop"
        env = {
            "LEDGER": str(self.ledger),
            "ROWS": str(self.rows),
            "PACE": str(self.pace_s),
            "CKPT": str(self.checkpoint_bytes),
        }
        if self.until_stopped:
            env["STOP"] = str(self.stop)
        self.config = code / "fault.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "name": "fault",
                    "command": "python3 job.py",
                    "params": {"i": list(range(self.runs))},
                    "resources": {"gpus": 1},
                    "outputs": ["*.csv", "*.jsonl", "*.pt"],
                    "env": env,
                }
            )
        )

    def queue(self, lab: Lab, home: Path) -> list[str]:
        """Queue the runs as `cvtui run` does, without dispatching them."""
        inventory = load_inventory(lab.inventory_path)
        with Catalog.open_home(home) as catalog:
            return submit(catalog, home, prepare_runs(self.config, inventory))

    def starts(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        return [json.loads(line) for line in self.ledger.read_text().splitlines()]

    def run_dirs(self) -> dict[str, Path]:
        """Run id -> the cwd it ran in on its host (the last start, when there were several)."""
        return {start["run"]: Path(start["cwd"]) for start in self.starts()}


class Daemon:
    """`cvtui daemon --foreground` as a real process, its stderr kept in a file."""

    def __init__(self, lab: Lab, home: Path, log: Path) -> None:
        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                cli_argv(lab, home, "daemon", "--foreground"),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=cli_env(),
            )

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)


def until(predicate: Callable[[], object], timeout_s: float, step_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s (last value {last!r})")


def read_catalog(home: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A query on the catalog's plain tables, read-only (the engine may be writing)."""
    conn = sqlite3.connect(f"file:{home / 'catalog.db'}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def states(home: Path, run_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """Run id -> (state, sync status)."""
    rows = read_catalog(home, "SELECT id, state, sync_status FROM runs")
    found = {row[0]: (row[1], row[2]) for row in rows}
    return {run_id: found.get(run_id, ("?", None)) for run_id in run_ids}


def settled(home: Path, run_ids: list[str]) -> bool:
    """Every run ended and its files are all synced."""
    return all(s in FINAL and sync == "synced" for s, sync in states(home, run_ids).values())


def agent_pids(lab: Lab, host: str, sessions: set[int] | frozenset[int] = frozenset()) -> set[int]:
    """The agents sshd runs for cvtui on a lab host (processes the test started, by pid), under
    its listener or under sessions a stopped listener left running."""
    server = lab.servers[host]
    roots = set(sessions) | ({server.process.pid} if server.process is not None else set())
    candidates = set(sessions)
    for root in roots:
        candidates.update(descendants(root))
    found = set()
    for pid in candidates:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"agent.pyz") for arg in argv) and b"serve" in argv:
            found.add(pid)
    return found


def host_rows(path: Path) -> list[tuple[float, str, float]]:
    """(step, key, value) of a CSV or JSONL file as the run wrote it."""
    text = path.read_text()
    rows: list[tuple[float, str, float]] = []
    if path.suffix == ".csv":
        for record in csv.DictReader(io.StringIO(text)):
            step = float(record.pop("step"))
            rows += [(step, key, float(value)) for key, value in record.items()]
    else:
        for line in text.splitlines():
            record = json.loads(line)
            step = float(record.pop("step"))
            rows += [(step, key, float(value)) for key, value in record.items()]
    return sorted(rows)


@dataclass
class Outcome:
    """What a fault test found: figures for its report line."""

    runs: int = 0
    starts: int = 0
    bytes_compared: int = 0
    files_compared: int = 0
    metric_values: int = 0

    def line(self, what: str, rounds: int) -> str:
        return (
            f"{what}: {rounds} rounds, {self.runs} runs, {self.starts} starts, 0 lost, "
            f"0 run twice, {self.files_compared} files / {self.bytes_compared} bytes identical, "
            f"{self.metric_values} metric values, 0 duplicates, integrity ok"
        )


def check_outcome(lab: Lab, home: Path, work: Workload, run_ids: list[str]) -> Outcome:
    """Nothing lost, nothing run twice, every byte and metric value as the host has it."""
    outcome = Outcome(runs=len(run_ids))
    found = states(home, run_ids)
    assert {run_id: s for run_id, (s, _) in found.items() if s != "succeeded"} == {}
    all_runs = [row[0] for row in read_catalog(home, "SELECT id FROM runs")]
    assert sorted(all_runs) == sorted(run_ids)  # no retry was needed: nothing was lost
    starts = work.starts()
    outcome.starts = len(starts)
    assert sorted(s["run"] for s in starts) == sorted(run_ids)  # each started exactly once
    run_dirs = work.run_dirs()
    with Catalog.open_home(home) as catalog:
        assert catalog_intact(catalog)
        for run_id in run_ids:
            listed = json.loads(cvtui(lab, home, "files", run_id, "--json").stdout)
            by_name = {f["path"].rsplit("/", 1)[-1]: f for f in listed}
            for name in OUTPUTS:
                entry = by_name[name]
                assert entry["state"] == "synced", (run_id, entry)
                host = (run_dirs[run_id] / name).read_bytes()
                local = Mirror(home, run_id).path(entry["path"]).read_bytes()
                assert local == host, (run_id, name, len(local), len(host))
                outcome.bytes_compared += len(host)
                outcome.files_compared += 1
                if name != "model.pt":
                    stored = sorted(
                        (float(step), key, value)
                        for step, key, path, value, _ in catalog.metric_rows(run_id)
                        if path == entry["path"]
                    )
                    assert stored == host_rows(run_dirs[run_id] / name), (run_id, name)
                    outcome.metric_values += len(stored)
            printed = (run_dirs[run_id] / "printed.txt").read_bytes()
            logs = subprocess.run(
                cli_argv(lab, home, "logs", run_id, "--raw"), capture_output=True, env=cli_env()
            )
            assert logs.stdout == printed, run_id
            outcome.bytes_compared += len(printed)
            outcome.files_compared += 1
    duplicates = read_catalog(
        home,
        "SELECT run_id, file, key, step, count(*) FROM metrics"
        " GROUP BY run_id, file, key, step HAVING count(*) > 1",
    )
    assert duplicates == []
    return outcome
