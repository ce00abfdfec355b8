"""Fixtures for sync tests: a host root, a home with its catalog, integrity checked at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support import catalog_intact

from cvtui.catalog import Catalog

from .sources import InProcessSource


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def catalog(home: Path) -> Iterator[Catalog]:
    cat = Catalog.open_home(home)
    yield cat
    assert catalog_intact(cat)
    cat.close()


@pytest.fixture
def source(tmp_path: Path) -> InProcessSource:
    return InProcessSource(tmp_path / "host")
