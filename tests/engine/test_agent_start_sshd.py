"""An agent start that fails leaves nothing running on the host (real sshd, real processes)."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import pytest
from support import cvtui_process, wait_for

from cvtui.engine.agent_build import build_agent
from cvtui.engine.connections import HostConnectError, open_connection
from cvtui.engine.deploy import ensure_agent, launch_agent
from cvtui.inventory import load_inventory
from cvtui.lab import Lab

pytestmark = pytest.mark.sshd


def hanging_python(directory: Path) -> tuple[Path, str]:
    """A host `python` that never says hello, and forks a child that would outlive it."""
    marker = str(80000 + secrets.randbelow(10000))
    script = directory / "stuck-python"
    script.write_text(f"#!/bin/sh\nsleep {marker}1 &\nsleep {marker}2\n")
    script.chmod(0o755)
    return script, marker


def processes_with(marker: str) -> list[str]:
    """Command lines of live processes mentioning marker."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"sleep {marker}" in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


async def test_a_start_that_never_answers_is_killed_with_its_children(lab: Lab) -> None:
    script, marker = hanging_python(lab.directory)
    inventory = load_inventory(lab.inventory_path)
    host = dataclasses.replace(inventory.host("gpu-01"), python=str(script))
    async with await open_connection(host, inventory.policy) as conn:
        path, _ = await ensure_agent(conn, host, build_agent())
        with pytest.raises(HostConnectError) as caught:
            await launch_agent(conn, host, path, 1.0, lambda message: None, timeout_s=2)
        assert caught.value.reason == (
            f"agent start timed out: {script} did not answer within 2 s (cvtui stopped it)"
        )
        await wait_for(lambda: not processes_with(marker), 5)


def test_doctor_leaves_nothing_behind_either(lab: Lab, home: Path) -> None:
    script, marker = hanging_python(lab.directory)
    text = lab.inventory_path.read_text().replace("gpu-01:\n", f"gpu-01:\n    python: {script}\n")
    lab.inventory_path.write_text(text)
    user_home = lab.directory / "user-home"
    user_home.mkdir()
    done = cvtui_process(
        "doctor", "gpu-01", "--timeout", "2",
        home=home, inventory=lab.inventory_path, user_home=user_home,
    )  # fmt: skip
    assert done.returncode == 3
    assert done.stdout.splitlines()[-1] == (
        f"FAIL python           {script} did not answer within 2 s (stopped it)"
    )
    assert not processes_with(marker)
