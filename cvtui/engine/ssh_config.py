"""Where a host really is: inventory settings over ~/.ssh/config, resolved as OpenSSH does.

asyncssh's own config parser reads the files (so the options it honours are exactly the ones
it applies when connecting); this module adds what cvtui decides itself: the known_hosts files
and lookup name, and the chain of jump hosts, each resolved through the config in turn.
"""

from __future__ import annotations

import getpass
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cvtui.engine.known_hosts import DEFAULT_SSH_PORT, lookup_name
from cvtui.errors import CvtuiError
from cvtui.inventory import Host, JumpHop, parse_jump

USER_CONFIG = "~/.ssh/config"
SYSTEM_CONFIG = "/etc/ssh/ssh_config"
DEFAULT_USER_KNOWN_HOSTS = ("~/.ssh/known_hosts", "~/.ssh/known_hosts2")
DEFAULT_GLOBAL_KNOWN_HOSTS = ("/etc/ssh/ssh_known_hosts", "/etc/ssh/ssh_known_hosts2")
MAX_JUMP_DEPTH = 8  # jump hosts behind jump hosts; OpenSSH would loop forever on a cycle


class SshConfigError(CvtuiError):
    """An ssh config file that cannot be read, or a jump chain that cannot be resolved."""


def config_paths() -> tuple[Path, ...]:
    """The files OpenSSH reads, first match wins: ~/.ssh/config, then /etc/ssh/ssh_config."""
    candidates = (Path(USER_CONFIG).expanduser(), Path(SYSTEM_CONFIG))
    return tuple(path for path in candidates if os.access(path, os.R_OK))


@dataclass(frozen=True)
class SshTarget:
    """One SSH server to reach, with every setting resolved, and the jump hosts in front of it."""

    label: str  # how the user named it: an inventory host, or a jump host as written
    alias: str  # the name the config's Host and Match lines see
    hostname: str  # what is actually connected to (HostName, else the alias)
    port: int
    user: str
    identities: tuple[str, ...]  # private key files (inventory identity, else IdentityFile)
    identity_from_inventory: bool
    known_hosts: tuple[Path, ...]  # user files; new keys are recorded in the first
    global_known_hosts: tuple[Path, ...]
    host_key_alias: str | None
    hash_known_hosts: bool  # HashKnownHosts: record new keys with hashed names
    proxy_command: str | None
    ciphers: str | None  # the config's Ciphers; None: cvtui's own order
    jumps: tuple[SshTarget, ...]  # ProxyJump hosts, in connection order
    config_files: tuple[Path, ...]
    from_config: tuple[str, ...]  # the options that came from the config files, for doctor

    @property
    def address(self) -> str:
        return f"{self.hostname}:{self.port}"

    @property
    def key_name(self) -> str:
        """The name its host key is recorded under in known_hosts."""
        return lookup_name(self.hostname, self.port, self.host_key_alias)

    @property
    def known_hosts_files(self) -> tuple[Path, ...]:
        return self.known_hosts + self.global_known_hosts

    @property
    def record_file(self) -> Path:
        """Where a newly trusted key goes: the first user known_hosts file, as in OpenSSH."""
        return self.known_hosts[0] if self.known_hosts else Path(DEFAULT_USER_KNOWN_HOSTS[0])

    def route(self) -> tuple[SshTarget, ...]:
        """Every jump host to pass through, in order. Only the first jump host's own ProxyJump
        counts: OpenSSH reaches each later one through the ones before it."""
        if not self.jumps:
            return ()
        return (*self.jumps[0].route(), *self.jumps)

    def describe(self) -> str:
        where = f"{self.user}@{self.hostname}:{self.port}"
        return where if self.alias == self.hostname else f"{self.alias} = {where}"


def _expand_path(path: str, home: str, user: str) -> Path:
    text = path.replace("%%", "\0").replace("%d", home).replace("%u", user).replace("\0", "%")
    return Path(text).expanduser()


@cache
def _config_class() -> Any:
    """asyncssh's client config parser, also keeping HashKnownHosts (asyncssh has no use for it)."""
    from asyncssh.config import SSHClientConfig, SSHConfig

    class _Config(SSHClientConfig):
        _handlers = {  # noqa: RUF012  (extends the parser's own class-level table)
            **SSHClientConfig._handlers,
            "hashknownhosts": ("HashKnownHosts", SSHConfig._set_bool),
        }

    return _Config


def _local_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _load_config(files: tuple[Path, ...], alias: str, user: str | None, port: int | None) -> Any:
    """asyncssh's parsed config for one host, explicit user and port already in place."""
    from asyncssh.config import ConfigParseError

    try:
        return _config_class().load(
            None,
            list(files),
            False,
            False,
            False,
            _local_user(),
            () if user is None else user,
            alias,
            () if port is None else port,
        )
    except (ConfigParseError, ValueError, OSError) as exc:
        raise SshConfigError(f"ssh config: {exc}") from exc


def resolve(
    label: str,
    alias: str,
    *,
    user: str | None = None,
    port: int | None = None,
    identity: str | None = None,
    known_hosts: str | None = None,
    jump: str | None = None,
    files: tuple[Path, ...] | None = None,
    depth: int = 0,
    follow_jumps: bool = True,
) -> SshTarget:
    """Resolve one server: explicit values first, then the config files, then OpenSSH's defaults.

    ``jump`` (the inventory's) replaces the config's ProxyJump; ``identity`` and
    ``known_hosts`` are handed on to the jump hosts, which usually share the lab's key and file.
    """
    if depth > MAX_JUMP_DEPTH:
        raise SshConfigError(f"ProxyJump chain of {label} is longer than {MAX_JUMP_DEPTH} hosts")
    files = config_paths() if files is None else files
    config = _load_config(files, alias, user, port)
    home = str(Path.home())
    login_user = str(config.get("User") or _local_user())
    from_config = tuple(
        shown
        for option, shown, given in (
            ("Hostname", "HostName", True),
            ("Port", "Port", port is None),
            ("User", "User", user is None),
            ("IdentityFile", "IdentityFile", identity is None),
            ("ProxyJump", "ProxyJump", jump is None),
            ("ProxyCommand", "ProxyCommand", True),
            ("HostKeyAlias", "HostKeyAlias", True),
            ("UserKnownHostsFile", "UserKnownHostsFile", known_hosts is None),
        )
        if given and config.get(option)
    )
    if identity is not None:
        identities: tuple[str, ...] = (identity,)
    else:
        identities = tuple(str(p) for p in config.get("IdentityFile", ()) or ())
    if known_hosts is not None:
        user_files: tuple[Path, ...] = (Path(known_hosts).expanduser(),)
        global_files: tuple[Path, ...] = ()
    else:
        listed = config.get("UserKnownHostsFile")
        names = DEFAULT_USER_KNOWN_HOSTS if listed is None else tuple(listed)
        user_files = tuple(_expand_path(name, home, _local_user()) for name in names)
        listed = config.get("GlobalKnownHostsFile")
        names = DEFAULT_GLOBAL_KNOWN_HOSTS if listed is None else tuple(listed)
        global_files = tuple(_expand_path(name, home, _local_user()) for name in names)
    jump_text = jump if jump is not None else config.get("ProxyJump")
    jumps: tuple[SshTarget, ...] = ()
    if follow_jumps and jump_text:
        try:
            hops = parse_jump(str(jump_text))
        except ValueError as exc:
            raise SshConfigError(f"ProxyJump of {label}: {exc}") from exc
        jumps = tuple(
            _resolve_hop(hop, index, identity, known_hosts, files, depth)
            for index, hop in enumerate(hops)
        )
    proxy_command = config.get("ProxyCommand")
    return SshTarget(
        label=label,
        alias=alias,
        hostname=str(config.get("Hostname", alias)),
        port=int(config.get("Port", DEFAULT_SSH_PORT)),
        user=login_user,
        identities=identities,
        identity_from_inventory=identity is not None,
        known_hosts=user_files,
        global_known_hosts=global_files,
        host_key_alias=config.get("HostKeyAlias"),
        hash_known_hosts=bool(config.get("HashKnownHosts", False)),
        proxy_command=None if jumps or not proxy_command else str(proxy_command),
        ciphers=config.get("Ciphers"),
        jumps=jumps,
        config_files=files,
        from_config=from_config,
    )


def _resolve_hop(
    hop: JumpHop,
    index: int,
    identity: str | None,
    known_hosts: str | None,
    files: tuple[Path, ...],
    depth: int,
) -> SshTarget:
    return resolve(
        hop.host,
        hop.host,
        user=hop.user,
        port=hop.port,
        identity=identity,
        known_hosts=known_hosts,
        files=files,
        depth=depth + 1,
        # A later hop is reached through the ones before it, so its own ProxyJump is moot.
        follow_jumps=index == 0,
    )


def resolve_host(host: Host, files: tuple[Path, ...] | None = None) -> SshTarget:
    """The inventory host as OpenSSH would reach `ssh <address>`, inventory values winning."""
    return resolve(
        host.name,
        host.address,
        user=host.user,
        port=host.port,
        identity=host.identity,
        known_hosts=host.known_hosts,
        jump=host.jump,
        files=files,
    )
