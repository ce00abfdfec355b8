"""A lab of real OpenSSH servers on 127.0.0.1 with simulated GPUs, for `cvtui demo` and the tests.

Each simulated host is one `sshd -D` process with its own host key and port, logging the current
user in with a generated key. Hosts differ by their agent root and leases dir, so several of them
on one machine behave like separate GPU servers.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from cvtui.errors import CvtuiError

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/usr/bin/sshd")


@dataclass(frozen=True)
class LabHostSpec:
    """One simulated GPU server of the lab."""

    name: str
    gpus: int = 4
    model: str = "A100-SXM4-80GB"
    tags: tuple[str, ...] = ()


DEMO_HOSTS = (
    LabHostSpec("gpu-01", gpus=4, model="A100-SXM4-80GB", tags=("a100",)),
    LabHostSpec("gpu-02", gpus=8, model="RTX-3090-24GB", tags=("3090",)),
    LabHostSpec("gpu-03", gpus=2, model="H100-SXM5-80GB", tags=("h100",)),
)


def _die_with_parent() -> None:
    """In the forked sshd: ask Linux to SIGTERM it when the process that started it dies.

    This way a demo or test killed with SIGKILL leaves no servers behind.
    """
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def find_sshd() -> str:
    """Path of the OpenSSH server binary, or a CvtuiError saying how to install it."""
    found = shutil.which("sshd")
    candidates = ([found] if found else []) + list(SSHD_CANDIDATES)
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise CvtuiError(
        "OpenSSH server not found (sshd): install it, e.g. `apt-get install openssh-server`"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def generate_key(path: Path, comment: str) -> str:
    """Write a new ed25519 key pair at path (+ .pub) and return the public key line."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return path.with_suffix(".pub").read_text().strip()


def descendants(pid: int) -> list[int]:
    """Pids of every live descendant of pid, read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        # Fields after the parenthesised command name: state, ppid, ...
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def known_hosts_line(port: int, host_pub: str) -> str:
    key_type, key_data = host_pub.split()[:2]
    return f"[127.0.0.1]:{port} {key_type} {key_data}"


@dataclass
class SshServer:
    """One real `sshd -D` on a loopback port; stop/kill/start keep the same port and host key."""

    name: str
    directory: Path
    authorized_keys: Path
    port: int = 0
    host_pub: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_level: str = "ERROR"  # DEBUG logs each forwarded connection (a jump host's hops)
    extra_config: tuple[str, ...] = ()  # more sshd_config lines (HostCertificate, ...)
    # The lab's own limits are generous; OpenSSH's defaults are "10:30:100" and 10.
    max_startups: str = "200:30:400"
    max_sessions: int = 200

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        host_key = self.directory / "host_key"
        if not host_key.exists():
            self.host_pub = generate_key(host_key, f"cvtui-lab-{self.name}")
        else:
            self.host_pub = host_key.with_suffix(".pub").read_text().strip()
        if not self.port:
            self.port = free_port()

    @property
    def config_path(self) -> Path:
        return self.directory / "sshd_config"

    def write_config(self) -> None:
        self.config_path.write_text(
            "\n".join(
                [
                    f"ListenAddress 127.0.0.1:{self.port}",
                    f"HostKey {self.directory / 'host_key'}",
                    f"AuthorizedKeysFile {self.authorized_keys}",
                    "PidFile none",
                    "StrictModes no",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin prohibit-password",
                    "Subsystem sftp internal-sftp",
                    f"MaxSessions {self.max_sessions}",
                    f"MaxStartups {self.max_startups}",
                    "ClientAliveInterval 0",
                    f"LogLevel {self.log_level}",
                    *self.extra_config,
                    "",
                ]
            )
        )

    def start(self, timeout_s: float = 10.0) -> None:
        if self.process and self.process.poll() is None:
            return
        self.write_config()
        if os.geteuid() == 0:
            # sshd running as root insists on its privilege separation directory.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        with open(self.directory / "sshd.log", "ab") as log:
            self.process = subprocess.Popen(
                [find_sshd(), "-D", "-e", "-f", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.directory / "sshd.log").read_text(errors="replace")[-800:]
                raise CvtuiError(f"sshd for {self.name} exited at start: {tail.strip()}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        raise CvtuiError(f"sshd for {self.name} did not listen on port {self.port}")

    def kill(self) -> None:
        """End the server and every session it forked, as a host going down would.

        sshd puts each connection in a session of its own, so the listener's process group is
        not enough: every descendant is found through /proc and killed too. Detached run
        supervisors re-parent to init and survive, as they would a dropped network.
        """
        if self.process is None:
            return
        for pid in [self.process.pid, *descendants(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self.kill()
        self.process = None


@dataclass
class Lab:
    """Several simulated GPU hosts behind real sshd, plus the client files that reach them."""

    directory: Path
    client_key: Path
    known_hosts: Path
    inventory_path: Path
    servers: dict[str, SshServer] = field(default_factory=dict)

    def host_dir(self, name: str) -> Path:
        return self.directory / "hosts" / name

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def lab_host_entry(lab_dir: Path, server: SshServer, spec: LabHostSpec, client_key: Path) -> dict:
    host_dir = lab_dir / "hosts" / spec.name
    entry: dict = {
        "address": "127.0.0.1",
        "port": server.port,
        "identity": str(client_key),
        "root": str(host_dir / "root"),
        "leases_dir": str(host_dir / "leases"),
        "simulate": {"gpus": spec.gpus, "model": spec.model},
    }
    if spec.tags:
        entry["tags"] = list(spec.tags)
    return entry


def start_lab(directory: Path, specs: tuple[LabHostSpec, ...] = DEMO_HOSTS) -> Lab:
    """Start one sshd per spec under directory and write inventory.yaml + known_hosts there."""
    directory.mkdir(parents=True, exist_ok=True)
    client_key = directory / "client_key"
    client_pub = generate_key(client_key, "cvtui-lab-client")
    authorized_keys = directory / "authorized_keys"
    authorized_keys.write_text(client_pub + "\n")
    authorized_keys.chmod(0o600)
    known_hosts = directory / "known_hosts"
    lab = Lab(directory, client_key, known_hosts, directory / "inventory.yaml")
    try:
        for spec in specs:
            server = SshServer(spec.name, lab.host_dir(spec.name) / "sshd", authorized_keys)
            server.start()
            lab.servers[spec.name] = server
    except BaseException:
        lab.stop()
        raise
    known_hosts.write_text(
        "".join(known_hosts_line(s.port, s.host_pub) + "\n" for s in lab.servers.values())
    )
    hosts = {
        spec.name: lab_host_entry(directory, lab.servers[spec.name], spec, client_key)
        for spec in specs
    }
    inventory = {
        "defaults": {"user": getpass.getuser(), "known_hosts": str(known_hosts)},
        "policy": {"interval": "1s", "stale_after": "5s", "disconnected_after": "30s"},
        "hosts": hosts,
    }
    lab.inventory_path.write_text(
        "# Written by cvtui's lab: simulated GPU hosts behind real sshd on loopback.\n"
        + yaml.safe_dump(inventory, sort_keys=False)
    )
    return lab
