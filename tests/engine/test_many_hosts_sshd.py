"""Many hosts through few doors: sshd with OpenSSH's default limits (MaxStartups 10:30:100,
MaxSessions 10) drops nothing of ours, and hosts behind one bastion share one login to it."""

from __future__ import annotations

import asyncio
import getpass
import time
from pathlib import Path

import pytest
import yaml

from cvtui.catalog import Catalog
from cvtui.engine import jump_hosts
from cvtui.engine.engine import Engine
from cvtui.inventory import load_inventory
from cvtui.lab import Lab, LabHostSpec

pytestmark = pytest.mark.sshd

HOSTS = 30
HEALTHY_TIMEOUT_S = 180.0


def default_limits(lab: Lab, name: str) -> None:
    """Restart one lab sshd with OpenSSH's default limits, logging each login and drop."""
    server = lab.servers[name]
    server.stop()
    server.max_startups, server.max_sessions, server.log_level = "10:30:100", 10, "VERBOSE"
    server.start()


def inventory(lab: Lab, directory: Path, jump: str | None = None) -> Path:
    """HOSTS entries on the lab's gpu-01 sshd, each with its own root (a host of its own)."""
    port = lab.servers["gpu-01"].port
    hosts = {}
    for n in range(HOSTS):
        entry = {
            "address": "127.0.0.1",
            "port": port,
            "identity": str(lab.client_key),
            "root": str(directory / f"h{n:02d}" / "root"),
            "leases_dir": str(directory / f"h{n:02d}" / "leases"),
            "simulate": {"gpus": 1},
        }
        if jump is not None:
            entry["jump"] = jump
        hosts[f"host-{n:02d}"] = entry
    document = {
        "defaults": {"user": getpass.getuser(), "known_hosts": str(lab.known_hosts)},
        "hosts": hosts,
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "inventory.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def all_healthy(path: Path, home: Path) -> list[tuple[str, str, str]]:
    """Run an engine until every host is healthy; every failure it reported on the way."""
    failures: list[tuple[str, str, str]] = []
    with Catalog.open_home(home) as catalog:
        engine = Engine(load_inventory(path), catalog)
        said = engine.host_failed

        def noted(name: str, state: str, reason: str) -> None:
            failures.append((name, state, reason))
            said(name, state, reason)

        engine.host_failed = noted  # type: ignore[method-assign]
        stop = asyncio.Event()
        task = asyncio.create_task(engine.run(stop))
        try:
            deadline = time.monotonic() + HEALTHY_TIMEOUT_S
            while time.monotonic() < deadline:
                engine.flush()
                states = {h["name"]: h["state"] for h in catalog.hosts_report(now=time.time())}
                if len(states) == HOSTS and set(states.values()) == {"healthy"}:
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail(f"not all healthy: {states}; failures {failures[:3]}")
        finally:
            stop.set()
            await task
        assert not jump_hosts.jump_hosts()._hops  # every shared login closed with its hosts
    return failures


def logged(lab: Lab, name: str, text: str) -> int:
    return (lab.servers[name].directory / "sshd.log").read_text().count(text)


@pytest.mark.timeout(300)
def test_thirty_hosts_on_one_sshd_with_default_limits_drop_nothing(
    lab_factory, tmp_path: Path
) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1))
    default_limits(lab, "gpu-01")
    failures = asyncio.run(all_healthy(inventory(lab, tmp_path / "hosts"), tmp_path / "home"))
    assert failures == []
    assert logged(lab, "gpu-01", "past MaxStartups") == 0
    assert logged(lab, "gpu-01", "Accepted publickey") == HOSTS


@pytest.mark.timeout(300)
def test_hosts_behind_one_bastion_share_one_login_to_it(lab_factory, tmp_path: Path) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1), LabHostSpec("bastion", gpus=1))
    default_limits(lab, "bastion")
    default_limits(lab, "gpu-01")
    bastion = f"{getpass.getuser()}@127.0.0.1:{lab.servers['bastion'].port}"
    path = inventory(lab, tmp_path / "hosts", jump=bastion)
    failures = asyncio.run(all_healthy(path, tmp_path / "home"))
    assert failures == []
    assert logged(lab, "bastion", "Accepted publickey") == 1  # one login carried all thirty
    assert logged(lab, "gpu-01", "Accepted publickey") == HOSTS
    for name in ("bastion", "gpu-01"):
        assert logged(lab, name, "past MaxStartups") == 0


async def test_handshakes_to_one_server_are_held_to_the_limit() -> None:
    inside = {"a": 0, "b": 0}
    most = {"a": 0, "b": 0}

    async def handshake(server: str) -> None:
        async with jump_hosts.handshake_slot(server):
            inside[server] += 1
            most[server] = max(most[server], inside[server])
            await asyncio.sleep(0.01)
            inside[server] -= 1

    await asyncio.gather(*(handshake(s) for s in ["a", "b"] * 40))
    assert most == {"a": jump_hosts.MAX_HANDSHAKES_PER_SERVER} | {
        "b": jump_hosts.MAX_HANDSHAKES_PER_SERVER
    }
