"""`cvtui reproduce`: queue a run again with the exact code, config and env it ran with."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from cvtui.cli import Settings


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--host", metavar="HOST", help="Run the reproduction on this host only.")
@click.option(
    "--dry-run", is_flag=True, help="Show the provenance and what would be queued; queue nothing."
)
@click.option(
    "--follow", "-f", is_flag=True, help="Stream the output until it ends; exit with its code."
)
@click.pass_obj
def reproduce(
    settings: Settings, run_ref: str, host: str | None, dry_run: bool, follow: bool
) -> None:
    """Queue RUN again with its exact code, resolved config, command and env.

    Every file version it ran with must still be in the content store, intact: otherwise
    nothing is queued and the missing or corrupt file is named. Prints the new run id.
    """
    import asyncio

    from cvtui.actions import resolve_run
    from cvtui.catalog import Catalog
    from cvtui.local_engine import drive
    from cvtui.repro.reproduce import describe, plan_reproduction, queue_reproduction

    inventory = settings.inventory() if host is not None or not dry_run else None
    home = settings.home()
    with Catalog.open_home(home) as catalog:
        source = resolve_run(catalog, run_ref)
        plan = plan_reproduction(
            catalog,
            home,
            source,
            host=host,
            known_hosts=inventory.names() if inventory is not None else None,
        )
        if dry_run:
            click.echo(describe(plan, dry_run=True))
            return
        assert inventory is not None
        run_id = queue_reproduction(catalog, home, plan)
        click.echo(f"{run_id}  {plan.row['name']}")
        if not follow:

            def dispatched(engine: Any) -> bool:
                row = catalog.get_run(run_id)
                return row is None or row["state"] not in ("queued", "dispatching")

            asyncio.run(drive(inventory, catalog, home, dispatched))
            return
        import threading

        from cvtui.cli_runs import follow_attempts, follow_logs

        followed = [run_id]
        stop = threading.Event()
        printer = threading.Thread(
            target=follow_logs, args=(catalog, home, followed, stop), kwargs={"prefix": False}
        )
        printer.start()
        try:
            asyncio.run(
                drive(inventory, catalog, home, lambda e: follow_attempts(catalog, home, followed))
            )
        finally:
            stop.set()
            printer.join()
        last = catalog.get_run(followed[-1]) or {}  # the last attempt decides the exit code
        code = last.get("exit_code")
        if code:
            sys.exit(code if 0 < code < 256 else 1)
        if last.get("state") != "succeeded":
            sys.exit(1)


def register(main: click.Group) -> None:
    """Adds `reproduce` to the main group."""
    main.add_command(reproduce)
