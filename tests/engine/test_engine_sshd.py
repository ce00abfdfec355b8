"""The engine against real OpenSSH servers: deploy, telemetry, failures, reconnect, live reload."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from pathlib import Path

import asyncssh
import pytest
import yaml
from support import running, wait_for

from cvtui.catalog import Catalog
from cvtui.engine.agent_build import build_agent
from cvtui.engine.connections import open_connection
from cvtui.engine.deploy import agent_file, ensure_agent
from cvtui.engine.engine import Engine
from cvtui.engine.known_hosts import look_up
from cvtui.inventory import Inventory, load_inventory
from cvtui.lab import Lab, LabHostSpec, generate_key

pytestmark = pytest.mark.sshd


def host_state(catalog: Catalog, name: str) -> tuple[str, str | None]:
    report = {h["name"]: h for h in catalog.hosts_report(now=time.time())}
    host = report.get(name)
    return (host["state"], host["reason"]) if host else ("absent", None)


def replace_host(inventory: Inventory, name: str, **changes: object) -> Inventory:
    hosts = tuple(
        dataclasses.replace(h, **changes) if h.name == name else h for h in inventory.hosts
    )
    return dataclasses.replace(inventory, hosts=hosts)


async def test_connect_deploy_and_first_telemetry(lab: Lab, home: Path) -> None:
    inventory = load_inventory(lab.inventory_path)
    with Catalog.open_home(home) as catalog:
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await engine.wait_answered(15)
            report = {h["name"]: h for h in catalog.hosts_report(now=time.time())}
        assert report["gpu-01"]["state"] == "healthy"
        assert report["gpu-01"]["backend"] == "simulated"
        assert len(report["gpu-01"]["gpus"]) == 2
        assert len(report["gpu-02"]["gpus"]) == 4
        gpu = report["gpu-02"]["gpus"][0]
        assert gpu["name"] == "RTX-3090-24GB"
        assert gpu["mem_total"] == 24 * 10**9 or gpu["mem_total"] == 24 * 2**30
        for host in lab.servers:
            assert engine.sessions.get(host) is None  # sessions end with the engine
        # The agent went to the content-addressed path under the host's root.
        bundle = build_agent()
        assert (lab.host_dir("gpu-01") / "root" / "agent" / bundle.hash / "agent.pyz").is_file()


async def test_second_connect_uploads_nothing(lab: Lab) -> None:
    inventory = load_inventory(lab.inventory_path)
    host = inventory.host("gpu-01")
    bundle = build_agent()
    uploads = []
    for _ in range(2):
        async with await open_connection(host, inventory.policy) as conn:
            path, uploaded = await ensure_agent(conn, host, bundle)
            uploads.append(uploaded)
    assert uploads == [True, False]
    assert path == agent_file(host, bundle)
    remote = lab.host_dir("gpu-01") / "root" / "agent" / bundle.hash / "agent.pyz"
    assert remote.read_bytes() == bundle.data


async def test_unknown_and_changed_host_keys(lab: Lab, home: Path) -> None:
    inventory = load_inventory(lab.inventory_path)
    lines = lab.known_hosts.read_text().splitlines()
    port1 = lab.servers["gpu-01"].port
    # gpu-01 unknown: drop its line. gpu-02 changed: give it the key of gpu-01's server.
    gpu1_key = next(line for line in lines if f":{port1} " in line).split(" ", 1)[1]
    port2 = lab.servers["gpu-02"].port
    lab.known_hosts.write_text(f"[127.0.0.1]:{port2} {gpu1_key}\n")
    with Catalog.open_home(home) as catalog:
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await engine.wait_answered(15)
            assert host_state(catalog, "gpu-01") == (
                "error",
                "host key unknown (run: cvtui hosts trust gpu-01)",
            )
            state, reason = host_state(catalog, "gpu-02")
            assert state == "error"
            assert reason is not None and reason.startswith("host key changed")


async def test_accept_new_records_an_unknown_key(lab: Lab, home: Path) -> None:
    inventory = load_inventory(lab.inventory_path)
    inventory = dataclasses.replace(
        inventory, policy=dataclasses.replace(inventory.policy, host_keys="accept-new")
    )
    lab.known_hosts.write_text("")
    with Catalog.open_home(home) as catalog:
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await engine.wait_answered(15)
            assert host_state(catalog, "gpu-01")[0] == "healthy"
    # Recorded under OpenSSH's name for the host (hashed when the ssh config says HashKnownHosts).
    name = f"[127.0.0.1]:{lab.servers['gpu-01'].port}"
    (entry,) = look_up(name, [lab.known_hosts]).trusted
    assert entry.key is not None
    assert (
        entry.key.export_public_key().decode().split()[:2]
        == (lab.servers["gpu-01"].host_pub.split()[:2])
    )


async def test_wrong_key_is_auth_failed_and_missing_python_is_named(lab: Lab, home: Path) -> None:
    stranger = lab.directory / "stranger_key"
    generate_key(stranger, "not-authorized")
    inventory = load_inventory(lab.inventory_path)
    inventory = replace_host(inventory, "gpu-01", identity=str(stranger))
    inventory = replace_host(inventory, "gpu-02", python="python3-nowhere")
    with Catalog.open_home(home) as catalog:
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await engine.wait_answered(15)
            user = inventory.host("gpu-01").user
            assert host_state(catalog, "gpu-01") == (
                "error",
                f"auth failed as {user}@127.0.0.1: tried publickey with stranger_key",
            )
            assert host_state(catalog, "gpu-02") == (
                "error",
                "no python3 >= 3.8 (python3-nowhere: not found)",
            )


async def test_refused_then_sshd_killed_and_restarted(lab: Lab, home: Path) -> None:
    inventory = load_inventory(lab.inventory_path)
    server = lab.servers["gpu-01"]
    with Catalog.open_home(home) as catalog:
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await engine.wait_answered(15)
            assert host_state(catalog, "gpu-01")[0] == "healthy"
            server.kill()  # the host goes down with every session on it
            await wait_for(lambda: host_state(catalog, "gpu-01")[0] == "disconnected", 10)
            refused = f"connection refused by 127.0.0.1:{server.port} (no sshd listening there?)"
            await wait_for(lambda: host_state(catalog, "gpu-01") == ("disconnected", refused), 10)
            assert host_state(catalog, "gpu-02")[0] == "healthy"  # one bad host stays alone
            server.start()
            await wait_for(lambda: host_state(catalog, "gpu-01")[0] == "healthy", 15)


async def test_inventory_edit_is_picked_up_live(lab_factory, home: Path) -> None:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1), LabHostSpec("gpu-02", gpus=3))
    document = yaml.safe_load(lab.inventory_path.read_text())
    spare = document["hosts"].pop("gpu-02")
    lab.inventory_path.write_text(yaml.safe_dump(document))
    inventory = load_inventory(lab.inventory_path)
    assert inventory.names() == ["gpu-01"]
    errors = []
    with Catalog.open_home(home) as catalog:
        engine = Engine(
            inventory, catalog, inventory_path=lab.inventory_path, on_inventory_error=errors.append
        )
        async with running(engine.run):
            await engine.wait_answered(15)
            await asyncio.sleep(0.3)  # let the watcher settle before the first edit
            document["hosts"]["gpu-02"] = spare
            lab.inventory_path.write_text(yaml.safe_dump(document))
            await wait_for(lambda: host_state(catalog, "gpu-02")[0] == "healthy", 15)
            # An invalid edit is reported and changes nothing.
            lab.inventory_path.write_text(yaml.safe_dump(document) + "bogus_key: 1\n")
            await wait_for(lambda: errors, 10)
            assert "bogus_key" in str(errors[-1])
            assert engine.inventory.names() == ["gpu-01", "gpu-02"]
            # Removing a host stops its session and drops it from the catalog.
            del document["hosts"]["gpu-01"]
            lab.inventory_path.write_text(yaml.safe_dump(document))
            await wait_for(lambda: host_state(catalog, "gpu-01")[0] == "absent", 10)
            assert "gpu-01" not in engine.sessions
            assert host_state(catalog, "gpu-02")[0] == "healthy"


async def test_agent_survives_garbage_over_ssh(lab: Lab) -> None:
    """Garbage sent down the real SSH channel gets error replies; telemetry keeps coming."""
    from cvtui.engine.agent_client import AgentClient
    from cvtui.engine.deploy import agent_command
    from remote_agent import protocol

    inventory = load_inventory(lab.inventory_path)
    host = inventory.host("gpu-01")
    events: list[dict] = []
    async with await open_connection(host, inventory.policy) as conn:
        path, _ = await ensure_agent(conn, host, build_agent())
        process = await conn.create_process(agent_command(host, path, 0.05), encoding=None)
        client = AgentClient(process, events.append)
        await client.handshake()
        garbage = [b"{", b"[]", b"\xff\xfe", b'{"op": "nope", "id": 7}', b"null", b'{"id": 999999}']
        for i in range(1000):
            process.stdin.write(garbage[i % len(garbage)] + b"\n")
        before = len(events)
        reply = await client.call(protocol.OP_PING)
        assert "time" in reply
        await wait_for(lambda: len(events) > before + 3, 5)
        assert all(e["event"] == protocol.EVENT_TELEMETRY for e in events)
        await client.close()


async def test_connection_options_honour_identity_and_known_hosts(lab: Lab) -> None:
    inventory = load_inventory(lab.inventory_path)
    host = inventory.host("gpu-01")
    conn = await open_connection(host, inventory.policy)
    async with conn:
        result = await conn.run("echo $((6*7))", check=True)
        assert str(result.stdout).strip() == "42"
    with pytest.raises(asyncssh.Error):
        await asyncssh.connect(
            "127.0.0.1", host.port, known_hosts=None, client_keys=[], agent_path=None
        )


async def test_missing_known_hosts_file_means_host_key_unknown(lab: Lab, home: Path) -> None:
    lab.known_hosts.unlink()
    inventory = load_inventory(lab.inventory_path)
    with Catalog.open_home(home) as catalog:
        engine = Engine(inventory, catalog)
        async with running(engine.run):
            await engine.wait_answered(15)
            assert host_state(catalog, "gpu-01") == (
                "error",
                "host key unknown (run: cvtui hosts trust gpu-01)",
            )
