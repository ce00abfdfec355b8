"""Dashboard fixtures: the sample lab's catalog, and the dashboard over it with a fixed clock."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sample_lab import NOW, build_catalog, inventory

from cvtui.catalog import Catalog
from cvtui.tui.app import DashboardApp


@pytest.fixture
def utc() -> Iterator[None]:
    """Clock times on screen in UTC, so snapshots do not depend on the machine's zone."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    yield
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


@pytest.fixture
def lab_catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = build_catalog(tmp_path / "home")
    yield catalog
    catalog.close()


@pytest.fixture
def make_app(lab_catalog: Catalog, utc: None) -> Callable[..., DashboardApp]:
    """A dashboard over the sample lab, reading at once after every commit."""

    def make(**kwargs: object) -> DashboardApp:
        options: dict[str, object] = {"clock": lambda: NOW, "refresh_s": 0.02, "poll_s": 0.02}
        options.update(kwargs)
        return DashboardApp(inventory(), lab_catalog, **options)  # type: ignore[arg-type]

    return make
