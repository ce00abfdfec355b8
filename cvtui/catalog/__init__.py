"""The catalog: the SQLite file shared by the engine (writer) and the CLI and TUI (readers)."""

from cvtui.catalog.hosts_admin import HostRow
from cvtui.catalog.runs import (
    ACTIVE_STATES,
    FINAL_STATES,
    PRIORITIES,
    RUN_STATES,
    new_run_id,
    priority_rank,
)
from cvtui.catalog.schema import CatalogError
from cvtui.catalog.store import HOST_STATES, Catalog

__all__ = [
    "ACTIVE_STATES",
    "FINAL_STATES",
    "HOST_STATES",
    "PRIORITIES",
    "RUN_STATES",
    "Catalog",
    "CatalogError",
    "HostRow",
    "new_run_id",
    "priority_rank",
]
