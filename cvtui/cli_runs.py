"""Run commands of the CLI: run, ps, logs, cancel, exec (heavy imports stay inside)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cvtui.errors import CvtuiError
from cvtui.report import short_age

if TYPE_CHECKING:
    from cvtui.catalog import Catalog
    from cvtui.cli import Settings
    from cvtui.inventory import Inventory
    from cvtui.terminal_text import SafeTerminalText

ACTIVE = ("queued", "dispatching", "running")
RECENT_S = 3600.0  # `cvtui ps` without --all also shows runs that ended this long ago
RAW_HELP = "Print the output byte for byte, terminal escape sequences included."


def resolve_run(catalog: Catalog, ref: str) -> dict[str, Any]:
    from cvtui.actions import resolve_run as resolve

    return resolve(catalog, ref)


def settle_runs(settings: Settings, catalog: Catalog, runs: list[dict[str, Any]]) -> None:
    """Without a running engine, ask the hosts of active runs for their news first."""
    from cvtui.engine.lock import lock_holder

    home = settings.home()
    hosts = {r["host"] for r in runs if r["state"] in ("dispatching", "running") and r["host"]}
    if not hosts or lock_holder(home) is not None:
        return
    import asyncio

    from cvtui.local_engine import drive

    inventory = settings.inventory_if_valid()
    if inventory is None:
        return  # the hosts cannot be asked; what the catalog holds is shown as it is
    hosts &= set(inventory.names())

    def settled(engine: Any) -> bool:
        if engine is None:
            return True
        done = engine.runs.reconciled | {
            name
            for name, ev in engine.answered.items()
            if ev.is_set() and not engine.sessions[name].client
        }
        return hosts <= done and not engine.runs.pulls

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
        age = short_age(now - run["submitted"])
        host = (run["host"] or "-")[:10]
        click.echo(
            f"{run['id'][:12]}  {names[run['id']][:width]:{width}} {run['state']:11} {host:10} "
            f"{gpus:7} {progress:9} {age}"
        )


def follow_logs(
    catalog: Catalog,
    home: Path,
    run_ids: list[str],
    stop: Any,
    *,
    prefix: bool,
    raw: bool = False,
) -> None:
    """Copy the mirrored output.log of each run to stdout until stop is set (then drain).

    run_ids may grow while this runs (retries join the followed runs). Escape sequences other
    than colours are dropped unless raw.
    """
    from cvtui.engine.mirror import run_log_path
    from cvtui.terminal_text import SafeTerminalText

    offsets: dict[str, int] = {}
    names: dict[str, str] = {}
    screens: dict[str, SafeTerminalText] = {}
    out = sys.stdout.buffer
    while True:
        final = stop.is_set()
        for run_id in list(run_ids):
            if run_id not in names:
                offsets[run_id] = 0
                names[run_id] = (catalog.get_run(run_id) or {}).get("name", run_id)
            path = run_log_path(home, run_id)
            try:
                with open(path, "rb") as fh:
                    fh.seek(offsets[run_id])
                    data = fh.read()
            except FileNotFoundError:
                continue
            if prefix:
                end = data.rfind(b"\n") + 1  # whole lines only, so prefixes stay in place
                data = data[:end]
                offsets[run_id] += end
            else:
                offsets[run_id] += len(data)
            if not raw:
                data = screens.setdefault(run_id, SafeTerminalText()).feed(data)
            if prefix:
                lines = data.splitlines(keepends=True)
                data = b"".join(f"[{names[run_id]}] ".encode() + line for line in lines)
            if data:
                out.write(data)
                out.flush()
        if final:
            return
        time.sleep(0.1)


def next_attempt(catalog: Catalog, run: dict[str, Any]) -> dict[str, Any] | None:
    """The retry of a failed or lost run, once the engine has queued it."""
    for other in catalog.find_runs(run["name"]):
        if other["submitted"] == run["submitted"] and other["attempt"] == run["attempt"] + 1:
            return other
    return None


def follow_attempts(catalog: Catalog, home: Path, run_ids: list[str]) -> bool:
    """Whether every followed run ended, its retries included and its log mirrored.

    Retries found on the way are appended to run_ids.
    """
    from cvtui.engine.mirror import run_log_path

    for run_id in list(run_ids):
        run = catalog.get_run(run_id)
        if run is None:
            continue
        if run["state"] in ACTIVE:
            return False
        log = run_log_path(home, run_id)
        if (log.stat().st_size if log.exists() else 0) < (run["log_size"] or 0):
            return False
        retrying = run["state"] in ("failed", "lost") and run["attempt"] <= run["retries"]
        if retrying:
            successor = next_attempt(catalog, run)
            if successor is None:
                return False
            if successor["id"] not in run_ids:
                run_ids.append(successor["id"])
                return False
    return True


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
    """Queue the runs of CONFIG (a grid becomes many runs) and dispatch them.

    Prints the run ids. Runs keep going on the hosts after this command exits.
    """

    from cvtui.catalog import Catalog
    from cvtui.submit import prepare_runs, submit

    inventory = settings.inventory()
    specs = prepare_runs(
        config,
        inventory,
        overrides=overrides,
        gpus=gpus,
        priority=priority,
        hosts=hosts,
        max_runs=max_runs,
    )
    home = settings.home()
    if dry_run:
        from cvtui.dry_run import describe_dry_run, plan_dry_run

        with Catalog.open_home(home) as catalog:
            plan = plan_dry_run(specs, inventory, catalog)
        click.echo(json.dumps(plan, indent=2) if as_json else describe_dry_run(plan))
        return
    with Catalog.open_home(home) as catalog:
        run_ids = submit(catalog, home, specs)
        if as_json:
            click.echo(
                json.dumps([{"id": i, "name": s.name} for i, s in zip(run_ids, specs, strict=True)])
            )
        else:
            for run_id, spec in zip(run_ids, specs, strict=True):
                click.echo(f"{run_id}  {spec.name}")

        wait_or_follow(inventory, catalog, home, run_ids, follow=follow, raw=raw)


def wait_or_follow(
    inventory: Inventory,
    catalog: Catalog,
    home: Path,
    run_ids: list[str],
    *,
    follow: bool,
    raw: bool = False,
) -> None:
    """Drive an engine until the runs left the queue; with follow, print their output until
    the last attempt of each ends, then exit with the first failure's code (1 if none).
    Escape sequences other than colours are dropped from the output unless raw."""
    import asyncio
    import threading

    from cvtui.local_engine import drive

    def dispatched(engine: Any) -> bool:
        # A queued run with a host is held in that host's own queue (a pending Slurm job).
        return all(
            (r := catalog.get_run(i)) is None
            or r["state"] not in ("queued", "dispatching")
            or (r["state"] == "queued" and r["host"])
            for i in run_ids
        )

    if not follow:
        asyncio.run(drive(inventory, catalog, home, dispatched))
        return
    followed = list(run_ids)
    stop = threading.Event()
    printer = threading.Thread(
        target=follow_logs,
        args=(catalog, home, followed, stop),
        kwargs={"prefix": len(run_ids) > 1, "raw": raw},
    )
    printer.start()
    try:
        asyncio.run(
            drive(
                inventory,
                catalog,
                home,
                # Until each run ended and its outputs are in: the final syncs finished.
                lambda e: (
                    follow_attempts(catalog, home, followed)
                    and (e is None or not any(i in e.runs.pulls for i in followed))
                ),
            )
        )
    finally:
        stop.set()
        printer.join()
    last = {}  # the last attempt of each submitted run decides the exit code
    for run_id in followed:
        run_row = catalog.get_run(run_id) or {}
        last[(run_row.get("name"), run_row.get("submitted"))] = run_row
    failed = [r.get("exit_code") for r in last.values() if r.get("exit_code")]
    if failed:
        sys.exit(failed[0] if 0 < failed[0] < 256 else 1)
    if any(r.get("state") != "succeeded" for r in last.values()):
        sys.exit(1)


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
    from cvtui.catalog import Catalog
    from cvtui.engine.mirror import run_log_path
    from cvtui.terminal_text import SafeTerminalText

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
                        and (e is None or not e.runs.pulls),
                    )
                )  # fmt: skip
            finally:
                printer.join()


def last_states(data: bytes) -> list[bytes]:
    """The log's lines as a terminal ends up showing them: a line redrawn with \r (a tqdm
    bar) is its last state, not every redraw joined; the unfinished last line is kept."""
    lines = []
    for line in data.split(b"\n"):
        body = line[:-1] if line.endswith(b"\r") else line  # a \r\n line ending
        lines.append(body.rsplit(b"\r", 1)[-1] + b"\n")
    if lines and lines[-1] == b"\n":
        lines.pop()  # the log ended with a newline: no unfinished line after it
    elif lines:
        lines[-1] = lines[-1][:-1]
    return lines


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
    from cvtui.engine.mirror import run_log_path

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
@click.pass_obj
def cancel(settings: Settings, run_refs: tuple[str, ...], all_mine: bool, grace: float) -> None:
    """Cancel runs: queued ones leave the queue, running ones get SIGTERM then SIGKILL."""
    import asyncio
    import getpass

    from cvtui.actions import cancel_runs
    from cvtui.catalog import Catalog
    from cvtui.local_engine import drive

    if not run_refs and not all_mine:
        raise click.UsageError("name at least one RUN, or --all-mine")
    home = settings.home()
    me = getpass.getuser()
    with Catalog.open_home(home) as catalog:
        runs = [resolve_run(catalog, ref) for ref in run_refs]
        if all_mine:
            runs += [r for r in catalog.list_runs(states=list(ACTIVE)) if r["user"] == me]
        commands: dict[str, int] = {}
        for outcome in cancel_runs(catalog, runs, by=me, grace_s=grace):
            if outcome.command_id is None:
                click.echo(f"{outcome.run_id[:12]}  {outcome.name}: {outcome.outcome}")
            else:
                commands[outcome.run_id] = outcome.command_id
        if not commands:
            return

        def ended(engine: Any) -> bool:
            return all(
                (catalog.get_run(i) or {}).get("state") not in ACTIVE
                or (catalog.get_command(c) or {}).get("state") == "failed"
                for i, c in commands.items()
            )

        hosts = sorted({(catalog.get_run(i) or {}).get("host") or "" for i in commands} - {""})
        asyncio.run(
            drive(settings.inventory(), catalog, home, ended, timeout_s=grace + 30, hosts=hosts)
        )
        for run_id, command_id in commands.items():
            run_row = catalog.get_run(run_id) or {}
            command = catalog.get_command(command_id) or {}
            outcome = run_row.get("state")
            if command.get("state") == "failed":
                outcome = f"not cancelled: {command.get('result')}"
            click.echo(f"{run_id[:12]}  {run_row.get('name')}: {outcome}")


def pick_gpus(catalog: Catalog, host: str, count: int) -> list[int]:
    """The count GPUs of host that look free in the last telemetry: idle, then most memory."""
    report = catalog.hosts_report(names=[host])
    gpus = report[0]["gpus"] if report else []
    free = [g for g in gpus if not g["processes"]]
    free.sort(key=lambda g: (-((g["mem_total"] or 0) - (g["mem_used"] or 0)), g["index"]))
    chosen = [g["index"] for g in free[:count]]
    if not gpus:
        chosen = list(range(count))  # nothing known yet: the agent's leases still guard
    if len(chosen) < count:
        raise CvtuiError(f"{host} has {len(chosen)} free GPUs, {count} wanted")
    return chosen


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

    Example: cvtui exec --host gpu-01 --gpus 1 -- nvidia-smi
    """
    import asyncio

    from cvtui.catalog import Catalog
    from cvtui.engine.lock import lock_holder
    from cvtui.exec_relay import exec_via_engine

    inventory = settings.inventory()
    entry = inventory.host(host)
    home = settings.home()
    chosen: list[int] = []
    with Catalog.open_home(home) as catalog:
        if gpus:
            chosen = pick_gpus(catalog, host, gpus)
        if lock_holder(home) is not None:
            # A warm engine has the connection open already: skip connecting from here.
            try:
                code = exec_via_engine(catalog, home, host, list(command), chosen)
            except ConnectionError as exc:
                raise CvtuiError(f"exec on {host}: {exc}") from exc
            if code is not None:
                sys.exit(code)
    from cvtui.engine.remote_exec import exec_on_host

    sys.exit(asyncio.run(exec_on_host(entry, inventory.policy, command, chosen)))


def register(main: click.Group) -> None:
    for command in (run, ps, logs, cancel, exec_command):
        main.add_command(command)
