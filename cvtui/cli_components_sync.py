"""`cvtui components sync`: reconcile a host's copy of a code dir with the content store."""

from __future__ import annotations

import click


def register(group: click.Group) -> None:
    """Adds `sync` to the `components` group."""
