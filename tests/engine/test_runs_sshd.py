"""Runs end to end: the CLI, a real engine, real sshd, detached supervisors, real processes."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cvtui.catalog import Catalog
from cvtui.lab import Lab, LabHostSpec

pytestmark = pytest.mark.sshd

TRAIN = r"""
import json, os, sys, time
args = sys.argv[1:]
start = time.time()
print("start", " ".join(args), flush=True)
print("[PROGRESS:50:half way]", flush=True)
time.sleep(float(os.environ.get("SLEEP", "0.2")))
end = time.time()
with open("times.jsonl", "a") as fh:
    fh.write(json.dumps({"args": args, "gpus": os.environ.get("CVTUI_GPUS"),
                         "run": os.environ.get("CVTUI_RUN_ID"), "start": start, "end": end}) + "\n")
print("done", flush=True)
sys.exit(int(os.environ.get("EXIT", "0")))
"""


def cvtui(
    lab: Lab, home: Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable,
        "-m",
        "cvtui.cli",
        "--home",
        str(home),
        "--inventory",
        str(lab.inventory_path),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=timeout, env=env)


def write_config(tmp_path: Path, **config: object) -> Path:
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    (code / "train.py").write_text(TRAIN)
    document = {"name": "exp", "command": "python3 train.py --lr {lr}", "params": {"lr": [0.1]}}
    document.update(config)
    path = code / "sweep.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def runs_json(lab: Lab, home: Path) -> list[dict]:
    done = cvtui(lab, home, "ps", "--all", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def times(lab: Lab, host: str) -> list[dict]:
    records = []
    for path in sorted((lab.host_dir(host) / "root" / "runs").glob("*/work/times.jsonl")):
        records += [json.loads(line) for line in path.read_text().splitlines()]
    return records


def test_grid_dry_run_then_run_and_follow(lab: Lab, home: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        command="python3 train.py --lr {lr} --bs {bs}",
        params={"lr": [0.1, 0.01], "bs": [32, 64, 128]},
        resources={"gpus": 1},
    )
    dry = cvtui(lab, home, "run", str(config), "--dry-run", "--host", "gpu-01")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("6 runs (dry run: nothing started")
    assert "python3 train.py --lr 0.01 --bs 128" in dry.stdout
    assert runs_json(lab, home) == []

    done = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    runs = runs_json(lab, home)
    assert len(runs) == 6
    assert {r["state"] for r in runs} == {"succeeded"}
    assert sorted((r["params"]["lr"], r["params"]["bs"]) for r in runs) == sorted(
        (lr, bs) for lr in (0.1, 0.01) for bs in (32, 64, 128)
    )
    assert all(r["host"] == "gpu-01" and len(r["gpus"]) == 1 for r in runs)
    assert {r["progress"] for r in runs} == {50.0}
    records = times(lab, "gpu-01")
    assert sorted(tuple(r["args"]) for r in records) == sorted(
        ("--lr", str(lr), "--bs", str(bs)) for lr in (0.1, 0.01) for bs in (32, 64, 128)
    )
    assert "done" in done.stdout  # the followed output reached the terminal
    for run in runs:
        logs = cvtui(lab, home, "logs", run["id"])
        assert logs.stdout.startswith("start --lr") and logs.stdout.endswith("done\n")


def test_runs_on_the_only_gpu_never_overlap(lab_factory, home: Path, tmp_path: Path) -> None:
    lab = lab_factory(LabHostSpec("solo", gpus=1))
    config = write_config(
        tmp_path, params={"lr": [1, 2, 3]}, resources={"gpus": 1}, env={"SLEEP": "0.5"}
    )
    done = cvtui(lab, home, "run", str(config), "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    spans = sorted((r["start"], r["end"]) for r in times(lab, "solo"))
    assert len(spans) == 3
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, spans
    assert {r["gpus"] for r in times(lab, "solo")} == {"0"}


def test_follow_exit_code_and_unknown_host(lab: Lab, home: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, env={"EXIT": "3"})
    done = cvtui(lab, home, "run", str(config), "--follow")
    assert done.returncode == 3, done.stdout + done.stderr
    [run] = runs_json(lab, home)
    assert run["state"] == "failed" and run["exit_code"] == 3

    bad = cvtui(lab, home, "run", str(config), "--host", "gpu-09")
    assert bad.returncode == 2
    assert "unknown host 'gpu-09'" in bad.stderr and "gpu-01, gpu-02" in bad.stderr


def test_kill_follow_then_ps_and_logs_catch_up(lab: Lab, home: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, env={"SLEEP": "2"})
    argv = [
        sys.executable,
        "-m",
        "cvtui.cli",
        "--home",
        str(home),
        "--inventory",
        str(lab.inventory_path),
    ]
    follower = subprocess.Popen([*argv, "run", str(config), "--follow"], stdout=subprocess.PIPE)
    with Catalog.open_home(home) as catalog:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            runs = catalog.list_runs()
            if runs and runs[0]["state"] == "running":
                break
            time.sleep(0.05)
        else:
            pytest.fail("the run never started")
    follower.send_signal(signal.SIGKILL)
    follower.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not times(lab, "gpu-01") and not times(lab, "gpu-02"):
        time.sleep(0.1)
    [run] = runs_json(lab, home)
    assert run["state"] == "succeeded" and run["exit_code"] == 0
    logs = cvtui(lab, home, "logs", run["id"][:10])
    assert logs.stdout == "start --lr 0.1\n[PROGRESS:50:half way]\ndone\n"


def test_cancel_kills_the_whole_tree_and_nothing_else(lab: Lab, home: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        command="sleep 1000 & sleep 1000 & python3 -c 'import time; time.sleep(1000)'",
        params={},
    )
    bystander = subprocess.Popen(["sleep", "1000"])
    try:
        done = cvtui(lab, home, "run", str(config))
        assert done.returncode == 0, done.stderr
        run_id = done.stdout.split()[0]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(processes_of(run_id)) < 3:
            time.sleep(0.05)
        assert len(processes_of(run_id)) >= 3
        cancelled = cvtui(lab, home, "cancel", run_id, "--grace", "1", "--wait")
        assert cancelled.returncode == 0, cancelled.stderr
        assert "cancel sent (running)" in cancelled.stdout
        assert cancelled.stdout.rstrip().endswith(": cancelled")  # --wait: the end it came to
        assert processes_of(run_id) == []
        assert bystander.poll() is None
        [run] = runs_json(lab, home)
        assert run["state"] == "cancelled"
    finally:
        bystander.kill()


def processes_of(run_id: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"CVTUI_RUN_ID={run_id}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def test_odd_output_arrives_byte_for_byte(lab: Lab, home: Path, tmp_path: Path) -> None:
    writer = (
        "import sys\n"
        "out = sys.stdout.buffer\n"
        "out.write(b'caf\\xe9 \\xff\\xfe invalid utf-8\\n')\n"
        "out.write(b'x' * (10 * 1024 * 1024))\n"
        "out.write(b'\\n')\n"
        "out.write(b''.join(b'line %d\\n' % i for i in range(100000)))\n"
    )
    config = write_config(tmp_path, command="python3 writer.py", params={})
    (config.parent / "writer.py").write_text(writer)
    base = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    base.append(str(lab.inventory_path))
    done = subprocess.run([*base, "run", str(config), "--follow"], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = subprocess.run([sys.executable, "-c", writer], capture_output=True).stdout
    assert done.stdout.split(b"\n", 1)[1] == expected  # after the line with the run id
    [run] = runs_json(lab, home)
    logs = subprocess.run([*base, "logs", run["id"]], capture_output=True, timeout=60)
    assert logs.stdout == expected
    tail = cvtui(lab, home, "logs", run["id"], "--tail", "2")
    assert tail.stdout == "line 99998\nline 99999\n"


def test_exec_streams_output_and_returns_the_exit_code(lab: Lab, home: Path) -> None:
    done = cvtui(
        lab, home, "exec", "--host", "gpu-01", "--", "sh", "-c", "echo out; echo err >&2; exit 7"
    )
    assert done.returncode == 7
    assert done.stdout == "out\n" and done.stderr == "err\n"
    gpu = cvtui(
        lab,
        home,
        "exec",
        "--host",
        "gpu-02",
        "--gpus",
        "2",
        "--",
        "sh",
        "-c",
        "echo $CUDA_VISIBLE_DEVICES",
    )
    assert gpu.returncode == 0, gpu.stderr
    assert len(gpu.stdout.strip().split(",")) == 2
    # Piped stdin is the command's (here over a connection of the CLI's own).
    data = os.urandom(3 << 20)
    fed = exec_with_input(lab, home, data, "sh", "-c", "sha256sum | cut -c1-64")
    assert fed.returncode == 0, fed.stderr
    assert fed.stdout.decode().strip() == hashlib.sha256(data).hexdigest()
    # A command that stops reading early ends the exec; nothing waits for the rest.
    early = exec_with_input(lab, home, data, "head", "-c", "5")
    assert (early.returncode, early.stdout) == (0, data[:5])
    # stdin still open and silent (`tail -f log | cvtui exec ... -- echo hi`): the command's
    # end ends the exec with its code; the reader blocked on stdin does not abort the exit.
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    argv += [str(lab.inventory_path), "exec", "--host", "gpu-01", "--", "echo", "hi"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    with subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    ) as quiet:
        assert quiet.wait(60) == 0, quiet.stderr.read() if quiet.stderr else ""
        assert quiet.stdout is not None and quiet.stdout.read() == b"hi\n"
        assert quiet.stdin is not None
        quiet.stdin.close()


def exec_with_input(
    lab: Lab, home: Path, data: bytes, *command: str
) -> subprocess.CompletedProcess[bytes]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    argv += [str(lab.inventory_path), "exec", "--host", "gpu-01", "--", *command]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run(argv, input=data, capture_output=True, timeout=60, env=env)


async def test_sshd_down_mid_run_then_back_reconciles_without_a_second_start(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    from support import running, wait_for

    from cvtui.engine.engine import Engine
    from cvtui.inventory import load_inventory
    from cvtui.submit import prepare_runs, submit

    config = write_config(tmp_path, env={"SLEEP": "3"})
    inventory = load_inventory(lab.inventory_path)
    with Catalog.open_home(home) as catalog:
        [run_id] = submit(catalog, home, prepare_runs(config, inventory, hosts=["gpu-01"]))
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await wait_for(lambda: catalog.get_run(run_id)["state"] == "running", 20)
            lab.servers["gpu-01"].kill()  # sshd, the session and the agent die; the run goes on
            await wait_for(lambda: engine.sessions["gpu-01"].client is None, 10)
            assert catalog.get_run(run_id)["state"] == "running"
            lab.servers["gpu-01"].start()
            await wait_for(lambda: catalog.get_run(run_id)["state"] == "succeeded", 30)
            await wait_for(lambda: not engine.runs.pulls, 10)
        run = catalog.get_run(run_id)
        assert run["exit_code"] == 0
        events = [e["state"] for e in catalog.run_events(run_id)]
        assert events.count("dispatching") == 1 and events.count("running") == 1
    assert len(times(lab, "gpu-01")) == 1  # started exactly once
    log = (home / "runs" / run_id / ".cvtui" / "output.log").read_text()
    assert log == "start --lr 0.1\n[PROGRESS:50:half way]\ndone\n"


def test_failed_run_is_retried_as_a_new_attempt(lab: Lab, home: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, env={"EXIT": "4"}, retries=1)
    done = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--follow")
    assert done.returncode == 4, done.stdout + done.stderr
    assert done.stdout.count("start --lr 0.1") == 2  # --follow follows the retry too
    with Catalog.open_home(home) as catalog:
        first, second = catalog.list_runs(newest_first=False)
    assert (first["attempt"], first["state"], first["exit_code"]) == (1, "failed", 4)
    assert (second["attempt"], second["state"], second["exit_code"]) == (2, "failed", 4)
    assert second["name"] == first["name"] and second["id"] != first["id"]
    assert len(times(lab, "gpu-01")) == 2  # two attempts, two run dirs, no third


async def test_exec_goes_through_a_warm_engine(lab: Lab, home: Path) -> None:
    import asyncio

    from support import running

    from cvtui.engine.engine import Engine
    from cvtui.engine.lock import EngineLock
    from cvtui.inventory import load_inventory

    inventory = load_inventory(lab.inventory_path)
    lock = EngineLock(home)
    lock.acquire()
    try:
        with Catalog.open_home(home) as catalog:
            engine = Engine(inventory, catalog)
            async with running(engine.run):
                await engine.wait_answered(15)
                argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
                argv += [str(lab.inventory_path), "exec", "--host", "gpu-01", "--"]
                argv += ["sh", "-c", "printf 'a\\0b'; echo err >&2; exit 5"]
                process = await asyncio.create_subprocess_exec(
                    *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
                )
                out, err = await asyncio.wait_for(process.communicate(), 60)
                assert process.returncode == 5
                assert (out, err) == (b"a\0b", b"err\n")
                # stdin rides the control socket as frames, then the engine's channel.
                data = os.urandom(3 << 20)
                fed = await asyncio.to_thread(
                    exec_with_input, lab, home, data, "sh", "-c", "sha256sum | cut -c1-64"
                )
                assert fed.returncode == 0, fed.stderr
                assert fed.stdout.decode().strip() == hashlib.sha256(data).hexdigest()
                early = await asyncio.to_thread(exec_with_input, lab, home, data, "head", "-c", "5")
                assert (early.returncode, early.stdout) == (0, data[:5])
                # Through the engine's control socket, which only its user can open.
                socket_file = home / "engine.sock"
                assert stat.S_IMODE(socket_file.stat().st_mode) == 0o600
            assert not (home / "engine.sock").exists()  # removed when the engine stops
    finally:
        lock.release()


def test_code_edited_on_the_host_is_uploaded_again_not_run(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    config = write_config(tmp_path)
    first = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--follow")
    assert first.returncode == 0, first.stderr
    run_id = first.stdout.split()[0]
    with Catalog.open_home(home) as catalog:
        code_hash = catalog.get_run(run_id)["code_hash"]
    snapshot = lab.host_dir("gpu-01") / "root" / "code" / code_hash
    (snapshot / "train.py").chmod(0o644)  # a fix made in place on the host
    (snapshot / "train.py").write_text("print('edited on the host')\n")
    second = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--follow")
    assert second.returncode == 0, second.stderr
    assert "edited on the host" not in second.stdout
    assert "start --lr 0.1" in second.stdout  # the code its hash names, uploaded again
    [aside] = snapshot.parent.glob(f"{code_hash}.changed-*")
    assert (aside / "train.py").read_text() == "print('edited on the host')\n"
    with Catalog.open_home(home) as catalog:
        second_id = second.stdout.split()[0]
        details = [e["detail"] or "" for e in catalog.run_events(second_id)]
    assert any("was changed on the host" in d for d in details), details


def test_a_huge_config_starts_without_run_json_and_a_bigger_one_fails_saying_why(
    lab: Lab, home: Path, tmp_path: Path
) -> None:
    """The agent reads lines of at most 1 MiB. run.json (for reindex) goes first; a start
    still over the limit is refused by name, not sent to be dropped unread."""
    big = write_config(tmp_path, name="big", params={"lr": [0.1], "notes": ["x" * (400 << 10)]})
    done = cvtui(lab, home, "run", str(big), "--host", "gpu-01", "--follow")
    assert done.returncode == 0, done.stdout + done.stderr
    [run] = runs_json(lab, home)
    run_dir = lab.host_dir("gpu-01") / "root" / "runs" / run["id"]
    assert run["state"] == "succeeded" and (run_dir / "status.json").is_file()
    assert not (run_dir / "run.json").exists()
    assert ("x" * (400 << 10)) in (run_dir / "config.yaml").read_text()
    # Too long for one environment string (exec refused it): CVTUI_PARAMS_FILE names them.
    assert len(json.loads((run_dir / "params.json").read_text())["notes"]) == 400 << 10

    huge = write_config(tmp_path, name="huge", params={"lr": [0.1], "notes": ["x" * (1100 << 10)]})
    done = cvtui(lab, home, "run", str(huge), "--host", "gpu-01", "--follow")
    assert done.returncode != 0
    [failed] = [r for r in runs_json(lab, home) if r["name"].startswith("huge")]
    assert failed["state"] == "failed"
    with Catalog.open_home(home) as catalog:
        details = " ".join(e["detail"] or "" for e in catalog.run_events(failed["id"]))
    assert "over the agent's line limit of 1048576 bytes" in details, details
