"""`cvtui hosts trust` and strict host keys against real sshd: a changed key never slips in."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import asyncssh
import pytest
import yaml

from cvtui.engine.known_hosts import look_up
from cvtui.lab import Lab, LabHostSpec, generate_key

pytestmark = pytest.mark.sshd


@pytest.fixture
def lab(lab_factory: Callable[..., Lab], tmp_path: Path) -> Lab:
    """One host, and a HOME of its own so that nothing reads or writes the real ~/.ssh."""
    home = tmp_path / "user-home"
    (home / ".ssh").mkdir(parents=True)
    return lab_factory(LabHostSpec("gpu-01", gpus=1), LabHostSpec("other", gpus=1))


def env_for(lab: Lab) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    env.pop("SSH_AUTH_SOCK", None)
    env["HOME"] = str(lab.directory.parent / "user-home")
    return env


def cvtui(lab: Lab, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    return subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env=env_for(lab),
        stdin=subprocess.DEVNULL,
    )


def in_terminal(lab: Lab, *args: str, home: Path, answer: str) -> tuple[int, str]:
    """Run cvtui on a pseudo-terminal, typing answer at its prompt; (exit code, screen)."""
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), *args]
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes cvtui, with the pty as its terminal
        os.execve(sys.executable, argv, env_for(lab))
    screen = b""
    answered = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            screen += chunk
        if not answered and b"Trust this key?" in screen:
            os.write(fd, answer.encode())
            answered = True
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


def key_line(server_pub: str) -> str:
    key_type, key_data = server_pub.split()[:2]
    return f"{key_type} {key_data}"


def hosts_json(lab: Lab, home: Path) -> dict[str, tuple[str, str | None]]:
    done = cvtui(lab, "hosts", "--json", "--timeout", "10", home=home)
    return {h["name"]: (h["state"], h["reason"]) for h in json.loads(done.stdout)}


def trusted_keys(lab: Lab, server: str) -> list[str]:
    """The keys known_hosts trusts for a lab server, as `type base64`."""
    name = f"[127.0.0.1]:{lab.servers[server].port}"
    return [
        entry.key.export_public_key().decode().strip()
        for entry in look_up(name, [lab.known_hosts]).trusted
        if entry.key is not None
    ]


def test_unknown_key_is_recorded_after_a_yes_at_the_terminal(lab: Lab, home: Path) -> None:
    lab.known_hosts.write_text("")
    code, screen = in_terminal(lab, "hosts", "trust", "gpu-01", home=home, answer="n\n")
    assert code == 1 and "SHA256:" in screen and "not trusted; nothing written" in screen
    assert lab.known_hosts.read_text() == ""

    code, screen = in_terminal(lab, "hosts", "trust", "gpu-01", home=home, answer="y\n")
    assert code == 0, screen
    assert f"recorded in {lab.known_hosts}" in screen
    assert trusted_keys(lab, "gpu-01") == [key_line(lab.servers["gpu-01"].host_pub)]
    assert hosts_json(lab, home)["gpu-01"] == ("healthy", None)

    again = cvtui(lab, "hosts", "trust", "gpu-01", home=home)
    assert again.returncode == 0 and "already trusted" in again.stdout


def test_changed_key_is_refused_and_the_file_left_byte_for_byte(lab: Lab, home: Path) -> None:
    port = lab.servers["gpu-01"].port
    wrong = key_line(lab.servers["other"].host_pub)
    # A file as a user has it: comments, another host, a line without a final newline.
    original = (
        f"# lab hosts\n[127.0.0.1]:{lab.servers['other'].port} {wrong}\n[127.0.0.1]:{port} {wrong}"
    ).encode()
    lab.known_hosts.write_bytes(original)

    state, reason = hosts_json(lab, home)["gpu-01"]
    assert state == "error" and reason is not None
    assert reason.startswith(f"host key changed: [127.0.0.1]:{port} is recorded as ssh-ed25519")
    assert f"({lab.known_hosts}:3)" in reason and "--replace" in reason

    refused = cvtui(lab, "hosts", "trust", "gpu-01", "--yes", home=home)
    assert refused.returncode == 4, refused.stderr
    offered = asyncssh.import_public_key(lab.servers["gpu-01"].host_pub).get_fingerprint()
    recorded = asyncssh.import_public_key(wrong).get_fingerprint()
    assert offered in refused.stdout and offered in refused.stderr
    assert recorded in refused.stderr and f"{lab.known_hosts}:3" in refused.stderr
    assert "cvtui hosts trust gpu-01 --replace" in refused.stderr
    assert lab.known_hosts.read_bytes() == original

    # Without a terminal, --replace still wants --yes, and says so; still nothing written.
    unconfirmed = cvtui(lab, "hosts", "trust", "gpu-01", "--replace", home=home)
    assert unconfirmed.returncode == 1
    assert "run: cvtui hosts trust gpu-01 --replace --yes" in unconfirmed.stderr
    assert lab.known_hosts.read_bytes() == original

    replaced = cvtui(lab, "hosts", "trust", "gpu-01", "--replace", "--yes", home=home)
    assert replaced.returncode == 0, replaced.stderr
    assert f"removed {lab.known_hosts}:3" in replaced.stdout
    assert trusted_keys(lab, "gpu-01") == [key_line(lab.servers["gpu-01"].host_pub)]
    text = lab.known_hosts.read_text()
    assert text.startswith(f"# lab hosts\n[127.0.0.1]:{lab.servers['other'].port} {wrong}\n")
    assert Path(f"{lab.known_hosts}.old").read_bytes() == original  # as ssh-keygen -R keeps
    assert hosts_json(lab, home)["gpu-01"] == ("healthy", None)


def test_accept_new_never_replaces_a_changed_key(lab: Lab, home: Path) -> None:
    document = yaml.safe_load(lab.inventory_path.read_text())
    document["policy"]["host_keys"] = "accept-new"
    lab.inventory_path.write_text(yaml.safe_dump(document))
    wrong = key_line(lab.servers["other"].host_pub)
    original = f"[127.0.0.1]:{lab.servers['gpu-01'].port} {wrong}\n".encode()
    lab.known_hosts.write_bytes(original)
    states = hosts_json(lab, home)
    assert states["gpu-01"][0] == "error"
    assert (states["gpu-01"][1] or "").startswith("host key changed")
    assert states["other"] == ("healthy", None)  # new: trusted on first use, and recorded
    assert lab.known_hosts.read_bytes().startswith(original)
    assert trusted_keys(lab, "other") == [key_line(lab.servers["other"].host_pub)]


def test_revoked_key_is_named_and_never_recorded(lab: Lab, home: Path) -> None:
    pub = key_line(lab.servers["gpu-01"].host_pub)
    original = f"@revoked * {pub}\n".encode()
    lab.known_hosts.write_bytes(original)
    trust = cvtui(lab, "hosts", "trust", "gpu-01", "--yes", home=home)
    assert trust.returncode == 4
    assert f"revoked ({lab.known_hosts}:1 marks it @revoked)" in trust.stderr
    assert lab.known_hosts.read_bytes() == original

    # Recorded as well as revoked: revoked wins, for OpenSSH and for cvtui.
    lab.known_hosts.write_bytes(
        original + f"[127.0.0.1]:{lab.servers['gpu-01'].port} {pub}\n".encode()
    )
    state, reason = hosts_json(lab, home)["gpu-01"]
    assert state == "error"
    marked = f"ssh-ed25519 {fingerprint_of(pub)} ({lab.known_hosts}:1) is marked @revoked"
    assert reason == f"host key revoked ({marked})"
    ssh = plain_ssh(lab, "gpu-01")
    assert ssh.returncode == 255 and "REVOKED HOST KEY" in ssh.stderr


def fingerprint_of(pub: str) -> str:
    return asyncssh.import_public_key(pub).get_fingerprint()


def plain_ssh(lab: Lab, server: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "ssh", "-F", "/dev/null", "-p", str(lab.servers[server].port),
            "-i", str(lab.client_key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", f"UserKnownHostsFile={lab.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
            "127.0.0.1", "true",
        ],
        capture_output=True, text=True, timeout=30, env=env_for(lab), stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_host_certificate_from_a_trusted_authority(lab: Lab, home: Path) -> None:
    server = lab.servers["gpu-01"]
    ca = lab.directory / "host_ca"
    ca_pub = generate_key(ca, "lab-host-ca")
    host_key = server.directory / "host_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-s", str(ca), "-I", "gpu-01", "-h", "-n", "127.0.0.1",
         str(host_key) + ".pub"],
        check=True, capture_output=True,
    )  # fmt: skip
    server.stop()
    server.extra_config = (f"HostCertificate {host_key}-cert.pub",)
    server.start()
    # Only the authority is known: no key of the host itself is recorded anywhere.
    lab.known_hosts.write_text(f"@cert-authority [127.0.0.1]:* {key_line(ca_pub)}\n")
    assert plain_ssh(lab, "gpu-01").returncode == 0
    assert hosts_json(lab, home)["gpu-01"] == ("healthy", None)
    trust = cvtui(lab, "hosts", "trust", "gpu-01", home=home)
    assert trust.returncode == 0, trust.stderr
    assert f"already trusted ({lab.known_hosts}:1)" in trust.stdout
    # An authority for other names vouches for nothing here.
    lab.known_hosts.write_text(f"@cert-authority *.example.org {key_line(ca_pub)}\n")
    state, reason = hosts_json(lab, home)["gpu-01"]
    assert state == "error" and reason == "host key unknown (run: cvtui hosts trust gpu-01)"
