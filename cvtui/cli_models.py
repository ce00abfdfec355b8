"""`cvtui models` (a registry of synced checkpoints) and `cvtui gc` (the only blob deleter)."""

from __future__ import annotations

import click


@click.group()
def models() -> None:
    """Checkpoints registered by name from runs' synced files."""


def register(main: click.Group) -> None:
    main.add_command(models)
