"""Every way a connection fails gets a reason a user would search for (no server needed)."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import asyncssh
import pytest

from cvtui.engine.connections import classify_error
from cvtui.inventory import Host

HOST = Host(name="gpu-07", address="10.9.9.9", port=2222)
WHERE = "10.9.9.9:2222"


@pytest.fixture(autouse=True)
def own_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # the real ~/.ssh/config is not read


@pytest.mark.parametrize(
    ("error", "state", "reason"),
    [
        (
            TimeoutError(),
            "disconnected",
            f"timeout: no SSH answer from {WHERE} within 10 s (host down, firewalled or "
            "unreachable)",
        ),
        (
            asyncssh.ConnectionLost("Login timeout expired"),
            "disconnected",
            f"timeout: no SSH answer from {WHERE} within 10 s (host down, firewalled or "
            "unreachable)",
        ),
        (
            OSError(errno.EHOSTUNREACH, "No route to host"),
            "disconnected",
            f"no route to {WHERE} (No route to host)",
        ),
        (
            OSError(errno.ENETUNREACH, "Network is unreachable"),
            "disconnected",
            f"no route to {WHERE} (Network is unreachable)",
        ),
        (
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"),
            "disconnected",
            f"connection refused by {WHERE} (no sshd listening there?)",
        ),
        (
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "error",
            "cannot resolve 10.9.9.9 (DNS: Name or service not known)",
        ),
        (
            socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution"),
            "disconnected",
            "cannot resolve 10.9.9.9 (DNS: Temporary failure in name resolution)",
        ),
        (asyncssh.ConnectionLost("Connection lost"), "disconnected", "connection lost"),
    ],
)
def test_failures_are_named(error: BaseException, state: str, reason: str) -> None:
    failure = classify_error(HOST, error)
    assert (failure.state, failure.reason) == (state, reason)
    assert str(failure) == f"gpu-07: {reason}"
