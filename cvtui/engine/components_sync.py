"""Engine side of `cvtui components sync`: compare a host's copy of a code dir with the store."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cvtui.engine.engine import Engine


async def run_components_sync(engine: Engine, command: dict[str, Any]) -> None:
    """Not built yet: the command fails with a clear result instead of staying pending."""
    engine.catalog.finish_command(command["id"], ok=False, result="components sync: not built yet")
