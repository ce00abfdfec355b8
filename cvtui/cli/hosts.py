"""Host commands of the CLI: hosts, hosts trust / drain / undrain, doctor."""

from __future__ import annotations

import json
import sys

import click

from cvtui.cli.settings import EXIT_HOSTS_DOWN, Settings


@click.group(invoke_without_command=True)
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
    from cvtui.report import format_hosts

    settings: Settings = ctx.obj
    report = settings.lab().hosts(timeout_s=timeout)
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
    from cvtui.cli.trust import trust_host

    inventory = settings.inventory()
    trust_host(
        inventory.host(host),
        inventory.policy,
        yes=yes,
        replace=replace,
        interactive=sys.stdin.isatty(),
        timeout_s=timeout,
    )


@click.command()
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


def _set_drained(settings: Settings, name: str, drained: bool) -> None:
    from cvtui.catalog import Catalog

    host = settings.inventory().host(name)
    with Catalog.open_home(settings.home()) as catalog:
        changed = catalog.set_host_drained(host, drained)
        active = catalog.list_runs(states=["dispatching", "running"], host=name)
    if not drained:
        click.echo(f"{name} takes new runs again" if changed else f"{name} was not drained")
        return
    if not changed:
        click.echo(f"{name} was already drained")
        return
    plural = "" if len(active) == 1 else "s"
    click.echo(f"{name} drained: nothing new is placed there; its {len(active)} run{plural} finish")


@click.command("drain")
@click.argument("host")
@click.pass_obj
def hosts_drain(settings: Settings, host: str) -> None:
    """Place no new runs on HOST; runs already there finish. Kept in the catalog."""
    _set_drained(settings, host, True)


@click.command("undrain")
@click.argument("host")
@click.pass_obj
def hosts_undrain(settings: Settings, host: str) -> None:
    """Let HOST take new runs again after `cvtui hosts drain`."""
    _set_drained(settings, host, False)


def register(main: click.Group) -> None:
    hosts.add_command(hosts_drain)
    hosts.add_command(hosts_undrain)
    main.add_command(hosts)
    main.add_command(doctor)
