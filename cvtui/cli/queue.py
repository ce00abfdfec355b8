"""Queue and engine commands of the CLI: queue, queue move, daemon, stats."""

from __future__ import annotations

import json
import sys
import time
from typing import TYPE_CHECKING, Any

import click

from cvtui.errors import CvtuiError
from cvtui.states import PRIORITIES
from cvtui.units import duration

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.cli.settings import Settings

NO_ENGINE_NOTE = (
    "no engine is running, so nothing is dispatched and the reasons are from the last one "
    "(start one with `cvtui daemon`)"
)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def queue_rows(catalog: Catalog, now: float) -> list[dict[str, Any]]:
    """Queued runs in the order they will start (the scheduler's order), with why each waits."""
    from cvtui.engine.scheduler import QueuedRun, queue_order

    runs = {run["id"]: run for run in catalog.queued_runs()}
    order = queue_order(
        QueuedRun(run_id=r["id"], priority=r["priority"], submitted=r["submitted"])
        for r in runs.values()
    )
    rows = []
    for position, queued in enumerate(order, start=1):
        run = runs[queued.run_id]
        resources = run["resources"] or {}
        rows.append(
            {
                "position": position,
                "id": run["id"],
                "name": run["name"],
                "project": run["project"],
                "user": run["user"],
                "priority": run["priority"],
                "gpus": int(resources.get("gpus", 0)),
                "min_free_mem": int(resources.get("min_free_mem", 0)),  # bytes per GPU
                "hosts": list(resources.get("hosts", [])),
                "tags": list(resources.get("tags", [])),
                "attempt": run["attempt"],
                "submitted": run["submitted"],
                "waiting_s": max(0.0, now - run["submitted"]),
                "reason": run["reason"],
            }
        )
    return rows


def print_queue(rows: list[dict[str, Any]]) -> None:
    click.echo(
        f"{'#':>4}  {'ID':12}  {'NAME':28} {'PRIORITY':8} {'GPUS':>4} {'USER':10} WAIT   WHY"
    )
    for row in rows:
        why = row["reason"] or "not looked at yet"
        click.echo(
            f"{row['position']:>4}  {row['id'][:12]}  {row['name'][:28]:28} {row['priority']:8} "
            f"{row['gpus']:>4} {(row['user'] or '-')[:10]:10} {duration(row['waiting_s']):6} {why}"
        )


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.pass_context
def queue(ctx: click.Context, as_json: bool) -> None:
    """Queued runs in the order they will start, with why each one waits."""
    if ctx.invoked_subcommand is not None:
        return
    from cvtui.catalog import Catalog
    from cvtui.engine.lock import lock_holder

    settings: Settings = ctx.obj
    home = settings.home()
    settings.inventory_if_valid()  # only to warn while the inventory is invalid
    with Catalog.open_home(home) as catalog:
        rows = queue_rows(catalog, time.time())
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("the queue is empty")
        return
    print_queue(rows)
    if lock_holder(home) is None:
        click.echo(f"note: {NO_ENGINE_NOTE}", err=True)


@queue.command("move")
@click.argument("run_ref", metavar="RUN")
@click.option(
    "--priority", required=True, type=click.Choice(PRIORITIES), help="The run's new priority."
)
@click.pass_obj
def queue_move(settings: Settings, run_ref: str, priority: str) -> None:
    """Give queued RUN a new priority; it moves to its place in the queue at once."""
    from cvtui.actions import resolve_run, set_priority
    from cvtui.catalog import Catalog

    with Catalog.open_home(settings.home()) as catalog:
        run = resolve_run(catalog, run_ref)
        if run["state"] != "queued":
            raise CvtuiError(
                f"run {run['id'][:12]} ({run['name']}) is {run['state']}, not queued: "
                "only queued runs can move"
            )
        set_priority(catalog, run["id"], priority)
        rows = queue_rows(catalog, time.time())
    position = next((r["position"] for r in rows if r["id"] == run["id"]), None)
    where = f", now {_ordinal(position)} of {len(rows)}" if position else ""
    click.echo(f"{run['id'][:12]}  {run['name']}: {run['priority']} -> {priority}{where}")


@click.command()
@click.option(
    "--foreground",
    is_flag=True,
    help="Stay in the foreground. It always does (no forking); unit files say it to be clear.",
)
@click.option(
    "--idle-exit",
    "idle_exit",
    metavar="SECONDS",
    type=click.FloatRange(min=1),
    help="Stop after this long with nothing queued or running and no client "
    "(how `cvtui run` starts one in the background).",
)
@click.option(
    "--metrics",
    metavar="[ADDRESS:]PORT",
    help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics (ADDRESS: 127.0.0.1 "
    "unless given; e.g. 127.0.0.1:9469).",
)
@click.pass_context
def daemon(
    ctx: click.Context, foreground: bool, idle_exit: float | None, metrics: str | None
) -> None:
    """Run the engine headless: dispatch, follow runs, reconnect hosts, reload the inventory.

    Logs one logfmt line per event to stderr (time=... level=... event=... msg=...). SIGTERM
    or SIGINT stop it; runs keep going on the hosts. Only one engine runs per catalog: a
    second one exits 1 naming the pid that holds the lock. For systemd, see the README.
    """
    import logging

    from cvtui.engine.daemon import run_daemon

    settings: Settings = ctx.obj
    verbose = int(ctx.find_root().params.get("verbose") or 0)
    level = logging.DEBUG if verbose > 1 else logging.INFO
    sys.exit(
        run_daemon(
            settings.inventory_path(),
            settings.home(),
            level=level,
            idle_exit_s=idle_exit,
            metrics=metrics,
        )
    )


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    from cvtui.stats import parse_since

    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command()
@click.option(
    "--since",
    "since_s",
    metavar="SPAN",
    callback=_since,
    help="Only runs active in the last SPAN (12h, 7d, 2w); default: all runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object instead of a report.")
@click.pass_obj
def stats(settings: Settings, since_s: float | None, as_json: bool) -> None:
    """Runs by state, average and median duration, GPU-hours by user, host and GPU model,
    how many runs each GPU (host:index) ran, energy (kWh) and idle-held GPU-hours by user,
    and each host's mean GPU utilisation and energy from the telemetry history, and disk
    usage per user from the hosts' latest `disk_usage:` scans."""
    from cvtui.catalog import Catalog
    from cvtui.stats import (
        compute_stats,
        disk_json,
        format_disk,
        format_stats,
        format_usage,
        read_usage_stats,
        stats_json,
        usage_json,
    )

    now = time.time()
    since = None if since_s is None else now - since_s
    settings.inventory_if_valid()  # only to warn while the inventory is invalid
    with Catalog.open_home(settings.home()) as catalog:
        report = compute_stats(
            catalog.run_usage(since, now), catalog.gpu_models(), since=since, now=now
        )
        usage = read_usage_stats(catalog, since, now)
        disk = catalog.disk_usage_by_user()
    if as_json:
        figures = {**stats_json(report), **usage_json(usage), **disk_json(disk)}
        click.echo(json.dumps(figures, indent=2))
    else:
        click.echo(f"{format_stats(report)}\n{format_usage(usage)}\n{format_disk(disk)}")


def register(main: click.Group) -> None:
    for command in (queue, daemon, stats):
        main.add_command(command)
