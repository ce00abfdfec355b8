"""Shared fixtures: a lab of real OpenSSH servers on 127.0.0.1 with simulated GPUs."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cvtui.engine.lock import lock_holder
from cvtui.lab import Lab, LabHostSpec, start_lab


@pytest.fixture(autouse=True)
def stop_background_engines(tmp_path: Path) -> Iterator[None]:
    """Every engine holding a home's lock under this test's tmp_path is stopped at teardown,
    so a detached engine never outlives its test (and its lab)."""
    yield
    pids = []
    for lock in tmp_path.rglob("engine.lock"):
        pid = lock_holder(lock.parent)
        if pid and pid > 0 and pid != os.getpid():
            pids.append(pid)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + 15
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the long fault rounds (marker `faults`) unless the -m expression names them:
    `uv run pytest` runs each fault test's short variant, `-m faults` the long ones."""
    if "faults" in (config.option.markexpr or ""):
        return
    long = [item for item in items if item.get_closest_marker("faults") is not None]
    if long:
        config.hook.pytest_deselected(items=long)
        items[:] = [item for item in items if item.get_closest_marker("faults") is None]


@pytest.fixture
def lab_factory(tmp_path: Path) -> Iterator[Callable[..., Lab]]:
    """Start labs on demand; every sshd is killed (with its sessions) at teardown."""
    labs: list[Lab] = []

    def make(*specs: LabHostSpec, name: str = "lab") -> Lab:
        lab = start_lab(tmp_path / name, specs or (LabHostSpec("gpu-01", gpus=2),))
        labs.append(lab)
        return lab

    yield make
    for lab in labs:
        for server in lab.servers.values():
            server.kill()
        kill_left_behind(lab.directory / "hosts")


def kill_left_behind(directory: Path) -> None:
    """SIGKILL the process groups of what still runs from under directory (a lab's host
    roots): the detached supervisors of runs a failed test never cancelled, which outlive
    sshd by design. Engines (which name the lab's inventory) are stopped apart, politely."""
    me = os.getpgid(0)
    needle = str(directory).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "cmdline").read_bytes():
                continue
            group = os.getpgid(int(entry.name))
        except (OSError, ValueError):
            continue  # gone meanwhile, or not ours to read
        if group != me:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)


@pytest.fixture
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    """Two simulated hosts: gpu-01 with 2 GPUs, gpu-02 with 4."""
    return lab_factory(
        LabHostSpec("gpu-01", gpus=2), LabHostSpec("gpu-02", gpus=4, model="RTX-3090-24GB")
    )


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path
