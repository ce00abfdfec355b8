"""Host key trust: what each server on the way to a host offers, and recording it safely."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh

from cvtui.engine.connections import (
    HostConnectError,
    close_route,
    connect_target,
    fetch_server_key,
    host_keys_of,
    resolve_target,
)
from cvtui.engine.known_hosts import (
    HostKeys,
    KnownHostsLine,
    Removal,
    fingerprint,
    record_key,
    remove_host,
)

if TYPE_CHECKING:
    from cvtui.engine.ssh_config import SshTarget
    from cvtui.inventory import Host, Policy

TRUSTED, UNKNOWN, CHANGED, REVOKED = "trusted", "unknown", "changed", "revoked"


@dataclass(frozen=True)
class KeyCheck:
    """One server on the way to a host (a jump host or the host): its key and its record."""

    target: SshTarget
    offered: asyncssh.SSHKey
    recorded: HostKeys
    hop: int  # 1-based position on the route
    hops: int  # servers on the route, the host included
    certified_by: KnownHostsLine | None = None  # the @cert-authority line that vouched for it

    @property
    def is_host(self) -> bool:
        return self.hop == self.hops

    @property
    def label(self) -> str:
        if self.is_host:
            return self.target.label
        return f"jump host {self.target.label} (hop {self.hop} of {self.hops - 1})"

    @property
    def status(self) -> str:
        if self.recorded.revoked_entry(self.offered) is not None:
            return REVOKED
        if self.certified_by or self.recorded.trusted_entry(self.offered) is not None:
            return TRUSTED
        return CHANGED if self.recorded.trusted else UNKNOWN

    @property
    def entry(self) -> KnownHostsLine | None:
        """The line that trusts or revokes the offered key, if any."""
        recorded = self.recorded
        return (
            recorded.revoked_entry(self.offered)
            or recorded.trusted_entry(self.offered)
            or self.certified_by
        )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.offered)

    def record(self) -> Path:
        """Trust the offered key: append it to the first user known_hosts file."""
        path = self.target.record_file
        record_key(path, self.target.key_name, self.offered, hashed=self.target.hash_known_hosts)
        return path

    def replace(self) -> list[Removal]:
        """Remove the recorded keys (as `ssh-keygen -R` does, per file), then record the offer.

        Raises OSError when a file holding an old key cannot be rewritten (a system file).
        """
        files = dict.fromkeys(entry.path for entry in self.recorded.trusted)
        removals = [remove_host(path, self.target.key_name) for path in files]
        self.record()
        return removals


async def _certified(
    check: KeyCheck,
    name: str,
    policy: Policy,
    tunnel: asyncssh.SSHClientConnection | None,
    timeout_s: float,
) -> KeyCheck:
    """check, vouched for when the server proves a certificate from a trusted authority.

    Only a full connection shows the certificate, so one is made and closed again.
    """
    strict = dataclasses.replace(policy, host_keys="strict")
    try:
        conn = await connect_target(name, check.target, strict, tunnel, timeout_s)
    except HostConnectError as exc:
        if exc.reason.startswith(("host key", "host certificate")):
            return check
        # Anything else (a refused login) comes after the key exchange accepted the key.
    else:
        conn.close()
    return dataclasses.replace(check, certified_by=check.recorded.authorities[0])


@contextlib.asynccontextmanager
async def route_keys(
    host: Host, policy: Policy, timeout_s: float = 10.0
) -> AsyncIterator[AsyncGenerator[KeyCheck, None]]:
    """The key of each server on the way to host, jump hosts first.

    The caller may record a key before asking for the next: each jump host is logged in to
    (which needs its key trusted) only to reach the servers behind it.
    """
    target = resolve_target(host)
    route = (*target.route(), target)
    chain: list[asyncssh.SSHClientConnection] = []

    async def walk() -> AsyncGenerator[KeyCheck, None]:
        for index, server in enumerate(route):
            tunnel = chain[-1] if chain else None
            try:
                key = await fetch_server_key(host.name, server, tunnel, timeout_s)
                check = KeyCheck(server, key, host_keys_of(server), index + 1, len(route))
                if check.status == UNKNOWN and check.recorded.authorities:
                    check = await _certified(check, host.name, policy, tunnel, timeout_s)
                yield check
                if server is not target:
                    conn = await connect_target(host.name, server, policy, tunnel, timeout_s)
                    chain.append(conn)
            except HostConnectError as exc:
                if server is target:
                    raise
                where = f"hop {index + 1} of {len(route) - 1}, {server.address}"
                reason = f"jump host {server.label} failed ({where}): {exc.reason}"
                raise HostConnectError(host.name, reason, exc.state) from exc

    checks = walk()
    try:
        yield checks
    finally:
        await checks.aclose()
        close_route(chain)
