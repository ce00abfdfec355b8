"""`cvtui doctor HOST`: walk the path to a host one step at a time and say where it breaks."""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import time
from collections.abc import AsyncIterator

import asyncssh

from cvtui.engine.agent_build import build_agent
from cvtui.engine.agent_client import AgentClient
from cvtui.engine.connections import (
    HostConnectError,
    fetch_host_key,
    fingerprint,
    known_hosts_path,
    open_connection,
    recorded_host_keys,
)
from cvtui.engine.deploy import agent_command, ensure_agent
from cvtui.inventory import Host, Policy
from remote_agent import protocol
from remote_agent.protocol import Check

PYTHON_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def _ms(start: float) -> str:
    return f"{(time.perf_counter() - start) * 1000:.0f} ms"


async def diagnose(host: Host, policy: Policy, timeout_s: float = 10.0) -> AsyncIterator[Check]:
    """Yield one Check per step; stops after the first step that the rest depend on fails."""
    start = time.perf_counter()
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host.address, host.port)
        address = str(infos[0][4][0])
        yield Check("resolve", True, f"{host.address} -> {address}")
    except OSError as exc:
        yield Check("resolve", False, f"cannot resolve {host.address}: {exc}")
        return

    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, host.port), timeout_s)
        writer.close()
        yield Check("ssh reachable", True, f"port {host.port} open ({_ms(start)})")
    except (TimeoutError, OSError) as exc:
        if isinstance(exc, asyncio.TimeoutError):
            detail = f"timeout after {timeout_s:g} s"
        elif isinstance(exc, ConnectionRefusedError):
            detail = "connection refused (is sshd running?)"
        else:
            detail = exc.strerror or str(exc)
        yield Check("ssh reachable", False, f"{address}:{host.port}: {detail}")
        return

    try:
        key = await fetch_host_key(host, timeout_s)
    except HostConnectError as exc:
        yield Check("host key", False, exc.reason)
        return
    recorded = recorded_host_keys(host)
    if any(k.public_data == key.public_data for k in recorded):
        yield Check("host key", True, f"{fingerprint(key)} matches {known_hosts_path(host)}")
    elif recorded and policy.host_keys != "accept-new":
        yield Check("host key", False, f"host key changed: server shows {fingerprint(key)}")
        return
    elif policy.host_keys == "accept-new":
        yield Check("host key", True, f"{fingerprint(key)} (new, policy accept-new records it)")
    else:
        yield Check(
            "host key",
            False,
            f"host key unknown {fingerprint(key)} (run: cvtui hosts trust {host.name})",
        )
        return

    start = time.perf_counter()
    try:
        conn = await open_connection(host, policy, timeout_s)
    except HostConnectError as exc:
        yield Check("auth", False, exc.reason)
        return
    async with conn:
        user = host.user or conn.get_extra_info("username") or "?"
        yield Check("auth", True, f"logged in as {user} ({_ms(start)})")

        probe = f"{shlex.quote(host.python)} -c {shlex.quote(PYTHON_PROBE)}"
        result = await conn.run(probe, check=False)
        version = str(result.stdout or "").strip()
        parts = tuple(int(p) for p in version.split(".") if p.isdigit())
        if result.exit_status != 0 or len(parts) < 2:
            yield Check("python", False, f"no python3 >= 3.8 ({host.python}: not found)")
            return
        if parts[:2] < protocol.MIN_PYTHON:
            yield Check("python", False, f"no python3 >= 3.8 ({host.python} is {version})")
            return
        yield Check("python", True, f"{host.python} is {version}")

        bundle = build_agent()
        try:
            path, uploaded = await ensure_agent(conn, host, bundle)
        except (asyncssh.Error, OSError) as exc:
            yield Check("agent deployed", False, f"upload to {host.root} failed: {exc}")
            return
        how = "uploaded now" if uploaded else "already there"
        yield Check("agent deployed", True, f"{path} ({how}, {len(bundle.data)} bytes)")

        process = await conn.create_process(
            agent_command(host, path, policy.interval_s), encoding=None
        )
        client = AgentClient(process, lambda message: None)
        try:
            hello = await client.handshake(timeout_s)
        except Exception as exc:
            yield Check("agent start", False, str(exc))
            return
        yield Check(
            "agent start", True, f"protocol {hello.protocol}, pid {hello.pid} on {hello.hostname}"
        )
        gpu_ok = hello.backend != protocol.BACKEND_NONE
        why = "; ".join(hello.backend_errors)
        detail = f"{hello.backend}, {hello.gpu_count} GPUs" + (
            f" (fell back: {why})" if why else ""
        )
        yield Check("gpu backend", gpu_ok, detail)
        try:
            reply = await client.call(protocol.OP_CHECK, timeout_s=timeout_s)
            for item in reply.get("checks", []):
                yield Check(str(item["name"]), bool(item["ok"]), str(item.get("detail", "")))
        finally:
            with contextlib.suppress(Exception):
                await client.call(protocol.OP_SHUTDOWN, timeout_s=2)
            await client.close()
