"""`cvtui reproduce`: queue a run again with the exact code, config and env it ran with."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from cvtui.cli.settings import Settings


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--host", metavar="HOST", help="Run the reproduction on this host only.")
@click.option(
    "--dry-run", is_flag=True, help="Show the provenance and what would be queued; queue nothing."
)
@click.option(
    "--follow", "-f", is_flag=True, help="Stream the output until it ends; exit with its code."
)
@click.option(
    "--raw", is_flag=True, help="With --follow: the output byte for byte, escapes included."
)
@click.pass_obj
def reproduce(
    settings: Settings, run_ref: str, host: str | None, dry_run: bool, follow: bool, raw: bool
) -> None:
    """Queue RUN again with its exact code, resolved config, command and env.

    Every file version it ran with must still be in the content store, intact: otherwise
    nothing is queued and the missing or corrupt file is named. Prints the new run id.
    """

    from cvtui.actions import resolve_run
    from cvtui.repro.reproduce import describe, plan_reproduction, queue_reproduction

    lab = settings.lab()
    inventory = lab.inventory if host is not None or not dry_run else None
    catalog, home = lab.catalog, lab.home
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
    run_id = queue_reproduction(catalog, home, plan)
    (submitted,) = lab.hand_over([run_id])
    click.echo(f"{run_id}  {plan.row['name']}  {submitted.where()}")
    if follow:
        from cvtui.cli.follow import follow_runs

        follow_runs(lab, [run_id], raw=raw)


def register(main: click.Group) -> None:
    """Adds `reproduce` to the main group."""
    main.add_command(reproduce)
