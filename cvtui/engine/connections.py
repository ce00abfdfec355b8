"""SSH connections to inventory hosts: asyncssh with strict known_hosts, each failure named."""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh

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
KEEPALIVE_INTERVAL_S = 5.0
KEEPALIVE_COUNT_MAX = 3
BACKOFF_START_S = 1.0
BACKOFF_CAP_S = 30.0


class HostConnectError(HostError):
    """A connection attempt that failed; ``state`` is the host state it puts the host in."""

    def __init__(self, host: str, reason: str, state: str = "error") -> None:
        super().__init__(host, reason)
        self.state = state


def known_hosts_path(host: Host) -> Path:
    """The known_hosts file used for host: the inventory's, else the user's OpenSSH one."""
    if host.known_hosts:
        return Path(host.known_hosts).expanduser()
    return Path("~/.ssh/known_hosts").expanduser()


def known_hosts_name(host: Host) -> str:
    """How OpenSSH names host:port in known_hosts."""
    return host.address if host.port == 22 else f"[{host.address}]:{host.port}"


def recorded_host_keys(host: Host) -> list[asyncssh.SSHKey]:
    """Keys known_hosts already lists for host (empty when the host is unknown)."""
    path = known_hosts_path(host)
    if not path.exists():
        return []
    try:
        known = asyncssh.read_known_hosts(str(path))
    except (OSError, ValueError):
        return []
    try:
        addr = socket.gethostbyname(host.address)
    except OSError:
        addr = host.address
    trusted = known.match(host.address, addr, host.port)[0]
    return list(trusted)


def record_host_key(host: Host, key: asyncssh.SSHKey) -> Path:
    """Append host's key to its known_hosts file (created 0600 with its directory)."""
    path = known_hosts_path(host)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = f"{known_hosts_name(host)} {key.export_public_key().decode().strip()}\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as fh:
        fh.write(line)
    return path


def fingerprint(key: asyncssh.SSHKey) -> str:
    return f"{key.get_algorithm()} {key.get_fingerprint('sha256')}"


def connect_options(host: Host, timeout_s: float) -> dict[str, Any]:
    """asyncssh.connect arguments for host; ~/.ssh/config and ssh-agent stay in effect."""
    path = known_hosts_path(host)
    options: dict[str, Any] = {
        "port": host.port,
        # A known_hosts file that does not exist yet trusts nobody (asyncssh would raise
        # FileNotFoundError): the host is then reported as unknown, with the trust command.
        "known_hosts": str(path) if path.exists() else asyncssh.import_known_hosts(""),
        "connect_timeout": timeout_s,
        "login_timeout": timeout_s,
        "keepalive_interval": KEEPALIVE_INTERVAL_S,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        "encryption_algs": list(ENCRYPTION_ALGS),
    }
    if host.user:
        options["username"] = host.user
    if host.identity:
        options["client_keys"] = [host.identity]
    return options


async def fetch_host_key(host: Host, timeout_s: float = 10.0) -> asyncssh.SSHKey:
    """The key the server presents now, without authenticating."""
    try:
        key = await asyncio.wait_for(
            asyncssh.get_server_host_key(host.address, host.port), timeout_s
        )
    except Exception as exc:
        raise classify_error(host, exc) from exc
    if key is None:
        raise HostConnectError(host.name, "server presented no host key")
    return key


def classify_error(host: Host, exc: BaseException) -> HostConnectError:
    """Turn what connecting raised into a host state with a specific reason."""
    if isinstance(exc, HostConnectError):
        return exc
    name = host.name
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if recorded_host_keys(host):
            return HostConnectError(
                name,
                f"host key changed (the server's key does not match {known_hosts_path(host)}; "
                f"if the change is expected: ssh-keygen -R '{known_hosts_name(host)}' "
                f"-f {known_hosts_path(host)} && cvtui hosts trust {name})",
            )
        return HostConnectError(name, f"host key unknown (run: cvtui hosts trust {name})")
    if isinstance(exc, asyncssh.PermissionDenied):
        return HostConnectError(name, "auth failed")
    if isinstance(exc, ConnectionRefusedError):
        return HostConnectError(name, "connection refused", state="disconnected")
    if isinstance(exc, asyncio.TimeoutError | TimeoutError):
        return HostConnectError(name, "timeout", state="disconnected")
    if isinstance(exc, socket.gaierror):
        return HostConnectError(name, f"cannot resolve {host.address}: {exc.strerror}")
    if isinstance(exc, asyncssh.ConnectionLost | ConnectionResetError | BrokenPipeError):
        return HostConnectError(name, "connection lost", state="disconnected")
    if isinstance(exc, asyncssh.DisconnectError):
        return HostConnectError(name, f"disconnected by server: {exc.reason}", state="disconnected")
    if isinstance(exc, OSError):
        return HostConnectError(name, exc.strerror or str(exc), state="disconnected")
    return HostConnectError(name, f"{type(exc).__name__}: {exc}")


async def open_connection(
    host: Host, policy: Policy, timeout_s: float = 10.0
) -> asyncssh.SSHClientConnection:
    """Connect and authenticate to host, or raise HostConnectError with the reason.

    With ``policy.host_keys == "accept-new"`` an unknown host's key is recorded first (trust on
    first use); a changed key is always an error.
    """
    if policy.host_keys == "accept-new" and not recorded_host_keys(host):
        record_host_key(host, await fetch_host_key(host, timeout_s))
    try:
        return await asyncssh.connect(host.address, **connect_options(host, timeout_s))
    except Exception as exc:
        raise classify_error(host, exc) from exc


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
