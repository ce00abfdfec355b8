"""The catalog: the SQLite file shared by the engine (writer) and the CLI and TUI (readers)."""

from cvtui.catalog.schema import CatalogError
from cvtui.catalog.store import HOST_STATES, Catalog, HostRow

__all__ = ["HOST_STATES", "Catalog", "CatalogError", "HostRow"]
