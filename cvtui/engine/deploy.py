"""Agent deployment: content-addressed upload over SFTP, and the command that starts it."""

from __future__ import annotations

import json
import secrets
import shlex
from typing import TYPE_CHECKING

import asyncssh

from cvtui.engine.agent_build import AgentBundle, remote_agent_path

if TYPE_CHECKING:
    from cvtui.inventory import Host


def remote_path(path: str) -> str:
    """A host path as SSH sees it: `~/x` becomes `x`, relative to the login directory.

    Both SFTP and the exec'd command start in the home directory, so relative paths avoid
    relying on a shell to expand `~` (which shlex quoting would prevent anyway).
    """
    if path == "~":
        return "."
    if path.startswith("~/"):
        return path[2:] or "."
    return path


def agent_file(host: Host, bundle: AgentBundle) -> str:
    return remote_agent_path(remote_path(host.root), bundle)


async def ensure_agent(
    conn: asyncssh.SSHClientConnection, host: Host, bundle: AgentBundle, *, force: bool = False
) -> tuple[str, bool]:
    """Upload the agent unless this exact build is already there; returns (path, uploaded)."""
    path = agent_file(host, bundle)
    async with conn.start_sftp_client() as sftp:
        if not force and await sftp.exists(path):
            return path, False
        directory = path.rsplit("/", 1)[0]
        await sftp.makedirs(directory, exist_ok=True)
        # A name of its own: two controllers uploading at once must not write one file.
        tmp = f"{path}.{secrets.token_hex(6)}.part"
        async with sftp.open(tmp, "wb") as fh:
            await fh.write(bundle.data)
        await sftp.chmod(tmp, 0o600)
        # posix-rename@openssh.com replaces atomically, so a concurrent controller never
        # sees half an agent.
        await sftp.posix_rename(tmp, path)
    return path, True


def agent_command(host: Host, path: str, interval_s: float) -> str:
    """The one shell command per connection: exec the agent so no shell stays around."""
    argv = [
        host.python,
        "-u",
        path,
        "serve",
        "--root",
        remote_path(host.root),
        "--leases-dir",
        remote_path(host.leases_dir),
        "--interval",
        f"{interval_s:g}",
    ]
    if host.simulate is not None:
        spec = host.simulate
        argv += [
            "--simulate",
            json.dumps({"gpus": spec.gpus, "model": spec.model, "memory": spec.memory}),
        ]
    return "exec " + shlex.join(argv)
