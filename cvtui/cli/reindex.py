"""`cvtui reindex`: rebuild a lost or damaged catalog from the hosts' run dirs and the mirror."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from cvtui.units import size

if TYPE_CHECKING:
    from cvtui.cli.settings import Settings
    from cvtui.reindex import ReindexReport


@click.command()
@click.option(
    "--from-mirror-only",
    is_flag=True,
    help="Read no host: rebuild from the local mirror alone (runs keep their last recorded "
    "state, which an engine checks when it reaches their host).",
)
@click.option("--yes", is_flag=True, help="Do not ask before replacing the catalog.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_obj
def reindex(settings: Settings, from_mirror_only: bool, yes: bool, as_json: bool) -> None:
    """Rebuild the catalog's runs, events, files and metrics from the hosts and the mirror.

    For a lost or damaged catalog.db: every reachable host's run dirs (status, config, the
    run's record) and the local mirror (files, metrics parsed again) go into a fresh catalog,
    which then replaces the old one in one rename; the old file is kept as
    catalog.db.bak-<time>. Models, components, blobs and history are copied from the old file
    when it can still be read. Refused while an engine runs on this home.
    """
    from cvtui.reindex import refuse_when_engine_runs
    from cvtui.reindex import reindex as rebuild

    home = settings.home()
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    refuse_when_engine_runs(home)
    inventory = None if from_mirror_only else settings.inventory()
    if not yes:
        hosts = (
            "the local mirror"
            if inventory is None
            else (f"{len(inventory.hosts)} host(s) and the local mirror")
        )
        click.confirm(
            f"Rebuild {home / 'catalog.db'} from {hosts}? (the old file is kept as a backup)",
            abort=True,
        )
    report = rebuild(home, inventory)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        return
    click.echo(summary(report))


def summary(report: ReindexReport) -> str:
    """The report for a person: runs per host, files, values, what could not be restored."""
    lines = [
        f"rebuilt {report.catalog}: {report.runs} runs, {report.files} files, "
        f"{report.metric_values} metric values"
    ]
    for host, count in sorted(report.runs_by_host.items()):
        lines.append(f"  {host}: {count} runs")
    for host, why in sorted(report.unreachable.items()):
        lines.append(f"  {host}: not reached ({why}); its mirrored runs restored from the mirror")
    for host, count in sorted(report.others.items()):
        lines.append(f"  {host}: {count} run dirs of another controller sharing its root, left out")
    if report.kept:
        kept = ", ".join(f"{table} {count}" for table, count in sorted(report.kept.items()))
        lines.append(f"kept from the old catalog: {kept}")
    for problem in report.old_unreadable:
        lines.append(f"not kept from the old catalog: {problem}")
    for problem in report.problems:
        lines.append(f"note: {problem}")
    if report.backup is not None:
        backup_size = report.backup.stat().st_size if report.backup.exists() else 0
        lines.append(f"old catalog kept as {report.backup} ({size(backup_size)})")
    return "\n".join(lines)


def register(main: click.Group) -> None:
    main.add_command(reindex)
