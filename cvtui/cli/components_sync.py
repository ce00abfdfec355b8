"""`cvtui components sync`: reconcile a host's copy of a code dir with the content store."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from cvtui.cli.settings import printable
from cvtui.errors import CvtuiError, HostError
from cvtui.repro.sync_plan import DECISIONS, STRATEGIES

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.cli.settings import Settings

EXPLAIN = {
    "store_only": "in the store, missing on the host",
    "store_newer": "the host has an older version",
    "host_newer": "edited on the host",
    "host_only": "only on the host",
}


def code_dir_of(catalog: Catalog, directory: str | None) -> str:
    """The scanned code dir to sync: --dir, else the one holding the current directory."""
    from cvtui.repro.components import code_root, resolve_component

    if directory is None:
        return resolve_component(catalog, ".")[0]
    root = code_root(directory)
    if root not in catalog.component_roots():
        raise CvtuiError(
            f"{root} has no versions in the store yet (run: cvtui components scan {directory})"
        )
    return root


def run_sync_command(settings: Settings, catalog: Catalog, args: dict[str, Any]) -> dict[str, Any]:
    """Submit one components_sync command, drive an engine until it finishes; its result."""
    import asyncio

    from cvtui.local_engine import drive

    host = args["host"]
    command_id = catalog.submit_command("components_sync", args)

    def finished(engine: object) -> bool:
        return (catalog.get_command(command_id) or {}).get("state") != "pending"

    asyncio.run(drive(settings.inventory(), catalog, settings.home(), finished, hosts=[host]))
    command = catalog.get_command(command_id) or {}
    result = command.get("result")
    if not isinstance(result, dict):
        raise CvtuiError(f"components sync on {host} failed: {result}")
    if result.get("host_down"):
        raise HostError(host, str(result.get("reason") or "not connected"))
    if "items" not in result:
        raise CvtuiError(f"components sync on {host} failed: {result.get('error')}")
    return result


def conflicts(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The paths that differ (a result lists only those; `same` counts the others)."""
    return [item for item in result["items"] if item["conflict"] != "same"]


def ask_decisions(result: dict[str, Any]) -> dict[str, str]:
    """One prompt per conflict (on stderr): keep the store's version, the host's, or neither."""
    click.echo(
        "store: the host gets the store's version (host edits are kept in the store)", err=True
    )
    click.echo(
        "host:  the store and your code dir take the host's version; skip: leave it", err=True
    )
    decisions = {}
    for item in conflicts(result):
        conflict = item["conflict"]
        question = f"{item['path']} ({conflict}: {EXPLAIN.get(conflict, conflict)})"
        decisions[item["path"]] = click.prompt(
            question, type=click.Choice(DECISIONS), default="skip", err=True
        )
    return decisions


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def print_table(result: dict[str, Any], *, err: bool = False) -> None:
    """The paths that differ, what was done about each, and a summary line."""
    rows = conflicts(result)
    same = result.get("same", 0)
    where = f"{result['host']}:{result['remote_dir']}"
    if not rows:
        click.echo(f"{where}: {plural(same, 'file')}, all the same as the store", err=err)
        return
    width = max(len("PATH"), *(len(printable(r["path"])) for r in rows))
    click.echo(f"{'PATH'.ljust(width)}  {'CONFLICT':11}  ACTION", err=err)
    for row in rows:
        line = f"{printable(row['path']).ljust(width)}  {row['conflict']:11}  {row['action']}"
        if row.get("error"):
            line += f"  (failed: {row['error']})"
        click.echo(line, err=err)
    summary = f"{where}: {plural(len(rows), 'conflict')}, {plural(same, 'file')} the same"
    if result.get("imported"):
        summary += f", {plural(result['imported'], 'host version')} imported into the store"
    click.echo(summary, err=err)
    for skipped in result.get("skipped", []):
        click.echo(f"not synced: {printable(skipped['path'])} ({skipped['reason']})", err=True)


@click.command("sync")
@click.option("--host", "host_name", required=True, metavar="HOST", help="Inventory host.")
@click.option(
    "--dir",
    "directory",
    metavar="DIR",
    help="Local code dir (scanned). Default: the scanned dir holding the current directory.",
)
@click.option(
    "--remote-dir",
    metavar="PATH",
    help="The host's copy. Default: <host root>/workspace/<name of the code dir>.",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="server-authoritative",
    show_default=True,
    help="Who wins a conflict; dry-run changes nothing; interactive asks per file.",
)
@click.option("--exclude", multiple=True, metavar="GLOB", help="Host files to leave out.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@click.pass_obj
def sync(
    settings: Settings,
    host_name: str,
    directory: str | None,
    remote_dir: str | None,
    strategy: str,
    exclude: tuple[str, ...],
    as_json: bool,
) -> None:
    """Reconcile HOST's working copy of a code dir with the content store.

    Files edited on the host (or only there) are first imported into the store as versions,
    so nothing is lost. server-authoritative: the host becomes the store's active set.
    local-priority: host edits become active and are written into the local code dir.
    Exits 1 when a file could not be synced.
    """
    from cvtui.catalog import Catalog

    settings.inventory().host(host_name)  # UnknownHostError for a name it does not list
    with Catalog.open_home(settings.home()) as catalog:
        args: dict[str, Any] = {
            "host": host_name,
            "root": code_dir_of(catalog, directory),
            "remote_dir": remote_dir,
            "exclude": list(exclude),
        }
        if strategy != "interactive":
            result = run_sync_command(settings, catalog, {**args, "strategy": strategy})
        else:
            result = run_sync_command(settings, catalog, {**args, "strategy": "dry-run"})
            if conflicts(result):
                print_table(result, err=True)
                args["decisions"] = ask_decisions(result)
                result = run_sync_command(settings, catalog, {**args, "strategy": strategy})
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        print_table(result)
    if any(item.get("error") for item in result["items"]):
        sys.exit(1)
