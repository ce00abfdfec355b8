"""What every command module shares: the global options, the lab they open, one-line errors.

Command modules import this, never each other. Heavy modules (asyncssh, textual, sqlite-utils)
are imported inside the commands so that `cvtui --help` and the read-only commands stay fast.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cvtui.errors import CvtuiError

if TYPE_CHECKING:
    from cvtui.api import Lab
    from cvtui.inventory import Inventory

EXIT_HOSTS_DOWN = 3


@dataclass
class Settings:
    """What the global options resolved to; paths are resolved only when a command needs them."""

    inventory_option: str | None
    home_option: str | None
    # What inventory_if_valid found, so that its warning is printed once per command.
    _checked: bool = field(default=False, init=False, repr=False)
    _valid: Inventory | None = field(default=None, init=False, repr=False)
    _lab: Lab | None = field(default=None, init=False, repr=False)

    def inventory_path(self) -> Path:
        from cvtui.inventory import default_inventory_path

        return default_inventory_path(self.inventory_option)

    def inventory(self) -> Inventory:
        return self.lab().inventory

    def inventory_if_valid(self) -> Inventory | None:
        """For commands that read the catalog (ps, logs, queue, stats): the inventory, or None
        while its file is invalid, said once in one warning line on stderr. A missing file
        is no news to these commands and goes unmentioned."""
        if not self._checked:
            from cvtui.errors import InventoryError, InventoryErrors

            self._checked = True
            try:
                self._valid = self.inventory()
            except InventoryError as error:
                if self.inventory_path().exists():
                    more = len(error.errors) - 1 if isinstance(error, InventoryErrors) else 0
                    first = f"{error.path}:{error.line}:{error.column}: {error.problem}"
                    if error.line is None:
                        first = f"{error.path}: {error.problem}"
                    extra = f" (and {more} more)" if more else ""
                    click.echo(
                        f"cvtui: warning: inventory not usable, showing the catalog as it is: "
                        f"{first}{extra}",
                        err=True,
                    )
        return self._valid

    def home(self) -> Path:
        return self.lab().home

    def lab(self) -> Lab:
        """The lab these options name (opened once per command, closed at exit)."""
        if self._lab is None:
            from cvtui.api import Lab

            self._lab = Lab(self.inventory_option, self.home_option)
        return self._lab

    def close(self) -> None:
        if self._lab is not None:
            self._lab.close()


def printable(path: str) -> str:
    """A file name fit for one line: control characters (a newline in a name) escaped."""
    return path if path.isprintable() else repr(path)[1:-1]


def fail(error: CvtuiError) -> NoReturn:
    click.echo(f"cvtui: {error}", err=True)
    sys.exit(error.exit_code)


class CvtuiGroup(click.Group):
    """Prints CvtuiError on one line and exits with its code, never a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CvtuiError as error:
            fail(error)
        except Exception as error:
            from cvtui.catalog.store import damaged_catalog

            damaged = damaged_catalog(error)  # met past the check at open (a large catalog)
            if damaged is None:
                raise
            fail(damaged)
        finally:
            settings = ctx.obj
            if isinstance(settings, Settings):
                settings.close()
