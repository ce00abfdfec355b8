"""Sync end to end over real sshd: live metrics through a cut link, kill -9 resume, odd files."""

from __future__ import annotations

import csv
import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from support import catalog_intact, metric_count, stop_engine_once_running

from cvtui.catalog import Catalog
from cvtui.lab import Lab, LabHostSpec
from cvtui.mirror import Mirror
from remote_agent.blocktree import block_size_for

pytestmark = pytest.mark.sshd

WRITER = r"""
import json, os, sys, time
n = int(sys.argv[1])
with open("grow.csv", "w") as fh:
    fh.write("step,loss,acc\n")
for i in range(n):
    with open("grow.csv", "a") as fh:  # a logger appending a row
        fh.write(f"{i},{1 / (i + 1):.6f},{i / n:.4f}\n")
    with open("rewrite.csv", "w") as fh:  # pandas: the whole frame again, in place
        fh.write("step,loss\n" + "".join(f"{j},{j * 0.5}\n" for j in range(i + 1)))
    extra = i >= n // 2  # halfway, the frame gains a column
    with open("header.csv", "w") as fh:
        fh.write("step,loss,acc\n" if extra else "step,loss\n")
        fh.write("".join(f"{j},{j * 0.1:.3f}" + (f",{j * 0.2:.3f}" if extra else "") + "\n"
                         for j in range(i + 1)))
    with open("events.jsonl", "a") as fh:
        fh.write(json.dumps({"step": i, "loss": 1 / (i + 1)}) + "\n")
    print("step", i, flush=True)
    time.sleep(0.01)
"""

ODD_FILES = r"""
import os
os.symlink("/etc/passwd", "passwd.log")
open(os.fsencode("caf") + b"\xe9.csv", "wb").write(b"step,x\n1,2\n")
open("new\nline.log", "w").write("a name with a newline\n")
open("empty.csv", "w").close()
open("latin.csv", "wb").write(b"step,name\n1,caf\xe9\n2,ok\n")
open("model.pt", "wb").write(os.urandom(3_000_000))
"""


def cvtui(
    lab: Lab, home: Path, *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    argv.append(str(lab.inventory_path))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, env=env)


def write_config(tmp_path: Path, script: str, command: str) -> Path:
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / "job.py").write_text(script)
    path = code / "run.yaml"
    path.write_text(yaml.safe_dump({"name": "sync", "command": command}))
    return path


def run_dir(lab: Lab, host: str, run_id: str) -> Path:
    return lab.host_dir(host) / "root" / "runs" / run_id / "work"


def csv_rows(text: str) -> list[tuple[float, str, float]]:
    rows = []
    for record in csv.DictReader(io.StringIO(text)):
        step = float(record.pop("step"))
        rows += [(step, key, float(value)) for key, value in record.items() if value]
    return sorted(rows)


def stored(catalog: Catalog, run_id: str, path: str) -> list[tuple[float, str, float]]:
    return sorted((float(s), k, v) for s, k, f, v, _ in catalog.metric_rows(run_id) if f == path)


async def test_metrics_survive_a_cut_link_exactly_once(
    lab_factory, home: Path, tmp_path: Path
) -> None:
    from support import running, wait_for

    from cvtui.engine.engine import Engine
    from cvtui.inventory import load_inventory
    from cvtui.submit import prepare_runs, submit

    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    config = write_config(tmp_path, WRITER, "python3 job.py 300")
    inventory = load_inventory(lab.inventory_path)
    with Catalog.open_home(home) as catalog:
        [run_id] = submit(catalog, home, prepare_runs(config, inventory))
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await wait_for(lambda: metric_count(catalog, run_id, "grow.csv") > 30, 30)
            lab.servers["gpu-01"].kill()  # the link drops mid-write; the run goes on
            await wait_for(lambda: engine.sessions["gpu-01"].client is None, 10)
            time.sleep(0.5)
            lab.servers["gpu-01"].start()
            await wait_for(lambda: catalog.get_run(run_id)["state"] == "succeeded", 60)
            await wait_for(
                lambda: (
                    not engine.runs.pulls and catalog.get_run(run_id)["sync_status"] == "synced"
                ),
                30,
            )
        remote = run_dir(lab, "gpu-01", run_id)
        for name in ("grow.csv", "rewrite.csv", "header.csv", "events.jsonl"):
            local = home / "runs" / run_id / name
            assert local.read_bytes() == (remote / name).read_bytes(), name
        log = (home / "runs" / run_id / ".cvtui" / "output.log").read_bytes()
        assert log == (remote.parent / "output.log").read_bytes()
        for name in ("grow.csv", "rewrite.csv", "header.csv"):
            assert stored(catalog, run_id, name) == csv_rows((remote / name).read_text()), name
        assert metric_count(catalog, run_id, "grow.csv") == 600  # 300 rows x (loss, acc)
        assert metric_count(catalog, run_id, "header.csv") == 300 + 300
        events = [json.loads(line) for line in (remote / "events.jsonl").read_text().splitlines()]
        assert sorted(
            (s, v) for s, k, f, v, _ in catalog.metric_rows(run_id) if f == "events.jsonl"
        ) == sorted((e["step"], e["loss"]) for e in events)
        states = {r["path"]: r["sync_status"] for r in catalog.files_of(run_id)}
        assert set(states.values()) == {"synced"}, states
        assert catalog_intact(catalog)


def landed(part: Path, offset: int) -> bool:
    """Whether the transfer's bytes reached offset of the part file (still a hole: zeros)."""
    try:
        with open(part, "rb") as fh:
            fh.seek(offset)
            return any(fh.read(64))
    except FileNotFoundError:
        return False


def good_bytes(part: Path, source: bytes) -> int:
    """Bytes of the part file that already hold the source's blocks (16 KiB at this size)."""
    block = block_size_for(len(source))
    data = part.read_bytes()
    return sum(
        len(source[at : at + block])
        for at in range(0, len(source), block)
        if data[at : at + block] == source[at : at + block]
    )


@pytest.mark.timeout(480)  # about 40 s on an idle 2-core machine; niced syncs crawl under load
def test_kill_9_during_a_checkpoint_sync_resumes(lab_factory, home: Path, tmp_path: Path) -> None:
    # The figures: a 200 MB checkpoint, 20 kills at random points. Each kill lands
    # 1.7-4% further on, so the 20 kills all fall inside the transfer.
    size = 200 << 20
    kills = 20
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    script = f"import os\nopen('part.pt', 'wb').write(os.urandom({size}))\n"
    script += "os.rename('part.pt', 'model.pt')\n"
    config = write_config(tmp_path, script, "python3 job.py")
    done = cvtui(lab, home, "run", str(config))
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    stop_engine_once_running(home, [run_id])  # its engine would sync it: only `sync` may
    checkpoint = run_dir(lab, "gpu-01", run_id) / "model.pt"
    deadline = time.monotonic() + 30
    while not checkpoint.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    source = checkpoint.read_bytes()
    part = Mirror(home, run_id).part("model.pt")
    rng = random.Random(7)
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    argv += [str(lab.inventory_path), "sync", run_id, "--json"]
    remaining = size
    for _ in range(kills):
        target = min(size - 1, size - remaining + rng.randint(size // 60, size // 25))
        log = tmp_path / "sync.log"
        with open(log, "wb") as out:
            # Niced, so that on a small machine this loop still sees the part file grow.
            syncing = subprocess.Popen(
                argv, stdout=subprocess.DEVNULL, stderr=out, preexec_fn=lambda: os.nice(15)
            )
        deadline = time.monotonic() + 60
        while not landed(part, target) and syncing.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        syncing.send_signal(signal.SIGKILL)
        assert syncing.wait() == -signal.SIGKILL, log.read_text()
        remaining = size - good_bytes(part, source)
        assert 0 < remaining < size
    finished = cvtui(lab, home, "sync", run_id, "--json")
    assert finished.returncode == 0, finished.stderr
    outcome = json.loads(finished.stdout)[run_id]
    assert (home / "runs" / run_id / "model.pt").read_bytes() == source
    fetched = outcome["fetched_by_file"].get("model.pt", 0)
    assert fetched <= remaining * 1.05, (fetched, remaining)
    assert not part.exists()
    again = cvtui(lab, home, "sync", run_id, "--json")
    assert json.loads(again.stdout)[run_id]["fetched"] == 0  # idempotent
    with Catalog.open_home(home) as catalog:  # twenty kills -9 mid-write left it intact
        assert catalog_intact(catalog)


def test_odd_files_over_ssh_get_clear_states(lab_factory, home: Path, tmp_path: Path) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    config = write_config(tmp_path, ODD_FILES, "python3 job.py")
    done = cvtui(lab, home, "run", str(config), "--follow")
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    synced = cvtui(lab, home, "sync", run_id)
    assert synced.returncode == 0, synced.stdout + synced.stderr
    assert "fetched" in synced.stderr  # the progress line's last word
    files = {f["path"]: f for f in json.loads(cvtui(lab, home, "files", run_id, "--json").stdout)}
    assert files["passwd.log"]["state"] == "skipped"
    assert "leaves the run dir" in files["passwd.log"]["reason"]
    assert files["caf\\xe9.csv"]["state"] == "skipped"
    assert files["new\nline.log"]["state"] == "synced"
    assert files["empty.csv"]["state"] == "synced" and files["empty.csv"]["size"] == 0
    assert files["model.pt"]["state"] == "synced" and files["model.pt"]["hash"]
    mirror = home / "runs" / run_id
    assert not (mirror / "passwd.log").exists()
    assert (mirror / "new\nline.log").read_text() == "a name with a newline\n"
    assert (mirror / "model.pt").read_bytes() == (
        run_dir(lab, "gpu-01", run_id) / "model.pt"
    ).read_bytes()
    table = cvtui(lab, home, "files", run_id)
    assert "new\\nline.log" in table.stdout and "skipped" in table.stdout
    metrics = cvtui(lab, home, "metrics", run_id, "--csv")
    assert metrics.stdout.splitlines() == ["step,name", "1,caf\ufffd", "2,ok"]
    with Catalog.open_home(home) as catalog:
        assert catalog_intact(catalog)


BUSY_WRITER = """
import time
with open("busy.log", "a") as out:
    for i in range(3000):  # a minute of a line every 20 ms: the watch never goes quiet
        out.write(f"line {i}\\n")
        out.flush()
        time.sleep(0.02)
"""


def test_sync_of_a_busy_running_run_returns_after_its_own_pass(
    lab_factory, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    config = write_config(tmp_path, BUSY_WRITER, "python3 job.py")
    done = cvtui(lab, home, "run", str(config))
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    busy = run_dir(lab, "gpu-01", run_id) / "busy.log"
    deadline = time.monotonic() + 30
    while not busy.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    started = time.monotonic()
    synced = cvtui(lab, home, "sync", run_id, "--json", timeout=45)
    assert synced.returncode == 0, synced.stderr
    assert time.monotonic() - started < 40  # not held until the run ends (a minute)
    outcome = json.loads(synced.stdout)[run_id]
    assert outcome["error"] is None
    with Catalog.open_home(home) as catalog:
        assert catalog.get_run(run_id)["state"] == "running"
    local = (home / "runs" / run_id / "busy.log").read_text().splitlines()
    assert local and local == [f"line {i}" for i in range(len(local))]  # a clean prefix
    cvtui(lab, home, "cancel", run_id)


BIG_CHECKPOINT = """
import os
open("part.pt", "wb").write(os.urandom(30 << 20))
os.rename("part.pt", "model.pt")
"""


def test_sync_reports_the_bytes_that_came_for_the_run_while_it_waited(
    lab_factory, home: Path, tmp_path: Path
) -> None:
    # No engine runs: `cvtui sync` starts one, and the final pass its reconnect asks for the
    # ended run fetches the checkpoint before the command's own pass. The report counts those
    # bytes (it said "0 B fetched").
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    config = write_config(tmp_path, BIG_CHECKPOINT, "python3 job.py")
    done = cvtui(lab, home, "run", str(config))
    assert done.returncode == 0, done.stderr
    run_id = done.stdout.split()[0]
    stop_engine_once_running(home, [run_id])  # the `sync` command's engine fetches it
    checkpoint = run_dir(lab, "gpu-01", run_id) / "model.pt"
    deadline = time.monotonic() + 30
    while not checkpoint.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # the run has ended by now
    synced = cvtui(lab, home, "-v", "sync", run_id)
    assert synced.returncode == 0, synced.stderr
    # The new checkpoint came whole on a channel of its own (files_send), read once on the
    # host, and the agent left no FIFO behind.
    assert "streaming unavailable" not in synced.stderr
    assert not list((lab.host_dir("gpu-01") / "root" / "agent").glob("*.send"))
    line = next(li for li in synced.stdout.splitlines() if li.startswith(run_id[:12]))
    fetched = line.rsplit(", ", 1)[1].split()[0]
    assert line.endswith("MiB fetched") and float(fetched[:-3]) >= 30.0, line  # 30 MiB, the log
    assert (home / "runs" / run_id / "model.pt").read_bytes() == checkpoint.read_bytes()
    again = cvtui(lab, home, "sync", run_id, "--json")
    assert json.loads(again.stdout)[run_id]["fetched"] == 0  # nothing new: nothing counted
