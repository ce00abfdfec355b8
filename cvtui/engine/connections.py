"""SSH connections to hosts: ssh config, shared jump hosts, strict known_hosts, failures named."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import asyncssh

from cvtui.engine.jump_hosts import handshake_slot, jump_hosts
from cvtui.engine.known_hosts import (
    HostKeys,
    describe_entries,
    fingerprint,
    look_up,
    record_key,
)
from cvtui.engine.ssh_config import SshConfigError, SshTarget, resolve_host
from cvtui.errors import HostError

if TYPE_CHECKING:
    from cvtui.inventory import Host, Policy

# AES-GCM first: with AES-NI it moves bulk data about 1.5x faster than asyncssh's
# ChaCha20-Poly1305 (measured with the sync benchmark: 183-298 vs 133-173 MB/s on 1 GiB).
ENCRYPTION_ALGS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes256-ctr",
    "aes192-ctr",
    "aes128-ctr",
)
# A link that silently stops carrying packets (dropped VPN, Wi-Fi) is given up after
# (COUNT_MAX + 1) * INTERVAL = 12 s without a packet; telemetry flows every second, so a
# healthy link never needs a keepalive at all.
KEEPALIVE_INTERVAL_S = 3.0
KEEPALIVE_COUNT_MAX = 3
BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0


class HostConnectError(HostError):
    """A connection attempt that failed; ``state`` is the host state it puts the host in."""

    def __init__(self, host: str, reason: str, state: str = "error") -> None:
        super().__init__(host, reason)
        self.state = state


def resolve_target(host: Host) -> SshTarget:
    """host resolved through the ssh config files; a broken config is the host's error."""
    try:
        return resolve_host(host)
    except SshConfigError as exc:
        raise HostConnectError(host.name, str(exc)) from exc


def host_keys_of(target: SshTarget) -> HostKeys:
    """What the known_hosts files say about target, by OpenSSH's lookup rules."""
    return look_up(target.key_name, target.known_hosts_files)


class _Observer(asyncssh.SSHClient):
    """Notes what the server did that asyncssh's exceptions leave out: the key it offered
    when that key is not trusted, and the login methods it offered that cvtui never uses."""

    def __init__(self) -> None:
        self.offered_key: asyncssh.SSHKey | None = None
        self.publickey_exhausted = False
        self.declined: set[str] = set()

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered_key = key
        return False  # only known_hosts decides

    def public_key_auth_requested(self) -> None:
        self.publickey_exhausted = True  # every configured key was offered and refused
        return None

    def password_auth_requested(self) -> None:
        self.declined.add("password")
        return None

    def kbdint_auth_requested(self) -> None:
        self.declined.add("keyboard-interactive")
        return None


@dataclass
class _Attempt:
    """One connection attempt, kept to explain its failure."""

    name: str  # the inventory host it is for
    target: SshTarget
    timeout_s: float
    via: SshTarget | None = None  # the jump host it goes through
    keys: HostKeys | None = None
    observer: _Observer = field(default_factory=_Observer)

    def fail(self, reason: str, state: str = "error") -> HostConnectError:
        return HostConnectError(self.name, reason, state)

    def explain(self, exc: BaseException) -> HostConnectError:
        """What went wrong, named as a user would look for it."""
        if isinstance(exc, HostConnectError):
            return exc
        address = self.target.address
        if self.target.proxy_command:
            address += f" (through ProxyCommand {self.target.proxy_command})"
        if isinstance(exc, asyncssh.HostKeyNotVerifiable):
            return self.fail(self.host_key_problem(str(exc)))
        if isinstance(exc, asyncssh.PermissionDenied):
            return self.fail(self.auth_problem())
        if isinstance(exc, asyncssh.ChannelOpenError) and self.via is not None:
            return self.fail(
                f"jump host {self.via.label} could not reach {address}: {exc.reason}",
                "disconnected",
            )
        if isinstance(exc, ConnectionRefusedError):
            return self.fail(
                f"connection refused by {address} (no sshd listening there?)", "disconnected"
            )
        timed_out = isinstance(exc, TimeoutError) or (
            isinstance(exc, asyncssh.ConnectionLost) and "timeout" in str(exc).lower()
        )
        if timed_out:
            return self.fail(
                f"timeout: no SSH answer from {address} within {self.timeout_s:g} s "
                "(host down, firewalled or unreachable)",
                "disconnected",
            )
        if isinstance(exc, socket.gaierror):
            transient = exc.errno == socket.EAI_AGAIN
            return self.fail(
                f"cannot resolve {self.target.hostname} (DNS: {exc.strerror})",
                "disconnected" if transient else "error",
            )
        if isinstance(exc, OSError) and exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
            return self.fail(f"no route to {address} ({exc.strerror})", "disconnected")
        if isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError | BrokenPipeError):
            return self.fail("connection lost", "disconnected")
        if isinstance(exc, asyncssh.DisconnectError):
            return self.fail(f"disconnected by server: {exc.reason}", "disconnected")
        if isinstance(exc, OSError):
            return self.fail(f"{address}: {exc.strerror or exc}", "disconnected")
        return self.fail(f"{type(exc).__name__}: {exc}")

    def host_key_problem(self, detail: str) -> str:
        keys = self.keys or host_keys_of(self.target)
        offered = self.observer.offered_key
        if "revoked" in detail.lower():
            return f"host key revoked ({describe_entries(keys.revoked)} is marked @revoked)"
        if offered is None and keys.authorities:
            return (
                f"host certificate not accepted ({detail}); trusted authorities for "
                f"{keys.name}: {describe_entries(keys.authorities)}"
            )
        if keys.trusted:
            shown = fingerprint(offered) if offered is not None else "another key"
            return (
                f"host key changed: {keys.name} is recorded as {describe_entries(keys.trusted)}"
                f" but the server offers {shown}; if the change is expected, run: "
                f"cvtui hosts trust {self.name} --replace"
            )
        return f"host key unknown (run: cvtui hosts trust {self.name})"

    def auth_problem(self) -> str:
        target = self.target
        if self.observer.publickey_exhausted:
            keys = [Path(path).name for path in target.identities]
            if not keys:
                keys.append("the default keys in ~/.ssh")
            if os.environ.get("SSH_AUTH_SOCK"):
                keys.append("ssh-agent keys")
            tried = f"tried publickey with {', '.join(keys)}"
        else:
            tried = "the server accepts no public key login"
        text = f"auth failed as {target.user}@{target.hostname}: {tried}"
        if self.observer.declined:
            methods = " and ".join(sorted(self.observer.declined))
            text += f"; the server also offers {methods}, which cvtui does not use"
        return text

    def options(self, keys: HostKeys, tunnel: asyncssh.SSHClientConnection | None) -> Any:
        """asyncssh.connect arguments; the config files stay in effect for everything else."""
        target = self.target
        options: dict[str, Any] = {
            "port": target.port,
            "username": target.user,
            "known_hosts": keys.for_asyncssh(),
            "host_key_alias": target.host_key_alias,
            "tunnel": tunnel,
            "proxy_command": target.proxy_command,
            "config": [str(path) for path in target.config_files],
            "connect_timeout": self.timeout_s,
            "login_timeout": self.timeout_s,
            "keepalive_interval": KEEPALIVE_INTERVAL_S,
            "keepalive_count_max": KEEPALIVE_COUNT_MAX,
            # cvtui's sessions carry programs, not a terminal: RequestTTY and X11 never apply.
            "request_pty": False,
            "x11_forwarding": False,
            "client_factory": lambda: self.observer,
        }
        if target.ciphers is None:
            options["encryption_algs"] = list(ENCRYPTION_ALGS)
        if target.identity_from_inventory:
            options["client_keys"] = list(target.identities)
        return options


def server_of(target: SshTarget, through: tuple[SshTarget, ...]) -> Hashable:
    """What one sshd is known by, for pacing: where it listens, as reached (jump hosts first)."""
    return (through, target.hostname, target.port, target.proxy_command)


async def fetch_server_key(
    name: str,
    target: SshTarget,
    tunnel: asyncssh.SSHClientConnection | None,
    timeout_s: float,
    through: tuple[SshTarget, ...] = (),
) -> asyncssh.SSHKey:
    """The key target presents now, without logging in (through tunnel when given)."""
    attempt = _Attempt(name, target, timeout_s)
    try:
        async with handshake_slot(server_of(target, through)):
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(
                    target.alias,
                    target.port,
                    tunnel=tunnel,
                    proxy_command=target.proxy_command,
                    config=[str(path) for path in target.config_files],
                ),
                timeout_s,
            )
    except Exception as exc:
        raise attempt.explain(exc) from exc
    if key is None:
        raise attempt.fail("server presented no host key")
    return key


async def connect_target(
    name: str,
    target: SshTarget,
    policy: Policy,
    tunnel: asyncssh.SSHClientConnection | None = None,
    timeout_s: float = 10.0,
    via: SshTarget | None = None,
    through: tuple[SshTarget, ...] = (),
) -> asyncssh.SSHClientConnection:
    """Log in to one server (`through`: the jump hosts before it). With policy accept-new, a
    server known_hosts says nothing about is recorded first (trust on first use); a changed
    or revoked key never is. Handshakes are paced per server (jump_hosts.handshake_slot)."""
    keys = host_keys_of(target)
    if policy.host_keys == "accept-new" and not keys.known:
        key = await fetch_server_key(name, target, tunnel, timeout_s, through)
        if keys.revoked_entry(key) is None and keys.trusted_entry(key) is None:
            record_key(target.record_file, target.key_name, key, hashed=target.hash_known_hosts)
            keys = host_keys_of(target)
    attempt = _Attempt(name, target, timeout_s, via, keys)
    try:
        async with handshake_slot(server_of(target, through)):
            return await asyncssh.connect(target.alias, **attempt.options(keys, tunnel))
    except Exception as exc:
        raise attempt.explain(exc) from exc


async def open_route(
    name: str, target: SshTarget, policy: Policy, timeout_s: float
) -> list[asyncssh.SSHClientConnection]:
    """Logged-in connections to each jump host in front of target, in order (empty: direct)."""
    route = target.route()
    chain: list[asyncssh.SSHClientConnection] = []
    try:
        for index in range(len(route)):
            tunnel = chain[-1] if chain else None
            prefix = route[: index + 1]
            conn = await connect_hop(name, prefix, len(route), policy, tunnel, timeout_s)
            if tunnel is not None:
                conn.set_tunnel(tunnel)  # closing a hop closes the hops before it
            chain.append(conn)
    except BaseException:
        close_route(chain)
        raise
    return chain


def close_route(chain: list[asyncssh.SSHClientConnection]) -> None:
    for conn in reversed(chain):
        conn.close()


async def connect_hop(
    name: str,
    route: tuple[SshTarget, ...],
    hops: int,
    policy: Policy,
    tunnel: asyncssh.SSHClientConnection | None,
    timeout_s: float,
) -> asyncssh.SSHClientConnection:
    """Log in to the last jump host of route (hop len(route) of `hops`), naming it on failure."""
    hop = route[-1]
    try:
        return await connect_target(
            name, hop, policy, tunnel, timeout_s, route[-2] if len(route) > 1 else None, route[:-1]
        )
    except HostConnectError as exc:
        where = f"hop {len(route)} of {hops}, {hop.address}"
        reason = f"jump host {hop.label} failed ({where}): {exc.reason}"
        raise HostConnectError(name, reason, exc.state) from exc


async def open_connection(
    host: Host, policy: Policy, timeout_s: float = 10.0
) -> asyncssh.SSHClientConnection:
    """Connect and log in to host through its jump hosts, or raise HostConnectError naming why.

    Hosts behind the same jump hosts share one login to each (jump_hosts.py), released when
    the last connection through it closes.
    """
    target = resolve_target(host)
    route = target.route()
    if not route:
        return await connect_target(host.name, target, policy, None, timeout_s)
    shared = jump_hosts()

    async def open_hop(
        prefix: tuple[Hashable, ...], tunnel: asyncssh.SSHClientConnection | None
    ) -> asyncssh.SSHClientConnection:
        hops = cast("tuple[SshTarget, ...]", prefix)
        return await connect_hop(host.name, hops, len(route), policy, tunnel, timeout_s)

    try:
        tunnel = await shared.acquire(route, open_hop)
    except HostConnectError as exc:  # maybe another host's attempt: say it as this host's
        raise HostConnectError(host.name, exc.reason, exc.state) from exc
    try:
        conn = await connect_target(host.name, target, policy, tunnel, timeout_s, route[-1], route)
    except BaseException:
        shared.release(route)
        raise
    shared.hold_until_closed(route, conn)
    return conn


def classify_error(host: Host, exc: BaseException) -> HostConnectError:
    """Turn what a session raised after connecting into a host state with a reason."""
    if isinstance(exc, HostConnectError):
        return exc
    with contextlib.suppress(HostConnectError):
        return _Attempt(host.name, resolve_target(host), 10.0).explain(exc)
    return HostConnectError(host.name, f"{type(exc).__name__}: {exc}")


@dataclass
class Backoff:
    """Capped exponential delay between reconnect attempts."""

    start_s: float = BACKOFF_START_S
    cap_s: float = BACKOFF_CAP_S
    current_s: float = 0.0

    def next_delay(self) -> float:
        self.current_s = self.start_s if not self.current_s else min(self.cap_s, self.current_s * 2)
        return self.current_s

    def reset(self) -> None:
        self.current_s = 0.0
