"""A real single-node Slurm cluster (munged, slurmctld, slurmd from the system's packages) and
its login node (a real sshd), shared by the tests of a module; every daemon is stopped by pid."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cvtui.slurm_lab import SlurmLab, slurm_missing, start_slurm_lab


@pytest.fixture(scope="module")
def slurm_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmLab]:
    why = slurm_missing()
    if why is not None:
        pytest.skip(why)
    lab = start_slurm_lab(tmp_path_factory.mktemp("slurm"))
    try:
        yield lab
    finally:
        lab.stop()


@pytest.fixture
def cluster(slurm_lab: SlurmLab) -> SlurmLab:
    """The module's cluster with no job left running by an earlier test, its controller up."""
    if "slurmctld" not in slurm_lab.cluster.processes:
        slurm_lab.cluster.start_controller()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listed = slurm_lab.cluster.command(["squeue", "--noheader"], check=False).stdout
        if not listed.strip():
            break
        time.sleep(0.2)
    else:
        raise AssertionError(f"jobs of an earlier test are still in the queue: {listed!r}")
    return slurm_lab


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path
