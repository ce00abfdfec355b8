"""`cvtui demo`: a live dashboard over real SSH to simulated GPU hosts on loopback."""

from __future__ import annotations

import sys

import click


@click.command()
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


def register(main: click.Group) -> None:
    main.add_command(demo)
