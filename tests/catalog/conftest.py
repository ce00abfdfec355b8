"""Fixtures for catalog tests: a real catalog file per test, and integrity at the end."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import catalog_intact

from cvtui.catalog import Catalog


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    return tmp_path / "catalog.db"


@pytest.fixture
def catalog(catalog_path: Path) -> Iterator[Catalog]:
    cat = Catalog(catalog_path)
    yield cat
    assert catalog_intact(cat)
    cat.close()


@pytest.fixture(autouse=True)
def _every_database_intact(tmp_path: Path) -> Iterator[None]:
    """Whatever a test did, every SQLite file it left behind passes integrity_check."""
    yield
    for path in sorted(tmp_path.rglob("*.db")):
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], path
        finally:
            conn.close()
