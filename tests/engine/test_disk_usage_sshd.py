"""Disk usage per user end to end: real sshd hosts, their agents' scan children, the daemon,
then `cvtui hosts --json` and `cvtui stats --json` reading the catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import cvtui_process, stop_engine

from cvtui.lab import Lab, LabHostSpec
from remote_agent.disk_usage import owner_name

pytestmark = pytest.mark.sshd


def until(predicate: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    found = None
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"not within {timeout_s} s: {found!r}")


@pytest.fixture
def daemon_home(tmp_path: Path) -> Iterator[Path]:
    """The catalog home of the daemon a test starts; that engine is stopped at the end."""
    home = tmp_path / "home"
    yield home
    stop_engine(home)


def user_tree(top: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, int]:
    """top/<name>/data.bin of size bytes owned by uid; the allocated bytes of each dir."""
    allocated = {}
    for name, (uid, size) in sizes.items():
        directory = top / name
        directory.mkdir(parents=True)
        (directory / "data.bin").write_bytes(os.urandom(size))
        for path in (directory, directory / "data.bin"):
            os.chown(path, uid, uid)
        allocated[name] = sum(
            os.lstat(p).st_blocks * 512 for p in (directory, directory / "data.bin")
        )
    return allocated


def test_usage_per_user_in_hosts_and_stats(
    lab_factory: Callable[..., Lab], tmp_path: Path, daemon_home: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1), LabHostSpec("gpu-02", gpus=1))
    one = user_tree(tmp_path / "one" / "home", {"alice": (1000, 300_000), "bob": (1001, 40_000)})
    two = user_tree(tmp_path / "two" / "data", {"alice": (1000, 120_000)})
    inventory = yaml.safe_load(lab.inventory_path.read_text())
    inventory["hosts"]["gpu-01"]["disk_usage"] = [str(tmp_path / "one" / "home")]
    inventory["hosts"]["gpu-02"]["disk_usage"] = [str(tmp_path / "two" / "data"), "/no/such"]
    lab.inventory_path.write_text(yaml.safe_dump(inventory, sort_keys=False))
    home = daemon_home
    user_home = tmp_path / "user"
    user_home.mkdir()

    def cvtui(*args: str) -> subprocess.CompletedProcess[str]:
        return cvtui_process(*args, home=home, inventory=lab.inventory_path, user_home=user_home)

    with open(tmp_path / "daemon.log", "ab") as log:
        subprocess.Popen(  # stopped by daemon_home's stop_engine
            [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory",
             str(lab.inventory_path), "daemon"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
        )  # fmt: skip

    def scanned() -> Any:  # the hosts once both are scanned; else None or why not
        done = cvtui("hosts", "--json")
        if done.returncode not in (0, 3):
            return done.stderr
        hosts = json.loads(done.stdout)
        counts = [len(h.get("disk_usage") or []) for h in hosts]
        return hosts if counts == [1, 2] else None

    gpu_01, gpu_02 = until(scanned, 60)
    assert gpu_01["state"] == "healthy"  # telemetry went on
    (home_scan,) = gpu_01["disk_usage"]
    assert home_scan["path"] == str(tmp_path / "one" / "home") and not home_scan["partial"]
    assert [
        (e["entry"], e["uid"], e["owner"], e["bytes"], e["files"]) for e in home_scan["entries"]
    ] == [
        ("alice", 1000, owner_name(1000), one["alice"], 1),
        ("bob", 1001, owner_name(1001), one["bob"], 1),
    ]
    missing, data = sorted(gpu_02["disk_usage"], key=lambda s: s["path"] != "/no/such")
    assert missing["error"].startswith("cannot read /no/such") and missing["entries"] == []
    assert [e["bytes"] for e in data["entries"]] == [two["alice"]]

    done = cvtui("stats", "--json")
    assert done.returncode == 0, done.stderr
    disk = json.loads(done.stdout)["disk_usage"]
    by_user = {u["user"]: u for u in disk["by_user"]}
    alice = by_user[owner_name(1000)]
    assert (alice["bytes"], alice["files"], alice["hosts"]) == (one["alice"] + two["alice"], 2, 2)
    assert by_user[owner_name(1001)]["bytes"] == one["bob"]
    assert disk["bytes"] == one["alice"] + one["bob"] + two["alice"]

    text = cvtui("stats").stdout
    assert "Disk usage (latest scans of disk_usage: paths)" in text
    hosts_text = cvtui("hosts").stdout
    assert f"disk {tmp_path / 'one' / 'home'}: {owner_name(1000)} " in hosts_text
