"""`cvtui hosts` counts a GPU whose lease another controller holds as taken, not free."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cvtui.lab import Lab, LabHostSpec
from remote_agent.leases import release_leases, take_leases

pytestmark = pytest.mark.sshd


def hosts(lab: Lab, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), "hosts", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)


def test_a_gpu_under_a_foreign_lease_is_not_shown_free(
    lab_factory: Callable[..., Lab], home: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=2))
    # Another user's controller runs on GPU 1: no process of it shows there yet, only its lease.
    lease = take_leases(str(lab.host_dir("gpu-01") / "leases"), [1], "their-run")
    try:
        done = hosts(lab, home, "--json")
        assert done.returncode == 0, done.stderr
        [host] = json.loads(done.stdout)
        assert [(g["index"], g["processes"], g["leased_by"]) for g in host["gpus"]] == [
            (0, [], None),
            (1, [], "their-run"),
        ]
        table = hosts(lab, home).stdout.splitlines()
        assert "2 GPUs (1 free, simulated)" in table[0]
        assert table[2].rstrip().endswith("leased by their-run")
    finally:
        release_leases(lease)
    [host] = json.loads(hosts(lab, home, "--json").stdout)
    assert [g["leased_by"] for g in host["gpus"]] == [None, None]
