"""Hosts whose login shell prints before every command, as lab rc files do: a banner echoed
from ~/.bashrc on stdout, `stty` complaining on stderr. Real sshd runs each command through
a ForceCommand that prints first, as the shell would. cvtui skips what comes before its own
lines (the agent's hello, the pid line, a send stream's header) and works; when SFTP itself
is broken by the banner (a server whose sftp is sftp-server, run through the shell), the host's
error says so instead of asyncssh's "Max packet size exceeded". So does a server that offers no
SFTP at all."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvtui.lab import Lab, SshServer

pytestmark = pytest.mark.sshd

BANNER = "Welcome to gpu-01 (managed by lab IT; /data is read-only)"
STTY = "stty: 'standard input': Inappropriate ioctl for device"
SFTP_SERVER = next(
    (
        p
        for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server")
        if Path(p).exists()
    ),
    None,
)


def make_noisy(server: SshServer, *, sftp_too: bool = False) -> None:
    """Restart server so that every command first prints BANNER on stdout and STTY on stderr.
    SFTP stays quiet (as internal-sftp, which runs no shell) unless sftp_too: then it is
    sftp-server behind the same noise, as Debian's default config with a noisy ~/.bashrc."""
    assert SFTP_SERVER is not None
    sftp = f'[ "$SSH_ORIGINAL_COMMAND" = internal-sftp ] && exec {SFTP_SERVER}; '
    quiet_sftp = "" if sftp_too else sftp
    noise = f"echo {BANNER!r}; echo {STTY!r} >&2; "
    run = f'{sftp}eval "$SSH_ORIGINAL_COMMAND"'
    server.stop()
    server.extra_config = (f"ForceCommand {quiet_sftp}{noise}{run}",)
    server.start()


def cvtui(
    lab: Lab, home: Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home), "--inventory"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    return subprocess.run(
        [*argv, str(lab.inventory_path), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


needs_sftp_server = pytest.mark.skipif(SFTP_SERVER is None, reason="needs OpenSSH's sftp-server")


@needs_sftp_server
def test_a_banner_and_stty_noise_are_skipped_and_runs_work(
    lab_factory: Any, home: Path, tmp_path: Path
) -> None:
    lab = lab_factory()
    make_noisy(lab.servers["gpu-01"])
    # The shell really is noisy: a plain command shows it, as ssh would.
    shown = cvtui(lab, home, "exec", "--host", "gpu-01", "--", "echo", "hi")
    assert (shown.returncode, shown.stdout) == (0, f"{BANNER}\nhi\n"), shown.stderr
    assert STTY in shown.stderr

    hosts = cvtui(lab, home, "hosts", "--json")
    assert hosts.returncode == 0, hosts.stdout + hosts.stderr
    [host] = json.loads(hosts.stdout)
    assert host["state"] == "healthy", host

    # A run end to end: started by the agent, its output and a 12 MiB checkpoint (streamed whole
    # through `cat` on a noisy channel) synced back.
    code = tmp_path / "project"
    code.mkdir()
    (code / "train.py").write_text(
        "import os\nprint('training', flush=True)\n"
        "open('model.pt', 'wb').write(os.urandom(12 << 20))\n"
        "open('metrics.csv', 'w').write('step,loss\\n0,1.0\\n1,0.5\\n')\n"
    )
    config = code / "run.yaml"
    config.write_text(yaml.safe_dump({"name": "noisy", "command": "python3 train.py"}))
    done = cvtui(lab, home, "run", str(config), "--host", "gpu-01", "--follow", timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training" in done.stdout
    [run] = json.loads(cvtui(lab, home, "ps", "--all", "--json").stdout)
    assert run["state"] == "succeeded"
    # The engine that ran it says what the shell prints, as the host's warning.
    [host] = json.loads(cvtui(lab, home, "hosts", "--json").stdout)
    assert host["state"] == "healthy"
    assert f"its login shell prints {BANNER!r}" in (host["reason"] or ""), host
    remote = lab.host_dir("gpu-01") / "root" / "runs" / run["id"] / "work" / "model.pt"
    local = home / "runs" / run["id"] / "model.pt"
    assert local.read_bytes() == remote.read_bytes()
    metrics = cvtui(lab, home, "metrics", run["id"], "--json")
    assert metrics.returncode == 0, metrics.stderr
    assert [row["loss"] for row in json.loads(metrics.stdout)] == [1.0, 0.5]

    # doctor says what the shell prints, as a warning, and passes.
    doctor = cvtui(lab, home, "doctor", "gpu-01")
    assert doctor.returncode == 0, doctor.stdout
    [line] = [line for line in doctor.stdout.splitlines() if "login shell" in line]
    assert line.startswith("WARN") and BANNER[:20] in line


@needs_sftp_server
async def test_a_killable_process_finds_its_pid_behind_stderr_noise(lab_factory: Any) -> None:
    from cvtui.engine.connections import open_connection
    from cvtui.engine.deploy import KillableProcess, killable_command
    from cvtui.inventory import load_inventory

    lab = lab_factory()
    make_noisy(lab.servers["gpu-01"])
    inventory = load_inventory(lab.inventory_path)
    marker = lab.directory / "sleeping"
    async with await open_connection(inventory.host("gpu-01"), inventory.policy) as conn:
        process = KillableProcess(
            await conn.create_process(
                killable_command(["sh", "-c", f"touch {marker}; exec sleep 300"]), encoding=None
            )
        )
        pid = await process.read_pid(10)
        assert pid is not None and process.stderr_lines == [STTY]
        for _ in range(100):
            if marker.exists():
                break
            await asyncio.sleep(0.05)
        await process.stop(conn)
    for _ in range(100):  # its process group is gone
        if subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail(f"process {pid} survived stop()")


@needs_sftp_server
def test_sftp_broken_by_the_banner_is_named_with_what_the_shell_prints(
    lab_factory: Any, home: Path
) -> None:
    lab = lab_factory()
    make_noisy(lab.servers["gpu-01"], sftp_too=True)
    hosts = cvtui(lab, home, "hosts")
    assert hosts.returncode != 0
    assert f"its login shell prints {BANNER!r} before every command" in hosts.stdout + hosts.stderr
    assert "Max packet size" not in hosts.stdout + hosts.stderr
    doctor = cvtui(lab, home, "doctor", "gpu-01")
    last = doctor.stdout.splitlines()[-1]
    assert last.startswith("FAIL") and "sftp" in last and BANNER[:20] in last


def test_a_server_without_sftp_is_named_as_such(lab_factory: Any, home: Path) -> None:
    """An sshd_config with no `Subsystem sftp` line: commands run, SFTP is refused."""
    lab = lab_factory()
    server = lab.servers["gpu-01"]
    server.stop()
    write = server.write_config

    def without_sftp() -> None:
        write()
        text = server.config_path.read_text().replace("Subsystem sftp internal-sftp\n", "")
        server.config_path.write_text(text)

    server.write_config = without_sftp  # type: ignore[method-assign]
    server.start()
    hosts = cvtui(lab, home, "hosts")
    assert hosts.returncode != 0
    assert "its server runs commands but refuses SFTP" in hosts.stdout, hosts.stdout
    assert "Subsystem sftp" in hosts.stdout and "ChannelOpenError" not in hosts.stdout
