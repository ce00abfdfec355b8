"""~/.ssh/config as users write it: wherever `ssh -F config ALIAS` works, `cvtui hosts` works,
and where OpenSSH fails, cvtui fails with the reason named. HOME is a temporary directory:
no test reads or writes the real ~/.ssh."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cvtui.lab import Lab, LabHostSpec, free_port, generate_key

pytestmark = pytest.mark.sshd


@dataclass
class SshWorld:
    """A temporary HOME with .ssh/, a lab of real sshd, and a cvtui home."""

    home: Path  # $HOME
    lab: Lab
    cvtui_home: Path

    @property
    def ssh_dir(self) -> Path:
        return self.home / ".ssh"

    @property
    def config(self) -> Path:
        return self.ssh_dir / "config"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
        env.pop("SSH_AUTH_SOCK", None)  # the developer's agent is not part of the test
        env["HOME"] = str(self.home)
        return env

    def host_block(self, alias: str, server: str, *extra: str, port: int | None = None) -> str:
        """A config block for alias -> the lab server, with absolute paths (OpenSSH expands ~
        from the password file, not $HOME, so ~ would mean the real home for `ssh -F`)."""
        lines = [
            f"Host {alias}",
            "  HostName 127.0.0.1",
            f"  Port {port or self.lab.servers[server].port}",
            f"  User {os.environ.get('USER') or 'root'}",
            f"  IdentityFile {self.lab.client_key}",
            "  IdentitiesOnly yes",
            f"  UserKnownHostsFile {self.known_hosts}",
            *(f"  {line}" for line in extra),
        ]
        return "\n".join(lines) + "\n"

    def ssh(self, alias: str) -> subprocess.CompletedProcess[str]:
        """OpenSSH itself, with the same config file, never asking anything."""
        return subprocess.run(
            ["ssh", "-F", str(self.config), "-o", "BatchMode=yes", alias, "echo", "ssh-ok"],
            capture_output=True,
            text=True,
            timeout=30,
            env=self.env(),
            stdin=subprocess.DEVNULL,
        )

    def inventory(self, **hosts: dict[str, object]) -> Path:
        """An inventory that names hosts by ssh alias only (no port, user, key or known_hosts)."""
        lab_dir = self.lab.directory
        entries = {}
        for name, entry in hosts.items():
            entries[name] = {
                "root": str(lab_dir / "hosts" / "gpu-01" / "root"),
                "leases_dir": str(lab_dir / "hosts" / "gpu-01" / "leases"),
                "simulate": {"gpus": 1},
                **entry,
            }
        path = self.home / "inventory.yaml"
        path.write_text(yaml.safe_dump({"hosts": entries}))
        return path

    def cvtui(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "cvtui.cli", "--home", str(self.cvtui_home)]
        argv += ["--inventory", str(self.home / "inventory.yaml"), *args]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            stdin=subprocess.DEVNULL,
        )

    def hosts(self, *names: str) -> dict[str, tuple[str, str | None]]:
        done = self.cvtui("hosts", "--json", "--timeout", "10")
        assert done.stdout, done.stderr
        report = {h["name"]: (h["state"], h["reason"]) for h in json.loads(done.stdout)}
        return {name: report[name] for name in names}


@pytest.fixture
def world(lab_factory: Callable[..., Lab], tmp_path: Path) -> SshWorld:
    lab = lab_factory(LabHostSpec("gpu-01", gpus=1), LabHostSpec("bastion", gpus=1))
    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    cvtui_home = tmp_path / "cvtui-home"
    cvtui_home.mkdir(mode=0o700)
    world = SshWorld(home, lab, cvtui_home)
    world.known_hosts.write_text(lab.known_hosts.read_text())
    return world


def healthy_both_ways(world: SshWorld, alias: str) -> None:
    done = world.ssh(alias)
    assert done.returncode == 0 and "ssh-ok" in done.stdout, done.stderr
    world.inventory(gpu=dict(address=alias))
    assert world.hosts("gpu") == {"gpu": ("healthy", None)}


def failing_both_ways(world: SshWorld, alias: str, openssh_says: str, reason: str) -> str:
    done = world.ssh(alias)
    assert done.returncode == 255 and openssh_says in done.stderr, done.stderr
    world.inventory(gpu=dict(address=alias))
    state, got = world.hosts("gpu")["gpu"]
    assert state in ("error", "disconnected")
    assert got is not None and got.startswith(reason), got
    return got


def test_alias_with_port_user_and_identity(world: SshWorld) -> None:
    world.config.write_text(world.host_block("labalias", "gpu-01"))
    healthy_both_ways(world, "labalias")
    doctor = world.cvtui("doctor", "gpu")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    port = world.lab.servers["gpu-01"].port
    user = os.environ.get("USER") or "root"
    assert f" ok  ssh config       labalias -> {user}@127.0.0.1:{port} (from " in doctor.stdout
    assert "HostName, Port, User, IdentityFile, UserKnownHostsFile)" in doctor.stdout
    assert " ok  resolve          127.0.0.1 -> 127.0.0.1" in doctor.stdout
    # An inventory port still wins over the config, as `ssh -p` would.
    unused = free_port()
    world.inventory(gpu=dict(address="labalias", port=unused))
    refused = f"connection refused by 127.0.0.1:{unused} (no sshd listening there?)"
    assert world.hosts("gpu") == {"gpu": ("disconnected", refused)}


def test_included_file(world: SshWorld) -> None:
    included = world.ssh_dir / "config.d" / "lab.conf"
    included.parent.mkdir()
    included.write_text(world.host_block("included", "gpu-01"))
    world.config.write_text(f"Include {included.parent}/*.conf\n")
    healthy_both_ways(world, "included")


def test_match_host_block(world: SshWorld) -> None:
    block = world.host_block("matched", "gpu-01").replace("Host matched", "Match host matched")
    world.config.write_text(block)
    healthy_both_ways(world, "matched")


def direct_tcpip_to(log: Path, port: int) -> int:
    """How many forwarded connections to 127.0.0.1:port the jump sshd logged."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return sum(
        1
        for line in text.splitlines()
        if "server_request_direct_tcpip" in line and line.rstrip().endswith(f"port {port}")
    )


def test_proxyjump_through_a_second_sshd(world: SshWorld) -> None:
    bastion = world.lab.servers["bastion"]
    bastion.stop()
    bastion.log_level = "DEBUG"  # it then logs each direct-tcpip channel it opens
    bastion.start()
    target = world.lab.servers["gpu-01"]
    world.config.write_text(
        world.host_block("jumpbox", "bastion")
        # The target as the jump host sees it; a port only the jump host's side can reach
        # would do as well, the log proves the hop either way.
        + world.host_block("behind", "gpu-01", "ProxyJump jumpbox")
    )
    log = bastion.directory / "sshd.log"
    healthy_both_ways(world, "behind")
    assert direct_tcpip_to(log, target.port) >= 2  # once for ssh, at least once for cvtui

    before = direct_tcpip_to(log, target.port)
    world.inventory(gpu=dict(address="labalias-none", jump="jumpbox"))
    world.config.write_text(
        world.host_block("jumpbox", "bastion") + world.host_block("labalias-none", "gpu-01")
    )
    assert world.hosts("gpu") == {"gpu": ("healthy", None)}
    assert direct_tcpip_to(log, target.port) > before  # the inventory's jump: key was used

    doctor = world.cvtui("doctor", "gpu")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    assert "jump 1 jumpbox" in doctor.stdout
    assert "via jumpbox" in doctor.stdout


def test_jump_host_failure_names_the_hop(world: SshWorld) -> None:
    bastion = world.lab.servers["bastion"]
    world.config.write_text(
        world.host_block("jumpbox", "bastion")
        + world.host_block("behind", "gpu-01", "ProxyJump jumpbox")
    )
    bastion.kill()
    reason = failing_both_ways(
        world, "behind", "Connection refused", "jump host jumpbox failed (hop 1 of 1"
    )
    assert f"connection refused by 127.0.0.1:{bastion.port}" in reason


def test_host_key_alias(world: SshWorld) -> None:
    pub = world.lab.servers["gpu-01"].host_pub.split()
    world.known_hosts.write_text(f"gpu-key-name {pub[0]} {pub[1]}\n")
    world.config.write_text(world.host_block("aliased", "gpu-01", "HostKeyAlias gpu-key-name"))
    healthy_both_ways(world, "aliased")
    # Without the alias, the same known_hosts vouches for nothing: both refuse.
    world.config.write_text(world.host_block("aliased", "gpu-01"))
    failing_both_ways(world, "aliased", "Host key verification failed", "host key unknown")


def test_hashed_known_hosts(world: SshWorld) -> None:
    subprocess.run(
        ["ssh-keygen", "-H", "-f", str(world.known_hosts)], check=True, capture_output=True
    )
    assert "[127.0.0.1]" not in world.known_hosts.read_text()
    world.config.write_text(world.host_block("hashed", "gpu-01"))
    healthy_both_ways(world, "hashed")


def test_key_recorded_without_the_port(world: SshWorld) -> None:
    # OpenSSH, finding nothing for [host]:port, accepts a matching key recorded for plain
    # host; a different key there is not "changed", the host is simply not known.
    pub = world.lab.servers["gpu-01"].host_pub.split()
    world.known_hosts.write_text(f"127.0.0.1 {pub[0]} {pub[1]}\n")
    world.config.write_text(world.host_block("portless", "gpu-01"))
    healthy_both_ways(world, "portless")
    other = world.lab.servers["bastion"].host_pub.split()
    world.known_hosts.write_text(f"127.0.0.1 {other[0]} {other[1]}\n")
    failing_both_ways(world, "portless", "Host key verification failed", "host key unknown")


def test_named_failures_where_openssh_fails(world: SshWorld) -> None:
    stranger = world.home / "stranger_key"
    generate_key(stranger, "not-authorized")
    closed = world.lab.servers["bastion"]
    closed.kill()
    world.config.write_text(
        world.host_block("nokey", "gpu-01").replace(str(world.lab.client_key), str(stranger))
        + world.host_block("closed", "bastion")
        + world.host_block("nowhere", "gpu-01").replace("127.0.0.1", "no-such-host.invalid")
    )
    reason = failing_both_ways(world, "nokey", "Permission denied", "auth failed as ")
    assert "tried publickey with stranger_key" in reason
    failing_both_ways(
        world, "closed", "Connection refused", f"connection refused by 127.0.0.1:{closed.port}"
    )
    failing_both_ways(
        world, "nowhere", "Could not resolve hostname", "cannot resolve no-such-host.invalid (DNS"
    )


def test_broken_config_is_the_hosts_error_with_file_and_line(world: SshWorld) -> None:
    world.config.write_text(world.host_block("labalias", "gpu-01") + "  Port notanumber\n")
    world.inventory(gpu=dict(address="labalias"))
    state, reason = world.hosts("gpu")["gpu"]
    assert state == "error"
    assert reason is not None and f"{world.config} line 8: Invalid Port" in reason, reason


def test_trust_walks_the_jump_hosts_first(world: SshWorld) -> None:
    world.known_hosts.write_text("")
    world.config.write_text(
        world.host_block("jumpbox", "bastion")
        + world.host_block("behind", "gpu-01", "ProxyJump jumpbox")
    )
    world.inventory(gpu=dict(address="behind"))
    bastion_port = world.lab.servers["bastion"].port
    assert world.hosts("gpu") == {
        "gpu": (
            "error",
            f"jump host jumpbox failed (hop 1 of 1, 127.0.0.1:{bastion_port}): "
            "host key unknown (run: cvtui hosts trust gpu)",
        )
    }
    trust = world.cvtui("hosts", "trust", "gpu", "--yes")
    assert trust.returncode == 0, trust.stderr
    lines = trust.stdout.splitlines()
    assert lines[0].startswith("jump host jumpbox (hop 1 of 1) (jumpbox = ")
    assert lines[1] == f"  recorded in {world.known_hosts}"
    assert lines[2].startswith("gpu (behind = ")
    assert lines[3] == f"  recorded in {world.known_hosts}"
    assert world.hosts("gpu") == {"gpu": ("healthy", None)}
    done = world.ssh("behind")  # OpenSSH reads what cvtui recorded
    assert done.returncode == 0, done.stderr


async def test_config_options_reach_the_connection(
    world: SshWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In-process: the same files, read through $HOME; Ciphers from the config is used, and
    without it cvtui's own order (AES-GCM first) applies."""
    from cvtui.engine.connections import open_connection
    from cvtui.inventory import Host, Policy

    monkeypatch.setenv("HOME", str(world.home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    world.config.write_text(
        world.host_block("plain", "gpu-01")
        + world.host_block("picky", "gpu-01", "Ciphers aes256-ctr")
    )
    for alias, cipher in (("plain", "aes128-gcm@openssh.com"), ("picky", "aes256-ctr")):
        async with await open_connection(Host(name="gpu", address=alias), Policy()) as conn:
            assert conn.get_extra_info("send_cipher") == cipher
            assert conn.get_extra_info("username") == (os.environ.get("USER") or "root")
