"""Months of operation, end to end: idle-held GPUs, energy, and a real Prometheus scraping
`cvtui daemon --metrics`, against real sshd hosts with simulated GPUs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvtui.catalog import Catalog
from cvtui.lab import Lab, LabHostSpec, free_port

pytestmark = pytest.mark.sshd

GIB = 2**30


def cli_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}


def cvtui(
    lab: Lab, home: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=cli_env())


def until(predicate: Callable[[], Any], timeout_s: float, step_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(step_s)
    raise AssertionError(f"not within {timeout_s} s (last value {last!r})")


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts (daemon, prometheus): each is stopped at the end, by its pid."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def idle_lab(lab_factory: Callable[..., Lab], tmp_path: Path, events: Path) -> Lab:
    """gpu-01 with 2 simulated GPUs, short idle thresholds, and bob's idle notebook on GPU 1."""
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    inventory["policy"].update({"idle_util": 5, "idle_after": "3s"})
    script = tmp_path / "collect.py"
    script.write_text(
        "import sys\nwith open(sys.argv[1], 'a') as f:\n    f.write(sys.stdin.read())\n"
    )
    inventory["notify"] = [{"command": f"{sys.executable} {script} {events}"}]
    lab.inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    simulate = lab.host_dir("gpu-01") / "root" / "simulate"
    simulate.mkdir(parents=True, exist_ok=True)
    notebook = {"gpu": 1, "pid": 4242, "user": "bob", "command": "jupyter", "mem": 2 * GIB}
    (simulate / "foreign.json").write_text(json.dumps([{**notebook, "util": 0}]))
    return lab


def start_daemon(
    lab: Lab, home: Path, log: Path, started: list[subprocess.Popen[bytes]], *extra: str
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), "daemon", *extra]
    with open(log, "ab") as err:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=cli_env()
        )
    started.append(process)
    return process


def idle_run_config(tmp_path: Path, seconds: float) -> Path:
    code = tmp_path / "project"
    code.mkdir(exist_ok=True)
    config = {
        "name": "stuck",
        "command": f"python3 -c 'import time; time.sleep({seconds})'",
        "resources": {"gpus": 1},
        # The simulated GPU: 4 GiB held, no work done, as a stuck dataloader would leave it.
        "env": {"CVTUI_SIM_UTIL": "0", "CVTUI_SIM_MEM": str(4 * GIB)},
    }
    path = code / "stuck.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def gpus_of(lab: Lab, home: Path) -> dict[int, dict[str, Any]]:
    done = cvtui(lab, home, "hosts", "--json")
    assert done.returncode in (0, 3), done.stderr
    [host] = json.loads(done.stdout)
    return {gpu["index"]: gpu for gpu in host["gpus"]}


def test_idle_held_gpus_are_shown_notified_once_and_counted_with_energy(
    lab_factory: Callable[..., Lab], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    events = tmp_path / "events.jsonl"
    lab = idle_lab(lab_factory, tmp_path, events)
    home = tmp_path / "home"
    daemon = start_daemon(lab, home, tmp_path / "daemon.log", started)
    queued = cvtui(lab, home, "run", str(idle_run_config(tmp_path, 14)), "--host", "gpu-01")
    assert queued.returncode == 0, queued.stderr
    run_id = queued.stdout.split()[0]

    # Both GPUs become idle-held: GPU 0 by our run, GPU 1 by bob's notebook.
    gpus = until(
        lambda: (g := gpus_of(lab, home)) and all(x["idle_held"] for x in g.values()) and g, 30
    )
    assert gpus[0]["processes"][0]["run_id"] == run_id and gpus[0]["util"] == 0
    assert gpus[1]["processes"][0]["user"] == "bob"
    assert all(g["idle_since"] < time.time() - 3 for g in gpus.values())
    text = cvtui(lab, home, "hosts").stdout
    assert text.count("IDLE-HELD") == 2, text

    def idle_events() -> list[dict[str, Any]]:
        lines = events.read_text().splitlines() if events.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] == "gpu_idle"]

    found = until(lambda: len(idle_events()) == 2 and idle_events(), 15)
    by_gpu = {e["gpu"]: e for e in found}
    assert by_gpu[0]["run"]["id"] == run_id and "(simulated)" in by_gpu[0]["text"]
    assert by_gpu[1]["run"] is None and "held idle by bob" in by_gpu[1]["text"]

    # The run ends; its GPU is free again, bob's is still held. One event per episode only.
    with Catalog.open_home(home) as catalog:
        until(lambda: (catalog.get_run(run_id) or {}).get("state") == "succeeded", 40)
    until(lambda: not gpus_of(lab, home)[0]["idle_held"], 15)
    assert gpus_of(lab, home)[1]["idle_held"]
    time.sleep(2)
    assert len(idle_events()) == 2
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(20) == 0

    with Catalog.open_home(home) as catalog:
        run = catalog.get_run(run_id)
        assert run is not None
        kwh, simulated = catalog.run_energy([run_id])[run_id]
        # The daemon kept every sample of the run in raw history (a row per 5 s per host).
        history = catalog.telemetry_history("gpu-01", 0, run["started"], run["ended"])
    # Simulated idle power is 55 W; the run held its GPU for about its whole life.
    ran_s = run["ended"] - run["started"]
    assert simulated is True
    assert len(history) >= 0.6 * ran_s and all(util == 0 for _, util, _ in history)
    assert all(mem >= 4 * GIB for _, _, mem in history)
    assert all(
        b - a < 3
        for a, b in zip([t for t, _, _ in history], [t for t, _, _ in history][1:], strict=False)
    )
    assert 0.6 * 55 * ran_s / 3.6e6 < kwh < 1.3 * 55 * ran_s / 3.6e6
    stats = json.loads(cvtui(lab, home, "stats", "--json").stdout)
    energy = stats["energy_kwh"]
    assert energy["total"] == 0.0 and energy["by_user"] == {}  # nothing real was measured
    assert energy["simulated"]["by_user"][run["user"]] >= kwh * 0.99
    assert energy["simulated"]["by_user"]["bob"] > 0
    idle = stats["idle_gpu_hours"]["by_user"]
    assert set(idle) == {run["user"], "bob"}
    assert 0.6 * ran_s / 3600 < idle[run["user"]] < 1.2 * ran_s / 3600
    report = cvtui(lab, home, "stats").stdout
    assert "Energy on simulated GPUs (not real)" in report and "Idle-held GPU-hours" in report


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus is not installed (.ci/run installs the Debian package)")
        pytest.skip("prometheus is not installed: apt-get install prometheus")
    return found


def query(port: int, promql: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.load(response)
    except OSError:
        return []  # not listening yet
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def test_a_real_prometheus_scrapes_the_daemon_and_answers_promql(
    lab_factory: Callable[..., Lab], tmp_path: Path, started: list[subprocess.Popen[bytes]]
) -> None:
    binary = prometheus_binary()
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2, model="A100-SXM4-80GB"))
    simulate = lab.host_dir("gpu-01") / "root" / "simulate"
    simulate.mkdir(parents=True, exist_ok=True)
    notebook = {"gpu": 1, "pid": 4242, "user": "bob", "command": "jupyter", "mem": 2 * GIB}
    (simulate / "foreign.json").write_text(json.dumps([notebook]))
    home = tmp_path / "home"
    metrics_port, prometheus_port = free_port(), free_port()
    start_daemon(
        lab, home, tmp_path / "daemon.log", started, "--metrics", f"127.0.0.1:{metrics_port}"
    )
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": "cvtui",
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    storage = tmp_path / "prometheus-data"
    with open(tmp_path / "prometheus.log", "ab") as log:
        started.append(
            subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={storage}",
                    f"--web.listen-address=127.0.0.1:{prometheus_port}",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=tmp_path,
            )
        )
    result = until(
        lambda: (
            len(query(prometheus_port, "cvtui_gpu_utilization_percent")) == 2
            and query(prometheus_port, "cvtui_gpu_utilization_percent")
        ),
        60,
        0.5,
    )
    labels = sorted((r["metric"] for r in result), key=lambda m: m["gpu"])
    for index, metric in enumerate(labels):
        assert metric["host"] == "gpu-01" and metric["gpu"] == str(index)
        assert metric["model"] == "A100-SXM4-80GB" and metric["simulated"] == "true"
        assert metric["job"] == "cvtui"
    # Prometheus drops empty labels: nobody holds GPU 0, bob's notebook holds GPU 1.
    assert "user" not in labels[0] and "run" not in labels[0]
    assert labels[1]["user"] == "bob" and "run" not in labels[1]
    assert all(0 <= float(r["value"][1]) <= 100 for r in result)
    healthy = query(prometheus_port, 'cvtui_host_state{state="healthy"}')
    assert [(r["metric"]["host"], r["value"][1]) for r in healthy] == [("gpu-01", "1")]
    assert query(prometheus_port, "cvtui_queue_length")[0]["value"][1] == "0"
    assert query(prometheus_port, "cvtui_engine_loop_lag_seconds")
    assert storage.is_dir()  # Prometheus kept its data in the test's directory
