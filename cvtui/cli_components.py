"""`cvtui components`: the versions of every file of a code dir, kept in the content store."""

from __future__ import annotations

import click


@click.group()
def components() -> None:
    """Every version of every file of your code dirs: scan, list, history, show, activate, sync."""


def register(main: click.Group) -> None:
    from cvtui import cli_components_sync

    main.add_command(components)
    cli_components_sync.register(components)
