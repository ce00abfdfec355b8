"""Run commands of the CLI: run, ps, logs, cancel, exec (heavy imports stay inside)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cvtui.states import ACTIVE_STATES
from cvtui.units import duration

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.cli.settings import Settings
    from cvtui.cli.terminal_text import SafeTerminalText

ACTIVE = ACTIVE_STATES
RECENT_S = 3600.0  # `cvtui ps` without --all also shows runs that ended this long ago
RAW_HELP = "Print the output byte for byte, terminal escape sequences included."


def settle_runs(settings: Settings, catalog: Catalog, runs: list[dict[str, Any]]) -> None:
    """Ask the hosts of active runs for their news first: through the running engine when
    there is one, else over connections of our own."""
    from cvtui.engine.lock import lock_holder

    home = settings.home()
    hosts = {r["host"] for r in runs if r["state"] in ("dispatching", "running") and r["host"]}
    if not hosts:
        return
    if lock_holder(home) is not None:
        from cvtui.engine.client import EngineClient
        from cvtui.errors import CvtuiError

        engine = EngineClient.find(home)
        running = [r["id"] for r in runs if r["state"] == "running" and r["host"]]
        if engine is not None and running:
            with contextlib.suppress(OSError, CvtuiError):  # the catalog is shown as it is
                engine.request("refresh", run_ids=running, timeout_s=10, wait_s=15)
        return
    import asyncio

    from cvtui.local_engine import drive

    inventory = settings.inventory_if_valid()
    if inventory is None:
        return  # the hosts cannot be asked; what the catalog holds is shown as it is
    hosts &= set(inventory.names())

    def settled(engine: Any) -> bool:
        return engine is None or bool(engine.hosts_settled(hosts))

    asyncio.run(drive(inventory, catalog, home, settled, timeout_s=15, hosts=sorted(hosts)))


def print_runs(runs: list[dict[str, Any]], now: float) -> None:
    from cvtui.run_names import display_names

    names = display_names(runs)
    width = min(max([32, *(len(n) for n in names.values())]), 60)  # the names as shown fit
    header = f"{'ID':12}  {'NAME':{width}} {'STATE':11} {'HOST':10} {'GPUS':7} {'PROGRESS':9} AGE"
    click.echo(header)
    for run in runs:
        gpus = ",".join(str(g) for g in run["gpus"] or []) or "-"
        progress = "-" if run["progress"] is None else f"{run['progress']:.0f}%"
        if run["state"] in ("failed",) and run["exit_code"] is not None:
            progress = f"exit {run['exit_code']}"
        age = duration(now - run["submitted"])
        host = (run["host"] or "-")[:10]
        click.echo(
            f"{run['id'][:12]}  {names[run['id']][:width]:{width}} {run['state']:11} {host:10} "
            f"{gpus:7} {progress:9} {age}"
        )


@click.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--host", "hosts", multiple=True, metavar="HOST", help="Run only on this host (repeatable)."
)
@click.option(
    "--gpus",
    type=click.IntRange(min=0),
    help="GPUs per run (overrides resources.gpus; default 1, 0: CPU only).",
)
@click.option(
    "--priority", type=click.Choice(["urgent", "high", "normal", "low"]), help="Queue priority."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a param before the grid is expanded.",
)
@click.option(
    "--dry-run", is_flag=True, help="Show the runs, their placement and commands; start nothing."
)
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Stream the output until the runs end; exit with the run's code.",
)
@click.option("--raw", is_flag=True, help=f"With --follow: {RAW_HELP[0].lower()}{RAW_HELP[1:]}")
@click.option("--json", "as_json", is_flag=True, help="Print the submitted runs as JSON.")
@click.option(
    "--max-runs",
    type=click.IntRange(min=1),
    metavar="N",
    help="Allow a grid of up to N runs (default: the inventory's policy.max_grid).",
)
@click.pass_obj
def run(
    settings: Settings,
    config: str,
    hosts: tuple[str, ...],
    gpus: int | None,
    priority: str | None,
    overrides: tuple[str, ...],
    dry_run: bool,
    follow: bool,
    raw: bool,
    as_json: bool,
    max_runs: int | None,
) -> None:
    """Queue the runs of CONFIG (a grid becomes many runs) and hand them to the engine.

    Prints each run id with where it went or why it waits, and returns: the runs go on
    without this command. With no engine running for this home, one is started in the
    background (the same as `cvtui daemon`, logging to <home>/engine.log); it stops by
    itself once idle. A run that no host could ever hold is refused, nothing queued.
    """
    lab = settings.lab()
    specs = lab.prepare(
        config,
        overrides=overrides,
        hosts=hosts,
        gpus=gpus,
        priority=priority,
        max_runs=max_runs,
    )
    if dry_run:
        from cvtui.dry_run import describe_dry_run, plan_dry_run

        plan = plan_dry_run(specs, lab.inventory, lab.catalog)
        click.echo(json.dumps(plan, indent=2) if as_json else describe_dry_run(plan))
        return
    submitted = lab.submit_specs(specs)
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "id": s.id,
                        "name": s.name,
                        "state": s.state,
                        "host": s.host,
                        "gpus": list(s.gpus),
                        "reason": s.reason,
                    }
                    for s in submitted
                ]
            )
        )
    else:
        for item in submitted:
            click.echo(f"{item.id}  {item.name}  {item.where()}")
    if follow:
        from cvtui.cli.follow import follow_runs

        follow_runs(lab, [s.id for s in submitted], raw=raw)


@click.command()
@click.option("--all", "show_all", is_flag=True, help="Every run, not only active and recent ones.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
@click.pass_obj
def ps(settings: Settings, show_all: bool, as_json: bool) -> None:
    """Runs: id, name, state, host, GPUs, progress, age."""
    from cvtui.catalog import Catalog

    settings.inventory_if_valid()  # only to warn while the inventory is invalid
    with Catalog.open_home(settings.home()) as catalog:
        settle_runs(settings, catalog, catalog.list_runs(states=["dispatching", "running"]))
        now = time.time()
        runs = catalog.list_runs(newest_first=False)
        if not show_all:
            runs = [r for r in runs if r["state"] in ACTIVE or (r["ended"] or now) > now - RECENT_S]
        if as_json:
            keys = (
                "id", "name", "project", "user", "state", "priority", "host", "gpus", "progress",
                "progress_msg", "exit_code", "reason", "submitted", "started", "ended", "command",
                "params",
            )  # fmt: skip
            click.echo(json.dumps([{k: r[k] for k in keys} for r in runs], indent=2))
        else:
            print_runs(runs, now)


@click.command()
@click.argument("run_ref", metavar="RUN")
@click.option("--follow", "-f", is_flag=True, help="Keep printing as the run writes.")
@click.option(
    "--tail", "tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines."
)
@click.option("--raw", is_flag=True, help=RAW_HELP)
@click.pass_obj
def logs(settings: Settings, run_ref: str, follow: bool, tail: int | None, raw: bool) -> None:
    """Output of RUN (stdout and stderr as the run wrote them).

    Colours and carriage returns are printed; other terminal escape sequences the run wrote
    (window title, clipboard, cursor movement) are dropped unless --raw.
    """
    from cvtui.actions import resolve_run
    from cvtui.catalog import Catalog
    from cvtui.cli.follow import last_states
    from cvtui.cli.terminal_text import SafeTerminalText
    from cvtui.mirror import run_log_path

    home = settings.home()
    settings.inventory_if_valid()  # only to warn while the inventory is invalid
    with Catalog.open_home(home) as catalog:
        run_row = resolve_run(catalog, run_ref)
        settle_runs(settings, catalog, [run_row])
        path = run_log_path(home, run_row["id"])
        data = path.read_bytes() if path.exists() else b""
        if tail is not None:
            lines = last_states(data)
            data = b"".join(lines[-tail:]) if tail else b""
        screen = None if raw else SafeTerminalText()
        sys.stdout.buffer.write(data if screen is None else screen.feed(data))
        sys.stdout.buffer.flush()
        run_row = catalog.get_run(run_row["id"]) or run_row
        if follow and run_row["state"] in ACTIVE:
            import asyncio
            import threading

            from cvtui.engine.lock import lock_holder
            from cvtui.local_engine import drive

            size = path.stat().st_size if path.exists() else 0
            inventory = settings.inventory_if_valid()
            if inventory is None:
                # No hosts to reach from here: follow what a running engine brings, if any.
                def engine_runs() -> bool:
                    return lock_holder(home) is not None

                _follow_from(catalog, home, run_row["id"], size, screen, engine_runs)
                return
            printer = threading.Thread(
                target=_follow_from, args=(catalog, home, run_row["id"], size, screen)
            )
            printer.start()
            try:
                asyncio.run(
                    drive(
                        inventory, catalog, home,
                        lambda e: (catalog.get_run(run_row["id"]) or {}).get("state") not in ACTIVE
                        and (e is None or not e.syncing()),
                    )
                )  # fmt: skip
            finally:
                printer.join()


def _follow_from(
    catalog: Catalog,
    home: Path,
    run_id: str,
    offset: int,
    screen: SafeTerminalText | None,
    keep_following: Callable[[], bool] = lambda: True,
) -> None:
    """Print what the run's mirrored log gains from offset until the run ended and its log
    is all here, or keep_following() is false; through screen (the filter for a terminal)
    unless it is None (--raw)."""
    from cvtui.mirror import run_log_path

    path = run_log_path(home, run_id)
    while True:
        if path.exists():
            with open(path, "rb") as fh:
                fh.seek(offset)
                data = fh.read()
            if data:
                offset += len(data)
                sys.stdout.buffer.write(data if screen is None else screen.feed(data))
                sys.stdout.buffer.flush()
        run_row = catalog.get_run(run_id)
        if run_row is None or (
            run_row["state"] not in ACTIVE and offset >= (run_row["log_size"] or 0)
        ):
            return
        if not keep_following():
            return
        time.sleep(0.1)


@click.command()
@click.argument("run_refs", metavar="RUN...", nargs=-1)
@click.option("--all-mine", is_flag=True, help="Cancel every active run you submitted.")
@click.option(
    "--grace", default=10.0, show_default=True, metavar="SECONDS", help="SIGTERM to SIGKILL delay."
)
@click.option("--wait", is_flag=True, help="Wait until each run has ended, and say how.")
@click.pass_obj
def cancel(
    settings: Settings, run_refs: tuple[str, ...], all_mine: bool, grace: float, wait: bool
) -> None:
    """Cancel runs: queued ones leave the queue, running ones get SIGTERM then SIGKILL.

    Returns once the engine acted on each (the signal is sent); a run on a host that cannot
    be reached now is cancelled when it is back. --wait waits for the ends.
    """
    if not run_refs and not all_mine:
        raise click.UsageError("name at least one RUN, or --all-mine")
    lab = settings.lab()
    results = lab.cancel(run_refs, grace_s=grace, all_mine=all_mine)
    for result in results:
        click.echo(f"{result.id[:12]}  {result.name}: {result.outcome}")
    if wait:
        for row in lab.wait([r.id for r in results], timeout_s=grace + 60):
            click.echo(f"{row['id'][:12]}  {row['name']}: {row['state']}")


@click.command(
    "exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.option("--host", required=True, metavar="HOST", help="Where to run it.")
@click.option(
    "--gpus", type=click.IntRange(min=0), default=0, help="GPUs to lease for the command."
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_command(settings: Settings, host: str, gpus: int, command: tuple[str, ...]) -> None:
    """Run COMMAND on HOST now, output streamed; exits with its exit code.

    Through the running engine's open connection when there is one. GPUs (--gpus N) are
    picked by the scheduler's rules and leased on the host for the command.
    Example: cvtui exec --host gpu-01 --gpus 1 -- nvidia-smi
    """
    sys.exit(settings.lab().exec(host, list(command), gpus=gpus))


def register(main: click.Group) -> None:
    for command in (run, ps, logs, cancel, exec_command):
        main.add_command(command)
