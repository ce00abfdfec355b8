"""The `cvtui` command line as a user runs it: real processes against a lab of real sshd."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from cvtui.cli import main
from cvtui.lab import Lab, LabHostSpec

HOST_KEYS = {
    "name", "state", "reason", "drained", "backend", "last_seen", "cpu_percent", "mem_used",
    "mem_total", "disk_free", "gpus", "disk_usage",
}  # fmt: skip
GPU_KEYS = {
    "index", "uuid", "pci_bus_id", "name", "util", "mem_used", "mem_total", "temperature", "power",
    "processes", "leased_by", "idle_held", "idle_since",
}  # fmt: skip
PROCESS_KEYS = {"pid", "user", "command", "container", "mem", "run_id"}


def cvtui(*args: str, home: Path, inventory: Path | None = None, stdin: str | None = None):
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    if inventory is not None:
        argv += ["--inventory", str(inventory)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=60, input=stdin, env=env
    )


def test_every_command_has_help_text() -> None:
    def walk(command: click.Command, path: str) -> None:
        assert command.help, f"{path} has no help text"
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}")

    walk(main, "cvtui")


@pytest.mark.sshd
def test_hosts_json_shape_and_exit_codes(lab: Lab, home: Path) -> None:
    done = cvtui("hosts", "--json", home=home, inventory=lab.inventory_path)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [h["name"] for h in report] == ["gpu-01", "gpu-02"]
    for host in report:
        assert set(host) == HOST_KEYS
        assert host["state"] == "healthy" and host["backend"] == "simulated"
        assert host["mem_total"] > host["mem_used"] > 0
        for gpu in host["gpus"]:
            assert set(gpu) == GPU_KEYS
            assert isinstance(gpu["mem_total"], int) and gpu["mem_total"] > 10**9  # bytes
            for process in gpu["processes"]:
                assert set(process) == PROCESS_KEYS
    assert [len(h["gpus"]) for h in report] == [2, 4]

    table = cvtui("hosts", home=home, inventory=lab.inventory_path)
    assert table.returncode == 0
    assert "gpu-02" in table.stdout and "RTX-3090-24GB" in table.stdout

    lab.servers["gpu-02"].kill()
    down = cvtui("hosts", "--json", "--timeout", "5", home=home, inventory=lab.inventory_path)
    assert down.returncode == 3
    states = {h["name"]: (h["state"], h["reason"]) for h in json.loads(down.stdout)}
    assert states["gpu-01"][0] == "healthy"
    port = lab.servers["gpu-02"].port
    refused = f"connection refused by 127.0.0.1:{port} (no sshd listening there?)"
    assert states["gpu-02"] == ("disconnected", refused)


@pytest.mark.sshd
def test_unknown_host_key_then_trust(lab_factory, home: Path) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    lab.known_hosts.write_text("")
    done = cvtui("hosts", "--json", home=home, inventory=lab.inventory_path)
    assert done.returncode == 3
    [host] = json.loads(done.stdout)
    assert (host["state"], host["reason"]) == (
        "error",
        "host key unknown (run: cvtui hosts trust gpu-01)",
    )

    # No terminal to confirm on (a pipe, even one saying y): nothing written, and it says
    # what to run instead of "Aborted!".
    refused = cvtui(
        "hosts", "trust", "gpu-01", home=home, inventory=lab.inventory_path, stdin="y\n"
    )
    assert refused.returncode == 1
    assert "SHA256:" in refused.stdout
    assert "run: cvtui hosts trust gpu-01 --yes" in refused.stderr
    assert "Aborted" not in refused.stdout + refused.stderr
    assert lab.known_hosts.read_text() == ""

    trusted = cvtui("hosts", "trust", "gpu-01", "--yes", home=home, inventory=lab.inventory_path)
    assert trusted.returncode == 0, trusted.stderr
    assert "recorded in" in trusted.stdout
    assert cvtui("hosts", home=home, inventory=lab.inventory_path).returncode == 0


@pytest.mark.sshd
def test_doctor_walks_every_step(lab: Lab, home: Path) -> None:
    done = cvtui("doctor", "gpu-01", home=home, inventory=lab.inventory_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    steps = [line.split()[1] for line in lines]
    for step in ("resolve", "ssh", "host", "auth", "python", "agent", "gpu"):
        assert step in steps, done.stdout
    assert all(line.startswith(" ok ") for line in lines), done.stdout
    assert any("simulated" in line for line in lines)


@pytest.mark.sshd
def test_doctor_names_the_failing_step(lab: Lab, home: Path) -> None:
    lab.servers["gpu-01"].kill()
    done = cvtui("doctor", "gpu-01", home=home, inventory=lab.inventory_path)
    assert done.returncode == 3
    last = done.stdout.splitlines()[-1]
    assert last.startswith("FAIL") and "ssh reachable" in last and "refused" in last.lower()


def test_bad_inventory_and_unknown_host_are_one_line_errors(tmp_path: Path, home: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("hosts:\n  gpu-01: {address: a, prot: 22}\n")
    done = cvtui("hosts", home=home, inventory=inventory)
    assert done.returncode == 2
    assert done.stderr.startswith(f"cvtui: {inventory}:2:")
    assert "prot" in done.stderr and "Traceback" not in done.stderr

    inventory.write_text("hosts:\n  gpu-01: {address: a}\n  gpu-02: {address: b}\n")
    done = cvtui("doctor", "gpu-09", home=home, inventory=inventory)
    assert done.returncode == 2
    assert "unknown host 'gpu-09'" in done.stderr and "gpu-01, gpu-02" in done.stderr


@pytest.mark.sshd
def test_demo_headless_exits_zero_when_hosts_are_healthy(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cvtui.cli",
            "demo",
            "--headless",
            "--duration",
            "4",
            "--hosts",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "gpu-01" in done.stdout and "healthy" in done.stdout
    assert "simulated" in done.stdout


def test_every_inventory_error_listed_and_reading_commands_still_work(
    tmp_path: Path, home: Path
) -> None:
    from support import add_finished_run

    from cvtui.catalog import Catalog

    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "defaults: {user: 7}\npolicy: {interval: soon}\nhosts:\n"
        "  a: {port: 0, jump: 'no way'}\n  b: {tagz: [x]}\n"
    )
    done = cvtui("hosts", home=home, inventory=inventory)
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert lines[0] == f"cvtui: {inventory}: 5 errors, in file order:"
    located = [line.strip().removeprefix(f"{inventory}:").split(":")[:2] for line in lines[1:]]
    assert located == [["1", "18"], ["2", "20"], ["4", "13"], ["4", "22"], ["5", "7"]]

    with Catalog.open_home(home) as catalog:
        add_finished_run(catalog, "01jrunaaaaaaaaaaaaaaaaaaaa", "exp")
    for args in (["ps", "--all"], ["logs", "exp"], ["queue"], ["stats"]):
        done = cvtui(*args, home=home, inventory=inventory)
        assert done.returncode == 0, (args, done.stderr)
        warnings = [line for line in done.stderr.splitlines() if "warning" in line]
        assert warnings == [
            "cvtui: warning: inventory not usable, showing the catalog as it is: "
            f"{inventory}:1:18: user: expected a non-empty string, got 7 (quote it to use it "
            "as text) (and 4 more)"
        ], (args, done.stderr)
    assert "exp" in cvtui("ps", "--all", home=home, inventory=inventory).stdout
