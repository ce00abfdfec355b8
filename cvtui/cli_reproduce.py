"""`cvtui reproduce`: queue a run again with the exact code, config and env it ran with."""

from __future__ import annotations

import click


def register(main: click.Group) -> None:
    """Adds `reproduce` to the main group."""
