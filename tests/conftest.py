"""Shared fixtures: a lab of real OpenSSH servers on 127.0.0.1 with simulated GPUs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cvtui.lab import Lab, LabHostSpec, start_lab


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
