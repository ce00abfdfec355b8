"""The queue end to end: real sshd hosts with simulated GPUs, real daemons, real runs.

These are the slow tests of the queue (several seconds each): each starts a lab of sshd servers
and engines, and runs short real jobs through them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import parse_logfmt, running, wait_for

from cvtui.catalog import Catalog
from cvtui.engine.engine import Engine
from cvtui.engine.lock import lock_holder
from cvtui.inventory import load_inventory
from cvtui.lab import Lab, LabHostSpec
from cvtui.submit import prepare_runs, submit
from remote_agent.leases import release_leases, take_leases

pytestmark = pytest.mark.sshd

FINAL = ("succeeded", "failed", "cancelled", "lost")

# Each run appends one line to ran.jsonl in its run dir: which GPUs it saw, when it ran.
RECORDER = r"""
import json, os, sys, time
start = time.time()
time.sleep(float(os.environ.get("SLEEP", "0.3")))
with open("ran.jsonl", "a") as fh:
    fh.write(json.dumps({"run": os.environ["CVTUI_RUN_ID"], "dir": os.environ["CVTUI_RUN_DIR"],
                         "gpus": os.environ.get("CVTUI_GPUS", ""),
                         "start": start, "end": time.time()}) + "\n")
"""


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}


def cvtui(
    lab: Lab, home: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=cli_env())


def tune_inventory(lab: Lab, *, interval: str = "0.5s", **top: Any) -> None:
    """Faster telemetry than the lab's default (GPUs show up free sooner), plus extra keys."""
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["policy"]["interval"] = interval
    document.update(top)
    lab.inventory_path.write_text(yaml.safe_dump(document, sort_keys=False))


def write_config(directory: Path, filename: str = "sweep", **config: Any) -> Path:
    code = directory / "project"
    code.mkdir(exist_ok=True)
    (code / "record.py").write_text(RECORDER)
    document = {"name": "exp", "command": "python3 record.py", "params": {"i": [0]}}
    document.update(config)
    path = code / f"{filename}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def queue_runs(lab: Lab, home: Path, config: Path, **overrides: Any) -> list[str]:
    """Queue config's runs in home's catalog as `cvtui run` does, without dispatching them."""
    inventory = load_inventory(lab.inventory_path)
    with Catalog.open_home(home) as catalog:
        return submit(catalog, home, prepare_runs(config, inventory, **overrides))


def records(lab: Lab) -> list[dict[str, Any]]:
    """Every line any run wrote, on every host of the lab, with the host it ran on."""
    found = []
    for host in lab.servers:
        for path in sorted((lab.host_dir(host) / "root" / "runs").glob("*/work/ran.jsonl")):
            for line in path.read_text().splitlines():
                found.append({**json.loads(line), "host": host})
    return found


def assert_no_gpu_overlap(found: list[dict[str, Any]]) -> None:
    """No two runs held one GPU of one host at the same time (simulated hosts share a machine,
    so GPU indexes repeat across hosts: the key is (host, GPU))."""
    spans: dict[tuple[str, str], list[tuple[float, float, str]]] = {}
    for record in found:
        assert record["gpus"], record
        for gpu in record["gpus"].split(","):
            spans.setdefault((record["host"], gpu), []).append(
                (record["start"], record["end"], record["run"])
            )
    for key, intervals in spans.items():
        intervals.sort()
        for before, after in itertools.pairwise(intervals):
            assert after[0] >= before[1], (key, before, after)


def until(predicate: Callable[[], object], timeout_s: float, step_s: float = 0.05) -> object:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s (last value {last!r})")


def states(home: Path, run_ids: list[str]) -> list[str]:
    with Catalog.open_home(home) as catalog:
        return [(catalog.get_run(i) or {}).get("state", "?") for i in run_ids]


def all_final(home: Path, run_ids: list[str]) -> bool:
    return all(s in FINAL for s in states(home, run_ids))


class Daemon:
    """`cvtui daemon --foreground` as a real process, its stderr kept in a file."""

    def __init__(self, lab: Lab, home: Path, log: Path) -> None:
        self.log = log
        argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
        argv += ["--inventory", str(lab.inventory_path), "daemon", "--foreground"]
        with open(log, "ab") as err:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=cli_env()
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout_s)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def daemons() -> Any:
    """Start daemons for a test; any still alive at the end is killed."""
    started: list[Daemon] = []

    def start(lab: Lab, home: Path, log: Path) -> Daemon:
        daemon = Daemon(lab, home, log)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def first_dispatch(home: Path, run_ids: list[str]) -> dict[str, float]:
    with Catalog.open_home(home) as catalog:
        return {
            i: min(e["time"] for e in catalog.run_events(i) if e["state"] == "dispatching")
            for i in run_ids
        }


def test_a_30_run_grid_fills_three_hosts_in_priority_order(
    lab_factory: Callable[..., Lab], tmp_path: Path, daemons: Callable[..., Daemon]
) -> None:
    lab = lab_factory(
        LabHostSpec("gpu-01", gpus=4, model="A100-SXM4-80GB"),
        LabHostSpec("gpu-02", gpus=2, model="RTX-3090-24GB"),
        LabHostSpec("gpu-03", gpus=3, model="A40-48GB"),
    )
    events = tmp_path / "events.jsonl"
    tune_inventory(lab, notify=[{"command": f"sh -c 'cat >> {events}'"}])
    home = tmp_path / "home"
    # One GPU with 40 GiB free fits gpu-01 and gpu-03, never the 24 GiB cards of gpu-02.
    one = write_config(
        tmp_path,
        "one",
        params={"i": list(range(5))},
        resources={"gpus": 1, "min_free_mem": "40GiB"},
    )
    two = write_config(tmp_path, "two", params={"i": list(range(5))}, resources={"gpus": 2})
    shapes: dict[str, dict[str, list[str]]] = {"one": {}, "two": {}}
    for priority in ("low", "normal", "high"):  # low is submitted first: priority beats FIFO
        shapes["one"][priority] = queue_runs(lab, home, one, priority=priority)
        shapes["two"][priority] = queue_runs(lab, home, two, priority=priority)
    run_ids = [i for shape in shapes.values() for ids in shape.values() for i in ids]
    assert len(run_ids) == 30

    listed = json.loads(cvtui(lab, home, "queue", "--json").stdout)
    assert [r["priority"] for r in listed] == ["high"] * 10 + ["normal"] * 10 + ["low"] * 10
    assert [r["position"] for r in listed] == list(range(1, 31))

    daemon = daemons(lab, home, tmp_path / "daemon.log")
    until(lambda: lock_holder(home) == daemon.pid, 15)
    second = cvtui(lab, home, "daemon", "--foreground")
    assert second.returncode == 1
    assert f"an engine (pid {daemon.pid}) already holds {home / 'engine.lock'}" in second.stderr
    until(lambda: all_final(home, run_ids), 90, 0.2)
    until(lambda: events.exists() and len(events.read_text().splitlines()) == 30, 10)
    assert daemon.stop() == 0  # SIGTERM: a clean stop

    assert states(home, run_ids) == ["succeeded"] * 30
    found = records(lab)
    assert sorted(r["run"] for r in found) == sorted(run_ids)  # each ran exactly once
    assert_no_gpu_overlap(found)
    by_run = {r["run"]: r for r in found}
    for shape, wanted in (("one", 1), ("two", 2)):
        for run_id in itertools.chain(*shapes[shape].values()):
            assert len(by_run[run_id]["gpus"].split(",")) == wanted
    assert {by_run[i]["host"] for i in itertools.chain(*shapes["one"].values())} <= {
        "gpu-01",
        "gpu-03",
    }
    # Within a shape the scheduler dispatches in queue order: priority first.
    for shape in shapes.values():
        dispatched = first_dispatch(home, [i for ids in shape.values() for i in ids])
        high, normal, low = ([dispatched[i] for i in shape[p]] for p in ("high", "normal", "low"))
        assert max(high) <= min(normal) and max(normal) <= min(low)
    median_start = {
        p: statistics.median(by_run[i]["start"] for s in shapes.values() for i in s[p])
        for p in ("high", "normal", "low")
    }
    assert median_start["high"] < median_start["normal"] < median_start["low"]

    told = [json.loads(line) for line in events.read_text().splitlines()]
    assert sorted(e["run"]["id"] for e in told) == sorted(run_ids)
    assert {e["event"] for e in told} == {"run_succeeded"}

    lines = [parse_logfmt(line) for line in daemon.lines()]
    assert all({"time", "level", "event", "msg"} <= set(fields) for fields in lines), lines
    kinds = [fields["event"] for fields in lines]
    assert kinds[0] == "start" and kinds[-1] == "exit" and kinds.count("stop") == 1
    assert kinds.count("run_succeeded") == 30
    assert kinds.count("dispatch") >= 30
    dispatch = next(fields for fields in lines if fields["event"] == "dispatch")
    assert dispatch["run"] in run_ids and dispatch["host"] in lab.servers


def test_two_engines_with_two_catalogs_never_share_a_gpu(
    lab_factory: Callable[..., Lab], tmp_path: Path, daemons: Callable[..., Daemon]
) -> None:
    # Two users, each with a catalog of their own, on the same two hosts: only the hosts'
    # GPU leases keep their runs apart.
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2), LabHostSpec("gpu-02", gpus=1))
    tune_inventory(lab)
    config = write_config(tmp_path, params={"i": list(range(4))}, resources={"gpus": 1})
    homes = [tmp_path / "alice", tmp_path / "bob"]
    run_ids = {home: queue_runs(lab, home, config) for home in homes}
    for home in homes:  # at the same moment, both seeing every GPU free
        daemons(lab, home, tmp_path / f"{home.name}.log")
    for home in homes:
        until(lambda home=home: all_final(home, run_ids[home]), 60, 0.2)
    for home in homes:
        assert states(home, run_ids[home]) == ["succeeded"] * 4
    found = records(lab)
    assert sorted(r["run"] for r in found) == sorted(run_ids[homes[0]] + run_ids[homes[1]])
    assert_no_gpu_overlap(found)


async def test_a_gpu_leased_by_another_controller_is_refused_and_the_run_waits(
    lab_factory: Callable[..., Lab], tmp_path: Path, home: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    tune_inventory(lab, interval="1s")
    inventory = load_inventory(lab.inventory_path)
    leases_dir = str(lab.host_dir("gpu-01") / "leases")
    config = write_config(tmp_path, resources={"gpus": 1})
    with Catalog.open_home(home) as catalog:
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await wait_for(lambda: engine.answered["gpu-01"].is_set(), 15)
            session = engine.sessions["gpu-01"]
            seen = session.latest_at
            await wait_for(lambda: session.latest_at != seen, 5)
            # Right after a sample, another user's controller leases the GPU: this engine's
            # telemetry says it is free for up to a second more, so it tries and is refused.
            lease = take_leases(leases_dir, [0], "theirs")
            with Catalog.open_home(home) as cli:  # another connection, as `cvtui run` has
                [run_id] = submit(cli, home, prepare_runs(config, inventory))
            try:
                await wait_for(lambda: "queued" in states_after_start(catalog, run_id), 10)
                await asyncio.sleep(0.5)
                assert catalog.get_run(run_id)["state"] == "queued"
            finally:
                released = time.time()
                release_leases(lease)
            await wait_for(lambda: catalog.get_run(run_id)["state"] == "succeeded", 20)
        events = catalog.run_events(run_id)
    refusal = next(e for e in events[1:] if e["state"] == "queued")
    assert "refused" in refusal["detail"] and "GPU 0 is leased by theirs" in refusal["detail"]
    # One refusal, then it waited for telemetry to show the lease: no storm of retries.
    assert [e["state"] for e in events].count("dispatching") <= 3
    [record] = records(lab)
    assert record["run"] == run_id and record["start"] >= released


def states_after_start(catalog: Catalog, run_id: str) -> list[str]:
    return [e["state"] for e in catalog.run_events(run_id)[1:]]


async def test_foreign_process_drain_and_queue_move(
    lab_factory: Callable[..., Lab], tmp_path: Path, home: Path
) -> None:
    from cvtui.engine.lock import EngineLock

    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    tune_inventory(lab)
    foreign = lab.host_dir("gpu-01") / "root" / "simulate" / "foreign.json"
    foreign.parent.mkdir(parents=True)
    foreign.write_text(json.dumps([{"gpu": 0, "pid": 4242, "user": "mallory", "mem": 10 << 30}]))
    narrow = queue_runs(
        lab, home, write_config(tmp_path, "narrow", params={"i": [0, 1, 2]}, resources={"gpus": 1})
    )
    [wide] = queue_runs(lab, home, write_config(tmp_path, "wide", name="wide"), gpus=2)
    inventory = load_inventory(lab.inventory_path)
    lock = EngineLock(home)
    lock.acquire()  # the CLI below reads this engine's catalog instead of starting its own

    def cli(*args: str) -> Any:
        return asyncio.to_thread(cvtui, lab, home, *args)

    def reason() -> str:
        return catalog.get_run(wide)["reason"] or ""

    try:
        with Catalog.open_home(home) as catalog:
            engine = Engine(inventory, catalog)
            async with running(engine.run):
                await wait_for(lambda: all(s == "succeeded" for s in states(home, narrow)), 20)
                await wait_for(lambda: "gpu-01 has 1 GPU" in reason(), 5)
                listed = json.loads((await cli("queue", "--json")).stdout)
                assert [(r["id"], r["gpus"], r["priority"]) for r in listed] == [
                    (wide, 2, "normal")
                ]
                assert listed[0]["reason"] == (
                    "needs 2 free GPUs on one host; largest matching host gpu-01 has 1 GPU"
                )

                drained = await cli("hosts", "drain", "gpu-01")
                assert drained.returncode == 0, drained.stderr
                assert drained.stdout.startswith("gpu-01 drained: nothing new is placed there")
                foreign.unlink()  # mallory is done; the host stays drained all the same
                session = engine.sessions["gpu-01"]
                await wait_for(lambda: not any(g.processes for g in session.latest.gpus), 5)
                await wait_for(lambda: reason() == "host gpu-01 is drained", 5)
                assert catalog.get_run(wide)["state"] == "queued"
                hosts = json.loads((await cli("hosts", "--json")).stdout)
                assert [(h["name"], h["drained"]) for h in hosts] == [("gpu-01", True)]

                moved = await cli("queue", "move", wide[:10], "--priority", "urgent")
                assert moved.returncode == 0, moved.stderr
                assert moved.stdout.strip().endswith("normal -> urgent, now 1st of 1")

                undrained = await cli("hosts", "undrain", "gpu-01")
                assert undrained.stdout.strip() == "gpu-01 takes new runs again"
                await wait_for(lambda: catalog.get_run(wide)["state"] == "succeeded", 10)
    finally:
        lock.release()
    by_run = {r["run"]: r for r in records(lab)}
    assert {by_run[i]["gpus"] for i in narrow} == {"1"}  # GPU 0 had mallory's process
    assert by_run[wide]["gpus"] == "0,1"


def test_kill_9_during_dispatch_then_restart_runs_each_run_once(
    lab_factory: Callable[..., Lab], tmp_path: Path, daemons: Callable[..., Daemon]
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2), LabHostSpec("gpu-02", gpus=2))
    tune_inventory(lab)
    home = tmp_path / "home"
    config = write_config(tmp_path, params={"i": list(range(10))}, resources={"gpus": 1})
    run_ids = queue_runs(lab, home, config)
    first = daemons(lab, home, tmp_path / "first.log")

    def dispatch_started() -> bool:
        return any(s != "queued" for s in states(home, run_ids))

    until(dispatch_started, 20, 0.005)
    first.process.kill()  # SIGKILL: no cleanup, starts may be half-way
    first.process.wait()
    interrupted = states(home, run_ids)
    assert "queued" in interrupted and lock_holder(home) is None  # the kernel dropped the lock
    daemons(lab, home, tmp_path / "second.log")
    until(lambda: all_final(home, run_ids), 60, 0.2)
    assert states(home, run_ids) == ["succeeded"] * 10
    for run_id in run_ids:
        ran = lab.host_dir("gpu-01") / "root" / "runs" / run_id / "work" / "ran.jsonl"
        if not ran.exists():
            ran = lab.host_dir("gpu-02") / "root" / "runs" / run_id / "work" / "ran.jsonl"
        assert len(ran.read_text().splitlines()) == 1, run_id
    found = records(lab)
    assert len(found) == 10
    assert_no_gpu_overlap(found)
    with Catalog.open_home(home) as catalog:
        for run_id in run_ids:
            events = [e["state"] for e in catalog.run_events(run_id)]
            assert events.count("running") == 1 and events[-1] == "succeeded", events


async def test_notify_of_a_failed_run_and_of_a_host_going_down_and_back(
    lab_factory: Callable[..., Lab], tmp_path: Path, home: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    told = tmp_path / "told.jsonl"
    tune_inventory(lab, notify=[{"command": f"sh -c 'cat >> {told}'"}])
    inventory = load_inventory(lab.inventory_path)
    config = write_config(tmp_path, command="sh -c 'exit 3'", params={})

    def kinds() -> list[str]:
        lines = told.read_text().splitlines() if told.exists() else []
        return [json.loads(line)["event"] for line in lines]

    with Catalog.open_home(home) as catalog:
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            [run_id] = submit(catalog, home, prepare_runs(config, inventory))
            await wait_for(lambda: kinds() == ["run_failed"], 20)
            lab.servers["gpu-01"].kill()
            await wait_for(lambda: kinds() == ["run_failed", "host_down"], 10)
            lab.servers["gpu-01"].start()
            await wait_for(lambda: kinds() == ["run_failed", "host_down", "host_up"], 15)
    failed, down, up = (json.loads(line) for line in told.read_text().splitlines())
    assert failed["run"]["id"] == run_id and failed["run"]["exit_code"] == 3
    assert "failed on gpu-01 (GPU 0) with exit code 3" in failed["text"]
    assert (down["host"], down["state"]) == ("gpu-01", "disconnected")
    assert up["text"].startswith("cvtui: host gpu-01 is back after ")
