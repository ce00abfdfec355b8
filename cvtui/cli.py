"""The `cvtui` command line: every command, `--json` on every listing.

Heavy modules (asyncssh, textual, sqlite-utils) are imported inside the commands so that
`cvtui --help` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from cvtui.errors import CvtuiError

if TYPE_CHECKING:
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

    def inventory_path(self) -> Path:
        from cvtui.inventory import default_inventory_path

        return default_inventory_path(self.inventory_option)

    def inventory(self) -> Inventory:
        from cvtui.inventory import load_inventory

        return load_inventory(self.inventory_path())

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
        from cvtui.paths import home_dir

        return home_dir(self.home_option)


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


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option(
    "--timeout",
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for each host's first telemetry when no engine is running.",
)
@click.pass_context
def hosts(ctx: click.Context, as_json: bool, timeout: float) -> None:
    """Every host of the inventory: its state and its GPUs.

    Exits 0 when every host answered, 3 when any is in error or disconnected.
    """
    if ctx.invoked_subcommand is not None:
        return
    from cvtui.hosts_command import collect_hosts_report
    from cvtui.report import format_hosts

    settings: Settings = ctx.obj
    report = collect_hosts_report(settings.inventory(), settings.home(), timeout)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_hosts(report))
    if any(h["state"] in ("error", "disconnected", "connecting") for h in report):
        sys.exit(EXIT_HOSTS_DOWN)


@hosts.command("trust")
@click.argument("host")
@click.option("--yes", is_flag=True, help="Record a new key without asking.")
@click.option(
    "--replace",
    is_flag=True,
    help="Replace a CHANGED key: remove the recorded one (as `ssh-keygen -R` does, keeping "
    "FILE.old) and record the one offered now.",
)
@click.option("--timeout", default=10.0, show_default=True, metavar="SECONDS", help="Per server.")
@click.pass_obj
def hosts_trust(settings: Settings, host: str, yes: bool, replace: bool, timeout: float) -> None:
    """Show the SSH key fingerprint of HOST (and of its jump hosts) and record it in known_hosts.

    A key that differs from the recorded one is refused (exit 4, nothing written) unless
    --replace is given; a key marked @revoked is always refused.
    """
    from cvtui.trust_command import trust_host

    inventory = settings.inventory()
    trust_host(
        inventory.host(host),
        inventory.policy,
        yes=yes,
        replace=replace,
        interactive=sys.stdin.isatty(),
        timeout_s=timeout,
    )


@main.command()
@click.argument("host")
@click.option("--timeout", default=10.0, show_default=True, metavar="SECONDS", help="Per step.")
@click.pass_obj
def doctor(settings: Settings, host: str, timeout: float) -> None:
    """Diagnose HOST step by step: ssh config, jump hosts, network, host key, auth, python,
    root permissions, agent, GPUs, disk."""
    import asyncio

    from cvtui.engine.doctor import WARNING_PREFIX, diagnose

    inventory = settings.inventory()
    entry = inventory.host(host)

    async def walk() -> bool:
        all_ok = True
        async for check in diagnose(entry, inventory.policy, timeout):
            all_ok &= check.ok
            if not check.ok:
                mark = click.style("FAIL", fg="red")
            elif check.detail.startswith(WARNING_PREFIX):
                mark = click.style("WARN", fg="yellow")
            else:
                mark = click.style(" ok ", fg="green")
            click.echo(f"{mark} {check.name:16} {check.detail}")
        return all_ok

    if not asyncio.run(walk()):
        sys.exit(EXIT_HOSTS_DOWN)


@main.command()
@click.option("--hosts", "host_count", default=3, show_default=True, help="Simulated hosts.")
@click.option("--headless", is_flag=True, help="No UI: print the hosts table, for CI smoke tests.")
@click.option(
    "--duration", type=float, default=None, metavar="SECONDS", help="Stop after this long."
)
def demo(host_count: int, headless: bool, duration: float | None) -> None:
    """A live dashboard over real SSH to simulated GPU hosts on 127.0.0.1.

    Starts one OpenSSH server per simulated host in a temporary directory; everything is
    stopped and removed on exit.
    """
    from cvtui.demo import run_demo

    sys.exit(run_demo(host_count, headless=headless, duration_s=duration))


def _register_run_commands() -> None:
    from cvtui import cli_components, cli_models, cli_queue, cli_reproduce, cli_runs, cli_sync

    cli_runs.register(main)
    cli_queue.register(main)
    cli_sync.register(main)
    cli_reproduce.register(main)
    cli_components.register(main)
    cli_models.register(main)


_register_run_commands()


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
        from cvtui.crash_log import EXIT_INTERNAL_ERROR, one_line, write_crash_log

        path = write_crash_log(error)
        where = f"traceback in {path}" if path else "no crash log could be written"
        click.echo(f"cvtui: internal error: {one_line(error)} ({where})", err=True)
        sys.exit(EXIT_INTERNAL_ERROR)


if __name__ == "__main__":
    console_main()
