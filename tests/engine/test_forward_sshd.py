"""Port forwarding to a run over real sshd: a tiny HTTP server started by a run is fetched
through a port on 127.0.0.1 here, with `cvtui forward` (which stops when the run ends) and with
`Lab.forward`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from support import serving_lab, stop_engine, wait_or_dump, wait_running

import cvtui
from cvtui.errors import CvtuiError
from cvtui.lab import free_port

pytestmark = pytest.mark.sshd


def fetch(url: str, timeout_s: float = 20.0) -> str:
    """The body at url, retried while the run's server is still starting."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.read().decode()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_forward_reaches_a_server_the_run_started(
    lab_factory: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab, api, config, remote = serving_lab(lab_factory, home, tmp_path, monkeypatch)
    [ended] = api.submit(config)
    api.cancel(ended)
    api.wait([ended], timeout=60)
    with pytest.raises(CvtuiError, match=r"\(board\) is cancelled, not running"):
        api.forward(ended, remote)
    [run] = api.submit(config)
    wait_running(api, run)

    # The library: any free local port, in a with-block.
    with api.forward(run, remote, 0) as forward:
        assert forward.local_port not in (0, remote)
        assert forward.url.startswith("http://127.0.0.1:")
        assert fetch(forward.url + "hello.txt") == f"hello from {run.id}"
    assert not forward.active

    # The command: until Ctrl-C.
    local = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVTUI_")}
    env["PYTHONFAULTHANDLER"] = "1"  # a hang at Ctrl-C dumps its threads (see wait_or_dump)
    argv = [sys.executable, "-m", "cvtui.cli", "--home", str(home)]
    argv += ["--inventory", str(lab.inventory_path), "forward", run.id, str(remote)]
    errors = tmp_path / "forward.stderr"
    with errors.open("w") as stderr:
        command = subprocess.Popen(
            [*argv, "--local-port", str(local)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
            # Ctrl-C as at a terminal, even when this test runs in a background job: there
            # the shell ignores SIGINT, children inherit that, and python keeps it ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        assert command.stdout is not None
        said = command.stdout.readline()
        assert said.startswith(f"forwarding http://127.0.0.1:{local}/ -> gpu-01:{remote} ")
        assert fetch(f"http://127.0.0.1:{local}/hello.txt") == f"hello from {run.id}"
        command.send_signal(signal.SIGINT)
        assert wait_or_dump(command, 20, errors) == 0
    finally:
        command.kill()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{local}/hello.txt", timeout=2)

    # ... or until the run ends.
    command = subprocess.Popen(
        [*argv, "--local-port", str(local)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert command.stdout is not None
        assert command.stdout.readline().startswith("forwarding ")
        assert fetch(f"http://127.0.0.1:{local}/hello.txt") == f"hello from {run.id}"
        api.cancel(run, grace_s=1)
        assert command.wait(30) == 0
        assert command.stdout.read() == f"run {run.id[:12]} cancelled: forward closed\n"
    finally:
        command.kill()


def test_a_forward_rides_the_engines_connection_and_has_its_own_without_one(
    lab_factory: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With an engine running, the forward opens no SSH connection of its own (each TCP
    connection goes through the engine's control socket); with none, it logs in itself."""
    import cvtui.engine.forward as forward_module
    from cvtui.engine.lock import lock_holder

    lab, api, config, remote = serving_lab(lab_factory, home, tmp_path, monkeypatch)
    [run] = api.submit(config)
    wait_running(api, run)
    assert api.engine() is not None

    logins: list[str] = []
    real_open = forward_module.open_connection

    async def counted(host: Any, *args: Any, **kwargs: Any) -> Any:
        logins.append(host.name)
        return await real_open(host, *args, **kwargs)

    monkeypatch.setattr(forward_module, "open_connection", counted)
    with api.forward(run, remote, 0) as through_engine:
        for _ in range(3):  # three TCP connections, each its own channel
            assert fetch(through_engine.url + "hello.txt") == f"hello from {run.id}"
    assert logins == []

    # A port nothing listens on: the connection is closed, the forward stays up.
    with api.forward(run, free_port(), 0) as nowhere:
        with pytest.raises(OSError):
            urllib.request.urlopen(nowhere.url, timeout=5)
        assert nowhere.active

    # No engine: the run goes on on its host, and the forward logs in by itself.
    assert lock_holder(home) is not None
    stop_engine(home, 30)
    alone = cvtui.Lab(lab.inventory_path, home)
    assert alone.engine() is None
    with alone.forward(run, remote, 0) as own:
        assert fetch(own.url + "hello.txt") == f"hello from {run.id}"
    assert logins == ["gpu-01"]
    api.cancel(run, grace_s=1)


def test_a_host_whose_sshd_forbids_forwarding_is_refused_at_once_on_both_paths(
    lab_factory: Any, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AllowTcpForwarding no: the forward is refused before it listens, naming why, rather
    than listening and closing every connection made to it."""
    from cvtui.engine.lock import lock_holder
    from cvtui.errors import HostError

    lab, api, config, remote = serving_lab(lab_factory, home, tmp_path, monkeypatch)
    server = lab.servers["gpu-01"]
    server.stop()
    server.extra_config = ("AllowTcpForwarding no",)
    server.start()
    [run] = api.submit(config)
    wait_running(api, run)
    assert api.engine() is not None
    local = free_port()
    with pytest.raises(HostError, match="gpu-01's sshd does not allow TCP forwarding"):
        api.forward(run, remote, local)  # through the engine's connection
    with pytest.raises(OSError):  # nothing was left listening
        urllib.request.urlopen(f"http://127.0.0.1:{local}/", timeout=2)

    assert lock_holder(home) is not None
    stop_engine(home, 30)
    alone = cvtui.Lab(lab.inventory_path, home)
    assert alone.engine() is None
    with pytest.raises(HostError, match="AllowTcpForwarding no"):
        alone.forward(run, remote, 0)  # over a connection of its own
    api.cancel(run, grace_s=1)
