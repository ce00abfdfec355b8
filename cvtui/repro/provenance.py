"""Run provenance: what a run needs to be reproduced, recorded at submit and at dispatch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.engine.engine import HostSession
    from cvtui.engine.scheduler import Placement


def record_dispatch(
    catalog: Catalog,
    run: dict[str, Any],
    session: HostSession,
    placement: Placement,
    command: str | Sequence[str],
) -> None:
    """The host half of a run's provenance and its file manifest, once it has started."""
    if run.get("code_hash"):
        catalog.write_run_manifest(run["id"], run["code_hash"])
