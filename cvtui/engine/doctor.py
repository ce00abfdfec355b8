"""`cvtui doctor HOST`: walk the path to a host one step at a time and say where it breaks."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import asyncssh

from cvtui.engine.agent_build import build_agent
from cvtui.engine.connections import (
    HostConnectError,
    close_route,
    connect_target,
    fetch_server_key,
    host_keys_of,
    resolve_target,
)
from cvtui.engine.deploy import (
    KillableProcess,
    ensure_agent,
    killable_command,
    launch_agent,
    open_sftp,
    secure_root,
    shell_output,
)
from cvtui.engine.known_hosts import describe_entries, fingerprint
from cvtui.engine.ssh_config import SshTarget
from cvtui.inventory import Host, Policy
from remote_agent import protocol
from remote_agent.protocol import Check

PYTHON_PROBE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"
WARNING_PREFIX = "warning: "  # an ok step that still needs a look (shown as WARN)


def _ms(start: float) -> str:
    return f"{(time.perf_counter() - start) * 1000:.0f} ms"


def describe_resolution(host: Host, target: SshTarget) -> str:
    """`gpu-01 -> alice@10.0.0.11:22 (from ~/.ssh/config: HostName, User; via bastion)`."""
    detail = f"{host.address} -> {target.user}@{target.hostname}:{target.port}"
    notes = []
    if target.from_config:
        files = ", ".join(str(path) for path in target.config_files)
        notes.append(f"from {files}: {', '.join(target.from_config)}")
    if target.route():
        notes.append("via " + " -> ".join(hop.label for hop in target.route()))
    if target.proxy_command:
        notes.append(f"through ProxyCommand {target.proxy_command}")
    if target.host_key_alias:
        notes.append(f"host key recorded as {target.host_key_alias}")
    return detail + (f" ({'; '.join(notes)})" if notes else "")


async def _network_checks(target: SshTarget, timeout_s: float) -> AsyncIterator[Check]:
    """DNS and TCP to the host itself, for a direct connection only."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(target.hostname, target.port)
        address = str(infos[0][4][0])
        yield Check("resolve", True, f"{target.hostname} -> {address}")
    except OSError as exc:
        yield Check("resolve", False, f"cannot resolve {target.hostname} (DNS: {exc})")
        return
    start = time.perf_counter()
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(address, target.port), timeout_s)
        writer.close()
        yield Check("ssh reachable", True, f"port {target.port} open ({_ms(start)})")
    except (TimeoutError, OSError) as exc:
        if isinstance(exc, TimeoutError):
            detail = f"timeout after {timeout_s:g} s (host down, firewalled or unreachable)"
        elif isinstance(exc, ConnectionRefusedError):
            detail = "connection refused (is sshd running?)"
        else:
            detail = exc.strerror or str(exc)
        yield Check("ssh reachable", False, f"{address}:{target.port}: {detail}")


def _host_key_check(name: str, target: SshTarget, key: asyncssh.SSHKey, policy: Policy) -> Check:
    recorded = host_keys_of(target)
    revoked = recorded.revoked_entry(key)
    trusted = recorded.trusted_entry(key)
    if revoked is not None:
        return Check("host key", False, f"{fingerprint(key)} is marked @revoked ({revoked.where})")
    if trusted is not None:
        return Check("host key", True, f"{fingerprint(key)} matches {trusted.where}")
    if recorded.trusted:
        return Check(
            "host key",
            False,
            f"host key changed: the server offers {fingerprint(key)}, known_hosts has "
            f"{describe_entries(recorded.trusted)} (if expected: cvtui hosts trust {name} "
            "--replace)",
        )
    if recorded.authorities:
        ca = describe_entries(recorded.authorities)
        return Check("host key", True, f"{fingerprint(key)}, vouched for by @cert-authority {ca}")
    if policy.host_keys == "accept-new":
        return Check("host key", True, f"{fingerprint(key)} (new, policy accept-new records it)")
    return Check(
        "host key",
        False,
        f"host key unknown {fingerprint(key)} (run: cvtui hosts trust {name})",
    )


async def diagnose(host: Host, policy: Policy, timeout_s: float = 10.0) -> AsyncIterator[Check]:
    """Yield one Check per step; stops after the first step that the rest depend on fails."""
    try:
        target = resolve_target(host)
    except HostConnectError as exc:
        yield Check("ssh config", False, exc.reason)
        return
    yield Check("ssh config", True, describe_resolution(host, target))

    route = target.route()
    chain: list[asyncssh.SSHClientConnection] = []
    try:
        for index, hop in enumerate(route):
            start = time.perf_counter()
            tunnel = chain[-1] if chain else None
            try:
                chain.append(await connect_target(host.name, hop, policy, tunnel, timeout_s))
            except HostConnectError as exc:
                yield Check(f"jump {index + 1} {hop.label}", False, f"{hop.address}: {exc.reason}")
                return
            detail = f"{hop.describe()}: logged in ({_ms(start)})"
            yield Check(f"jump {index + 1} {hop.label}", True, detail)
        if not route and not target.proxy_command:
            async for check in _network_checks(target, timeout_s):
                yield check
                if not check.ok:
                    return
        async for check in _on_host(host, target, policy, chain, timeout_s):
            yield check
            if not check.ok and check.name in ("host key", "auth"):
                return
    finally:
        close_route(chain)


async def _on_host(
    host: Host,
    target: SshTarget,
    policy: Policy,
    chain: list[asyncssh.SSHClientConnection],
    timeout_s: float,
) -> AsyncIterator[Check]:
    tunnel = chain[-1] if chain else None
    try:
        key = await fetch_server_key(host.name, target, tunnel, timeout_s)
    except HostConnectError as exc:
        yield Check("host key", False, exc.reason)
        return
    yield _host_key_check(host.name, target, key, policy)

    start = time.perf_counter()
    try:
        conn = await connect_target(host.name, target, policy, tunnel, timeout_s)
    except HostConnectError as exc:
        yield Check("auth", False, exc.reason)
        return
    async with conn:
        yield Check("auth", True, f"logged in as {target.user} ({_ms(start)})")
        async for check in _agent_checks(conn, host, policy, timeout_s):
            yield check
            if not check.ok:
                return


async def _agent_checks(
    conn: asyncssh.SSHClientConnection, host: Host, policy: Policy, timeout_s: float
) -> AsyncIterator[Check]:
    probe = KillableProcess(
        await conn.create_process(
            killable_command([host.python, "-c", PYTHON_PROBE]), encoding=None
        )
    )
    try:
        result = await asyncio.wait_for(probe.process.wait(), timeout_s)
    except TimeoutError:
        await probe.stop(conn)  # a `python` that hangs must not stay behind
        yield Check(
            "python", False, f"{host.python} did not answer within {timeout_s:g} s (stopped it)"
        )
        return
    out = result.stdout or b""
    printed = (out.decode(errors="replace") if isinstance(out, bytes) else out).strip()
    version = printed.splitlines()[-1].strip() if printed else ""  # after an rc file's banner
    parts = tuple(int(p) for p in version.split(".") if p.isdigit())
    if result.exit_status != 0 or len(parts) < 2:
        yield Check("python", False, f"no python3 >= 3.8 ({host.python}: not found)")
        return
    if parts[:2] < protocol.MIN_PYTHON:
        yield Check("python", False, f"no python3 >= 3.8 ({host.python} is {version})")
        return
    yield Check("python", True, f"{host.python} is {version}")
    noise = await shell_output(conn)
    if noise:
        yield Check(
            "login shell",
            True,
            f"{WARNING_PREFIX}prints {noise!r} before every command (an rc file such as "
            "~/.bashrc): cvtui skips it, but a server whose sftp is sftp-server (not "
            "internal-sftp) cannot serve SFTP through it",
        )
    try:
        session = await open_sftp(conn, host)
    except HostConnectError as exc:
        yield Check("sftp", False, exc.reason)
        return
    except asyncssh.Error as exc:
        yield Check("sftp", False, f"cannot start SFTP: {exc}")
        return
    async with session as sftp:
        try:
            root = await secure_root(sftp, host)
        except (asyncssh.Error, OSError) as exc:
            yield Check("root mode", False, f"cannot create or stat {host.root}: {exc}")
            return
        note = root.note()
        yield Check(
            "root mode",
            True,
            f"{WARNING_PREFIX}{note}" if note else f"{host.root} is {root.mode:04o}",
        )
        bundle = build_agent()
        try:
            path, uploaded = await ensure_agent(conn, host, bundle, sftp=sftp, root_secured=True)
        except (asyncssh.Error, OSError) as exc:
            yield Check("agent deployed", False, f"upload to {host.root} failed: {exc}")
            return
    how = "uploaded now" if uploaded else "already there"
    yield Check("agent deployed", True, f"{path} ({how}, {len(bundle.data)} bytes)")

    try:
        client = await launch_agent(
            conn, host, path, policy.interval_s, lambda message: None, timeout_s
        )
    except HostConnectError as exc:
        yield Check("agent start", False, exc.reason)
        return
    hello = client.hello
    assert hello is not None  # launch_agent returns after the handshake
    yield Check(
        "agent start", True, f"protocol {hello.protocol}, pid {hello.pid} on {hello.hostname}"
    )
    gpu_ok = hello.backend != protocol.BACKEND_NONE
    why = "; ".join(hello.backend_errors)
    detail = f"{hello.backend}, {hello.gpu_count} GPUs" + (f" (fell back: {why})" if why else "")
    yield Check("gpu backend", gpu_ok, detail)
    try:
        reply = await client.call(protocol.OP_CHECK, timeout_s=timeout_s)
        for item in reply.get("checks", []):
            yield Check(str(item["name"]), bool(item["ok"]), str(item.get("detail", "")))
    finally:
        with contextlib.suppress(Exception):
            await client.call(protocol.OP_SHUTDOWN, timeout_s=2)
        await client.close()
