"""The `cvtui` command line: every command, `--json` on every listing.

One module per command group (hosts, runs, queue, sync, components, models, reproduce, infer,
demo), each a thin shell over cvtui.api; what they share is in cvtui/cli/settings.py. Heavy modules
(asyncssh, textual, sqlite-utils) are imported inside the commands so that `cvtui --help`
and the read-only commands stay fast.
"""

from __future__ import annotations

import os
import sys

import click

from cvtui.cli import (
    components,
    components_sync,
    demo,
    hosts,
    infer,
    models,
    queue,
    reindex,
    reproduce,
    runs,
    sync,
)
from cvtui.cli.settings import CvtuiGroup, Settings


@click.group(cls=CvtuiGroup, invoke_without_command=True)
@click.option(
    "--inventory",
    "inventory_option",
    metavar="PATH",
    envvar=None,
    help="inventory.yaml to use (default $CVTUI_INVENTORY, then ./inventory.yaml, "
    "then the user config dir).",
)
@click.option(
    "--home",
    "home_option",
    metavar="DIR",
    help="Directory for the catalog and the file mirror (default $CVTUI_HOME, then the "
    "user data dir).",
)
@click.option("-v", "--verbose", count=True, help="Log engine activity to stderr (-vv: debug).")
@click.version_option(package_name="cvtui")
@click.pass_context
def main(
    ctx: click.Context, inventory_option: str | None, home_option: str | None, verbose: int
) -> None:
    """cvtui: your lab's GPU servers as one pool, over nothing but SSH.

    Without a command, opens the dashboard (hosts, queue, runs, stats); it runs the engine
    itself unless `cvtui daemon` already does.
    """
    if verbose:
        import logging

        logging.basicConfig(
            level=logging.DEBUG if verbose > 1 else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s %(message)s",
            stream=sys.stderr,
        )
    ctx.obj = Settings(inventory_option, home_option)
    if ctx.invoked_subcommand is None:
        from cvtui.tui.launch import open_dashboard

        settings: Settings = ctx.obj
        sys.exit(open_dashboard(settings.inventory(), settings.inventory_path(), settings.home()))


for module in (hosts, runs, queue, sync, components, models, reproduce, infer, demo, reindex):
    module.register(main)
components.components.add_command(components_sync.sync)


def console_main() -> None:
    """The `cvtui` command: main, with an unexpected exception turned into one line naming a
    crash log that holds its traceback (exit status 70). CVTUI_TRACEBACK=1 lets it through.

    Tests that call `main` in-process see the exception itself.
    """
    try:
        main()
    except Exception as error:
        if os.environ.get("CVTUI_TRACEBACK"):
            raise
        from cvtui.cli.crash_log import EXIT_INTERNAL_ERROR, one_line, write_crash_log

        path = write_crash_log(error)
        where = f"traceback in {path}" if path else "no crash log could be written"
        click.echo(f"cvtui: internal error: {one_line(error)} ({where})", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)


if __name__ == "__main__":
    console_main()
