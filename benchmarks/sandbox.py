"""A temporary lab of real sshd servers that is always stopped and removed afterwards."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cvtui.lab import Lab, LabHostSpec, start_lab


@contextlib.contextmanager
def temporary_lab(*specs: LabHostSpec) -> Iterator[Lab]:
    """Start one sshd per spec in a fresh temp directory; stop them and delete it on exit."""
    directory = Path(tempfile.mkdtemp(prefix="cvtui-bench-"))
    try:
        lab = start_lab(directory / "lab", specs)  # stops what it started if it fails
        try:
            yield lab
        finally:
            lab.stop()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def ssh_command(lab: Lab, server: str, remote_command: str = "true") -> list[str]:
    """Plain OpenSSH to one of the lab's servers, trusting only the lab's known_hosts."""
    return ssh_to_port(lab.servers[server].port, lab.client_key, lab.known_hosts, remote_command)


def ssh_to_port(
    port: int, client_key: Path, known_hosts: Path, remote_command: str = "true"
) -> list[str]:
    """Plain OpenSSH, as a user would type it, to 127.0.0.1:port with this key, trusting only
    this known_hosts file."""
    return [
        "ssh",
        "-p",
        str(port),
        "-i",
        str(client_key),
        "-o",
        f"UserKnownHostsFile={known_hosts}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "IdentitiesOnly=yes",  # like cvtui with an inventory identity: offer that key only
        f"{getpass.getuser()}@127.0.0.1",
        remote_command,
    ]
