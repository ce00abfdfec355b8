"""Fixtures shared by the agent tests that start real runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from run_harness import kill_runs


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """An agent root whose runs are killed when the test ends, however it ends."""
    path = tmp_path / "root"
    yield path
    kill_runs(path)
