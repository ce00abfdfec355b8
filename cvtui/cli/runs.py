"""Run commands of the CLI: run, ps, logs, cancel, exec, shell (heavy imports stay inside)."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import click

from cvtui.errors import CvtuiError
from cvtui.states import ACTIVE_STATES, PRIORITIES
from cvtui.units import duration

if TYPE_CHECKING:
    from cvtui.api import Lab
    from cvtui.catalog import Catalog
    from cvtui.cli.settings import Settings
    from cvtui.terminal_text import SafeTerminalText

ACTIVE = ACTIVE_STATES
RAW_HELP = "Print the output byte for byte, terminal escape sequences included."


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
@click.option("--priority", type=click.Choice(PRIORITIES), help="Queue priority.")
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
    from cvtui.submit import repeated_runs

    for warning in repeated_runs(specs):
        click.echo(f"warning: {warning}", err=True)
    submitted = lab.submit_specs(specs)
    if as_json:
        click.echo(json.dumps([s.as_json() for s in submitted]))
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
    settings.inventory_if_valid()  # only to warn while the inventory is invalid
    runs = settings.lab().ps(all=show_all)
    if as_json:
        click.echo(json.dumps(runs, indent=2))
    else:
        print_runs(runs, time.time())


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
    from cvtui.mirror import run_log_path
    from cvtui.terminal_text import SafeTerminalText

    home = settings.home()
    inventory = settings.inventory_if_valid()  # warns once while the inventory is invalid
    lab = settings.lab()
    catalog = lab.catalog
    run_row = lab.resolve(run_ref)
    data = lab.log_bytes(run_row, tail=tail)  # asks the run's host first when no engine runs
    path = run_log_path(home, run_row["id"])
    screen = None if raw else SafeTerminalText()
    sys.stdout.buffer.write(data if screen is None else screen.feed(data))
    sys.stdout.buffer.flush()
    run_row = catalog.get_run(run_row["id"]) or run_row
    if not follow or run_row["state"] not in ACTIVE:
        return
    import asyncio
    import threading

    from cvtui.engine.lock import lock_holder
    from cvtui.local_engine import drive

    size = path.stat().st_size if path.exists() else 0
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
@click.option(
    "-t",
    "--tty",
    is_flag=True,
    help="Run it in a terminal on the host (htop, a shell, a debugger): keys go to it as typed.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
def exec_command(
    settings: Settings, host: str, gpus: int, tty: bool, command: tuple[str, ...]
) -> None:
    """Run COMMAND on HOST now, output streamed; exits with its exit code.

    Through the running engine's open connection when there is one. GPUs (--gpus N) are
    picked by the scheduler's rules and leased on the host for the command. Piped or
    redirected stdin is the command's stdin; a terminal is not read (it gets end of file)
    unless -t gives the command a terminal of its own on the host, sized as this one and
    following its resizes (stdout and stderr are then one stream).
    Examples: cvtui exec --host gpu-01 --gpus 1 -- nvidia-smi;
    cvtui exec -t --host gpu-01 -- htop
    """
    lab = settings.lab()
    if tty:
        sys.exit(_interactive(lab, host, list(command), gpus))
    stdin = None if sys.stdin is None or sys.stdin.isatty() else _unbuffered_stdin()
    sys.exit(lab.exec_streamed(host, list(command), gpus=gpus, stdin=stdin))


_LOGIN_SHELL = 'exec "${SHELL:-/bin/sh}" -l'  # the user's own shell, as a login would start it
# `cd` into the dir given (a run's work dir), or say it is gone; then the login shell.
_SHELL_IN = 'cd -- "$1" 2>/dev/null || echo "cvtui: $1 is not there" >&2; ' + _LOGIN_SHELL


@click.command()
@click.argument("target", metavar="HOST|RUN")
@click.pass_obj
def shell(settings: Settings, target: str) -> None:
    """A login shell on HOST, or on the host of RUN in its work dir, in this terminal.

    A host name wins over a run of the same name. Through the running engine's connection
    when there is one; on a Slurm cluster it is an interactive job step (srun --pty).
    Exits with the shell's exit code. Example: cvtui shell sweep[lr=0.1]
    """
    lab = settings.lab()
    if target in lab.inventory.names():
        host, argv = target, ["sh", "-c", _LOGIN_SHELL]
    else:
        run = lab.resolve(target)
        if not run.get("host"):
            raise CvtuiError(f"run {run['id'][:12]} ({run['name']}) has no host yet")
        host = str(run["host"])
        where = run.get("work_dir") or ""
        argv = ["sh", "-c", _SHELL_IN, "sh", where] if where else ["sh", "-c", _LOGIN_SHELL]
    sys.exit(_interactive(lab, host, argv, 0))


def _interactive(lab: Lab, host: str, argv: list[str], gpus: int) -> int:
    """argv on host in a terminal of its own, this one in raw mode meanwhile: its exit code."""
    from cvtui.exec_terminal import Term, raw_mode

    feed = _unbuffered_stdin()
    with raw_mode(feed.fileno() if feed is not None else -1):
        return lab.exec_streamed(host, argv, gpus=gpus, stdin=feed, term=Term.local())


def _unbuffered_stdin() -> BinaryIO | None:
    """stdin without sys.stdin's buffer: the thread feeding the command may still be blocked
    reading it when the command has ended, and a buffered reader's lock held at exit aborts
    the interpreter ("could not acquire lock ... at interpreter shutdown")."""
    if sys.stdin is None:
        return None
    try:
        return open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    except (OSError, ValueError):
        return None


def register(main: click.Group) -> None:
    for command in (run, ps, logs, cancel, exec_command, shell):
        main.add_command(command)
